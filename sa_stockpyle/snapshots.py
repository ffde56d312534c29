"""Object snapshots: the state a cache holds of an object, and objects rebuilt from it.

A snapshot is a copy of an object's attributes that shares nothing mutable with it, never
the live object.  The state of an object of a class mapped by SQLAlchemy is its *column
state* (the entity codec): the loaded values of its column attributes, whose primary key
is its identity (plus the identity token of sharded mappings).  Relationships and
``_sa_instance_state`` are never part of it.  :func:`restore` turns it back into a
*detached* instance whose values are committed state, so a session can take it as
persistent without SQL; relationships lazy-load once it is attached.
"""

from __future__ import annotations

import copy
import datetime as dt
import enum
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.orm.attributes import instance_state

from sa_stockpyle.errors import PayloadError
from sa_stockpyle.mapped import Mapped, mapped

__all__ = [
    "check_state",
    "expired_columns",
    "refuse_expired",
    "restore",
    "snapshot",
    "version_of",
]

_IMMUTABLE = frozenset(
    {str, int, float, bool, bytes, type(None), Decimal, UUID, dt.datetime, dt.date, dt.time}
)


def _detach(value: Any) -> Any:
    # Immutable values can be shared between the cache and its callers; anything else is
    # copied so that mutating a returned object never reaches into the cache.
    if type(value) in _IMMUTABLE or isinstance(value, enum.Enum):
        return value
    return copy.deepcopy(value)


def _detached(values: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``values`` sharing nothing mutable with it."""
    # Snapshots and restores sit on every cache write and hit: when every value is of an
    # immutable type (the usual row of scalars), one C-level check and copy do it all.
    if _IMMUTABLE.issuperset(map(type, values.values())):
        return values.copy()
    return {name: _detached_value(name, value) for name, value in values.items()}


def _detached_value(name: str, value: Any) -> Any:
    try:
        return _detach(value)
    except (RecursionError, TypeError, copy.Error) as exc:
        # A file handle, a lock, a value nested too deep to copy: not a cacheable state.
        raise PayloadError(f"attribute {name!r} cannot be copied into a cache: {exc!r}") from None


# A plain dict, as for the other per-class caches below: read on every snapshot.
_SLOTS: dict[type, tuple[str, ...]] = {}


def _slot_names(klass: type) -> tuple[str, ...]:
    names = _SLOTS.get(klass)
    if names is None:
        found: list[str] = []
        for base in klass.__mro__:
            slots = vars(base).get("__slots__", ())
            found.extend([slots] if isinstance(slots, str) else slots)
        names = tuple(name for name in found if name not in ("__dict__", "__weakref__"))
        _SLOTS[klass] = names
    return names


def snapshot(obj: object) -> dict[str, Any]:
    """A copy of ``obj``'s attributes that shares nothing mutable with ``obj``.

    For a mapped object, its column state (see the module docstring); raises
    :class:`PayloadError` when a column attribute is expired, because the snapshot would
    be incomplete or stale.
    """
    columns = mapped(type(obj))
    if columns is not None:
        return _snapshot_entity(obj, columns)
    state = _detached(getattr(obj, "__dict__", {}))
    for name in _slot_names(type(obj)):
        if hasattr(obj, name):
            state[name] = _detached_value(name, getattr(obj, name))
    return state


def restore(klass: type, state: dict[str, Any], owned: bool = False) -> Any:
    """Build a new ``klass`` instance from a snapshot, without calling ``__init__``.

    A mapped class gets a detached instance holding the snapshot as committed state.
    The instance shares nothing mutable with ``state``, unless ``owned``: then ``state``
    is the caller's to give away (it was just decoded, and nothing else refers to it),
    and its values become the instance's without a copy.
    """
    columns = mapped(klass)
    if columns is not None:
        return _restore_entity(columns, state, owned)
    factory: Any = klass
    obj = factory.__new__(klass)
    values = state if owned else _detached(state)
    slots = _slot_names(klass)
    if slots:
        # Slots through their descriptors, anything else into the instance dict: a name
        # such as "__class__" never reaches object.__setattr__ (checked by check_state).
        held = getattr(obj, "__dict__", None)
        for name, value in values.items():
            if name in slots:
                object.__setattr__(obj, name, value)
            else:
                held[name] = value  # type: ignore[index]
    else:
        obj.__dict__.update(values)  # one C call; like object.__setattr__, skips __setattr__
    return obj


def check_state(klass: type, state: dict[str, Any]) -> None:
    """Raise PayloadError unless :func:`restore` can give ``klass`` every name of ``state``
    (a decoded state: its names are strings).

    Only the state of a mapped class carrying an identity token, and of a class whose
    objects hold nothing but slots, can fail: for any other the check is one dict lookup.
    """
    checked = _CHECKED.get(klass)
    if checked is None:
        checked = _CHECKED[klass] = mapped(klass) is not None or klass.__dictoffset__ == 0
    if not checked:
        return  # an instance dict takes any name
    if mapped(klass) is not None:
        identity = state.get(_IDENTITY)
        if identity is not None and type(identity) not in (str, int):
            raise PayloadError(f"payload identity token {identity!r} is not a str or int")
        return  # restore() takes the column attributes and leaves anything else out
    slots = _slot_names(klass)
    unknown = [name for name in state if name not in slots]
    if unknown:
        raise PayloadError(
            f"payload state names {unknown[:3]!r}, which {klass.__qualname__} objects "
            f"cannot hold (they have only the slots {slots!r})"
        )


#: Per class, whether check_state() has anything to check (a plain dict, like the others).
_CHECKED: dict[type, bool] = {}


# --- the entity codec ----------------------------------------------------------------------

#: The snapshot entry that holds an object's identity token, for the rare mappings that
#: set one (horizontal sharding).  "$" keeps it apart from attribute names.
_IDENTITY = "$identity"


def version_of(obj: object) -> int | None:
    """The integer ``version_id_col`` value of mapped ``obj``, or None when it has none.

    Commits of such a class can be ordered: a cache keeps the entry of the highest version
    and ignores an older commit's write that arrives late.
    """
    columns = mapped(type(obj))
    if columns is None or columns.version is None:
        return None
    value = instance_state(obj).dict.get(columns.version)
    return value if type(value) is int else None


def expired_columns(obj: object) -> tuple[str, ...]:
    """The column attributes of mapped ``obj`` that are expired (empty when none, or unmapped).

    Such an object has no complete committed state to cache until it is refreshed.
    """
    columns = mapped(type(obj))
    if columns is None:
        return ()
    expired = instance_state(obj).expired_attributes
    return tuple(name for name in columns.columns if name in expired) if expired else ()


def refuse_expired(obj: object) -> None:
    """Raise :class:`PayloadError` when mapped ``obj`` has expired column attributes: its
    snapshot would be incomplete or stale, and reading them would refresh it with SQL."""
    expired = expired_columns(obj)
    if expired:
        raise PayloadError(
            f"{type(obj).__qualname__} object has expired column attributes {expired!r} "
            f"(after a commit or session.expire()); refresh it before caching it, or use "
            f"expire_on_commit=False"
        )


def _snapshot_entity(obj: object, columns: Mapped) -> dict[str, Any]:
    refuse_expired(obj)
    state = instance_state(obj)
    loaded = state.dict
    # Columns never loaded (deferred, or left out by the query) are left out here too;
    # restore() expires them so they load on first access once attached.
    snap = {name: loaded[name] for name in columns.columns if name in loaded}
    if not _IMMUTABLE.issuperset(map(type, snap.values())):
        snap = _detached(snap)  # a new dict, but values it shares with obj are copied
    if state.key is not None and state.key[2] is not None:
        snap[_IDENTITY] = state.key[2]
    return snap


def _restore_entity(columns: Mapped, snap: dict[str, Any], owned: bool) -> Any:
    mapper = columns.mapper
    manager = mapper.class_manager
    if snap.keys() == columns.column_set:
        # Every column and nothing else (no identity token): the common case, in bulk.
        # The values become the instance dict itself (what new_instance() does, with a
        # dict of ours instead of an empty one): one dict less per object, which a batch
        # would keep alive, and no copy.
        klass: Any = manager.class_
        obj = klass.__new__(klass)
        values = snap if owned else _detached(snap)
        object.__setattr__(obj, "__dict__", values)  # past a class's own __setattr__
        manager.setup_instance(obj)
        # What a cache holds is the database's state, so the restored object has the
        # identity of its primary key (setting it is all make_transient_to_detached()
        # does for a complete state, at a third of its cost).
        primary_key = columns.primary_key_of(values)
        if None not in primary_key:  # only an object cached without one stays transient
            instance_state(obj).key = mapper.identity_key_from_primary_key(primary_key)
        return obj
    obj = manager.new_instance()
    values = obj.__dict__  # what instance_state(obj).dict returns, one lookup cheaper
    # Some columns were never loaded, or the state carries an identity token.  Only column
    # names are taken: a state an earlier object took over as its instance dict (another
    # key answered by the same entry) holds that object's _sa_instance_state too.
    present = {name: snap[name] for name in columns.columns if name in snap}
    values.update(present if owned else _detached(present))
    primary_key = tuple(map(values.get, columns.primary_attrs))
    if None in primary_key:
        return obj
    if len(present) == len(columns.columns):
        instance_state(obj).key = mapper.identity_key_from_primary_key(
            primary_key, snap.get(_IDENTITY)
        )
    else:
        make_transient_to_detached(obj)  # and the missing columns load on first access
    return obj
