"""Namespace generations per table: every release's model of a table shares them.

Two releases of ``profiles`` (``tests/profiles``: the oldest and the newest model, two
schema fingerprints) cache under keys of their own, but a new generation started for one
makes the other's entries unreachable too, on every backend and in every process, and a
write under a table generation another release moved is written again.  A lookup still
reads its generation tokens with its keys, in one read.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from typing import Any

import pytest

from sa_stockpyle.cache_keys import KeyMaker
from sa_stockpyle.keys import key_spec, table_names
from sa_stockpyle.stores import (
    BaseKeyValueStore,
    MemcacheStore,
    ProcessMemoryStore,
    RedisStore,
)
from sa_stockpyle.testing import Foo
from tests.helpers import cluster_client
from tests.models import Employee, Manager
from tests.profiles import MODELS
from tests.threads import started

_, Old = MODELS["r0"]
_, New = MODELS["r4"]

#: Makes the stores of two processes sharing one backend (one store when in-process).
Processes = Callable[[], tuple[BaseKeyValueStore, BaseKeyValueStore]]


@pytest.fixture(params=["memory", "redis", "cluster", "memcached"])
def processes(request: pytest.FixtureRequest) -> Iterator[Processes]:
    made: list[BaseKeyValueStore] = []
    clients: list[Any] = []

    def make() -> tuple[BaseKeyValueStore, BaseKeyValueStore]:
        stores: tuple[BaseKeyValueStore, BaseKeyValueStore]
        if request.param == "memory":
            memory = ProcessMemoryStore()
            stores = (memory, memory)
        elif request.param == "redis":
            url = request.getfixturevalue("redis_url")
            stores = (RedisStore(url=url), RedisStore(url=url))
        elif request.param == "cluster":
            nodes = request.getfixturevalue("redis_cluster_nodes")
            clients.extend([cluster_client(nodes), cluster_client(nodes)])
            stores = (RedisStore(client=clients[-2]), RedisStore(client=clients[-1]))
        else:
            servers = request.getfixturevalue("memcached_addresses")
            stores = (MemcacheStore(servers=servers), MemcacheStore(servers=servers))
        made.extend(stores)
        return stores

    yield make
    for store in made:
        store.close()
    for client in clients:
        client.close()


def _profiles(klass: type) -> list[Any]:
    return [klass(id=i, email=f"p{i}@example.com", points=i, note="n") for i in (1, 2)]


def test_every_release_of_a_table_shares_its_generation_keys() -> None:
    keymaker = KeyMaker()
    assert table_names(Old) == table_names(New) == ("profiles",)
    assert keymaker.generation_keys(Old) == keymaker.generation_keys(New)
    assert keymaker.generation_keys(Old) == ("stockpyle:v1:gen:table:profiles",)
    assert keymaker.generation_keys(Employee) == ("stockpyle:v1:gen:table:sa_store_employees",)
    assert keymaker.generation_keys(Manager) == (
        "stockpyle:v1:gen:table:sa_store_employees",
        "stockpyle:v1:gen:table:sa_store_managers",
    )
    assert keymaker.generation_keys(Foo) == ("stockpyle:v1:gen:sa_stockpyle.testing.models.Foo",)
    keymaker.set_tokens({"stockpyle:v1:gen:table:sa_store_employees": "e1"})
    assert Manager not in keymaker.generations  # its other table's token is not known
    assert keymaker.generations[Employee] == "e1"
    keymaker.set_tokens({"stockpyle:v1:gen:table:sa_store_managers": "m1"})
    assert keymaker.generations[Manager] == "e1.m1"


def test_a_new_generation_of_one_release_hides_every_release_of_the_table(
    processes: Processes,
) -> None:
    first, second = processes()
    old, new, foo = _profiles(Old), _profiles(New), Foo(key=1, zap=1, bar=1)
    first.batch_put([*old, *new, foo])
    assert second.get(Old, {"email": "p1@example.com"}) is not None
    assert second.get(New, 2) is not None
    second.invalidate_class(New)
    for store in (first, second):
        assert store.batch_get(Old, [1, 2, {"email": "p1@example.com"}]) == [None] * 3
        assert store.batch_get(New, [1, 2, {"email": "p1@example.com"}]) == [None] * 3
        assert store.get(Foo, 1) == foo  # another table's entries stay
    first.batch_put(old)  # under the generation it has just learned
    assert second.get(Old, 1) is not None


def test_an_in_process_store_drops_the_entries_of_every_class_on_the_table() -> None:
    memory = ProcessMemoryStore()
    memory.batch_put([*_profiles(Old), *_profiles(New), Foo(key=1, zap=1, bar=1)])
    memory.invalidate_class(Old)
    held = [key for key in memory.dictionary if "Profile" in key]
    assert held == []
    assert memory.get(Foo, 1) is not None


def test_a_class_on_two_tables_loses_its_entries_with_either(processes: Processes) -> None:
    first, second = processes()
    manager = Manager(id=1, name="m", budget=Decimal("1.50"))
    first.put(manager)
    assert second.get(Manager, 1) is not None
    second.invalidate_class(Employee)  # the base table's generation
    assert first.get(Manager, 1) is None
    first.put(manager)
    assert second.get(Manager, 1) is not None


def test_a_commit_is_written_under_a_table_generation_another_release_started(
    processes: Processes,
) -> None:
    # The writer last read the newest release's profiles under g1; another process starts
    # g2 through the oldest release's class, and a reader of the newest release refills
    # under g2: the writer's commit of a change must reach g2.
    writer, reader = processes()
    [profile, _] = _profiles(New)
    writer.put(profile)
    assert writer.get(New, 1) is not None  # the writer knows g1
    reader.invalidate_class(Old)
    reader.put(profile)
    writer.write_committed([], [(New, {"id": 1})])
    assert reader.get(New, 1) is None
    assert writer.get(New, 1) is None


class Recording(RedisStore):
    """A RedisStore that records the keys of every read (each one round trip)."""

    def __init__(self, url: str) -> None:
        super().__init__(url=url)
        self.reads: list[list[str]] = []

    def read(self, keys: Sequence[str]) -> list[Any]:
        self.reads.append(list(keys))
        return super().read(keys)


def test_a_lookup_reads_its_tables_generation_tokens_with_its_keys(redis_url: str) -> None:
    with Recording(redis_url) as store:
        store.batch_put([Manager(id=1, name="m", budget=Decimal("1.50")), *_profiles(New)])
        store.reads.clear()
        assert store.get(Manager, 1) is not None
        assert len(store.batch_get(New, [1, 2])) == 2
        keymaker = store.keymaker
        assert store.reads == [
            [*keymaker.generation_keys(Manager), *keymaker.keys(key_spec(Manager), [1])],
            [*keymaker.generation_keys(New), *keymaker.keys(key_spec(New), [1, 2])],
        ]


class _PausingTokens(dict[str, str]):
    """Generation tokens whose update, once armed, waits after it is applied: the moment
    another thread's write may run while ``KeyMaker.set_tokens`` is under way."""

    def __init__(self, tokens: dict[str, str]) -> None:
        super().__init__(tokens)
        self.armed = threading.Event()
        self.paused = threading.Event()
        self.go = threading.Event()

    def update(self, *args: Any, **kwargs: Any) -> None:
        super().update(*args, **kwargs)
        if self.armed.is_set() and not self.paused.is_set():
            self.paused.set()
            assert self.go.wait(10)


def test_a_write_while_a_new_generation_is_adopted_is_not_lost(redis_url: str) -> None:
    ours = RedisStore(url=redis_url, prefix="adopting")
    other = RedisStore(url=redis_url, prefix="adopting")  # another process
    try:
        ours.put(Foo(key=1, zap=1, bar=1, v="old"))
        other.get(Foo, 1)
        other.invalidate_class(Foo)  # the other process starts a new generation
        other.put(Foo(key=1, zap=1, bar=1, v="v1"))  # and caches the row under it
        tokens = _PausingTokens(ours.keymaker.tokens)
        ours.keymaker.tokens = tokens
        tokens.armed.set()
        reader = started(ours.get, Foo, 1)  # adopts the new one
        assert tokens.paused.wait(10)
        ours.delete(Foo(key=1, zap=1, bar=1))  # the row is deleted meanwhile
        tokens.go.set()
        reader.finish()
        assert ours.get(Foo, 1) is None
        assert other.get(Foo, 1) is None
    finally:
        ours.close()
        other.close()
