"""The entity codec: mapped objects are cached as their column state, never as instances."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, inspect
from sqlalchemy.orm import Mapped, Session, mapped_column

from sa_stockpyle.codec import Entry, decode_record, encode_record
from sa_stockpyle.errors import PayloadError
from sa_stockpyle.keys import class_token, key_spec
from sa_stockpyle.snapshots import restore, snapshot
from sa_stockpyle.stores import ShoveStore
from tests.models import Address, Base, User


@pytest.fixture
def session() -> Iterator[Session]:
    """A session on an in-memory SQLite database holding user 1 and one address."""
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        user = User(id=1, name="a", email="a@x")
        session.add_all([user, Address(id=1, user=user, street="Main St")])
        session.commit()
        yield session


def test_snapshot_is_the_column_state_only(session: Session) -> None:
    user = session.get(User, 1)
    assert user is not None
    assert [a.street for a in user.addresses] == ["Main St"]  # loaded, and still left out
    assert snapshot(user) == {"id": 1, "name": "a", "email": "a@x"}


def test_restore_builds_a_detached_instance_with_committed_state(session: Session) -> None:
    restored = restore(User, {"id": 1, "name": "a", "email": None})
    state = inspect(restored)
    assert state.detached
    assert state.key == (User, (1,), None)
    assert not state.modified
    assert (restored.name, restored.email) == ("a", None)


def test_an_object_without_a_primary_key_restores_transient() -> None:
    assert inspect(restore(User, {"name": "nobody"})).transient


def test_expired_columns_cannot_be_snapshotted(session: Session) -> None:
    user = session.get(User, 1)
    session.expire(user, ["email"])
    with pytest.raises(
        PayloadError, match=r"User object has expired column attributes \('email',\)"
    ):
        snapshot(user)


def test_a_payload_of_another_mapping_is_a_miss() -> None:
    store = ShoveStore(shove={})
    assert store.get(User, 1) is None  # the store learns its namespace generation
    spec = key_spec(User)
    key = store.keymaker.key(spec, 0, (1,))
    token = class_token(User)
    payload = encode_record(Entry(User, {"id": 1, "name": "a", "email": None}, (key,), None))
    assert decode_record(payload, User).state["name"] == "a"
    name = token.split("@")[0]
    store.dictionary[key] = payload.replace(token.encode(), f"{name}@000000000000".encode())
    assert store.get(User, 1) is None
    assert store.stats.count(User, "corrupt") == 1
    assert store.dictionary[key].startswith(b"SPKT")  # removed: a tombstone


class Guarded(Base):
    """A mapped class whose own ``__setattr__`` refuses, after a flag, every assignment
    but SQLAlchemy's own of the instance state (which ``new_instance`` makes too)."""

    __tablename__ = "guarded"
    __stockpyle_keys__ = ["id"]
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]

    def __setattr__(self, name: str, value: object) -> None:
        if GUARD["on"] and name != "_sa_instance_state":
            raise AssertionError(f"restore set {name!r} through the class's __setattr__")
        super().__setattr__(name, value)


GUARD = {"on": False}


@pytest.mark.parametrize("owned", [False, True])
def test_restore_gives_the_state_its_own_instance_dict_past_the_class_setattr(
    owned: bool,
) -> None:
    state = {"id": 7, "name": "g"}
    GUARD["on"] = True
    try:
        restored = restore(Guarded, state, owned)
    finally:
        GUARD["on"] = False
    assert (restored.id, restored.name) == (7, "g")
    assert inspect(restored).key == (Guarded, (7,), None)
    assert inspect(restored).dict is restored.__dict__
    # A state the caller keeps (not owned) shares nothing with the instance.
    assert (restored.__dict__ is state) is owned
    restored.name = "changed"
    assert state["name"] == ("changed" if owned else "g")
