"""Cache-key strings: :class:`KeyMaker` builds and checks the keys of one store.

A key is a namespace (prefix, format version, class token with its schema fingerprint,
namespace generation), the key item and the encoded values (:mod:`sa_stockpyle.key_encoding`).
Keys that would break a backend's rules (memcached: 250 bytes, printable ASCII without
spaces) are hashed with SHA-256.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from types import MemberDescriptorType
from typing import Any

from sqlalchemy.orm.attributes import QueryableAttribute

from sa_stockpyle.errors import InvalidKeyValueError
from sa_stockpyle.key_encoding import encode_int, encode_str, encode_value
from sa_stockpyle.keys import KeyItem, KeySpec, class_token, is_null, table_names, token_of
from sa_stockpyle.mapped import mapped

__all__ = ["FORMAT_VERSION", "MAX_KEY_LENGTH", "KeyMaker"]

#: Bumped whenever the layout of cache keys or payloads changes incompatibly.
FORMAT_VERSION = "v1"

#: memcached's limit; Redis has none worth meeting, so one rule serves every backend.
MAX_KEY_LENGTH = 250


def _encode_values(spec: KeySpec, values: tuple[Any, ...]) -> str:
    try:
        if len(values) == 1:
            value = values[0]
            # The usual key: an int or a str, encoded without the lookup of its encoder.
            kind = type(value)
            if kind is int:
                return encode_int(value)
            if kind is str:
                return encode_str(value)
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
        # Per class: the heads its keys_maker was made for, and the function.
        self._makers: dict[type, tuple[tuple[str, ...], Callable[[object], tuple[str, ...]]]] = {}
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

    def keys_maker(self, spec: KeySpec) -> Callable[[object], tuple[str, ...]]:
        """:meth:`keys_of` as a function of the object, for the objects of one batch: the
        key heads are looked up once, and the usual items (one attribute holding an int or
        a str) are encoded inline; any other object takes :meth:`keys_of` whole."""
        heads, plain = self._heads_of(spec)
        made = self._makers.get(spec.klass)
        if made is not None and made[0] is heads:
            return made[1]  # made for these heads (a new generation makes new ones)
        maker = self._keys_maker(spec, heads, plain)
        self._makers[spec.klass] = (heads, maker)
        return maker

    def _keys_maker(
        self, spec: KeySpec, heads: tuple[str, ...], plain: bool
    ) -> Callable[[object], tuple[str, ...]]:
        if not plain or any(len(item) != 1 for item in spec.items):
            return lambda obj: self.keys_of(spec, obj)
        named = tuple(zip([item[0] for item in spec.items], heads, strict=True))
        # Mapped column attributes are read from the instance dict, where their descriptor
        # would read a loaded one (one not loaded takes keys_of, which loads it).
        columns = mapped(spec.klass)
        direct = columns is not None and all(name in columns.column_set for name, _ in named)

        def keys_of(obj: object) -> tuple[str, ...]:
            values = obj.__dict__ if direct else None
            keys = []
            for name, head in named:
                value = values.get(name) if values is not None else getattr(obj, name, None)
                key = self._plain_key(head, value)
                if key is None:
                    return self.keys_of(spec, obj)  # None, a missing attribute, ...
                keys.append(key)
            return tuple(keys)

        return keys_of

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
            key = self._plain_key(head, state.get(name))
            if key is None:
                return general(location, listed, state)
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
                index, encoded = 0, encode_int(value)
            elif shorthand and type(value) is str:
                index, encoded = 0, encode_str(value)
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

    def _plain_key(self, head: str, value: Any) -> str | None:
        """The key of ``value`` after the usable ``head`` when it is an int or a str,
        encoded inline (the usual key); None for any other value."""
        kind = type(value)
        if kind is int:
            key = head + encode_int(value)
        elif kind is str:
            key = head + encode_str(value)
        else:
            return None
        return key if len(key) <= MAX_KEY_LENGTH else self._checked(key)

    def _checked(self, key: str) -> str:
        if _acceptable(key):
            return key
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        return self._hashed + digest
