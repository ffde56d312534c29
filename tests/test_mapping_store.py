"""ShoveStore over every kind of dictionary-style storage: the conformance suite, and safety."""

from __future__ import annotations

import fcntl
import logging
import multiprocessing
import os
import pickle
import shelve
from collections.abc import Iterator
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import diskcache
import fsspec
import pytest

from sa_stockpyle.codec import MAGIC
from sa_stockpyle.errors import ConfigurationError
from sa_stockpyle.stores import ShoveStore
from sa_stockpyle.stores.files import LocalFiles
from sa_stockpyle.testing import Foo, LayerProtocolConformance
from tests.threads import run_together, started


class TestShoveOverDict(LayerProtocolConformance):
    def make_store(self, **options: Any) -> ShoveStore:
        return ShoveStore(shove={}, **options)


class TestShoveOverShelve(LayerProtocolConformance):
    @pytest.fixture(autouse=True)
    def _path(self, tmp_path: Path) -> None:
        self.path = tmp_path

    def make_store(self, **options: Any) -> ShoveStore:
        return ShoveStore(shove=shelve.open(str(self.path / "shelf")), **options)


class TestShoveOverDiskcache(LayerProtocolConformance):
    @pytest.fixture(autouse=True)
    def _path(self, tmp_path: Path) -> None:
        self.path = tmp_path

    def make_store(self, **options: Any) -> ShoveStore:
        return ShoveStore(shove=diskcache.Cache(str(self.path / "dc")), **options)


class TestShoveOverFsspecMemory(LayerProtocolConformance):
    counter = 0

    def make_store(self, **options: Any) -> ShoveStore:
        # fsspec's memory filesystem is global to the process: one folder per store.
        TestShoveOverFsspecMemory.counter += 1
        return ShoveStore(shoveuri=f"memory://conformance-{self.counter}", **options)


class TestShoveOverFileURI(LayerProtocolConformance):
    @pytest.fixture(autouse=True)
    def _path(self, tmp_path: Path) -> None:
        self.path = tmp_path

    def make_store(self, **options: Any) -> ShoveStore:
        return ShoveStore(shoveuri=f"file://{self.path}/cache", **options)


class TestShoveOverFsspecLocalMapper(LayerProtocolConformance):
    @pytest.fixture(autouse=True)
    def _path(self, tmp_path: Path) -> None:
        self.path = tmp_path

    def make_store(self, **options: Any) -> ShoveStore:
        mapper = fsspec.get_mapper(f"file://{self.path}/cache", create=True)
        return ShoveStore(shove=mapper, **options)


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


def test_an_entry_whose_state_does_not_give_its_keys_is_a_logged_corrupt_miss(
    caplog: pytest.LogCaptureFixture,
) -> None:
    held: dict[str, bytes] = {}
    store = ShoveStore(shove=held)
    store.put(Foo(key=1, zap=1, bar=1))
    (primary,) = [key for key in held if key.endswith(":key:i1")]
    # It still lists the alternate key (zap 1, bar 1); its state says zap 2.
    held[primary] = held[primary].replace(b'"zap":1', b'"zap":2', 1)
    with caplog.at_level(logging.WARNING, logger="sa_stockpyle"):
        assert store.get(Foo, {"zap": 1, "bar": 1}) is None
    assert [record.getMessage() for record in caplog.records] == [
        f"sa_stockpyle: {store!r}: deleting corrupt entry {primary!r}: "
        "it lists keys its state does not give"
    ]
    assert store.stats.count(Foo, "corrupt") == 1
    assert store.get(Foo, 1) is None  # replaced by a tombstone
    assert not held[primary].startswith(MAGIC + b"{")


def test_a_new_generation_started_while_a_lookup_checks_its_entry_is_a_miss_not_corruption(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = ShoveStore(shove={})
    store.put(Foo(key=1, zap=1, bar=1))
    decoded = store._decoded
    calls = 0

    def racing(*args: Any) -> Any:
        # Another thread invalidates the class right after the entry the alternate key
        # leads to is read: its keys are the old generation's, which is no corruption.
        nonlocal calls
        found = decoded(*args)
        calls += 1
        if calls == 2:
            store.invalidate_class(Foo)
        return found

    monkeypatch.setattr(store, "_decoded", racing)
    with caplog.at_level(logging.WARNING, logger="sa_stockpyle"):
        assert store.get(Foo, {"zap": 1, "bar": 1}) is None
    assert calls == 2
    assert store.stats.count(Foo, "corrupt") == 0
    assert not caplog.records


def test_a_commit_a_store_cannot_carry_is_removed_there_and_logged_once_per_class(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = ShoveStore(shove={})
    store.put(Foo(key=1, zap=1, bar=1))
    bad = Foo(key=1, zap=1, bar=1, v=object())  # no shared payload carries an object()
    with caplog.at_level(logging.DEBUG, logger="sa_stockpyle"):
        store.write_committed([bad, Foo(key=2, zap=2, bar=2)], [])
        store.write_committed([Foo(key=3, zap=3, bar=3, v=object())], [])
    assert store.batch_get(Foo, [1, 2, 3]) == [None, Foo(key=2, zap=2, bar=2), None]
    logged = [(r.levelno, r.getMessage()) for r in caplog.records if "cannot carry" in r.message]
    assert [level for level, _ in logged] == [logging.WARNING, logging.DEBUG]  # then quieter
    assert logged[0][1].startswith(
        f"sa_stockpyle: {store!r} cannot carry a Foo, and removes it instead: "
        "a Foo's attribute 'v' cannot be stored"
    )


def test_an_entry_copied_to_another_key_is_a_logged_corrupt_miss(
    caplog: pytest.LogCaptureFixture,
) -> None:
    held: dict[str, bytes] = {}
    store = ShoveStore(shove=held)
    store.batch_put([Foo(key=1, zap=1, bar=1), Foo(key=2, zap=2, bar=2)])
    first, second = (next(k for k in held if k.endswith(f":key:i{n}")) for n in (1, 2))
    copied = held[second] = held[first]  # key 1's entry, found at key 2
    with caplog.at_level(logging.WARNING, logger="sa_stockpyle"):
        assert store.get(Foo, 2) is None
        held[second] = copied
        assert store.get(Foo, {"zap": 2, "bar": 2}) is None  # reached by its pointer
    assert [record.getMessage() for record in caplog.records] == 2 * [
        f"sa_stockpyle: {store!r}: deleting corrupt entry {second!r}: "
        f"record does not belong at the key {second!r}"
    ]
    assert store.stats.count(Foo, "corrupt") == 2
    assert store.get(Foo, 1) == Foo(key=1, zap=1, bar=1)


def test_exactly_one_mapping_source() -> None:
    with pytest.raises(ConfigurationError, match="exactly one"):
        ShoveStore()
    with pytest.raises(ConfigurationError, match="exactly one"):
        ShoveStore(shove={}, shoveuri="memory://x")


# -- several processes sharing one folder -------------------------------------------------

ROUNDS = 1_500
KEYS = 20


def _share(kind: str, folder: str, me: int, barrier: Barrier, results: Queue[Any]) -> None:
    """One of two processes: put and get the same keys as the other, as fast as it can."""
    if kind == "file://":
        store = ShoveStore(shoveuri=f"file://{folder}")
    else:
        store = ShoveStore(shove=fsspec.get_mapper(f"file://{folder}", create=True))
    theirs = wrong = 0
    barrier.wait()
    for round_ in range(ROUNDS):
        key = round_ % KEYS
        store.put(Foo(key=key, zap=key, bar=-key, writer=me, pad=[key] * 200))
        other = (key + KEYS // 2) % KEYS
        got = store.get(Foo, other if round_ % 2 else {"zap": other, "bar": -other})
        if got is not None:
            theirs += got.writer != me
            wrong += got.key != other or got.pad != [other] * 200
    # Then in turns: the loop above shares keys only as far as the scheduler lets the
    # two overlap, and each must surely read what the other wrote in the shared folder.
    for turn in range(2):
        barrier.wait()
        if turn == me:
            store.batch_put(
                [Foo(key=k, zap=k, bar=-k, writer=me, pad=[k] * 200) for k in range(KEYS)]
            )
        barrier.wait()
        if turn != me:
            theirs += sum(
                got is not None and got.writer != me for got in store.batch_get(Foo, range(KEYS))
            )
    results.put((store.stats.count(None, "corrupt"), theirs, wrong))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "torn"),
    [("fsspec's local mapper", True), ("file://", False)],
)
def test_two_processes_share_a_file_store_without_torn_reads(
    tmp_path: Path, kind: str, torn: bool
) -> None:
    # fsspec truncates a file, then writes it: a reader in between may get b"" (a corrupt
    # miss, and a good entry replaced by a tombstone), when the two processes happen to
    # meet there.  file:// writes a temporary file and renames it over the old one: a
    # reader never sees a torn one.
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    results: Queue[Any] = context.Queue()
    workers = [
        context.Process(target=_share, args=(kind, str(tmp_path / "cache"), me, barrier, results))
        for me in range(2)
    ]
    for worker in workers:
        worker.start()
    outcome = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    corrupt = sum(count for count, _theirs, _wrong in outcome)
    assert all(theirs > 0 for _corrupt, theirs, _wrong in outcome)  # they did share keys
    assert all(wrong == 0 for _corrupt, _theirs, wrong in outcome)
    if not torn:
        assert corrupt == 0


def _count(folder: str, rounds: int) -> None:
    """Add 1 to the number under "n", ``rounds`` times, from each of two threads."""
    files = LocalFiles(folder)

    def add() -> None:
        for _ in range(rounds):
            with files.process_lock:
                files["n"] = b"%d" % (int(files.get("n", b"0")) + 1)

    run_together([add, add])  # raises in the child, which then exits with 1


def test_the_folder_lock_excludes_the_threads_of_every_process(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_count, args=(str(tmp_path), 200)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    assert LocalFiles(str(tmp_path))["n"] == b"800"  # no increment lost


def test_a_file_store_writes_under_the_folder_lock(files: ShoveStore) -> None:
    folder = files.dictionary
    assert isinstance(folder, LocalFiles)
    with folder.process_lock:  # as another process would hold it
        writer = started(files.put, Foo(key=1, zap=2, bar=3))
        writer.join(0.5)
        assert writer.is_alive()  # still waiting for the lock
        assert list(folder) == []  # (a get would write: it names the class's generation)
    writer.finish()
    assert files.get(Foo, 1) == Foo(key=1, zap=2, bar=3)


def test_a_forked_child_does_not_keep_the_folder_lock(tmp_path: Path) -> None:
    folder = LocalFiles(str(tmp_path))
    ready, go = os.pipe()
    with folder.process_lock:
        child = os.fork()
        if child == 0:  # the child holds a copy of the locked file until told to end
            os.read(ready, 1)
            os._exit(0)
    probe = os.open(folder.process_lock.path, os.O_RDWR)
    try:
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if still held
    finally:
        os.close(probe)
        os.write(go, b"x")
        os.waitpid(child, 0)
        os.close(ready)
        os.close(go)


def test_local_files_hides_its_own_files_and_keeps_every_key_flat(tmp_path: Path) -> None:
    folder = LocalFiles(str(tmp_path / "cache"))
    folder["a/b"] = b"1"
    folder["a"] = b"0"  # a key is never another key's folder
    folder["c%2F"] = b"2"
    folder["." * 300] = b"3"  # too long a name: hashed
    (tmp_path / "cache" / ".sa_stockpyle.tmp-0123").write_bytes(b"a crashed write")
    with folder.process_lock:  # creates the lock file
        pass
    assert (folder["a/b"], folder["a"], folder["c%2F"], folder["." * 300]) == (
        b"1",
        b"0",
        b"2",
        b"3",
    )
    assert {"a/b", "a", "c%2F"} <= set(folder)
    assert len(folder) == 4
    assert all(entry.is_file() for entry in os.scandir(tmp_path / "cache"))
    del folder["c%2F"]
    with pytest.raises(KeyError):
        del folder["c%2F"]
    folder.clear()
    assert sorted(os.listdir(tmp_path / "cache")) == [".sa_stockpyle.lock"]


class Named:
    """A class whose alternate key holds whatever a caller passes, slashes and dots too."""

    __stockpyle_keys__ = ["id", "name"]

    def __init__(self, id: int, name: str) -> None:
        self.id = id
        self.name = name


def test_a_key_of_hostile_values_never_leaves_the_folder(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_bytes(b"not a cache record")
    store = ShoveStore(shoveuri=f"file://{tmp_path}/cache")
    hostile = ["/../../outside/victim.txt", "../..", ".", "", "/", "a//b", "%2E%2E", "%00"]
    for number, name in enumerate(hostile, start=1):
        assert store.get(Named, {"name": name}) is None
        store.put(Named(number, name))
        found = store.get(Named, {"name": name})
        assert found is not None
        assert (found.id, found.name) == (number, name)
    assert victim.read_bytes() == b"not a cache record"
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]
    files = LocalFiles(f"{tmp_path}/cache")
    assert all(files[key] for key in files)  # every key lists back as it was written
