"""The stockpyle 0.0.7 quickstart, run as written except for the import lines.

Three calls of the original had evident typos and run here in their corrected form:
``store.get({'key': 1})`` and ``store.batch_get([...])`` name their class, as every other
lookup in the seed does (``store.get(Foo, {'key': 1})``), and ``store.put()`` is given the
car.  One deliberate difference: the seed's memory store handed back the very instance it
was given, so its ``==`` checks were identity checks; sa_stockpyle hands out snapshots
(a caller mutating a result never changes the cache), so the example classes compare by
value with an ``__eq__``.
"""

# The seed's code is kept as written, including its style.
# ruff: noqa: RET503, RET505, PLW1641

from __future__ import annotations

from sa_stockpyle.stores import ProcessMemoryStore, ShoveStore


def basics() -> None:
    store = ProcessMemoryStore()

    class Foo:
        __stockpyle_keys__ = ["key"]

        def __init__(self, key):
            self.key = key

        def __eq__(self, other):  # the seed compared objects by value
            return vars(self) == vars(other)

    f = Foo("my_unique_key_123")
    store.put(f)

    f = store.get(Foo, {"key": "my_unique_key_123"})

    store.delete(f)

    f1 = Foo("my_key_1")
    f2 = Foo("my_key_2")
    f3 = Foo("my_key_3")

    store.batch_put([f1, f2, f3])

    o1, o2, o3 = store.batch_get(
        Foo,
        [
            {"key": "my_key_1"},
            {"key": "my_key_2"},
            {"key": "my_key_3"},
        ],
    )

    assert (f1, f2, f3) == (o1, o2, o3)

    o1, o2, o3 = store.batch_get(
        Foo,
        [
            {"key": "my_key_1"},
            {"key": "nonexistent_key"},
            {"key": "my_key_3"},
        ],
    )

    assert o2 is None

    store.batch_delete([f1, f2, f3])
    print("basics: put, get, delete, batch_put, batch_get, batch_delete")


def alternate_keys() -> None:
    store = ProcessMemoryStore()

    class Foo:
        __stockpyle_keys__ = ["key", ("zap", "bar")]

        def __init__(self, key, zap, bar):
            self.key = key
            self.zap = zap
            self.bar = bar

        def __eq__(self, other):
            return vars(self) == vars(other)

    f = Foo(key=1, zap=2, bar=3)

    store.put(f)

    o1 = store.get(Foo, {"key": 1})
    o2 = store.get(Foo, {"zap": 2, "bar": 3})

    assert f == o1 == o2
    print("alternate keys: found by 'key' and by ('zap', 'bar')")


def expiration() -> None:
    class Foo:
        __stockpyle_keys__ = ["key"]

        def __init__(self, key):
            self.key = key

    class Bar:
        __stockpyle_keys__ = ["key"]

        def __init__(self, key):
            self.key = key

    def my_lifetime_cb(obj):
        if isinstance(obj, Foo):
            return 20

        elif isinstance(obj, Bar):
            return 5 * 60

    store = ProcessMemoryStore(lifetime_cb=my_lifetime_cb)
    store.batch_put([Foo("short-lived"), Bar("lives longer")])
    assert store.get(Foo, "short-lived") is not None
    assert store.get(Bar, "lives longer") is not None
    print("expiration: Foo objects live for 20 seconds, Bar objects for 5 minutes")


def polymorphic() -> None:
    class Automobile:
        __stockpyle_keys__ = ["license_plate"]

        def __init__(self, license_plate):
            self.license_plate = license_plate

        def __eq__(self, other):
            return type(self) is type(other) and vars(self) == vars(other)

    class Car(Automobile):
        pass

    class Truck(Automobile):
        pass

    store = ProcessMemoryStore(polymorphic=True)

    car = Car(license_plate="1234 XYZ")
    store.put(car)

    car = store.get(Car, {"license_plate": "1234 XYZ"})
    automobile = store.get(Automobile, {"license_plate": "1234 XYZ"})

    assert car == automobile
    assert store.get(Truck, {"license_plate": "1234 XYZ"}) is None
    print("polymorphic: a Car is found as an Automobile")


def shove() -> None:
    store = ShoveStore(shoveuri="memory://quickstart")

    class Foo:
        __stockpyle_keys__ = ["key"]

        def __init__(self, key):
            self.key = key

    store.put(Foo("on a dictionary-style storage"))
    assert store.get(Foo, "on a dictionary-style storage").key == "on a dictionary-style storage"
    print("shove: stored in an fsspec memory:// mapping")


if __name__ == "__main__":
    basics()
    alternate_keys()
    expiration()
    polymorphic()
    shove()
