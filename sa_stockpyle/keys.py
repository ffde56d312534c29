"""Keys: ``__stockpyle_keys__`` parsing, lookup normalisation and class namespaces.

A storable class declares ``__stockpyle_keys__``: a list whose items are an attribute name
(``"id"``) or a tuple of attribute names (``("zap", "bar")``); each item identifies one
object, and the first is the *primary lookup key*.

Cache keys are built from a namespace (prefix, format version, class, schema fingerprint
for mapped classes), the key item and a type-tagged encoding of the values: the values'
encoding is :mod:`sa_stockpyle.key_encoding`, the key strings :mod:`sa_stockpyle.cache_keys`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table

from sa_stockpyle.errors import (
    ConfigurationError,
    InvalidKeyValueError,
    NotStorableError,
    UnknownKeyError,
)
from sa_stockpyle.mapped import mapped

__all__ = [
    "KeyItem",
    "KeySpec",
    "class_named",
    "class_token",
    "is_null",
    "key_spec",
    "schema_fingerprint",
    "storage_classes",
    "table_names",
]

#: The attribute names of one declared key, in declaration order.
KeyItem = tuple[str, ...]


@dataclass(frozen=True)
class KeySpec:
    """The parsed ``__stockpyle_keys__`` of one class."""

    klass: type
    items: tuple[KeyItem, ...]
    _index: Mapping[frozenset[str], int]

    @property
    def primary(self) -> KeyItem:
        """The first declared item: the primary lookup key."""
        return self.items[0]

    def describe(self) -> str:
        """Name the class and its declared keys, for error messages."""
        shown = [item[0] if len(item) == 1 else item for item in self.items]
        return f"{self.klass.__qualname__} declares __stockpyle_keys__ = {shown!r}"

    def lookup(self, key: object) -> tuple[int, tuple[Any, ...]]:
        """Normalise a lookup key to ``(item index, values in item order)``.

        ``key`` is a dict whose attribute names equal one declared item (order-free), or
        the shorthand for the primary item: a scalar for a one-attribute primary key, a
        tuple of the same length for a composite one.
        """
        if len(self.primary) == 1 and type(key) in (int, str):
            return 0, (key,)  # the usual lookup, before the costlier checks below
        if type(key) is dict or isinstance(key, Mapping):
            index = self._index.get(frozenset(key))
            if index is None:
                raise UnknownKeyError(
                    f"lookup {dict(key)!r} matches no declared key: {self.describe()}; "
                    f"a lookup names exactly the attributes of one declared key"
                )
            item = self.items[index]
            # One attribute is the usual item; a generator would cost more than the read.
            values = (key[item[0]],) if len(item) == 1 else tuple([key[a] for a in item])
        elif len(self.primary) == 1:
            values = (key,)
            index = 0
        elif isinstance(key, tuple) and len(key) == len(self.primary):
            values = key
            index = 0
        else:
            raise UnknownKeyError(
                f"lookup {key!r} matches no declared key: {self.describe()}; a non-dict "
                f"lookup must be a tuple of {len(self.primary)} values for {self.primary!r}"
            )
        return index, values

    def index_of(self, attrs: frozenset[str]) -> int | None:
        """The index of the declared item naming exactly ``attrs``, or None."""
        return self._index.get(attrs)

    def values_of(self, obj: object, index: int) -> tuple[Any, ...]:
        """Read the values of declared item ``index`` from ``obj``."""
        item = self.items[index]
        try:
            # One attribute is the usual item; a generator would cost more than the read.
            if len(item) == 1:
                return (getattr(obj, item[0]),)
            return tuple([getattr(obj, attr) for attr in item])
        except AttributeError as exc:
            raise InvalidKeyValueError(
                f"{type(obj).__qualname__} object has no key attribute {exc.name!r}: "
                f"{self.describe()}"
            ) from exc

    def identities(self, obj: object) -> list[tuple[int, tuple[Any, ...]]]:
        """``(index, values)`` for every declared item of ``obj``.

        Items with a ``None`` value are left out (see :func:`is_null`): like a SQL unique
        constraint, a missing value identifies nothing.  A ``None`` primary key is an
        error because it would make the object unreachable.
        """
        found = []
        for index in range(len(self.items)):
            values = self.values_of(obj, index)
            if is_null(values):
                if index == 0:
                    raise InvalidKeyValueError(
                        f"{type(obj).__qualname__} object has None in its primary key "
                        f"{self.primary!r}: {self.describe()}"
                    )
                continue
            found.append((index, values))
        return found


# Plain dicts, not WeakKeyDictionary: these lookups sit on every get, and a weak lookup
# costs ten times more.  Classes are long-lived; a dynamically made class stays cached.
_SPECS: dict[type, KeySpec] = {}


def key_spec(klass: object) -> KeySpec:
    """Return the validated :class:`KeySpec` of ``klass`` (cached per class).

    Raises :class:`NotStorableError` when ``klass`` is not a class or its
    ``__stockpyle_keys__`` is missing or malformed.
    """
    if not isinstance(klass, type):
        raise NotStorableError(
            f"expected a class with __stockpyle_keys__, got {type(klass).__qualname__} "
            f"object {klass!r}"
        )
    spec = _SPECS.get(klass)
    if spec is None:
        spec = _parse(klass)
        _SPECS[klass] = spec
    return spec


def _parse(klass: type) -> KeySpec:
    declared = getattr(klass, "__stockpyle_keys__", None)
    expected = (
        "expected a non-empty list of attribute names or tuples of attribute names, "
        "e.g. __stockpyle_keys__ = ['id', ('zap', 'bar')]"
    )
    if declared is None:
        raise NotStorableError(f"{klass.__qualname__} has no __stockpyle_keys__; {expected}")
    if not isinstance(declared, (list, tuple)) or not declared:
        raise NotStorableError(
            f"{klass.__qualname__}.__stockpyle_keys__ is {declared!r}; {expected}"
        )
    if (
        isinstance(declared, tuple)
        and len(declared) > 1
        and all(isinstance(a, str) for a in declared)
    ):
        # ("zap", "bar") reads as one composite key as easily as two single keys.
        raise NotStorableError(
            f"{klass.__qualname__}.__stockpyle_keys__ is the tuple {declared!r}: say "
            f"{list(declared)!r} for {len(declared)} single keys, or {[declared]!r} for "
            f"one composite key"
        )
    items: list[KeyItem] = []
    index: dict[frozenset[str], int] = {}
    for raw in declared:
        item = (raw,) if isinstance(raw, str) else raw
        if (
            not isinstance(item, tuple)
            or not item
            or not all(isinstance(a, str) and a.isidentifier() for a in item)
            or len(set(item)) != len(item)
        ):
            raise NotStorableError(
                f"{klass.__qualname__}.__stockpyle_keys__ item {raw!r} is not an attribute "
                f"name or a tuple of distinct attribute names; {expected}"
            )
        attrs = frozenset(item)
        if attrs in index:
            raise NotStorableError(
                f"{klass.__qualname__}.__stockpyle_keys__ declares {raw!r} twice; {expected}"
            )
        index[attrs] = len(items)
        items.append(item)
    return KeySpec(klass, tuple(items), index)


def storage_classes(klass: type, polymorphic: bool) -> tuple[type, ...]:
    """The classes an object of ``klass`` is stored under.

    Its own class, and with ``polymorphic`` every base class that declares
    ``__stockpyle_keys__`` too, nearest first.
    """
    if not polymorphic:
        return (klass,)
    return tuple(
        base
        for base in klass.__mro__
        if base is klass or getattr(base, "__stockpyle_keys__", None) is not None
    )


def is_null(values: tuple[Any, ...]) -> bool:
    """True when a key holds ``None``: such a key identifies nothing and is never cached."""
    if len(values) == 1:  # the usual key, checked on every lookup
        return values[0] is None
    return any(value is None for value in values)


# --- namespaces ----------------------------------------------------------------------------


def schema_fingerprint(klass: type) -> str | None:
    """A short digest of the mapped columns (names and types) of ``klass``, or None.

    Part of the cache namespace of mapped classes, so a migration that changes a table
    makes entries cached under the old schema unreachable instead of wrong.
    """
    facts = mapped(klass)
    if facts is None:
        return None
    described = sorted(
        f"{getattr(column, 'table', None)}.{column.name}:{column.type!r}"
        for column in facts.mapper.columns
    )
    return hashlib.sha256("\n".join(described).encode()).hexdigest()[:12]


def table_names(klass: type) -> tuple[str, ...]:
    """The names of the tables ``klass`` is mapped to, sorted; empty when it is not mapped.

    Every release of an application that maps a table shares the table's namespace
    generation (see :meth:`KeyMaker.generation_keys`), whatever its schema fingerprint.
    """
    facts = mapped(klass)
    if facts is None:
        return ()
    return tuple(sorted({table.name for table in facts.mapper.tables if isinstance(table, Table)}))


_TOKENS: dict[type, str] = {}  # the classes that claimed their token
_CLASSES: dict[str, type] = {}
_NAMES: dict[type, str] = {}  # every token computed


def token_of(klass: type) -> str:
    """:func:`class_token` of ``klass`` without claiming it: what a payload naming it holds."""
    token = _NAMES.get(klass)
    if token is None:
        token = f"{klass.__module__}.{klass.__qualname__}"
        fingerprint = schema_fingerprint(klass)
        if fingerprint is not None:
            token = f"{token}@{fingerprint}"
        _NAMES[klass] = token
    return token


def class_token(klass: type) -> str:
    """The namespace part naming ``klass``: ``module.qualname`` plus its schema fingerprint.

    Claims it for ``klass``: a second, different class with the same token raises
    :class:`ConfigurationError` (their entries could not be told apart)."""
    token = _TOKENS.get(klass)
    if token is None:
        token = token_of(klass)
        other = _CLASSES.setdefault(token, klass)
        if other is not klass:
            # Two classes in one namespace: a lookup of one would decode the other's state.
            raise ConfigurationError(
                f"{klass!r} and {other!r} are two classes named {token!r}; a shared cache "
                f"could not tell their entries apart.  A class made by a factory function "
                f"needs a __qualname__ of its own (see docs/keys.md)"
            )
        _TOKENS[klass] = token
    return token


def class_named(token: str) -> type | None:
    """The class whose :func:`class_token` is ``token``, if this process has made it."""
    return _CLASSES.get(token)
