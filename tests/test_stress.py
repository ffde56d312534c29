"""The multi-process consistency stress, short: real worker processes, PostgreSQL, Redis.

``python -m stress.consistency`` runs the long form (see docs/consistency.md); the same
checker runs here for a few seconds, with and without a memory layer in every worker.
"""

from __future__ import annotations

import pytest

from stress.consistency import run


@pytest.mark.parametrize("memory_layer", [False, True], ids=["redis", "memory+redis"])
def test_concurrent_writers_leave_no_stale_entry_and_read_nothing_uncommitted(
    postgres_url: str, redis_url: str, memory_layer: bool
) -> None:
    report = run(postgres_url, redis_url, processes=4, seconds=6, memory_layer=memory_layer)
    details = report.format()
    print(details)
    assert report.stale_entries == 0, details
    assert report.uncommitted_reads == 0, details
    assert report.wrong == [], details
    assert report.writethrough_errors == 0, details
    # Real work happened, in every process, through the cache and around it.
    assert len(report.workers) == 4
    assert all(worker.commits > 0 and worker.reads > 0 for worker in report.workers), details
    assert report.reads > 1000, details
    assert report.commits > 100, details
    assert report.rollbacks > 0, details
    assert report.hits > 0, details
    assert report.keys_checked >= 200, details
