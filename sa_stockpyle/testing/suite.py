"""The base conformance suite: the six operations every store speaks
(:class:`StoreConformance`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

from sa_stockpyle.errors import (
    InvalidKeyValueError,
    InvalidLifetimeError,
    NotStorableError,
    StockpyleError,
    UnknownKeyError,
)
from sa_stockpyle.stores.base import BaseStore
from sa_stockpyle.testing.models import (
    Automobile,
    BadDeclaration,
    Car,
    Color,
    Duplicated,
    EmptyDeclaration,
    FakeClock,
    Falsy,
    Foo,
    MissingAttr,
    NoKeys,
    NotAList,
    Pair,
    Truck,
    User,
    rich_values,
)

__all__ = ["StoreConformance"]


class StoreConformance:
    """The contract of :class:`~sa_stockpyle.stores.BaseStore` as tests: mix into a test
    class and define :meth:`make_store`.

    Covers the six operations, misses, batch order and length, alternate and composite
    keys, key value types, snapshots, expiry (on a :class:`FakeClock`), polymorphic
    lookups and typed errors for bad input.  A store that implements the layer protocol
    also passes :class:`~sa_stockpyle.testing.LayerProtocolConformance`.
    """

    #: Whether the store takes ``polymorphic=True`` (every store of this package does).
    supports_polymorphic = True
    #: Whether the store takes ``lifetime_cb`` (every store of this package does).
    supports_expiry = True

    def make_store(self, **options: Any) -> BaseStore:
        """Return a new, empty store built with ``options``."""
        raise NotImplementedError

    @pytest.fixture(autouse=True)
    def _stores(self) -> Iterator[None]:
        self._made: list[BaseStore] = []
        self.clock = FakeClock()
        yield
        for store in self._made:
            store.close()

    def store(self, **options: Any) -> BaseStore:
        """A store from :meth:`make_store`, with the fake clock; closed after the test."""
        options.setdefault("clock", self.clock)
        store = self.make_store(**options)
        self._made.append(store)
        return store

    def _expiring(self, lifetime: Any) -> BaseStore:
        if not self.supports_expiry:
            pytest.skip("this store does not support expiry")  # pragma: no cover
        return self.store(lifetime_cb=lambda obj: lifetime)

    # -- the six operations -----------------------------------------------------------

    def test_put_get_by_primary_key(self) -> None:
        store = self.store()
        foo = Foo(key="k1", zap=2, bar=3)
        store.put(foo)
        assert store.get(Foo, {"key": "k1"}) == foo
        assert store.get(Foo, "k1") == foo

    def test_missing_is_none(self) -> None:
        store = self.store()
        assert store.get(Foo, {"key": "absent"}) is None
        assert store.get(Foo, {"zap": 1, "bar": 1}) is None

    def test_alternate_tuple_key_is_order_free(self) -> None:
        store = self.store()
        foo = Foo(key=1, zap=2, bar=3)
        store.put(foo)
        assert store.get(Foo, {"zap": 2, "bar": 3}) == foo
        assert store.get(Foo, {"bar": 3, "zap": 2}) == foo
        assert store.get(Foo, {"zap": 3, "bar": 2}) is None

    def test_composite_primary_tuple_shorthand(self) -> None:
        store = self.store()
        pair = Pair(a="x", b=7, payload="p")
        store.put(pair)
        assert store.get(Pair, ("x", 7)) == pair
        assert store.get(Pair, {"b": 7, "a": "x"}) == pair
        assert store.get(Pair, ("x", 8)) is None

    def test_batch_put_get_keeps_order_and_length(self) -> None:
        store = self.store()
        foos = [Foo(key=f"k{i}", zap=i, bar=-i) for i in range(5)]
        store.batch_put(foos)
        keys: list[object] = [
            {"key": "k3"},
            {"key": "nope"},
            {"zap": 1, "bar": -1},
            "k3",
            {"key": "k0"},
        ]
        assert store.batch_get(Foo, keys) == [foos[3], None, foos[1], foos[3], foos[0]]
        assert store.batch_get(Foo, []) == []
        assert store.batch_get(Foo, iter(["k4"])) == [foos[4]]

    def test_delete_and_batch_delete(self) -> None:
        store = self.store()
        foos = [Foo(key=i, zap=i, bar=i) for i in range(4)]
        store.batch_put(foos)
        store.delete(foos[0])
        assert store.get(Foo, 0) is None
        assert store.get(Foo, {"zap": 0, "bar": 0}) is None
        store.batch_delete(foos[1:3])
        assert store.batch_get(Foo, [0, 1, 2, 3]) == [None, None, None, foos[3]]

    def test_deleting_absent_is_not_an_error(self) -> None:
        store = self.store()
        kept = Foo(key="kept", zap=9, bar=9)
        store.put(kept)
        store.delete(Foo(key="ghost", zap=0, bar=0))
        store.batch_delete([Foo(key="g1", zap=1, bar=1), Foo(key="g2", zap=2, bar=2)])
        store.batch_delete([])
        assert store.batch_get(Foo, ["ghost", "g1", "kept"]) == [None, None, kept]
        assert store.get(Foo, {"zap": 9, "bar": 9}) == kept  # nothing else was touched

    def test_put_replaces(self) -> None:
        store = self.store()
        store.put(Foo(key=1, zap=1, bar=1, note="old"))
        newer = Foo(key=1, zap=1, bar=1, note="new")
        store.put(newer)
        assert store.get(Foo, 1) == newer
        assert store.get(Foo, {"zap": 1, "bar": 1}) == newer

    def test_moved_alternate_key_no_longer_answers(self) -> None:
        store = self.store()
        foo = Foo(key=1, zap=2, bar=3)
        store.put(foo)
        foo.zap = 20
        store.put(foo)
        assert store.get(Foo, {"zap": 2, "bar": 3}) is None
        assert store.get(Foo, {"zap": 20, "bar": 3}) == foo

    def test_falsy_objects_are_objects(self) -> None:
        store = self.store()
        falsy = Falsy(key=0)
        store.put(falsy)
        got = store.get(Falsy, 0)
        assert got is not None
        assert got == falsy
        assert store.batch_get(Falsy, [0, 1]) == [falsy, None]

    def test_returned_objects_are_snapshots(self) -> None:
        store = self.store()
        foo = Foo(key=1, zap=1, bar=1, items=[1, 2], doc={"a": 1})
        store.put(foo)
        foo.items.append(3)
        foo.doc["a"] = 2
        first = store.get(Foo, 1)
        assert first is not None
        assert first.items == [1, 2]
        assert first.doc == {"a": 1}
        first.items.append(99)
        first.note = "mutated"
        second = store.get(Foo, 1)
        assert second is not first
        assert second == Foo(key=1, zap=1, bar=1, items=[1, 2], doc={"a": 1})

    def test_one_object_asked_twice_in_a_batch_comes_back_twice_unshared(self) -> None:
        store = self.store()
        store.put(Foo(key=1, zap=2, bar=3, items=[1], doc={"a": 1}))
        by_key, again, by_alternate = store.batch_get(Foo, [1, 1, {"zap": 2, "bar": 3}])
        assert by_key is not None
        assert again is not None
        assert by_alternate is not None
        assert len({id(by_key), id(again), id(by_alternate)}) == 3
        by_key.items.append(2)
        by_key.note = "mutated"
        assert again == by_alternate == Foo(key=1, zap=2, bar=3, items=[1], doc={"a": 1})
        # Twice by one key, and once by each key: a batch of two, shared neither way.
        for lookups in ([1, 1], [1, {"zap": 2, "bar": 3}]):
            first, second = store.batch_get(Foo, lookups)
            assert first is not None
            assert second is not None
            first.items.append(2)
            first.doc["a"] = 2
            assert second == Foo(key=1, zap=2, bar=3, items=[1], doc={"a": 1})

    def test_values_round_trip_exactly(self) -> None:
        store = self.store()
        values = rich_values()
        store.put(Foo(key="rich", zap=0, bar=0, **values))
        got = store.get(Foo, "rich")
        assert got is not None
        for name, value in values.items():
            assert getattr(got, name) == value, name
            assert type(getattr(got, name)) is type(value), name

    # -- keys -------------------------------------------------------------------------

    def test_key_values_are_type_stable(self) -> None:
        store = self.store()
        objs = [
            Foo(key=key, zap=0, bar=n) for n, key in enumerate([1, "1", True, 1.0, b"1", (1,)])
        ]
        store.batch_put(objs)
        assert store.batch_get(Foo, [1, "1", True, 1.0, b"1", (1,)]) == objs

    def test_equal_values_share_a_key(self) -> None:
        store = self.store()
        when = dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone.utc)
        foo = Foo(key=when, zap=0.0, bar=Decimal("1.0"))
        store.put(foo)
        other_zone = when.astimezone(dt.timezone(dt.timedelta(hours=-7)))
        assert store.get(Foo, other_zone) == foo
        assert store.get(Foo, {"zap": -0.0, "bar": Decimal("1.000")}) == foo

    def test_long_and_odd_keys(self) -> None:
        store = self.store()
        odd = [
            "x" * 5000,
            "with space",
            "ctrl\x00\n\r",
            "ünïcödé ✓",
            "colon:and/slash%",
            "",
            10**100,
            -(2**70),
        ]
        objs = [Foo(key=key, zap=i, bar="odd") for i, key in enumerate(odd)]
        store.batch_put(objs)
        assert store.batch_get(Foo, odd) == objs
        assert store.get(Foo, "x" * 4999) is None

    def test_key_value_types(self) -> None:
        store = self.store()
        keys = [
            dt.date(2020, 1, 1),
            dt.datetime(2020, 1, 1),
            dt.time(1, 2),
            UUID(int=5),
            Decimal("2.5"),
            Color.RED,
            ("a", (1, 2)),
            False,
        ]
        objs = [Foo(key=key, zap=i, bar="types") for i, key in enumerate(keys)]
        store.batch_put(objs)
        assert store.batch_get(Foo, keys) == objs

    def test_none_alternate_key_identifies_nothing(self) -> None:
        store = self.store()
        first, second = User(id=1, email=None), User(id=2, email=None)
        store.batch_put([first, second])
        assert store.get(User, 1) == first
        assert store.get(User, {"email": None}) is None
        assert store.batch_get(User, [{"email": None}, 2]) == [None, second]

    # -- bad input: a typed error, and nothing changes --------------------------------

    def _assert_unchanged(self, store: BaseStore, sentinel: Foo) -> None:
        assert store.get(Foo, sentinel.key) == sentinel

    def _bad_calls(self) -> list[tuple[type[StockpyleError], Any, str]]:
        good = Foo(key="new", zap=9, bar=9)
        return [
            (NotStorableError, lambda s: s.get(NoKeys, 1), "NoKeys"),
            (NotStorableError, lambda s: s.get("Foo", 1), "expected a class"),
            (NotStorableError, lambda s: s.put(NoKeys()), "NoKeys"),
            (NotStorableError, lambda s: s.batch_put([good, NoKeys()]), "NoKeys"),
            (NotStorableError, lambda s: s.put(BadDeclaration()), "('a', 3)"),
            (NotStorableError, lambda s: s.get(Duplicated, 1), "twice"),
            (NotStorableError, lambda s: s.get(EmptyDeclaration, 1), "non-empty"),
            (NotStorableError, lambda s: s.get(NotAList, 1), "NotAList"),
            (UnknownKeyError, lambda s: s.get(Foo, {"nope": 1}), "('zap', 'bar')"),
            (UnknownKeyError, lambda s: s.get(Foo, {"zap": 1}), "Foo"),
            (UnknownKeyError, lambda s: s.get(Pair, ("x",)), "Pair"),
            (UnknownKeyError, lambda s: s.get(Pair, "x"), "Pair"),
            (UnknownKeyError, lambda s: s.batch_get(Foo, ["ok", {"bad": 1}]), "Foo"),
            (InvalidKeyValueError, lambda s: s.get(Foo, ["unhashable"]), "list"),
            (InvalidKeyValueError, lambda s: s.get(Foo, {"key": {}}), "dict"),
            (InvalidKeyValueError, lambda s: s.get(Foo, object()), "object"),
            (InvalidKeyValueError, lambda s: s.get(Foo, float("nan")), "NaN"),
            (InvalidKeyValueError, lambda s: s.put(MissingAttr()), "email"),
            (InvalidKeyValueError, lambda s: s.put(Foo(key=[1], zap=1, bar=1)), "list"),
            (InvalidKeyValueError, lambda s: s.batch_put([good, Foo(key=None)]), "None"),
            (InvalidKeyValueError, lambda s: s.delete(Foo(key={1}, zap=1, bar=1)), "set"),
            (InvalidKeyValueError, lambda s: s.batch_delete([good, Foo(zap=1)]), "key"),
        ]

    def test_bad_input_raises_typed_errors_and_changes_nothing(self) -> None:
        store = self.store()
        sentinel = Foo(key="sentinel", zap=0, bar=0)
        store.put(sentinel)
        for error, call, named in self._bad_calls():
            with pytest.raises(error) as info:
                call(store)
            assert named in str(info.value), (str(info.value), named)
            assert isinstance(info.value, StockpyleError)
            self._assert_unchanged(store, sentinel)
            assert store.get(Foo, "new") is None

    # -- expiry -----------------------------------------------------------------------

    @pytest.mark.parametrize(
        "lifetime",
        [20, dt.timedelta(seconds=20)],
        ids=["int", "timedelta"],
    )
    def test_relative_lifetime(self, lifetime: Any) -> None:
        store = self._expiring(lifetime)
        foo = Foo(key=1, zap=1, bar=1)
        store.put(foo)
        self.clock.advance(19)
        assert store.get(Foo, 1) == foo
        assert store.get(Foo, {"zap": 1, "bar": 1}) == foo
        self.clock.advance(1)
        assert store.get(Foo, 1) is None
        assert store.get(Foo, {"zap": 1, "bar": 1}) is None

    def test_absolute_lifetime(self) -> None:
        at = dt.datetime.fromtimestamp(self.clock.now + 300, tz=dt.timezone.utc)
        store = self._expiring(at)
        foo = Foo(key=1, zap=1, bar=1)
        store.put(foo)
        self.clock.advance(299)
        assert store.get(Foo, 1) == foo
        self.clock.advance(1)
        assert store.get(Foo, 1) is None

    def test_no_lifetime_never_expires(self) -> None:
        store = self._expiring(None)
        store.put(Foo(key=1, zap=1, bar=1))
        self.clock.advance(10 * 365 * 86400)
        assert store.get(Foo, 1) == Foo(key=1, zap=1, bar=1)
        assert store.get(Foo, {"zap": 1, "bar": 1}) == Foo(key=1, zap=1, bar=1)

    def test_lifetime_per_object(self) -> None:
        if not self.supports_expiry:
            pytest.skip("this store does not support expiry")  # pragma: no cover
        store = self.store(lifetime_cb=lambda obj: 5 if obj.key == "short" else 500)
        store.batch_put([Foo(key="short", zap=1, bar=1), Foo(key="long", zap=2, bar=2)])
        self.clock.advance(10)
        assert store.batch_get(Foo, ["short", "long"]) == [None, Foo(key="long", zap=2, bar=2)]
        assert store.get(Foo, {"zap": 1, "bar": 1}) is None
        self.clock.advance(489)
        assert store.get(Foo, "long") == Foo(key="long", zap=2, bar=2)
        self.clock.advance(1)
        assert store.get(Foo, "long") is None

    @pytest.mark.parametrize("lifetime", [0, -5, "10", 2.5, True, dt.timedelta(0)])
    def test_bad_lifetime_raises_and_stores_nothing(self, lifetime: Any) -> None:
        store = self._expiring(lifetime)
        with pytest.raises(InvalidLifetimeError, match="lifetime"):
            store.put(Foo(key=1, zap=1, bar=1))
        assert store.get(Foo, 1) is None

    # -- polymorphism -----------------------------------------------------------------

    def test_polymorphic_lookup_by_base_class(self) -> None:
        if not self.supports_polymorphic:
            pytest.skip("this store is not polymorphic")  # pragma: no cover
        store = self.store(polymorphic=True)
        car = Car(license_plate="1234 XYZ")
        store.put(car)
        as_auto = store.get(Automobile, {"license_plate": "1234 XYZ"})
        assert type(as_auto) is Car
        assert as_auto == car == store.get(Car, {"license_plate": "1234 XYZ"})
        assert store.get(Truck, "1234 XYZ") is None
        store.delete(car)
        assert store.get(Automobile, "1234 XYZ") is None
        assert store.get(Car, "1234 XYZ") is None

    def test_not_polymorphic_by_default(self) -> None:
        store = self.store()
        store.put(Car(license_plate="ABC"))
        assert store.get(Automobile, "ABC") is None
        assert store.get(Car, "ABC") == Car(license_plate="ABC")
