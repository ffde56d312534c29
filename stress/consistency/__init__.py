"""Multi-process consistency stress: real PostgreSQL, real Redis, many writers, one checker.

``python -m stress.consistency --postgres-url URL --redis-url URL --processes 4 --seconds 20``
``python -m stress.consistency --postgres-url URL --redis-url URL --chaos --memory-layer``

Worker processes (started with the ``spawn`` method, each with its own engine, sessions,
``RedisStore`` and :func:`~sa_stockpyle.attach`) read through
``ChainedStore([RedisStore, SqlAlchemyStore])`` (``--memory-layer``: a
``ProcessMemoryStore`` in front) and write with a skewed random mix: value updates,
alternate-key moves, deletes, re-inserts, ORM bulk updates, ``bulk_update_mappings``,
UPDATEs of the table (by key, or by the alternate key: the keys come back by
RETURNING), two-row transactions, transactions that write and then roll back,
sessions joined to a caller's transaction that the caller commits or rolls back after
the session's commit, and two updates of one row whose first reaches Redis after the
second (its write held back, as a writer paused between its COMMIT and its
write-through would be; see :func:`stress.ordering.overtaken`).  Writes give the
``Numeric``, ``CHAR`` and ``DateTime`` columns values the database keeps or changes, and
now and then an object no cache payload carries (a ``PickleType``); an application
``after_flush`` listener refuses a share of the flushes.  With ``--asyncio-workers N``, the
last N workers run their mix on an event loop, as ``AsyncSession`` runs the ORM: in a
greenlet, with asyncpg and ``redis.asyncio`` (``AsyncRedisStore``'s transport), every wait
for a server an await.  With ``--forked N``, N workers
build and use their chain, then fork, and the child works with the chain it inherited (a
preloading server's workers).
Every writer transaction inserts the token it wrote into ``stress_committed`` in the same
transaction, after its row writes, with a sequence number drawn then: so that table lists
exactly the committed tokens, and, for each row, in the order their transactions
committed (see :class:`~stress.consistency.schema.Committed`).

With ``--chaos`` the workers reach Redis through a :class:`~stress.partition.Partition`
of the parent's, which cuts the link at random moments (every ``--fault-interval``
seconds, for ``--downtime`` seconds, the last heal at least ``QUIET`` seconds before the
workers stop; see :mod:`stress.chaos`) while Redis runs on with every entry it holds:
the cuts, in turn, reset every connection, and silently drop every byte.  The workers go
on: reads fall through to PostgreSQL, commits succeed and their write-through failures
are counted by the chain; the entries their commits could not remove meanwhile are still
in Redis when the link is back, and only the chains' catch-up (or a later write) removes
them.  Just before each heal the parent counts them, straight from Redis
(``Fault.stale``).

When every worker has stopped, the parent checks that:

* every value a reader saw is a committed token, of the row it was read from;
* no committed write is lost: replaying the committed writes of each row in commit order
  (value updates, alternate-key moves, deletes, inserts) gives exactly the row the
  database holds, version included;
* whatever Redis holds for any primary key or alternate key ever used is either nothing
  or equal (every column, with its type) to the row the database holds now;
* no read of Redis made during the run (the workers read the hot rows straight from
  Redis now and then, and the rows of each commit right after it) found a row older than
  a commit whose write-through had reached Redis before the read (see
  :mod:`stress.ordering`).

An entry that a write of a deleted row, arriving late, left over the row inserted again
under its primary key is a documented window (a primary key used again): it is listed
apart (``Report.late``), not counted as stale.

Before it stops, each worker waits until its chain uses Redis again, which it does only
once it has made up for every write it missed during an outage (see ``Worker.settle`` in
``worker``).  With ``--memory-layer``, each worker makes the last check against its own
memory layer once every other worker has stopped and all their invalidation broadcasts
have arrived (see ``Worker.check_memory``).  The exit status is 1 when a check fails.

Cache keys and the broadcast channel are named after a prefix of their own per run, so a
shared Redis server may be used; the tables (``stress_*``) are dropped again after a run
that passed, and kept, with the Redis keys, for inspection after one that did not.

The package, by job: ``schema`` (the tables), ``workload`` and ``writes`` (what a worker
does), ``worker`` (the process around it), ``checks`` (the checker), ``report`` (what a
run reports), ``runner`` (the parent: :func:`run`) and ``cli`` (:func:`main`).
"""

from __future__ import annotations

from stress.chaos import Fault
from stress.consistency.cli import main
from stress.consistency.report import Report, WorkerReport
from stress.consistency.runner import run
from stress.consistency.schema import Plain, RowState, Versioned

__all__ = [
    "Fault",
    "Plain",
    "Report",
    "RowState",
    "Versioned",
    "WorkerReport",
    "main",
    "run",
]
