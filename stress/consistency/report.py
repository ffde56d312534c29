"""What a run reports: each worker's counts and findings, and the checker's verdict."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from stress.chaos import Fault
from stress.ordering import Peek

#: Anomalies listed by :meth:`Report.format`, per kind; the counts are always complete.
LISTED = 20


@dataclass
class WorkerReport:
    """What one worker process did and saw."""

    pid: int
    index: int
    #: Seconds the operation loop ran.
    seconds: float = 0.0
    operations: Counter[str] = field(default_factory=Counter)
    #: Operations the database refused (serialization, deadlock, unique violation, a row
    #: changed or deleted meanwhile): rolled back and counted, not retried.
    conflicts: Counter[str] = field(default_factory=Counter)
    #: The same conflicts by cause (the exception class, the driver's for DBAPIError).
    causes: Counter[str] = field(default_factory=Counter)
    #: Write operations with nothing to do (the row was absent, or present for an insert).
    skipped: Counter[str] = field(default_factory=Counter)
    commits: int = 0
    #: Transactions that wrote, then rolled back or closed on purpose.
    rollbacks: int = 0
    #: Flushes the application's listener refused (rolled back).
    refused_flushes: int = 0
    #: Whether this worker ran in a process forked after its chain was used.
    forked: bool = False
    #: Whether this worker was an asyncio one (asyncpg, redis.asyncio, an event loop).
    asyncio: bool = False
    #: Objects the attachment removed instead of writing: a value the database changes
    #: on the way in (inexact), or that no cache payload carries (refused).
    inexact: int = 0
    refused: int = 0
    reads: int = 0
    #: Reads that found a row.
    found: int = 0
    #: Per chain layer name, per event (hits, misses, fills, waits, errors), summed.
    layer_events: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Hits of the caching layers (every layer but the database).
    cache_hits: int = 0
    #: Commit-time write-through failures counted by the attachment.
    writethrough_errors: int = 0
    #: The Redis layer's events (errors, skipped, caught_up...), all classes.
    redis: dict[str, int] = field(default_factory=dict)
    #: Commits and reads during which the chain found Redis failing or resting (--chaos:
    #: while the link was cut, or right after, while the chain let it rest).
    commits_while_down: int = 0
    reads_while_down: int = 0
    #: (class name, row id, value) of every read result.
    seen: set[tuple[str, int, str]] = field(default_factory=set)
    #: Tokens written by transactions that then rolled back.
    rolled_back: list[str] = field(default_factory=list)
    #: (token, time) of each commit whose write-through had reached Redis when it
    #: returned, and the rows read straight from Redis (see stress.ordering).
    returned: list[tuple[str, float]] = field(default_factory=list)
    peeks: list[Peek] = field(default_factory=list)
    #: (class name, alternate key value) this worker wrote or read.
    alternates: set[tuple[str, str]] = field(default_factory=set)
    #: Reads that answered another key than asked, or not a transaction's own write.
    wrong: list[str] = field(default_factory=list)
    #: Keys of the memory layer checked, those that held an entry, and those found stale
    #: (--memory-layer).
    memory_checked: int = 0
    memory_held: int = 0
    memory_stale: list[str] = field(default_factory=list)
    #: Entries of the memory layer left by a late write of a deleted row (see Report.late).
    memory_late: list[str] = field(default_factory=list)
    #: The chain's invalidation broadcast counters (--memory-layer; see Coherence).
    broadcast: dict[str, int] = field(default_factory=dict)
    #: Why a check could not be made (the chain never used Redis again after a fault).
    unsettled: list[str] = field(default_factory=list)
    #: The traceback, when the worker failed.
    error: str | None = None


@dataclass
class Report:
    """The outcome of :func:`run`."""

    processes: int
    seconds: float
    memory_layer: bool
    seed: int
    prefix: str
    #: Wall-clock seconds of the whole run, process start-up and checks included.
    elapsed: float
    workers: list[WorkerReport]
    chaos: bool = False
    #: The faults injected (--chaos).
    faults: list[Fault] = field(default_factory=list)
    #: Redis keys checked (primary and alternate keys of both classes), and how many of
    #: them held an entry.
    keys_checked: int = 0
    keys_held: int = 0
    #: Rows whose committed writes were replayed (both classes, every id).
    rows_checked: int = 0
    #: Rows the database holds otherwise than their committed writes, replayed, leave.
    lost: list[str] = field(default_factory=list)
    #: Checks that could not be made (see WorkerReport.unsettled).
    unsettled: list[str] = field(default_factory=list)
    #: Redis entries that disagree with the database.
    stale: list[str] = field(default_factory=list)
    #: Rows read from Redis during the run that were older than a commit written through
    #: before the read (guarantee 3), how many reads were compared with one, and how many
    #: commits reached Redis after a newer commit of their row had.
    out_of_order: list[str] = field(default_factory=list)
    peeks_compared: int = 0
    reordered: int = 0
    #: Memory-layer entries that disagree with the database (--memory-layer).
    memory_stale: list[str] = field(default_factory=list)
    #: Entries (Redis, memory layers) that disagree with the database because a write of
    #: a row deleted since, arriving late, replaced the entry of a row inserted again
    #: under its primary key: a documented window (docs/consistency.md), not counted stale.
    late: list[str] = field(default_factory=list)
    #: Values read that no committed transaction wrote.
    uncommitted: list[str] = field(default_factory=list)
    #: Reads that answered another key or row than asked.
    wrong: list[str] = field(default_factory=list)

    @property
    def operations(self) -> Counter[str]:
        """Operations by kind, all workers."""
        return sum((w.operations for w in self.workers), Counter())

    @property
    def conflicts(self) -> int:
        """Operations the database refused, all workers."""
        return sum(sum(w.conflicts.values()) for w in self.workers)

    @property
    def causes(self) -> Counter[str]:
        """Conflicts by cause, all workers."""
        return sum((w.causes for w in self.workers), Counter())

    @property
    def commits(self) -> int:
        """Committed write transactions, all workers."""
        return sum(w.commits for w in self.workers)

    @property
    def rollbacks(self) -> int:
        """Transactions rolled back or closed on purpose after writing, all workers."""
        return sum(w.rollbacks for w in self.workers)

    @property
    def reads(self) -> int:
        """Lookups through the chain, all workers."""
        return sum(w.reads for w in self.workers)

    @property
    def hits(self) -> int:
        """Hits of the caching layers, all workers."""
        return sum(w.cache_hits for w in self.workers)

    @property
    def refused_flushes(self) -> int:
        """Flushes the application's listener refused, all workers."""
        return sum(w.refused_flushes for w in self.workers)

    def removed_instead(self, why: str) -> int:
        """Objects removed instead of written, ``"inexact"`` or ``"refused"``, all workers."""
        return sum(getattr(w, why) for w in self.workers)

    @property
    def writethrough_errors(self) -> int:
        """Commit-time write-through failures, all workers."""
        return sum(w.writethrough_errors for w in self.workers)

    @property
    def commits_while_down(self) -> int:
        """Commits during which the chain found Redis failing or resting, all workers."""
        return sum(w.commits_while_down for w in self.workers)

    @property
    def reads_while_down(self) -> int:
        """Reads during which the chain found Redis failing or resting, all workers."""
        return sum(w.reads_while_down for w in self.workers)

    def redis_events(self, event: str) -> int:
        """A Redis layer event (errors, skipped, caught_up...) summed over the workers."""
        return sum(w.redis.get(event, 0) for w in self.workers)

    @property
    def faults_injected(self) -> int:
        """Times the link to Redis was cut (--chaos)."""
        return len(self.faults)

    @property
    def stale_at_heal(self) -> int:
        """Entries left stale in Redis by missed writes, counted just before each heal
        (--chaos): what only the catch-up, or a later write, removes."""
        return sum(fault.stale for fault in self.faults)

    @property
    def lost_writes(self) -> int:
        """Rows whose committed writes the database does not hold."""
        return len(self.lost)

    @property
    def stale_entries(self) -> int:
        """Stale entries found in Redis and in the memory layers."""
        return len(self.stale) + len(self.memory_stale)

    @property
    def uncommitted_reads(self) -> int:
        """Reads of values no committed transaction wrote."""
        return len(self.uncommitted)

    @property
    def ok(self) -> bool:
        """Whether every check passed."""
        return not (
            self.stale
            or self.memory_stale
            or self.uncommitted
            or self.wrong
            or self.lost
            or self.unsettled
            or self.out_of_order
        )

    def format(self) -> str:
        """A short human-readable report."""
        layers = "ProcessMemoryStore, RedisStore" if self.memory_layer else "RedisStore"
        lines = [
            f"stress.consistency: {self.processes} processes x {self.seconds:g} s, "
            f"layers {layers}, seed {self.seed}, cache prefix {self.prefix}, "
            f"elapsed {self.elapsed:.1f} s" + (", chaos" if self.chaos else "")
        ]
        for w in self.workers:
            ops = ", ".join(f"{kind} {n}" for kind, n in sorted(w.operations.items()))
            conflicts = ", ".join(f"{kind} {n}" for kind, n in sorted(w.conflicts.items()))
            layer_hits = ", ".join(
                f"{name} {events.get('hits', 0)}" for name, events in w.layer_events.items()
            )
            forked = ", forked after its chain was used" if w.forked else ""
            forked += ", asyncio" if w.asyncio else ""
            lines += [
                f"  process {w.pid}{forked} ({w.seconds:.1f} s): "
                f"{sum(w.operations.values())} ops: {ops}",
                f"    commits {w.commits}, rollbacks {w.rollbacks}, "
                f"conflicts {sum(w.conflicts.values())} ({conflicts or 'none'}), "
                f"skipped {sum(w.skipped.values())}, reads {w.reads} (found {w.found}), "
                f"hits by layer: {layer_hits}, write-through errors {w.writethrough_errors}",
                f"    flushes the application refused {w.refused_flushes}; removed instead "
                f"of written: {w.inexact} inexact, {w.refused} refused",
            ]
            if self.chaos:
                lines.append(
                    f"    Redis layer: errors {w.redis.get('errors', 0)}, "
                    f"skipped {w.redis.get('skipped', 0)}, "
                    f"caught up {w.redis.get('caught_up', 0)}; while it failed or rested: "
                    f"commits {w.commits_while_down}, reads {w.reads_while_down}"
                )
            if w.broadcast:
                counts = ", ".join(f"{event} {n}" for event, n in sorted(w.broadcast.items()))
                lines.append(f"    broadcast: {counts}")
        lines += [
            f"  total: {sum(self.operations.values())} ops, {self.commits} commits, "
            f"{self.rollbacks} rollbacks, {self.conflicts} conflicts "
            f"({', '.join(f'{c} {n}' for c, n in sorted(self.causes.items())) or 'none'}), "
            f"{self.reads} reads, "
            f"{self.hits} cache hits, {self.writethrough_errors} write-through errors",
        ]
        if self.chaos:
            faults = ", ".join(
                f"{f.at:.1f}+{f.lasted:.1f} {f.mode} ({f.stale} stale)" for f in self.faults
            )
            calm = self.seconds - max((f.at + f.lasted for f in self.faults), default=0.0)
            lines += [
                f"  faults: the link to Redis cut {len(self.faults)} times (at+lasted s, how, "
                f"entries Redis held stale at the heal: {faults or 'none'}); healed for the "
                f"last {calm:.1f} s",
                f"  Redis layer: errors {self.redis_events('errors')}, "
                f"skipped {self.redis_events('skipped')}, "
                f"caught up {self.redis_events('caught_up')}; while it failed or rested: "
                f"{self.commits_while_down} commits, {self.reads_while_down} reads",
            ]
        lines += [
            f"  checked {self.rows_checked} rows against their committed writes: "
            f"lost writes {len(self.lost)}",
            f"  checked {self.keys_checked} Redis keys ({self.keys_held} held an entry)"
            + (
                f", {sum(w.memory_checked for w in self.workers)} memory-layer keys "
                f"({sum(w.memory_held for w in self.workers)} held an entry)"
                if self.memory_layer
                else ""
            )
            + f": stale entries {len(self.stale)} in Redis"
            + (f", {len(self.memory_stale)} in memory layers" if self.memory_layer else "")
            + f" (and {len(self.late)} a deleted row's late write left)"
            + f"; uncommitted reads {len(self.uncommitted)}; wrong answers {len(self.wrong)}",
            f"  {self.reordered} commits reached Redis after a newer one of their row; "
            f"read {sum(len(w.peeks) for w in self.workers)} rows straight from Redis, "
            f"{self.peeks_compared} after a commit of theirs had written through: older "
            f"than it {len(self.out_of_order)}",
        ]
        for title, items in (
            ("could not check", self.unsettled),
            ("lost writes", self.lost),
            ("stale in Redis", self.stale),
            ("stale in memory layers", self.memory_stale),
            ("left by a deleted row's late write (a primary key used again)", self.late),
            ("older than a commit written through", self.out_of_order),
            ("uncommitted reads", self.uncommitted),
            ("wrong answers", self.wrong),
        ):
            if items:
                lines.append(f"  {title} (first {min(len(items), LISTED)}):")
                lines += [f"    {item}" for item in items[:LISTED]]
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)
