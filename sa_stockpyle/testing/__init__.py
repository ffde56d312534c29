"""The conformance suites, shipped so third-party stores can prove the contract.

Two suites, as dogpile.cache's test fixtures do per capability:

* :class:`StoreConformance`, the six operations every store speaks;
* :class:`LayerProtocolConformance`, which adds the layer protocol's promises
  (tombstones, leases, conditional commit writes, ``invalidate_class``): opt in when the
  store implements it, as every :class:`~sa_stockpyle.stores.BaseKeyValueStore` does.

A store's test file is configuration only::

    from sa_stockpyle.testing import StoreConformance

    class TestMyStore(StoreConformance):
        def make_store(self, **options):
            return MyStore(**options)

``make_store`` receives the keyword arguments ``polymorphic``, ``lifetime_cb`` and
``clock`` (a :class:`FakeClock`); expiry is tested by moving that clock, never by
sleeping.  Every store a test makes is closed after it.  Requires pytest.
"""

from __future__ import annotations

from sa_stockpyle.testing.models import (
    Automobile,
    Car,
    Color,
    FakeClock,
    Falsy,
    Foo,
    Pair,
    Truck,
    User,
    Versioned,
)
from sa_stockpyle.testing.protocol import LayerProtocolConformance
from sa_stockpyle.testing.suite import StoreConformance

__all__ = [
    "Automobile",
    "Car",
    "Color",
    "FakeClock",
    "Falsy",
    "Foo",
    "LayerProtocolConformance",
    "Pair",
    "StoreConformance",
    "Truck",
    "User",
    "Versioned",
]
