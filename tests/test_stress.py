"""The multi-process consistency stress, short: real worker processes, PostgreSQL, Redis.

``python -m stress.consistency`` runs the long form (see docs/consistency.md); the same
checker runs here for a few seconds, with and without a memory layer in every worker, and
with the workers' link to Redis cut and healed under them while Redis keeps its entries.
Besides the end state, it checks reads of Redis made while the workers run: none may
find a row older than a commit written through before it (guarantee 3).
"""

from __future__ import annotations

import pytest

from stress.consistency import run
from stress.partition import CUTS


@pytest.mark.parametrize("memory_layer", [False, True], ids=["redis", "memory+redis"])
def test_concurrent_writers_leave_no_stale_entry_and_read_nothing_uncommitted(
    postgres_url: str, redis_url: str, memory_layer: bool
) -> None:
    # Two of the four workers fork after using their chain, and work in the child.
    report = run(
        postgres_url, redis_url, processes=4, seconds=6, memory_layer=memory_layer, forked=2
    )
    details = report.format()
    print(details)
    # Guarantee 3, while the run went on: commits reached Redis out of their order, and no
    # read of Redis found a row older than a commit that had written through before it
    # (reads were compared with such commits).
    assert report.reordered > 0, details
    assert report.out_of_order == [], details
    assert report.peeks_compared > 0, details
    assert report.stale_entries == 0, details
    assert report.uncommitted_reads == 0, details
    assert report.lost_writes == 0, details
    assert report.wrong == [], details
    assert report.writethrough_errors == 0, details
    assert report.ok, details
    # Real work happened, in every process, through the cache and around it.
    assert len(report.workers) == 4
    assert all(worker.commits > 0 and worker.reads > 0 for worker in report.workers), details
    # Floors, not rates: the run lasts a fixed time, and a loaded machine does less in it
    # (on the 2-core VM, 1,160-1,420 reads at load 6-7, and 928 at load 12).
    assert report.reads > 300, details
    assert report.commits > 100, details
    assert report.rollbacks > 0, details
    assert report.hits > 0, details
    assert report.keys_checked >= 200, details
    assert report.keys_held > 0, details
    # The hostile part of the mix happened: refused flushes, values the database changes
    # or no cache carries, and workers forked with their chain.
    assert report.refused_flushes > 0, details
    assert report.removed_instead("inexact") > 0, details
    assert report.removed_instead("refused") > 0, details
    assert [worker.forked for worker in report.workers] == [True, True, False, False]


def test_cutting_redis_off_under_the_workers_loses_nothing_and_leaves_nothing_stale(
    postgres_url: str, redis_url: str
) -> None:
    # Short enough for two cuts at least in the 4 s before the quiet end (3 s).
    report = run(
        postgres_url,
        redis_url,
        processes=4,
        seconds=7,
        memory_layer=True,
        chaos=True,
        fault_interval=(0.4, 0.8),
        downtime=(0.2, 0.6),
    )
    details = report.format()
    print(details)
    assert report.faults_injected >= 2, details
    assert {fault.mode for fault in report.faults} == set(CUTS), details
    # The faults made what they test: commits the cut link kept from Redis left entries
    # there that disagreed with the database when it came back, for the chains' catch-up
    # to remove (a server restarted empty would have held none).
    assert report.stale_at_heal > 0, details
    assert report.stale_entries == 0, details
    assert report.uncommitted_reads == 0, details
    assert report.lost_writes == 0, details
    assert report.wrong == [], details
    assert report.reordered > 0, details
    assert report.out_of_order == [], details
    assert report.peeks_compared > 0, details
    assert report.ok, details
    # Outages are counted by the chain, never raised: commits went on while Redis was
    # cut off (their write-through failed or skipped it), and reads fell through.
    assert report.writethrough_errors == 0, details
    assert report.redis_events("errors") > 0, details
    assert report.redis_events("caught_up") > 0, details
    assert all(worker.commits_while_down > 0 for worker in report.workers), details
    assert all(worker.reads_while_down > 0 for worker in report.workers), details
    assert all(worker.broadcast.get("losses", 0) > 0 for worker in report.workers), details
    assert report.commits > 100, details
    assert report.keys_held > 0, details
    assert sum(worker.memory_held for worker in report.workers) > 0, details


@pytest.mark.parametrize("chaos", [False, True], ids=["steady", "cut-off"])
def test_asyncio_workers_next_to_synchronous_ones_leave_no_stale_entry(
    postgres_url: str, redis_url: str, chaos: bool
) -> None:
    # The last two workers run on an event loop: asyncpg, redis.asyncio, every wait for a
    # server an await in a greenlet; one synchronous worker forks after using its chain.
    options: dict[str, object] = (
        {"chaos": True, "fault_interval": (0.4, 0.8), "downtime": (0.2, 0.6), "seconds": 7}
        if chaos
        else {"seconds": 6}
    )
    report = run(
        postgres_url,
        redis_url,
        processes=4,
        memory_layer=True,
        forked=1,
        asyncio_workers=2,
        **options,  # type: ignore[arg-type]
    )
    details = report.format()
    print(details)
    assert [worker.asyncio for worker in report.workers] == [False, False, True, True]
    assert [worker.forked for worker in report.workers] == [True, False, False, False]
    assert report.stale_entries == 0, details
    assert report.uncommitted_reads == 0, details
    assert report.lost_writes == 0, details
    assert report.wrong == [], details
    assert report.out_of_order == [], details
    assert report.writethrough_errors == 0, details
    assert report.ok, details
    # Every process, of either kind, worked through the cache and heard the others.
    assert all(worker.commits > 0 and worker.reads > 0 for worker in report.workers), details
    assert all(worker.cache_hits > 0 for worker in report.workers), details
    assert all(worker.broadcast.get("received", 0) > 0 for worker in report.workers), details
    assert sum(worker.memory_held for worker in report.workers) > 0, details
    if chaos:
        assert report.faults_injected >= 2, details
        assert report.stale_at_heal > 0, details
        assert report.redis_events("caught_up") > 0, details
        assert all(worker.commits_while_down > 0 for worker in report.workers), details
    else:
        assert report.reordered > 0, details
        assert report.peeks_compared > 0, details
