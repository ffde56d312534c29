"""The layer-protocol conformance suite (:class:`LayerProtocolConformance`), opt-in: for
stores that take part in a chain's race-safe fills and a commit's conditional writes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from sa_stockpyle.stores.base import BaseStore
from sa_stockpyle.testing.models import Automobile, Car, Foo, Pair, User, Versioned
from sa_stockpyle.testing.suite import StoreConformance

__all__ = ["LayerProtocolConformance"]


def _name(obj: object) -> object:
    return getattr(obj, "name", None)


class LayerProtocolConformance(StoreConformance):
    """The base suite, and the promises of the layer protocol: a removal leaves a
    tombstone, an unversioned commit never overwrites, a versioned one only an older
    version, a fill needs its lease (:meth:`~sa_stockpyle.stores.BaseStore.reserve`,
    :meth:`~sa_stockpyle.stores.BaseStore.fill`), and ``invalidate_class`` empties a
    class.  Every store of this package passes it; a store built on
    :class:`~sa_stockpyle.stores.BaseKeyValueStore` does by implementing its primitives.
    """

    #: Whether the store compares a tombstone's time with a reader's lease (one clock:
    #: the process's, or the server's); memcached has no server clock to compare with.
    compares_tombstone_times = True

    def test_invalidate_class(self) -> None:
        store = self.store(polymorphic=True)
        foo, pair, car = Foo(key=1, zap=1, bar=1), Pair(a="a", b=1), Car(license_plate="P")
        store.batch_put([foo, pair, car])
        store.invalidate_class(Foo)
        store.invalidate_class(Automobile)
        assert store.get(Foo, 1) is None
        assert store.get(Foo, {"zap": 1, "bar": 1}) is None
        assert store.get(Automobile, "P") is None
        assert store.get(Car, "P") == car  # its own class was not invalidated
        assert store.get(Pair, ("a", 1)) == pair
        store.put(foo)
        assert store.get(Foo, {"zap": 1, "bar": 1}) == foo

    # -- commits and race-safe fills ----------------------------------------------------

    def test_write_committed_removes_and_adds(self) -> None:
        store = self.store()
        old = Foo(key=1, zap=1, bar=1)
        gone = Foo(key=2, zap=2, bar=2)
        store.batch_put([old, gone])
        new = Foo(key=3, zap=3, bar=3)
        store.write_committed([new], [(Foo, {"zap": 1, "bar": 1}), (Foo, {"key": 2})])
        assert store.get(Foo, 3) == new
        assert store.get(Foo, {"zap": 3, "bar": 3}) == new
        assert store.get(Foo, {"zap": 1, "bar": 1}) is None
        assert store.get(Foo, 2) is None
        assert store.get(Foo, {"zap": 2, "bar": 2}) is None
        # An unversioned put never overwrites: it cannot tell whose commit is newer.
        store.write_committed([Foo(key=1, zap=1, bar=9)], [])
        assert store.get(Foo, 1) == old
        # A removal leaves a tombstone that a late put of the old state cannot pass.
        store.write_committed([gone], [])
        assert store.get(Foo, 2) is None

    def test_versioned_commits_keep_the_highest_version(self) -> None:
        store = self.store()
        store.write_committed([Versioned(id=1, name="v3", version=3)], [])
        assert _name(store.get(Versioned, 1)) == "v3"
        store.write_committed([Versioned(id=1, name="v2", version=2)], [])
        assert _name(store.get(Versioned, 1)) == "v3"
        store.write_committed([Versioned(id=1, name="v4", version=4)], [])
        assert _name(store.get(Versioned, 1)) == "v4"
        store.write_committed([], [(Versioned, {"id": 1})])
        store.write_committed([Versioned(id=1, name="v5", version=5)], [])
        assert store.get(Versioned, 1) is None  # a tombstone's removal may be newer

    def test_a_fill_needs_its_lease(self) -> None:
        store = self.store()
        foo = Foo(key=1, zap=1, bar=1)
        claim = store.reserve(Foo, [1])
        assert claim.granted == [True]
        store.write_committed([], [(Foo, {"key": 1})])  # a commit lands meanwhile
        store.fill(claim, [foo])
        assert store.get(Foo, 1) is None
        claim = store.reserve(Foo, [1])
        assert claim.granted == [True]
        store.fill(claim, [foo])
        assert store.get(Foo, 1) == foo
        assert store.get(Foo, {"zap": 1, "bar": 1}) == foo

    def test_a_versioned_commit_voids_a_lease(self) -> None:
        store = self.store()
        claim = store.reserve(Versioned, [1])
        store.write_committed([Versioned(id=1, name="new", version=2)], [])
        store.fill(claim, [Versioned(id=1, name="old", version=1)])
        assert store.get(Versioned, 1) is None

    def test_a_second_reader_waits_for_the_first(self) -> None:
        store = self.store()
        first = store.reserve(Foo, [1, 2])
        second = store.reserve(Foo, [1, 3])
        assert first.granted == [True, True]
        assert second.granted == [False, True]
        assert second.busy == [True, False]
        third = store.reserve(Foo, [4, 1])  # the busy key after a free one
        assert (third.granted, third.busy) == ([True, False], [False, True])
        store.fill(first, [Foo(key=1, zap=1, bar=1), None])
        assert store.get(Foo, 1) == Foo(key=1, zap=1, bar=1)
        # A lease that found nothing is given back: the next reader may fill.
        assert store.reserve(Foo, [2]).granted == [True]

    def test_an_object_found_by_alternate_key_is_added_only_where_nothing_is(self) -> None:
        store = self.store()
        foo = Foo(key=1, zap=1, bar=1)
        claim = store.reserve(Foo, [{"zap": 1, "bar": 1}])
        store.write_committed([], [(Foo, {"key": 1})])  # its primary key was not leased
        store.fill(claim, [foo])
        assert store.get(Foo, 1) is None
        assert store.get(Foo, {"zap": 1, "bar": 1}) is None
        claim = store.reserve(Foo, [{"zap": 2, "bar": 2}])
        other = Foo(key=2, zap=2, bar=2)
        store.fill(claim, [other])
        assert store.get(Foo, {"zap": 2, "bar": 2}) == other
        assert store.get(Foo, 2) == other

    def test_a_tombstone_older_than_the_claim_is_refilled_by_alternate_key(self) -> None:
        store = self.store()
        foo = Foo(key=1, zap=1, bar=1)
        store.write_committed([], [(Foo, {"key": 1})])  # a commit before the reader came
        self.clock.advance(1)
        claim = store.reserve(Foo, [{"zap": 1, "bar": 1}])
        store.fill(claim, [foo])
        expected = foo if self.compares_tombstone_times else None
        assert store.get(Foo, 1) == expected
        assert store.get(Foo, {"zap": 1, "bar": 1}) == expected

    def test_an_alternate_key_given_up_and_taken_by_another_object_points_to_it(self) -> None:
        store = self.store()
        store.write_committed([User(id=1, email="x@example.com")], [])
        # The first gives the address up (its old key removed), then another takes it.
        store.write_committed([], [(User, {"id": 1}), (User, {"email": "x@example.com"})])
        store.write_committed([User(id=2, email="x@example.com")], [])
        assert store.get(User, {"email": "x@example.com"}) == User(id=2, email="x@example.com")

    def test_a_fill_after_the_class_was_invalidated_writes_nothing(self) -> None:
        store = self.store()
        claim = store.reserve(Foo, [1, {"zap": 2, "bar": 2}])
        store.invalidate_class(Foo)  # a bulk statement changed rows meanwhile
        store.fill(claim, [Foo(key=1, zap=1, bar=1), Foo(key=2, zap=2, bar=2)])
        assert store.batch_get(Foo, [1, 2, {"zap": 2, "bar": 2}]) == [None, None, None]

    def test_a_filled_entry_expires_with_its_lifetime(self) -> None:
        store = self._expiring(20)
        foo, other = Foo(key=1, zap=1, bar=1), Foo(key=2, zap=2, bar=2)
        store.fill(store.reserve(Foo, [1]), [foo])
        store.fill(store.reserve(Foo, [{"zap": 2, "bar": 2}]), [other])  # added by key 2
        self.clock.advance(19)
        assert store.batch_get(Foo, [1, {"zap": 1, "bar": 1}]) == [foo, foo]
        assert store.batch_get(Foo, [2, {"zap": 2, "bar": 2}]) == [other, other]
        self.clock.advance(1)
        assert store.batch_get(Foo, [1, {"zap": 1, "bar": 1}]) == [None, None]
        assert store.batch_get(Foo, [2, {"zap": 2, "bar": 2}]) == [None, None]

    def _ending_now(self, ends: Callable[[Any], bool]) -> BaseStore:
        """A store whose objects for which ``ends`` holds expire at this very instant."""
        if not self.supports_expiry:
            pytest.skip("this store does not support expiry")  # pragma: no cover
        now = dt.datetime.fromtimestamp(self.clock.now, tz=dt.timezone.utc)
        return self.store(lifetime_cb=lambda obj: now if ends(obj) else None)

    def test_a_versioned_commit_that_has_expired_already_removes_the_older_version(
        self,
    ) -> None:
        store = self._ending_now(lambda obj: obj.name == "v2")
        store.write_committed([Versioned(id=1, name="v1", version=1)], [])
        store.write_committed([Versioned(id=1, name="v2", version=2)], [])
        assert store.get(Versioned, 1) is None

    def test_a_fill_that_has_expired_already_stores_nothing_and_gives_its_lease_back(
        self,
    ) -> None:
        store = self._ending_now(lambda obj: obj.key == 1)
        # The alternate key was 2's, and moved to 1 (the database says so), whose fill
        # has expired by the time it is written: neither object may answer it.
        store.write_committed([Foo(key=2, zap=1, bar=1)], [])
        store.fill(store.reserve(Foo, [1]), [Foo(key=1, zap=1, bar=1)])
        assert store.batch_get(Foo, [1, {"zap": 1, "bar": 1}]) == [None, None]
        assert store.reserve(Foo, [1]).granted == [True]

    def test_a_polymorphic_fill_by_base_class_stores_the_subclass(self) -> None:
        if not self.supports_polymorphic:
            pytest.skip("this store is not polymorphic")  # pragma: no cover
        store = self.store(polymorphic=True)  # new: no class of the hierarchy used yet
        car = Car(license_plate="1234 XYZ")
        store.fill(store.reserve(Automobile, ["1234 XYZ"]), [car])
        assert store.get(Automobile, "1234 XYZ") == car
        assert store.get(Car, "1234 XYZ") == car

    def test_a_polymorphic_commit_removal_reaches_the_base_class_keys(self) -> None:
        if not self.supports_polymorphic:
            pytest.skip("this store is not polymorphic")  # pragma: no cover
        store = self.store(polymorphic=True)
        store.put(Car(license_plate="1234 XYZ"))
        # A key that holds None names nothing (an unset nullable key): the rest still go.
        removals: list[tuple[type, dict[str, Any]]] = [
            (Car, {"license_plate": None}),
            (Car, {"license_plate": "1234 XYZ"}),
        ]
        store.write_committed([], removals)
        assert store.get(Automobile, "1234 XYZ") is None
        assert store.get(Car, "1234 XYZ") is None
