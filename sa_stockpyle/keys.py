"""Keys: ``__stockpyle_keys__`` parsing, lookup normalisation and cache-key strings.

A storable class declares ``__stockpyle_keys__``: a list whose items are an attribute name
(``"id"``) or a tuple of attribute names (``("zap", "bar")``); each item identifies one
object, and the first is the *primary lookup key*.

Cache keys are built from a namespace (prefix, format version, class, schema fingerprint
for mapped classes), the key item and a type-tagged encoding of the values, so ``1``,
``"1"``, ``True`` and ``1.0`` never collide and the same key is produced in every process
and on every Python version (``hash()`` is never used).  Keys that would break a backend's
rules (memcached: 250 bytes, printable ASCII without spaces) are hashed with SHA-256.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Context, Decimal
from types import MemberDescriptorType
from typing import Any, cast
from urllib.parse import quote
from uuid import UUID

import sqlalchemy
from sqlalchemy import Table
from sqlalchemy.orm.attributes import QueryableAttribute

from sa_stockpyle.errors import (
    ConfigurationError,
    InvalidKeyValueError,
    NotStorableError,
    UnknownKeyError,
)

__all__ = [
    "FORMAT_VERSION",
    "MAX_KEY_LENGTH",
    "KeyItem",
    "KeyMaker",
    "KeySpec",
    "class_named",
    "class_token",
    "encode_value",
    "is_null",
    "key_spec",
    "schema_fingerprint",
    "storage_classes",
    "table_names",
]

#: Bumped whenever the layout of cache keys or payloads changes incompatibly.
FORMAT_VERSION = "v1"

#: memcached's limit; Redis has none worth meeting, so one rule serves every backend.
MAX_KEY_LENGTH = 250

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


# --- value encoding ------------------------------------------------------------------------

# Characters a string value keeps as they are; the rest is %-escaped.  Everything
# printable but the separators of the encoding (",", "(", ")") and the escape itself.
_SAFE = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-@!~*'=?&/[]{}<>;^|$#+:"
)
_EXACT_INT_LIMIT = 2**63


def _enc_str(value: str) -> str:
    if _SAFE.issuperset(value):
        return "s" + value
    # surrogatepass: a lone surrogate is a str value like any other, and its bytes are
    # never those of a valid string, so it cannot collide with one.
    return "s" + quote(value.encode("utf-8", "surrogatepass"), safe="")


def _enc_int(value: int) -> str:
    if -_EXACT_INT_LIMIT < value < _EXACT_INT_LIMIT:
        return f"i{value}"
    # str() of a huge int is capped by sys.int_info.str_digits_check_threshold; hex is not.
    return f"I{value:x}"


def _enc_float(value: float) -> str:
    if math.isnan(value):
        raise InvalidKeyValueError("NaN is not equal to itself and cannot identify an object")
    # -0.0 == 0.0 in Python and in SQL, so they name the same object.
    return f"f{value + 0.0!r}"


def _enc_decimal(value: Decimal) -> str:
    if value.is_nan():
        raise InvalidKeyValueError("NaN is not equal to itself and cannot identify an object")
    if not value.is_finite():
        return f"D{value}"
    # Decimal("1.0") == Decimal("1.00"): equal values share a key.  Trailing zeros are
    # stripped by hand: Decimal.normalize() rounds to the context's 28 digits, which
    # would give unequal values one key (and overflows on huge exponents).
    sign, digits, shift = value.as_tuple()
    exponent = cast(int, shift)  # a finite value's is an int
    significant = "".join(map(str, digits)).rstrip("0")
    if not significant:
        return "D0"  # -0 == 0
    exponent += len(digits) - len(significant)
    exact = Decimal((sign, tuple(map(int, significant)), exponent))
    # Fixed-point for every value the default context holds exactly (the keys such values
    # always had); beyond it, the scientific form, whose "E" no fixed-point form holds.
    adjusted = exponent + len(significant) - 1
    held = len(significant) <= _CONTEXT.prec and _CONTEXT.Emin <= adjusted <= _CONTEXT.Emax
    return f"D{exact:f}" if held else f"D{exact}"


#: The context Decimal key values were normalised in before keys were made exactly.
_CONTEXT = Context()


def _enc_datetime(value: dt.datetime) -> str:
    # Equal aware datetimes in different zones name the same instant: key them in UTC.
    if value.tzinfo is not None and value.utcoffset() is not None:
        try:
            utc = value.astimezone(dt.timezone.utc)
        except OverflowError:
            # 0001-01-01 00:30+01:00 is a datetime, but its instant is not one in UTC.
            raise InvalidKeyValueError(
                f"datetime {value!r} names an instant outside datetime's range in UTC, "
                f"and cannot identify an object"
            ) from None
        return "tZ" + utc.replace(tzinfo=None).isoformat()
    return "t" + value.isoformat()


def _enc_enum(value: enum.Enum) -> str:
    cls = type(value)
    return "e" + quote(f"{cls.__module__}.{cls.__qualname__}.{value.name}", safe="")


def _enc_tuple(value: tuple[Any, ...]) -> str:
    return "(" + ",".join(encode_value(item) for item in value) + ")"


_ENCODERS: dict[type, Callable[[Any], str]] = {
    str: _enc_str,
    int: _enc_int,
    bool: lambda v: "T" if v else "F",
    float: _enc_float,
    Decimal: _enc_decimal,
    bytes: lambda v: "b" + v.hex(),
    UUID: lambda v: "u" + v.hex,
    dt.datetime: _enc_datetime,
    dt.date: lambda v: "d" + v.isoformat(),
    dt.time: lambda v: "h" + v.isoformat(),
    tuple: _enc_tuple,
    type(None): lambda v: "n",
}

SUPPORTED_KEY_TYPES = (
    "str, int, bool, float, Decimal, bytes, UUID, datetime, date, time, Enum or a tuple of these"
)


def encode_value(value: object) -> str:
    """Encode one key value as a type-tagged string of printable ASCII without spaces;
    raise for values that are not keys."""
    encoder = _ENCODERS.get(type(value))
    if encoder is not None:
        return encoder(value)
    if isinstance(value, enum.Enum):
        return _enc_enum(value)
    for base, base_encoder in _ENCODERS.items():
        if isinstance(value, base):
            return base_encoder(value)
    raise InvalidKeyValueError(
        f"{type(value).__qualname__} value {value!r} cannot be part of a key; "
        f"supported: {SUPPORTED_KEY_TYPES}"
    )


# --- namespaces ----------------------------------------------------------------------------


def _mapper_of(klass: type) -> sqlalchemy.orm.Mapper[Any] | None:
    mapper: object = sqlalchemy.inspect(klass, raiseerr=False)
    return mapper if isinstance(mapper, sqlalchemy.orm.Mapper) else None


def schema_fingerprint(klass: type) -> str | None:
    """A short digest of the mapped columns (names and types) of ``klass``, or None.

    Part of the cache namespace of mapped classes, so a migration that changes a table
    makes entries cached under the old schema unreachable instead of wrong.
    """
    mapper = _mapper_of(klass)
    if mapper is None:
        return None
    described = sorted(
        f"{getattr(column, 'table', None)}.{column.name}:{column.type!r}"
        for column in mapper.columns
    )
    return hashlib.sha256("\n".join(described).encode()).hexdigest()[:12]


def table_names(klass: type) -> tuple[str, ...]:
    """The names of the tables ``klass`` is mapped to, sorted; empty when it is not mapped.

    Every release of an application that maps a table shares the table's namespace
    generation (see :meth:`KeyMaker.generation_keys`), whatever its schema fingerprint.
    """
    mapper = _mapper_of(klass)
    if mapper is None:
        return ()
    return tuple(sorted({table.name for table in mapper.tables if isinstance(table, Table)}))


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


def _encode_values(spec: KeySpec, values: tuple[Any, ...]) -> str:
    try:
        if len(values) == 1:
            value = values[0]
            # The usual key: an int or a str, encoded without the lookup of its encoder.
            kind = type(value)
            if kind is int:
                return _enc_int(value)
            if kind is str:
                return _enc_str(value)
            return encode_value(value)
        return ",".join([encode_value(value) for value in values])
    except InvalidKeyValueError as exc:
        raise InvalidKeyValueError(f"{exc} (in a key of {spec.describe()})") from None


def _unheld_values(klass: type, item: KeyItem, state: Any) -> tuple[Any, ...] | None:
    """The values of key ``item`` for an entry whose ``state`` lacks some of its attributes:
    a class-level default stands for a missing attribute; ``()`` when they cannot be
    checked (a property computes one); None when an entry of ``klass`` cannot lack them
    (an instance attribute, a slot, a mapped column)."""
    values = []
    for attr in item:
        if attr in state:
            values.append(state[attr])
            continue
        held = inspect.getattr_static(klass, attr, _MISSING)
        if held is _MISSING or isinstance(held, (QueryableAttribute, MemberDescriptorType)):
            # An instance attribute, a slot or a mapped column: every entry holds its key
            # attributes (the store reads them before it snapshots the object).
            return None
        if hasattr(held, "__get__"):
            return ()  # computed: a property, a cached_property, a hybrid
        values.append(held)
    return tuple(values)


_MISSING = object()
_HEX = frozenset("0123456789abcdef")


def _acceptable(key: str) -> bool:
    return len(key) <= MAX_KEY_LENGTH and key.isascii() and key.isprintable() and " " not in key


class KeyMaker:
    """Builds the cache-key strings of one store: ``prefix:version:class~gen:item:values``.

    ``generations`` holds, per class, the namespace generation the store last saw: the
    tokens last seen at its :meth:`generation_keys`, joined with ``.`` (see
    :meth:`set_tokens`); a class without one has keys without the ``~gen`` part.
    """

    def __init__(self, prefix: str = "stockpyle") -> None:
        if not prefix or not _acceptable(prefix) or ":" in prefix or len(prefix) > 64:
            raise InvalidKeyValueError(
                f"cache key prefix {prefix!r} is not usable; expected 1 to 64 printable "
                f"ASCII characters without spaces or ':'"
            )
        self.prefix = prefix
        self._namespace = f"{prefix}:{FORMAT_VERSION}"
        #: The start of a key too long or too odd for a backend, hashed (see _checked).
        self._hashed = f"{self._namespace}:#"
        self.generations: dict[type, str] = {}
        #: The token last seen at each generation key.
        self.tokens: dict[str, str] = {}
        # Per class: the generation its heads were made for, and one head per item.
        self._heads: dict[type, tuple[str | None, tuple[str, ...], bool]] = {}
        self._generation_keys: dict[type, tuple[str, ...]] = {}
        # Per generation key: the classes whose generation it is part of.
        self._sharing: dict[str, set[type]] = {}

    def generation_keys(self, klass: type) -> tuple[str, ...]:
        """The cache keys holding the tokens the namespace generation of ``klass`` is
        made of: one per table of a mapped class, shared by every class mapped to that
        table whatever its schema fingerprint; one of its own for any other class."""
        # Read with every lookup of a shared store: built once per class.
        keys = self._generation_keys.get(klass)
        if keys is None:
            # Table names compared as SQL compares unquoted identifiers: sharing a token
            # with another table costs only misses, missing one would serve stale entries.
            tables = sorted({name.casefold() for name in table_names(klass)})
            names = [f"table:{name}" for name in tables] or [token_of(klass)]
            keys = tuple(self._checked(f"{self._namespace}:gen:{name}") for name in names)
            self._generation_keys[klass] = keys
            for key in keys:
                self._sharing.setdefault(key, set()).add(klass)
        return keys

    def set_tokens(self, tokens: Mapping[str, str]) -> None:
        """Hold ``tokens`` (generation key: token) from now on, and give every class whose
        generation keys all hold a token the generation they make."""
        # The generations first, the tokens last: a write takes the tokens it checks
        # against from ``tokens`` and builds its keys from ``generations``, so a thread
        # that reads in between sees tokens behind its keys (and writes again), never
        # ahead of them (and a tombstone under an old generation would pass the check).
        held = {**self.tokens, **tokens}
        # tuple() copies a set in one step, safe while another thread adds a class to it.
        for klass in {c for key in tokens for c in tuple(self._sharing.get(key, ()))}:
            keys = self._generation_keys[klass]
            parts = [held[key] for key in keys if key in held]
            if len(parts) == len(keys):
                self.generations[klass] = ".".join(parts)
        self.tokens.update(tokens)

    def class_prefix(self, klass: type) -> str:
        """The start shared by the readable keys of ``klass`` in its current generation."""
        generation = self.generations.get(klass)
        token = class_token(klass) + (f"~{generation}" if generation else "")
        return f"{self._namespace}:{token}:"

    def key(self, spec: KeySpec, index: int, values: tuple[Any, ...]) -> str:
        """The cache key of ``spec.klass`` looked up by its item ``index`` = ``values``.

        Raises :class:`InvalidKeyValueError`, naming the class and its keys, when a value
        cannot be part of a key.
        """
        heads, plain = self._heads_of(spec)
        key = heads[index] + _encode_values(spec, values)
        return key if plain and len(key) <= MAX_KEY_LENGTH else self._checked(key)

    def keys_of(self, spec: KeySpec, obj: object) -> tuple[str, ...]:
        """The cache keys of ``obj`` as a ``spec.klass``, one per declared item that holds
        no None, the primary key first (see :meth:`KeySpec.identities`)."""
        heads, plain = self._heads_of(spec)
        keys = []
        for index, values in spec.identities(obj):
            key = heads[index] + _encode_values(spec, values)
            keys.append(key if plain and len(key) <= MAX_KEY_LENGTH else self._checked(key))
        return tuple(keys)

    def agrees(
        self,
        spec: KeySpec,
        location: str,
        listed: tuple[str, ...],
        state: Any,
        alternates: bool = True,
    ) -> bool:
        """Whether an entry found at ``location`` (its primary key) that lists the keys
        ``listed`` and holds ``state`` (attribute name: value) is what it claims to be: the
        key values in its state give ``location``, and (with ``alternates``) the keys it
        lists are those its state gives.

        A corrupt or forged entry under ``id=1`` whose state says ``id=2`` fails this, and
        so does one that lists an alternate key its state does not give.  A key attribute
        missing from ``state`` is taken from a class-level default; one a property
        computes cannot be checked: the entry may list one key of its own for it.
        Without ``alternates`` only the primary key is checked: what a lookup by it needs
        (a lookup by an alternate key checks the rest).
        """
        # On every read of a shared store: the heads once, and no call per item that the
        # usual item (one attribute the state holds) does not need.
        if not listed or listed[0] != location:
            return False
        heads, plain = self._heads_of(spec)
        given = unchecked = 0
        for index, item in enumerate(spec.items if alternates else spec.items[:1]):
            if len(item) == 1 and item[0] in state:
                values: tuple[Any, ...] = (state[item[0]],)
            elif all(attr in state for attr in item):
                values = tuple([state[attr] for attr in item])
            else:
                found = _unheld_values(spec.klass, item, state)
                if found is None:
                    return False
                if not found:
                    unchecked += 1
                    continue
                values = found
            if None in values:  # is_null(): a key holding None identifies nothing
                if index == 0:
                    return False
                continue
            try:
                key = heads[index] + _encode_values(spec, values)
            except InvalidKeyValueError:
                return False
            if not plain or len(key) > MAX_KEY_LENGTH:
                key = self._checked(key)
            if key != location if index == 0 else key not in listed:
                return False
            given += 1
        # Every key listed is one the state gives (a duplicate among them could only
        # stand for a key that cannot be checked).
        return not alternates or len(listed) <= given + unchecked

    def primary_check(self, spec: KeySpec) -> Callable[[str, tuple[str, ...], Any], bool]:
        """``agrees(spec, location, listed, state, alternates=False)`` as a function of
        the last three, for the records of one read: the key heads are looked up once,
        and the usual primary key (one int or str attribute) is encoded inline."""
        heads, plain = self._heads_of(spec)
        item = spec.items[0]

        def general(location: str, listed: tuple[str, ...], state: Any) -> bool:
            return self.agrees(spec, location, listed, state, alternates=False)

        if len(item) != 1 or not plain:
            return general
        name, head = item[0], heads[0]

        def check(location: str, listed: tuple[str, ...], state: Any) -> bool:
            value = state.get(name)
            kind = type(value)
            if kind is int:
                key = head + _enc_int(value)
            elif kind is str:
                key = head + _enc_str(value)
            else:
                return general(location, listed, state)
            if len(key) > MAX_KEY_LENGTH:
                key = self._checked(key)
            return key == location and bool(listed) and listed[0] == location

        return check

    def is_primary(self, spec: KeySpec, key: object) -> bool:
        """Whether ``key`` can be a primary key of ``spec.klass`` in its current generation
        (what a pointer must lead to)."""
        if type(key) is not str:
            return False
        heads, _ = self._heads_of(spec)
        if key.startswith(heads[0]):
            return _acceptable(key)
        digest = key[len(self._hashed) :]
        return key.startswith(self._hashed) and len(digest) == 64 and _HEX.issuperset(digest)

    def keys(self, spec: KeySpec, lookups: Iterable[object]) -> list[str | None]:
        """The cache key of each lookup as a caller wrote it (see :meth:`KeySpec.lookup`);
        None for a lookup holding None, which identifies nothing."""
        heads, plain = self._heads_of(spec)
        keys: list[str | None] = []
        shorthand = len(spec.primary) == 1
        primary = spec.primary[0]
        for lookup in lookups:
            value = lookup
            if shorthand and type(lookup) is dict and len(lookup) == 1:
                value = lookup.get(primary, lookup)  # {"id": 5}, how commits name rows
            # The usual batch is ints or strs for a one-attribute primary key: encode them
            # straight away, without the tuples a normalised lookup costs.
            if shorthand and type(value) is int:
                index, encoded = 0, _enc_int(value)
            elif shorthand and type(value) is str:
                index, encoded = 0, _enc_str(value)
            else:
                index, values = spec.lookup(lookup)
                if is_null(values):
                    keys.append(None)
                    continue
                encoded = _encode_values(spec, values)
            key = heads[index] + encoded
            keys.append(key if plain and len(key) <= MAX_KEY_LENGTH else self._checked(key))
        return keys

    def _heads_of(self, spec: KeySpec) -> tuple[tuple[str, ...], bool]:
        """The start of the keys of each declared item of ``spec.klass``, in its current
        generation (one cache entry per class: a new generation replaces the old), and
        whether they are all usable in keys.

        Every encoded value is printable ASCII without spaces (see :func:`encode_value`),
        so a key that starts with such a head needs only its length checked.
        """
        generation = self.generations.get(spec.klass)
        cached = self._heads.get(spec.klass)
        if cached is None or cached[0] != generation:
            prefix = self.class_prefix(spec.klass)
            heads = tuple(f"{prefix}{'+'.join(item)}:" for item in spec.items)
            cached = (generation, heads, all(map(_acceptable, heads)))
            self._heads[spec.klass] = cached
        return cached[1], cached[2]

    def _checked(self, key: str) -> str:
        if _acceptable(key):
            return key
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        return self._hashed + digest
