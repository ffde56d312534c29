"""What one transaction will write through: the change buffer, and how a flush reads the
mapped objects it changes (:mod:`sa_stockpyle.orm` records them at flush and writes them
at commit)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Mapper
from sqlalchemy.orm.base import NO_VALUE
from sqlalchemy.orm.state import InstanceState

from sa_stockpyle.errors import ConfigurationError
from sa_stockpyle.keys import KeySpec, key_spec
from sa_stockpyle.mapped import mapped

if TYPE_CHECKING:
    from sa_stockpyle.stores.base import Start

__all__ = [
    "Buffer",
    "ClassInfo",
    "Flushed",
    "Identity",
    "class_info",
    "family",
    "fully_loaded",
    "known_keys",
    "old_keys",
]

#: An identity key of the session's identity map: ``(class, primary key, token)``.
Identity = tuple[Any, ...]


@dataclass
class Buffer:
    """What one transaction will write through if it commits.

    Every change is applied here in the order it happened, so what remains is what the
    commit must do: invalidate ``classes``, then remove ``removals``, then store ``puts``
    (a put recorded before a later removal or invalidation of its row is dropped).
    """

    #: identity key -> detached object holding the committed state to store
    puts: dict[Identity, object] = field(default_factory=dict)
    #: (class, lookup items) -> the identity whose entry it removes, if it is one, and the
    #: lookup itself
    removals: dict[
        tuple[type, tuple[tuple[str, Any], ...]], tuple[Identity | None, dict[str, Any]]
    ] = field(default_factory=dict)
    #: classes whose every cached entry must become unreachable
    classes: dict[type, None] = field(default_factory=dict)
    #: the start of its write, built while the COMMIT was on its way (see
    #: :func:`~sa_stockpyle.connections.prepare_during_commit`), or None
    prepared: Start | None = None

    def written(self) -> tuple[list[object], list[tuple[type, dict[str, Any]]]]:
        """The puts and the ``(class, lookup)`` removals a store writes for this buffer."""
        removals = [(klass, lookup) for (klass, _), (_, lookup) in self.removals.items()]
        return list(self.puts.values()), removals

    def remove(self, klass: type, lookup: dict[str, Any], identity: Identity | None) -> None:
        """Remove a key; when it is an object's identity, drop that object's pending put."""
        if identity is not None:
            self.puts.pop(identity, None)
        # Order-free, so one key named twice is one removal (a one-item lookup is sorted).
        items = tuple(lookup.items()) if len(lookup) == 1 else tuple(sorted(lookup.items()))
        self.removals[klass, items] = (identity, lookup)

    def invalidate(self, classes: list[type]) -> None:
        """Invalidate whole classes, dropping their pending puts."""
        self.classes.update(dict.fromkeys(classes))
        self.puts = {i: obj for i, obj in self.puts.items() if type(obj) not in self.classes}

    def merge(self, child: Buffer) -> None:
        """Take over a released savepoint's buffer: its changes come after ours."""
        for (klass, _), (identity, lookup) in child.removals.items():
            self.remove(klass, lookup, identity)
        if child.classes:
            self.invalidate(list(child.classes))
        self.puts.update(child.puts)

    def removals_only(self, primary_of: Callable[[type], tuple[str, ...]]) -> Buffer:
        """This buffer with every put turned into the removal of its row: what is safe to
        write when it is not known whether the puts' transaction committed."""
        buffer = Buffer(removals=dict(self.removals), classes=dict(self.classes))
        for identity, obj in self.puts.items():
            klass = type(obj)
            buffer.remove(klass, dict(zip(primary_of(klass), identity[1], strict=True)), identity)
        return buffer

    def __bool__(self) -> bool:
        return bool(self.puts or self.removals or self.classes)


@dataclass
class Flushed:
    """One object seen at ``after_flush``, finished at ``after_flush_postexec``."""

    # A strong reference: after its flush, an object nobody else holds would otherwise
    # leave the session's weak identity map before we read its state.
    obj: object
    state: InstanceState[Any]
    info: ClassInfo
    deleted: bool
    old_identity: Identity | None
    old_keys: list[dict[str, Any]]


@dataclass(frozen=True)
class ClassInfo:
    """How the plugin reads one mapped, storable class."""

    spec: KeySpec
    mapper: Mapper[Any]
    primary_attrs: tuple[str, ...]  # mapper.primary_key as attribute names, in order
    key_attrs: frozenset[str]  # every attribute named in __stockpyle_keys__
    columns: frozenset[str]  # every column attribute


def class_info(klass: type) -> ClassInfo | None:
    """How the plugin reads ``klass``; None when it declares no ``__stockpyle_keys__``."""
    info = None
    if getattr(klass, "__stockpyle_keys__", None) is not None:
        spec = key_spec(klass)
        facts = mapped(klass)
        if facts is None:
            raise ConfigurationError(f"{klass.__qualname__} is not a mapped class")
        primary = facts.primary_attrs
        if frozenset(primary) not in {frozenset(item) for item in spec.items}:
            raise ConfigurationError(
                f"{spec.describe()}, but its primary key {primary!r} is not one of "
                f"them; attach() removes cached entries by primary key, so declare it"
            )
        info = ClassInfo(
            spec,
            facts.mapper,
            primary,
            frozenset(a for item in spec.items for a in item),
            facts.column_set,
        )
    return info


def old_keys(info: ClassInfo, state: InstanceState[Any]) -> list[dict[str, Any]]:
    """The lookups of declared keys whose values this flush changes, with old values."""
    # committed_state holds the value each changed attribute had when loaded (NO_VALUE
    # when it never was): cheaper than attribute history, which this runs for every row.
    committed = state.committed_state
    if info.key_attrs.isdisjoint(committed):
        return []  # the usual update: no key attribute changed
    current = state.dict
    changed = {
        attr: committed[attr]
        for attr in info.key_attrs & committed.keys()
        if committed[attr] is not NO_VALUE and committed[attr] != current.get(attr)
    }
    if not changed:
        return []
    lookups = []
    for item in info.spec.items:
        if changed.keys() & set(item):
            old = {a: changed[a] if a in changed else current.get(a) for a in item}
            if None not in old.values():
                lookups.append(old)
    return lookups


def known_keys(info: ClassInfo, state: InstanceState[Any]) -> list[dict[str, Any]]:
    """The lookups of every declared key whose values are loaded and not None."""
    loaded = state.dict
    return [
        {a: loaded[a] for a in item}
        for item in info.spec.items
        if all(loaded.get(a) is not None for a in item)
    ]


def fully_loaded(info: ClassInfo, state: InstanceState[Any]) -> bool:
    """Whether every column attribute of the object is loaded (none expired or deferred)."""
    return info.columns <= state.dict.keys()


def family(klass: type) -> list[type]:
    """``klass``, its mapped subclasses and its bases declaring keys: every namespace a
    row of ``klass``'s table may be cached under."""
    family = [base for base in klass.__mro__ if getattr(base, "__stockpyle_keys__", None)]
    pending: list[type] = list(klass.__subclasses__())
    while pending:
        sub = pending.pop()
        family.append(sub)
        pending.extend(sub.__subclasses__())
    return family
