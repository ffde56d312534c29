"""ShoveStore over every kind of dictionary-style storage: the conformance suite, and safety."""

from __future__ import annotations

import pickle
import shelve
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import diskcache
import pytest

from sa_stockpyle.codec import MAGIC
from sa_stockpyle.errors import ConfigurationError
from sa_stockpyle.stores import ShoveStore
from sa_stockpyle.testing import Foo, StoreConformance


class TestShoveOverDict(StoreConformance):
    def make_store(self, **options: Any) -> ShoveStore:
        return ShoveStore(shove={}, **options)


class TestShoveOverShelve(StoreConformance):
    @pytest.fixture(autouse=True)
    def _path(self, tmp_path: Path) -> None:
        self.path = tmp_path

    def make_store(self, **options: Any) -> ShoveStore:
        return ShoveStore(shove=shelve.open(str(self.path / "shelf")), **options)


class TestShoveOverDiskcache(StoreConformance):
    @pytest.fixture(autouse=True)
    def _path(self, tmp_path: Path) -> None:
        self.path = tmp_path

    def make_store(self, **options: Any) -> ShoveStore:
        return ShoveStore(shove=diskcache.Cache(str(self.path / "dc")), **options)


class TestShoveOverFsspecMemory(StoreConformance):
    counter = 0

    def make_store(self, **options: Any) -> ShoveStore:
        # fsspec's memory filesystem is global to the process: one folder per store.
        TestShoveOverFsspecMemory.counter += 1
        return ShoveStore(shoveuri=f"memory://conformance-{self.counter}", **options)


class TestShoveOverFsspecFile(StoreConformance):
    @pytest.fixture(autouse=True)
    def _path(self, tmp_path: Path) -> None:
        self.path = tmp_path

    def make_store(self, **options: Any) -> ShoveStore:
        return ShoveStore(shoveuri=f"file://{self.path}/cache", **options)


@pytest.fixture
def files(tmp_path: Path) -> Iterator[ShoveStore]:
    store = ShoveStore(shoveuri=f"file://{tmp_path}/cache")
    yield store
    store.close()


def test_values_are_safe_bytes_with_their_expiry(files: ShoveStore) -> None:
    files.put(Foo(key=1, zap=2, bar=3))
    raw = [value for key, value in files.dictionary.items() if ":gen:" not in key]
    assert raw
    assert all(isinstance(value, bytes) and value.startswith(MAGIC) for value in raw)
    assert any(b'"x":null' in value for value in raw)


def test_a_malicious_pickle_is_a_counted_miss_and_is_deleted(
    files: ShoveStore, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[Any, ...]:
            return (marker.write_text, ("executed",))

    files.put(Foo(key=1, zap=2, bar=3))
    [primary] = [key for key in files.dictionary if key.endswith(":key:i1")]
    files.dictionary[primary] = pickle.dumps(Exploit())
    assert files.get(Foo, 1) is None
    assert not marker.exists()
    assert files.dictionary[primary].startswith(b"SPKT")  # removed: a tombstone
    assert files.stats.count(Foo, "corrupt") == 1


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x00\x01garbage",
        MAGIC + b"{",
        MAGIC + b"[]",
        MAGIC + b'{"x":"soon","p":"k"}',
        MAGIC + b'{"x":null,"c":"os.system","s":{},"k":[]}',
        MAGIC + b'{"x":null,"c":"sa_stockpyle.testing.Foo","s":{"a":{"$t":"nope","v":1}},"k":[]}',
    ],
)
def test_undecodable_payloads_are_misses(files: ShoveStore, payload: bytes) -> None:
    files.put(Foo(key=1, zap=2, bar=3))
    [primary] = [key for key in files.dictionary if key.endswith(":key:i1")]
    files.dictionary[primary] = payload
    assert files.get(Foo, 1) is None
    assert files.stats.count(None, "corrupt") == 1


def test_exactly_one_mapping_source() -> None:
    with pytest.raises(ConfigurationError, match="exactly one"):
        ShoveStore()
    with pytest.raises(ConfigurationError, match="exactly one"):
        ShoveStore(shove={}, shoveuri="memory://x")
