"""Event listeners: installed by attach() or a store, removed by detach() or close(), and
never run for a session nothing serves (sa_stockpyle.listeners)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from sa_stockpyle import attach
from sa_stockpyle.listeners import Listeners
from sa_stockpyle.stores import ChainedStore, ProcessMemoryStore, SqlAlchemyStore
from tests.models import Base, User


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'listeners.db'}")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(
            User(id=i, email=f"u{i}@example.com", name=f"user {i}") for i in range(1, 1001)
        )
        session.commit()
    yield engine
    engine.dispose()


def _package_calls(run: Any) -> int:
    """How many calls into sa_stockpyle's own modules ``run()`` makes."""
    calls = 0

    def profile(frame: FrameType, event_name: str, arg: Any) -> None:
        nonlocal calls
        if event_name == "call" and frame.f_globals.get("__name__", "").startswith(
            "sa_stockpyle."
        ):
            calls += 1

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return calls


def _load(factory: sessionmaker[Session], rows: int) -> None:
    with factory() as session:
        found = session.scalars(select(User).where(User.id.in_(range(1, rows + 1)))).all()
        assert len(found) == rows


def _session_listeners(target: Session | sessionmaker[Session]) -> int:
    """How many sa_stockpyle listeners of the four session events the store installs a
    session of ``target`` (a session, or a sessionmaker's new session) runs."""
    session = target if isinstance(target, Session) else target()
    names = ("after_flush", "after_begin", "after_transaction_create", "after_transaction_end")
    count = 0
    for name in names:
        for listener in getattr(session.dispatch, name):
            module = getattr(listener, "__module__", "") or ""
            count += module.startswith("sa_stockpyle")
    return count


def test_a_session_nothing_serves_runs_no_listener_per_row(engine: Engine) -> None:
    served = sessionmaker(engine)
    scoped = scoped_session(served)
    store = ChainedStore([ProcessMemoryStore(), SqlAlchemyStore(session=scoped)])
    handle = attach(served, store)
    try:
        with served() as session:  # the store and the attachment at work
            session.get(User, 1).name = "renamed"  # type: ignore[union-attr]
            session.commit()
        found = store.get(User, 1)
        assert found is not None
        assert found.name == "renamed"
        assert [user.id for user in store.batch_get(User, range(2, 12)) if user] == [*range(2, 12)]
        scoped.remove()

        plain = sessionmaker(engine)  # the same engine, nothing attached
        few = _package_calls(lambda: _load(plain, 10))
        many = _package_calls(lambda: _load(plain, 1000))
        # Only the attachment's statement listeners on the shared engine run, once per
        # statement: nothing per row loaded.
        assert few == many
        assert few <= 4
        other_engine = create_engine(engine.url)
        try:
            assert _package_calls(lambda: _load(sessionmaker(other_engine), 1000)) == 0
        finally:
            other_engine.dispose()
    finally:
        handle.detach()
        store.close()


def test_close_and_detach_remove_every_listener(engine: Engine) -> None:
    factory = sessionmaker(engine)
    scoped = scoped_session(factory)
    store = SqlAlchemyStore(session=scoped)
    handle = attach(factory, ChainedStore([ProcessMemoryStore(), store]))
    with factory() as session:
        session.get(User, 1)  # begins on the engine: the statement listeners go on it
    assert _session_listeners(factory) > 0
    assert event.contains(engine, "after_execute", handle._statements.after_execute)
    handle.detach()
    assert not event.contains(factory, "after_flush", handle._after_flush)
    assert not event.contains(engine, "after_execute", handle._statements.after_execute)
    store.close()
    assert _session_listeners(factory) == 0
    assert _package_calls(lambda: _load(factory, 100)) == 0


def test_an_owned_session_store_removes_its_listeners_at_close(engine: Engine) -> None:
    store = SqlAlchemyStore(engine=engine)
    owned = store.session
    assert _session_listeners(owned) == 4
    store.close()
    assert _session_listeners(owned) == 0


def test_a_listener_two_stores_share_stays_until_the_last_closes(engine: Engine) -> None:
    scoped = scoped_session(sessionmaker(engine))
    first, second = SqlAlchemyStore(session=scoped), SqlAlchemyStore(session=scoped)
    target = scoped.session_factory
    assert _session_listeners(target) == 4  # installed once
    first.close()
    assert _session_listeners(target) == 4  # the second store still reads through them
    with scoped() as session:
        session.add(User(id=5000, email="new@example.com", name="new"))
        session.flush()
        assert not second.cacheable(session.get(User, 5000))  # the flush was recorded
        session.rollback()
    second.close()
    assert _session_listeners(target) == 0
    first.close()  # closing again removes nothing more and raises nothing
    assert _session_listeners(target) == 0


def test_listeners_installs_once_per_owner_and_counts_owners() -> None:
    target = sessionmaker()
    seen: list[object] = []

    def listener(session: Session, transaction: Any, connection: Any) -> None:
        seen.append(session)

    first, second = Listeners(), Listeners()
    first.listen(target, "after_begin", listener)
    first.listen(target, "after_begin", listener)  # the same owner again: held once
    second.listen(target, "after_begin", listener)
    assert (len(first), len(second)) == (1, 1)
    assert list(target().dispatch.after_begin) == [listener]  # installed once for both
    first.remove()
    assert event.contains(target, "after_begin", listener)
    second.remove()
    assert not event.contains(target, "after_begin", listener)
    assert len(first) == len(second) == 0


def test_the_store_stamps_only_what_its_own_select_read(engine: Engine) -> None:
    factory = sessionmaker(engine)
    with factory() as session:
        store = SqlAlchemyStore(session=session)
        earlier = session.get(User, 1)  # the application's own load: no listener stamps it
        since = time.monotonic()
        assert store.get(User, 1) is earlier
        assert not store.cacheable(earlier, since)  # held before ``since``: not re-read
        fresh = store.get(User, 2)  # read by the store's SELECT after ``since``
        assert store.cacheable(fresh, since)
        by_email = store.get(User, {"email": "u3@example.com"})
        assert store.cacheable(by_email, since)
        session.expire(fresh)  # wholly expired: the store's SELECT refreshes it
        later = time.monotonic()
        assert not store.cacheable(fresh, later)
        assert store.get(User, 2) is fresh
        assert store.cacheable(fresh, later)
        session.expire(by_email)  # wholly expired, found again by another key
        later = time.monotonic()
        assert not store.cacheable(by_email, later)
        assert store.get(User, {"email": "u3@example.com"}) is by_email
        assert store.cacheable(by_email, later)
        session.expire(by_email, ["name"])  # partly expired: the SELECT loads only that
        again = time.monotonic()
        assert store.get(User, {"email": "u3@example.com"}) is by_email
        assert store.cacheable(by_email)
        assert not store.cacheable(by_email, again)  # its other columns are from before
        store.close()
