"""Releases that map one table differently share its cache: a migration in either
direction leaves none of them an entry cached before it (issue #24, item 5).

Each release of ``tests/profiles`` caches rows in Redis under its own schema fingerprint.
The releases upgrade the database one revision at a time, each running its own revision
with the helper wired as documented; the newest release updates a row and then, as in a
rollback, downgrades the database one revision at a time.  After every step the code of
every release reads every row through its chain, and every layer of every release either
misses or holds what the database holds, column by column.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.orm import scoped_session, sessionmaker

from sa_stockpyle import attach
from sa_stockpyle.stores import ChainedStore, ProcessMemoryStore, RedisStore, SqlAlchemyStore
from tests.profiles import MODELS, REVISIONS, VERSION_TABLE, alembic_config

#: The rows the oldest release adds: id, email, points, note.
SEED = [(1, "ada@example.com", 3, "first"), (2, "bob@example.com", 5, "second")]


class Process:
    """One process of a release: a chain of memory, Redis and the database, attached.

    No broadcast: in this one test process every chain knows every release's class, so
    a broadcast would reach other releases' memory layers, which it cannot across
    processes.  Those are restarted after a migration instead, as the docs ask.
    """

    def __init__(self, revision: str, database_url: str, redis_url: str) -> None:
        self.revision = revision
        self.base, self.profile = MODELS[revision]
        self.engine = create_engine(database_url)
        self.sessions = sessionmaker(self.engine)
        self.reader = scoped_session(self.sessions)
        self.memory = ProcessMemoryStore()
        self.shared = RedisStore(url=redis_url)
        self.chain = ChainedStore(
            [self.memory, self.shared, SqlAlchemyStore(session=self.reader)], broadcast=False
        )
        self.handle = attach(self.sessions, self.chain)

    def close(self) -> None:
        self.reader.remove()
        self.handle.detach()
        self.chain.close()
        self.engine.dispose()


class Deployment:
    """A process of every release, and one more per release that runs throughout with
    Redis alone (it keeps the namespace generations it has read)."""

    def __init__(self, database_url: str, redis_url: str) -> None:
        self.database_url = database_url
        self.redis_url = redis_url
        self.processes = {rev: Process(rev, database_url, redis_url) for rev in REVISIONS}
        self.long_lived = {rev: RedisStore(url=redis_url) for rev in REVISIONS}
        self.engine = create_engine(database_url)
        #: Every email a row has had: a lookup by one the database no longer holds misses.
        self.emails = {email for _, email, _, _ in SEED}

    def migrate(self, runner: str, action: str, revision: str) -> None:
        """``alembic <action> <revision>`` run by release ``runner``'s process, whose chain
        the helper invalidates; every other release's processes restart."""
        for process in self.processes.values():
            process.reader.remove()  # on PostgreSQL an open transaction blocks ALTER TABLE
        process = self.processes[runner]
        getattr(command, action)(
            alembic_config(self.database_url, process.chain, process.base), revision
        )
        for rev in REVISIONS:
            if rev != runner:
                self.processes[rev].close()
                self.processes[rev] = Process(rev, self.database_url, self.redis_url)

    def rows(self) -> dict[int, dict[str, Any]]:
        """What the database holds, read with plain SQL."""
        with self.engine.connect() as connection:
            rows = connection.execute(text("SELECT id, email, points, note FROM profiles"))
            return {row.id: dict(row._mapping) for row in rows}

    def check(self, step: str, releases: tuple[str, ...] = REVISIONS) -> None:
        """Each of ``releases`` reads every row through its chain; every layer of each
        misses or agrees with the database."""
        rows = self.rows()
        gone = self.emails - {row["email"] for row in rows.values()}
        for rev in releases:
            process = self.processes[rev]
            layers = {
                "memory": process.memory,
                "redis": process.shared,
                "long-lived redis": self.long_lived[rev],
            }
            for _ in range(2):  # as found after the step, then as filled by the reads
                for ident, row in rows.items():
                    for key in (ident, {"email": row["email"]}):
                        for name, layer in layers.items():
                            found = layer.get(process.profile, key)
                            assert found is None or _columns(found) == row, (step, rev, name, key)
                        found = process.chain.get(process.profile, key)
                        assert found is not None, (step, rev, key)
                        assert _columns(found) == row, (step, rev, "chain", key)
                for email in gone:
                    for name, layer in {**layers, "chain": process.chain}.items():
                        assert layer.get(process.profile, {"email": email}) is None, (
                            step,
                            rev,
                            name,
                            email,
                        )
                process.reader.remove()

    def close(self) -> None:
        for process in self.processes.values():
            process.close()
        for store in self.long_lived.values():
            store.close()
        self.engine.dispose()


def _columns(obj: object) -> dict[str, Any]:
    """The mapped column values of ``obj``, by column name."""
    return {column.key: getattr(obj, column.key) for column in inspect(type(obj)).columns}


def _drop_tables(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text(f"DROP TABLE IF EXISTS profiles, {VERSION_TABLE}"))


@pytest.fixture
def deployment(postgres_url: str, redis_url: str) -> Iterator[Deployment]:
    deployment = Deployment(postgres_url, redis_url)
    _drop_tables(deployment.engine)
    yield deployment
    deployment.close()
    engine = create_engine(postgres_url)
    _drop_tables(engine)
    engine.dispose()


def test_a_migration_leaves_no_release_an_entry_cached_before_it(
    deployment: Deployment,
) -> None:
    oldest, newest = REVISIONS[0], REVISIONS[-1]
    deployment.migrate(oldest, "upgrade", oldest)
    first = deployment.processes[oldest]
    with first.sessions() as session:
        session.add_all(
            first.profile(id=ident, email=email, points=points, note=note)
            for ident, email, points, note in SEED
        )
        session.commit()  # written through under the oldest release's fingerprint
    deployment.check(f"seeded at {oldest}")

    for revision in REVISIONS[1:]:  # each release runs its own revision
        deployment.migrate(revision, "upgrade", revision)
        deployment.check(f"upgraded to {revision}")

    last = deployment.processes[newest]
    with last.sessions() as session:
        profile = session.get(last.profile, 1)
        profile.email, profile.points, profile.note = "ada@example.org", 99, "UPDATED"
        session.commit()
    deployment.emails.add("ada@example.org")
    # Only the newest release's own entries follow its commit: the other releases, still
    # running, keep theirs until the next migration (see docs/alembic.md).
    deployment.check(f"updated by {newest}", (newest,))

    for revision in reversed(REVISIONS[:-1]):  # the newest release rolls back, step by step
        deployment.migrate(newest, "downgrade", revision)
        deployment.check(f"downgraded to {revision}")
