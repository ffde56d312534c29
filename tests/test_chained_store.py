"""ChainedStore: read-through, write-through, degraded layers and statistics."""

from __future__ import annotations

import logging
import shelve
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pytest

from sa_stockpyle.errors import (
    ConfigurationError,
    PayloadError,
    StoreUnavailable,
    UnknownKeyError,
)
from sa_stockpyle.stores import (
    BaseDictionaryStore,
    ChainedStore,
    ProcessMemoryStore,
    RedisStore,
    ShoveStore,
    ThreadLocalStore,
    claims,
    health,
)
from sa_stockpyle.stores.base import Reservation
from sa_stockpyle.stores.ops import Op
from sa_stockpyle.testing import FakeClock, Falsy, Foo, LayerProtocolConformance, Pair
from tests.helpers import until
from tests.threads import JOIN_TIMEOUT, run_together, started


class TestChainOfMemoryAndShove(LayerProtocolConformance):
    def make_store(self, **options: Any) -> ChainedStore:
        return ChainedStore([ProcessMemoryStore(**options), ShoveStore(shove={}, **options)])


class TestChainOfThreeLayers(LayerProtocolConformance):
    def make_store(self, **options: Any) -> ChainedStore:
        return ChainedStore(
            [
                ThreadLocalStore(**options),
                ProcessMemoryStore(**options),
                ShoveStore(shove={}, **options),
            ]
        )


class Recording(BaseDictionaryStore):
    """A dictionary store that records what it was asked, and can be switched off."""

    def __init__(self) -> None:
        super().__init__({})
        self.reads: list[list[str]] = []
        self.down = False
        self.calls = 0  # every backend call, answered or not
        self.writes = 0  # plain writes: puts (and a class's first generation token)

    def _check(self) -> None:
        self.calls += 1
        if self.down:
            raise StoreUnavailable(f"{self!r} is switched off")

    def read(self, keys: Sequence[str]) -> list[Any]:
        self._check()
        self.reads.append(list(keys))
        return super().read(keys)

    def write(self, items: Sequence[tuple[str, Any, float | None]]) -> None:
        self._check()
        self.writes += 1
        super().write(items)

    def apply(self, ops: Sequence[Op]) -> list[Any]:
        self._check()
        return super().apply(ops)


def _foos(n: int) -> list[Foo]:
    return [Foo(key=i, zap=i, bar=i) for i in range(n)]


def test_a_hit_fills_the_faster_layers() -> None:
    fast, middle, slow = Recording(), Recording(), Recording()
    chain = ChainedStore([fast, middle, slow])
    foo = Foo(key=1, zap=1, bar=1)
    slow.put(foo)
    assert chain.get(Foo, 1) == foo
    assert fast.get(Foo, 1) == foo
    assert middle.get(Foo, 1) == foo
    stats = chain.stats_by_layer()
    assert stats["0:Recording"]["Foo"] == {"misses": 1, "fills": 1}
    assert stats["2:Recording"]["Foo"] == {"hits": 1}
    fast.reads.clear()
    slow.reads.clear()
    assert chain.get(Foo, 1) == foo
    assert slow.reads == []
    assert chain.layer_stats[0].count(Foo, "hits") == 1


def test_batch_get_asks_each_layer_only_for_what_is_missing() -> None:
    fast, slow = Recording(), Recording()
    chain = ChainedStore([fast, slow])
    foos = _foos(6)
    fast.batch_put(foos[:2])
    slow.batch_put(foos)
    fast.reads.clear()
    slow.reads.clear()
    assert chain.batch_get(Foo, [0, 1, 2, 3, 9]) == [*foos[:4], None]
    assert len(fast.reads) == 1
    assert len(slow.reads) == 1
    assert len(slow.reads[0]) == 4  # the generation token, and keys 2, 3 and 9 only
    assert chain.layer_stats[1].count(Foo, "hits") == 2
    assert chain.layer_stats[1].count(Foo, "misses") == 1


def test_only_none_is_a_miss() -> None:
    fast, slow = Recording(), Recording()
    chain = ChainedStore([fast, slow])
    fast.put(Falsy(key=0))
    slow.reads.clear()
    assert chain.get(Falsy, 0) == Falsy(key=0)
    assert slow.reads == []


def test_writes_go_through_every_layer() -> None:
    layers = [Recording(), Recording(), Recording()]
    chain = ChainedStore(layers)
    foos = _foos(3)
    chain.batch_put(foos)
    assert all(layer.batch_get(Foo, [0, 1, 2]) == foos for layer in layers)
    chain.delete(foos[0])
    chain.batch_delete(foos[1:])
    assert all(layer.batch_get(Foo, [0, 1, 2]) == [None] * 3 for layer in layers)
    chain.put(foos[0])
    assert all(layer.get(Foo, 0) == foos[0] for layer in layers)


def test_a_failing_layer_is_a_counted_logged_miss(caplog: pytest.LogCaptureFixture) -> None:
    fast, broken, slow = Recording(), Recording(), Recording()
    chain = ChainedStore([fast, broken, slow], cooldown=0)
    slow.batch_put(_foos(2))
    broken.down = True
    with caplog.at_level(logging.WARNING, logger="sa_stockpyle"):
        assert chain.batch_get(Foo, [0, 1]) == _foos(2)
        chain.put(Foo(key=5, zap=5, bar=5))
        chain.delete(Foo(key=5, zap=5, bar=5))
    # read, put, delete: a layer that failed to read holds no claim, so it is not filled
    assert chain.layer_stats[1].count(Foo, "errors") == 3
    assert fast.get(Foo, 0) == _foos(1)[0]
    # Each failure is logged once, naming the layer, what it failed to do and why.
    why = f"{broken!r} is switched off"
    assert [record.getMessage() for record in caplog.records] == [
        f"sa_stockpyle: layer 1:Recording failed to {action}: {why}"
        for action in ("read", "put", "catch up")  # the delete waits for the catch-up
    ]
    assert {record.levelno for record in caplog.records} == {logging.WARNING}
    chain.close()


@pytest.mark.parametrize(
    ("action", "use"),
    [
        ("read", lambda chain: chain.get(Foo, 1)),
        ("put", lambda chain: chain.put(Foo(key=1, zap=1, bar=1))),
        ("delete", lambda chain: chain.delete(Foo(key=1, zap=1, bar=1))),
        ("delete", lambda chain: chain.batch_delete([Foo(key=1, zap=1, bar=1)])),
        ("write a commit", lambda chain: chain.write_committed([], [(Foo, {"key": 1})])),
        ("invalidate a class", lambda chain: chain.invalidate_class(Foo)),
        ("reserve", lambda chain: chain.reserve(Foo, [1])),
    ],
)
def test_each_failure_is_logged_with_what_the_layer_failed_to_do(
    caplog: pytest.LogCaptureFixture, action: str, use: Any
) -> None:
    fast, broken, slow = Recording(), Recording(), Recording()
    chain = ChainedStore([fast, broken, slow], broadcast=False)
    broken.down = True
    with caplog.at_level(logging.WARNING, logger="sa_stockpyle"):
        use(chain)
    chain.close()
    assert [record.getMessage() for record in caplog.records] == [
        f"sa_stockpyle: layer 1:Recording failed to {action}: {broken!r} is switched off"
    ]


def test_a_hit_costs_one_call_and_a_miss_takes_no_lease_in_the_last_layer() -> None:
    fast, slow = Recording(), Recording()
    chain = ChainedStore([fast, slow], broadcast=False)
    slow.put(Foo(key=1, zap=1, bar=1))
    fast.put(Foo(key=2, zap=2, bar=2))
    fast.calls = slow.calls = 0
    assert chain.get(Foo, 2) == Foo(key=2, zap=2, bar=2)
    assert (fast.calls, slow.calls) == (1, 0)  # the read, and no lease over the hit
    assert chain.batch_get(Foo, [2]) == [Foo(key=2, zap=2, bar=2)]
    assert (fast.calls, slow.calls) == (2, 0)
    assert chain.get(Foo, 3) is None
    # The fast layer: its read and its lease, then the lease's release; the last layer,
    # whose reads are the truth, is read once.
    assert slow.calls == 1
    assert chain.batch_get(Foo, [3, 4]) == [None, None]
    assert slow.calls == 2
    assert chain.layer_stats[1].count(Foo, "misses") == 3  # one per key
    chain.close()


def test_a_delete_writes_nothing_to_any_layer() -> None:
    fast, slow = Recording(), Recording()
    chain = ChainedStore([fast, slow], broadcast=False)
    foo = Foo(key=1, zap=1, bar=1)
    chain.put(foo)
    fast.writes = slow.writes = 0
    chain.delete(foo)
    assert (fast.writes, slow.writes) == (0, 0)  # tombstones only, never a put first
    assert (fast.get(Foo, 1), slow.get(Foo, 1)) == (None, None)
    chain.close()


class _Drafts(Recording):
    """A last layer holding drafts: state its transaction has not committed."""

    def cacheable(self, obj: object, since: float | None = None) -> bool:
        return not (isinstance(obj, Foo) and vars(obj).get("version") == "draft")


def test_uncommitted_state_is_removed_above_and_never_written_there() -> None:
    fast, drafts = Recording(), _Drafts()
    chain = ChainedStore([fast, drafts], broadcast=False)
    Recording.batch_put(fast, [Foo(key=1, zap=1, bar=1, version="old")])
    fast.writes = 0
    chain.put(Foo(key=1, zap=1, bar=1, version="draft"))
    assert fast.get(Foo, 1) is None
    assert fast.writes == 0  # removed, never put
    chain.close()


def test_a_resting_layer_misses_a_write_and_the_layers_above_still_get_it(
    resting: Outage,
) -> None:
    fast, middle, slow, chain = resting
    middle.down = True
    chain.put(Foo(key=1, zap=1, bar=1, version="old"))  # failed: it rests
    middle.down = False
    chain.put(Foo(key=1, zap=1, bar=1, version="new"))  # skipped: it rests
    assert fast.get(Foo, 1).version == "new"
    assert slow.get(Foo, 1).version == "new"
    assert chain.layer_stats[1].count(Foo, "skipped") == 1


class _FailsToFill(Recording):
    """A layer that reads, and then cannot reserve or take the fill."""

    def __init__(self, error: Exception, reserving: bool = False) -> None:
        super().__init__()
        self.error = error
        self.reserving = reserving

    def reserve(self, klass: type, keys: Sequence[object]) -> Reservation:
        if self.reserving:
            raise self.error
        return super().reserve(klass, keys)

    def fill(self, reservation: Reservation, objs: Sequence[object | None]) -> None:
        raise self.error


def test_a_layer_that_cannot_reserve_is_read_through_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fast, slow = _FailsToFill(StoreUnavailable("gone"), reserving=True), Recording()
    chain = ChainedStore([fast, slow], broadcast=False)
    slow.put(Foo(key=1, zap=1, bar=1))
    assert chain.get(Foo, 1) == Foo(key=1, zap=1, bar=1)
    assert chain.layer_stats[0].count(Foo, "errors") == 1
    assert [record.getMessage() for record in caplog.records] == [
        "sa_stockpyle: layer 0:_FailsToFill failed to reserve: gone"
    ]
    chain.close()


class _Refuses(Recording):
    """A layer whose payloads cannot hold what is put (a value too big for it)."""

    def batch_put(self, objs: Iterable[object]) -> None:
        raise PayloadError("too big for this layer")

    def put(self, obj: object) -> None:
        raise PayloadError("too big for this layer")


def test_a_layer_that_cannot_carry_a_put_removes_the_entry_there_and_above(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fast, refuses, slow = Recording(), _Refuses(), Recording()
    chain = ChainedStore([fast, refuses, slow], broadcast=False)
    for layer in (fast, refuses, slow):
        Recording.batch_put(layer, [Foo(key=1, zap=1, bar=1, version="old")])
    fast.writes = 0
    chain.put(Foo(key=1, zap=1, bar=1, version="new"))
    assert fast.writes == 0  # removed: never a put of what a slower layer refused
    assert (fast.get(Foo, 1), refuses.get(Foo, 1)) == (None, None)
    assert slow.get(Foo, 1).version == "new"
    assert chain.layer_stats[1].count(Foo, "refused") == 1
    assert [record.getMessage() for record in caplog.records] == [
        "sa_stockpyle: layer 1:_Refuses cannot carry a Foo; removed there instead: "
        "too big for this layer"
    ]
    chain.close()


def test_a_last_layer_that_cannot_carry_a_put_raises_before_anything_changes() -> None:
    fast, refuses = Recording(), _Refuses()
    chain = ChainedStore([fast, refuses], broadcast=False)
    Recording.put(fast, Foo(key=1, zap=1, bar=1, version="old"))
    with pytest.raises(PayloadError, match="too big for this layer"):
        chain.put(Foo(key=1, zap=1, bar=1, version="new"))
    assert fast.get(Foo, 1).version == "old"
    chain.close()


@pytest.mark.parametrize(
    ("error", "counted", "message"),
    [
        (StoreUnavailable("gone"), "errors", "failed to fill: gone"),
        (PayloadError("too big"), "refused", "refused a fill: too big"),
    ],
)
def test_a_layer_that_cannot_take_a_fill_is_counted_and_logged(
    caplog: pytest.LogCaptureFixture, error: Exception, counted: str, message: str
) -> None:
    fast, slow = _FailsToFill(error), Recording()
    chain = ChainedStore([fast, slow], broadcast=False)
    slow.put(Foo(key=1, zap=1, bar=1))
    assert chain.get(Foo, 1) == Foo(key=1, zap=1, bar=1)  # the reader has it anyway
    assert chain.layer_stats[0].count(Foo, counted) == 1
    assert [record.getMessage() for record in caplog.records] == [
        f"sa_stockpyle: layer 0:_FailsToFill {message}"
    ]
    chain.close()


@pytest.mark.parametrize(
    "read",
    [
        lambda chain: chain.get(Foo, {"nope": 1}),
        lambda chain: chain.batch_get(Foo, [1, {"nope": 1}]),
    ],
    ids=["get", "batch_get"],
)
def test_a_bad_key_raises_before_any_layer_is_asked(read: Any) -> None:
    fast, slow = Recording(), Recording()
    chain = ChainedStore([fast, slow], broadcast=False)
    with pytest.raises(UnknownKeyError):
        read(chain)
    assert (fast.calls, slow.calls) == (0, 0)
    chain.close()


def test_a_failing_last_layer_raises_and_writes_nothing_above() -> None:
    fast, slow = Recording(), Recording()
    chain = ChainedStore([fast, slow])
    slow.down = True
    with pytest.raises(StoreUnavailable):
        chain.put(Foo(key=1, zap=1, bar=1))
    assert fast.get(Foo, 1) is None


def test_bad_input_is_rejected_before_any_layer_is_touched() -> None:
    fast, slow = Recording(), Recording()
    chain = ChainedStore([fast, slow])
    with pytest.raises(UnknownKeyError):
        chain.batch_get(Foo, [1, {"nope": 2}])
    assert fast.reads == slow.reads == []


class _Uncommitted(Recording):
    """A layer that reports every object as not yet committed."""

    def cacheable(self, obj: object, since: float | None = None) -> bool:
        return False

    def adopt(self, klass: type, objs: list[Any]) -> list[Any]:
        return [("adopted", obj) for obj in objs]


def test_uncommitted_state_never_reaches_faster_layers() -> None:
    fast, slow = Recording(), _Uncommitted()
    chain = ChainedStore([fast, slow])
    foo = Foo(key=1, zap=1, bar=1)
    fast.put(Foo(key=1, zap=1, bar=1, stale=True))
    chain.put(foo)
    assert slow.get(Foo, 1) == foo
    assert fast.get(Foo, 1) is None  # invalidated, not filled
    assert chain.get(Foo, 1) == foo
    assert fast.get(Foo, 1) is None
    assert chain.layer_stats[0].count(Foo, "fills") == 0


def test_hits_are_adopted_by_the_layers_below() -> None:
    fast, slow = Recording(), _Uncommitted()
    chain = ChainedStore([fast, slow])
    fast.put(Foo(key=1, zap=1, bar=1))
    assert chain.batch_get(Foo, [2, 1]) == [None, ("adopted", Foo(key=1, zap=1, bar=1))]


def test_close_closes_every_layer(tmp_path: Any) -> None:
    shelf = shelve.open(str(tmp_path / "s"))  # noqa: SIM115 - the chain must close it
    chain = ChainedStore([ProcessMemoryStore(), ShoveStore(shove=shelf)])
    with chain:
        chain.put(Foo(key=1, zap=1, bar=1))
    with pytest.raises(ValueError, match="closed"):
        shelf["x"] = b"1"


@pytest.mark.parametrize("bad", [[], [object()], "store"])
def test_chain_needs_stores(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="ChainedStore"):
        ChainedStore(bad)


def test_the_documented_defaults(redis_url: str) -> None:
    # docs/chained.md and the class docstring.
    chain = ChainedStore([ProcessMemoryStore(), RedisStore(url=redis_url)])
    try:
        assert (chain.lease_wait, chain.catch_up_interval, chain.cooldown) == (0.05, 0.5, 1.0)
        coherence = chain.coherence  # on by default, a layer having a channel
        assert coherence is not None
        assert (coherence.max_staleness, coherence.heartbeat) == (2.0, 1.0)
        assert coherence.channel.name.endswith(":invalidations")  # type: ignore[attr-defined]
    finally:
        chain.close()
    assert ChainedStore([ProcessMemoryStore(), ShoveStore(shove={})]).coherence is None
    with pytest.raises(ConfigurationError) as refused:
        ChainedStore([ProcessMemoryStore(), ShoveStore(shove={})], broadcast=True)
    assert str(refused.value) == (
        "ChainedStore(broadcast=True) needs a layer with a channel (a RedisStore); "
        "the layers are ['0:ProcessMemoryStore', '1:ShoveStore']"
    )


@pytest.mark.parametrize(
    ("name", "low"),
    [
        ("lease_wait", 0.0),
        ("catch_up_interval", 0.001),
        ("max_staleness", 0.001),
        ("cooldown", 0.0),
        ("heartbeat", 0.001),
    ],
)
def test_timings_are_seconds_within_their_bounds(name: str, low: float) -> None:
    layers = [ProcessMemoryStore(), ShoveStore(shove={})]
    for fine in (low, 3600, 3600.0):
        ChainedStore(layers, **{name: fine}).close()
    for bad in (low - 0.0005 if low else -0.001, 3600.001, True, "1", None):
        with pytest.raises(ConfigurationError) as refused:
            ChainedStore(layers, **{name: bad})
        assert str(refused.value) == (
            f"ChainedStore {name}={bad!r}; expected seconds from {low} to 3600"
        )


def test_stats_reset_and_totals() -> None:
    chain = ChainedStore([ProcessMemoryStore(), ShoveStore(shove={})])
    chain.get(Foo, 1)
    assert chain.layer_stats[0].count(None, "misses") == 1
    chain.layer_stats[0].reset()
    assert chain.layer_stats[0].as_dict() == {}


@pytest.mark.slow
def test_stats_count_every_thread_and_forget_ended_ones() -> None:
    chain = ChainedStore([ProcessMemoryStore(), ShoveStore(shove={})])
    stats = chain.layer_stats[0]

    def look() -> None:
        for _ in range(100):
            chain.get(Foo, 1)

    for _ in range(50):
        run_together([look] * 4)
    assert stats.count(Foo, "misses") == 50 * 4 * 100
    assert len(stats._tallies) <= 5  # the threads still alive, not every one ever started


# -- making up for what a layer missed ------------------------------------------------------


Outage = tuple[Recording, Recording, Recording, ChainedStore]


def _outage(cooldown: float) -> Iterator[Outage]:
    """Three recording layers and their chain, closed afterwards: a layer left failing
    would have the chain retry its catch-up for good.  The chain's clock stands at 0.0,
    as a clock a caller injects may: a rest that ended is told by no time value."""
    fast, middle, slow = Recording(), Recording(), Recording()
    chain = ChainedStore([fast, middle, slow], cooldown=cooldown, monotonic=FakeClock(0.0))
    yield fast, middle, slow, chain
    chain.close()


@pytest.fixture
def outage() -> Iterator[Outage]:
    """A chain whose failed layers are tried again at the next call."""
    yield from _outage(cooldown=0)


@pytest.fixture
def resting() -> Iterator[Outage]:
    """A chain whose failed layers rest a minute."""
    yield from _outage(cooldown=60.0)


def _miss_a_write_and_a_class(chain: ChainedStore, middle: Recording) -> None:
    """The middle layer misses Foo 1's new state and the invalidation of Pair, then is back."""
    chain.put(Foo(key=1, zap=1, bar=1, version="old"))
    chain.put(Pair(a=1, b=2))
    middle.down = True
    chain.put(Foo(key=1, zap=1, bar=1, version="new"))
    chain.invalidate_class(Pair)
    middle.down = False


def test_a_write_missed_during_an_outage_never_serves_the_old_entry(
    outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    fast, middle, _, chain = outage
    _miss_a_write_and_a_class(chain, middle)
    assert middle.get(Foo, 1).version == "old"  # what the layer still holds
    fast.clear()
    with caplog.at_level(logging.INFO, logger="sa_stockpyle"):
        assert chain.get(Foo, 1).version == "new"
    assert chain.get(Foo, {"zap": 1, "bar": 1}).version == "new"
    assert middle.get(Foo, 1).version == "new"  # removed, then filled again
    assert chain.layer_stats[1].count(Foo, "caught_up") == 1
    assert caplog.records[-1].getMessage() == (
        "sa_stockpyle: layer 1:Recording answers again; "
        "removed 1 missed keys, invalidated 1 classes"
    )
    # Caught up, the layer is in use again, and makes up for its next outage too.
    fast.clear()
    assert chain.get(Foo, 1).version == "new"
    assert chain.layer_stats[1].count(Foo, "hits") == 1
    middle.down = True
    chain.put(Foo(key=1, zap=1, bar=1, version="newer"))
    middle.down = False
    fast.clear()
    assert chain.get(Foo, 1).version == "newer"
    assert middle.get(Foo, 1).version == "newer"
    assert chain.layer_stats[1].count(Foo, "caught_up") == 2


def test_missed_deletes_commits_and_invalidations_are_made_up_for(outage: Outage) -> None:
    fast, middle, _, chain = outage
    chain.batch_put([Foo(key=i, zap=i, bar=i) for i in range(4)])
    chain.put(Pair(a=1, b=2))
    middle.down = True
    chain.delete(Foo(key=0, zap=0, bar=0))
    chain.write_committed([Foo(key=5, zap=5, bar=5)], [(Foo, {"key": 1}), (Foo, {"key": 2})])
    chain.invalidate_class(Pair)
    middle.down = False
    fast.clear()
    chain.batch_get(Foo, [3])  # any use of the layer makes up for the outage first
    assert middle.batch_get(Foo, [0, 1, 2, 3]) == [None, None, None, Foo(key=3, zap=3, bar=3)]
    assert chain.get(Foo, 5) == Foo(key=5, zap=5, bar=5)
    assert middle.get(Pair, {"a": 1, "b": 2}) is None  # the missed invalidate_class


def test_a_layer_that_cannot_catch_up_stays_skipped(outage: Outage) -> None:
    fast, middle, _, chain = outage
    chain.put(Foo(key=1, zap=1, bar=1, version="old"))
    middle.down = True
    chain.put(Foo(key=1, zap=1, bar=1, version="new"))
    fast.clear()
    assert chain.get(Foo, 1).version == "new"  # from the last layer, middle skipped
    middle.down = False
    middle.apply = lambda ops: (_ for _ in ()).throw(StoreUnavailable("still failing"))  # type: ignore[method-assign]
    fast.clear()
    assert chain.get(Foo, 1).version == "new"
    assert chain.layer_stats[1].count(Foo, "errors") >= 3


def test_a_catch_up_cut_short_by_a_bug_keeps_what_it_took(outage: Outage) -> None:
    # Anything but an outage escaping a catch-up (a bug, a task cancelled as its event
    # loop shuts down) puts the backlog back: the layer is skipped, not lost for good,
    # and its missed removal is applied by the next attempt.
    fast, middle, _, chain = outage
    chain.put(Foo(key=1, zap=1, bar=1, version="old"))
    middle.down = True
    chain.put(Foo(key=1, zap=1, bar=1, version="new"))
    middle.down = False
    apply = middle.apply
    middle.apply = lambda ops: (_ for _ in ()).throw(RuntimeError("a bug"))  # type: ignore[method-assign]
    fast.clear()
    with pytest.raises(RuntimeError, match="a bug"):
        chain.get(Foo, 1)
    assert chain.health[1].backlog  # still owed
    assert not chain.health[1].backlog.applying
    middle.apply = apply  # type: ignore[method-assign]
    fast.clear()
    assert chain.get(Foo, 1).version == "new"
    assert middle.get(Foo, 1).version == "new"  # the old entry was removed, then filled
    assert chain.layer_stats[1].count(Foo, "caught_up") == 1


def test_a_layer_another_thread_is_catching_up_is_skipped(outage: Outage) -> None:
    # While one thread makes up for what the middle layer missed, the layer still holds
    # the old entry: another thread's read must not use it until the catch-up is done.
    fast, middle, _, chain = outage
    chain.put(Foo(key=1, zap=1, bar=1, version="old"))
    middle.down = True
    chain.put(Foo(key=1, zap=1, bar=1, version="new"))
    middle.down = False
    fast.clear()
    inside, release = threading.Event(), threading.Event()
    apply = middle.apply

    def gated(ops: Sequence[Op]) -> list[Any]:
        if not inside.is_set():  # the catch-up's write, held until the read is done
            inside.set()
            assert release.wait(JOIN_TIMEOUT)
        return apply(ops)

    middle.apply = gated  # type: ignore[method-assign]
    catching_up = started(chain.get, Foo, 2)  # any use of the layer catches it up first
    assert inside.wait(JOIN_TIMEOUT)
    assert middle.get(Foo, 1).version == "old"  # not yet removed
    reads = len(middle.reads)
    assert chain.get(Foo, 1).version == "new"
    assert len(middle.reads) == reads  # the layer was passed over, not read
    release.set()
    catching_up.finish()
    assert chain.layer_stats[1].count(Foo, "caught_up") == 1
    fast.clear()
    assert chain.get(Foo, 1).version == "new"
    assert middle.get(Foo, 1).version == "new"


def test_a_forked_child_keeps_the_backlog_and_not_the_rest(resting: Outage) -> None:
    # What watch_forks calls in a forked child, called here in-process so that each step
    # shows: the child makes up for what the layer missed before the fork (its entries
    # are as stale in the child), and does not inherit the parent's circuit breaker.
    fast, middle, _, chain = resting
    _miss_a_write_and_a_class(chain, middle)
    chain.after_fork()
    fast.clear()
    assert chain.get(Foo, 1).version == "new"
    assert middle.get(Foo, 1).version == "new"  # used at once: caught up, then filled
    assert middle.get(Pair, {"a": 1, "b": 2}) is None
    assert chain.layer_stats[1].count(Foo, "caught_up") == 1
    assert chain.layer_stats[1].count(Pair, "caught_up") == 1


@pytest.mark.parametrize("missed", [3, 5])
def test_up_to_max_missed_keys_are_made_up_for_one_by_one_then_the_class_goes(
    monkeypatch: pytest.MonkeyPatch, outage: Outage, missed: int
) -> None:
    monkeypatch.setattr(health, "MAX_MISSED", 3)
    fast, middle, _, chain = outage
    chain.batch_put([Foo(key=i, zap=i, bar=i) for i in range(10)])
    middle.down = True
    for i in range(missed):
        chain.put(Foo(key=i, zap=i, bar=i, v=2))
    middle.down = False
    fast.clear()
    last = missed - 1
    assert chain.get(Foo, last) == Foo(key=last, zap=last, bar=last, v=2)
    if missed <= 3:
        assert chain.layer_stats[1].count(Foo, "caught_up") == 3
        assert middle.get(Foo, 9) == Foo(key=9, zap=9, bar=9)  # the rest of the class stays
    else:  # a long outage: the whole class goes (a new generation)
        assert middle.get(Foo, 9) is None
        assert chain.get(Foo, 9) == Foo(key=9, zap=9, bar=9)
        assert middle.get(Foo, 9) == Foo(key=9, zap=9, bar=9)  # refilled in the new one


def test_a_resting_layer_is_skipped_by_batch_reads_too(resting: Outage) -> None:
    fast, middle, slow, chain = resting
    slow.batch_put(_foos(2))
    middle.down = True
    assert chain.batch_get(Foo, [0, 1]) == _foos(2)  # failed: it rests
    middle.down = False
    fast.clear()
    assert chain.batch_get(Foo, [0, 1]) == _foos(2)
    assert chain.layer_stats[1].count(Foo, "skipped") == 1
    assert middle.get(Foo, 0) is None  # not read, not filled


# -- the documented defaults, at their bounds -------------------------------------------------


def test_a_missed_write_is_retried_every_half_second_by_default() -> None:
    # docs/chained.md: a layer that missed writes is caught up with every
    # catch_up_interval (0.5 s) until it answers, even if this process never uses it again.
    fast, slow = Recording(), Recording()
    chain = ChainedStore([fast, slow])
    try:
        assert chain.catch_up_interval == 0.5
        chain.put(Foo(key=1, zap=1, bar=1, version="old"))
        fast.down = True
        chain.put(Foo(key=1, zap=1, bar=1, version="new"))  # fast misses it
        chain.put(Foo(key=2, zap=2, bar=2))  # and this: one timer retries both
        timers = [t for t in threading.enumerate() if t.name == "sa_stockpyle-catch-up"]
        assert len(timers) == 1
        assert timers[0].daemon  # it never keeps the process from exiting
        fast.calls = 0
        began = time.monotonic()
        time.sleep(2.0)
        tried, waited = fast.calls, time.monotonic() - began
        # No more attempts than one per 0.5 s (a loaded machine makes fewer, never more).
        assert 1 <= tried <= waited / 0.5 + 1, (tried, waited)
        fast.down = False  # back, and nobody uses the chain: the timer makes up for it
        assert until(lambda: chain.layer_stats[0].count(Foo, "caught_up") == 2, timeout=5.0)
        assert fast.get(Foo, 1) is None  # the old entry is gone
    finally:
        chain.close()


def test_a_reader_waits_50_ms_by_default_for_a_fresh_lease_then_reads_without_filling() -> None:
    fast, slow = Recording(), Recording()
    chain = ChainedStore([fast, slow], broadcast=False)
    assert chain.lease_wait == 0.05
    foo = Foo(key=1, zap=1, bar=1)
    slow.put(foo)
    other = fast.reserve(Foo, [1])  # another reader is filling the key (and never does)
    assert other.granted == [True]
    fast.reads.clear()
    began = time.monotonic()
    assert chain.get(Foo, 1) == foo
    waited = time.monotonic() - began
    assert waited >= 0.05  # it waited the whole lease_wait (a floor: load only adds)
    # The first read, then reads after 1, 2, 4, 8, 16 ms and at the 50 ms deadline: never
    # more than 7 in all (a loaded machine makes fewer).
    assert 2 <= len(fast.reads) <= 7, fast.reads
    assert chain.layer_stats[0].count(Foo, "waits") == 1
    assert fast.get(Foo, 1) is None  # gave up without filling: the lease is not its own
    fast.fill(other, [foo])  # the lease holder still may
    assert fast.get(Foo, 1) == foo


def test_a_waiting_reader_reads_again_after_each_doubled_pause_until_the_deadline() -> None:
    # The wait's schedule: pauses of 1, 2, 4, 8 and 16 ms, then the rest of lease_wait,
    # a read after each, none after.
    schedule = claims.pauses(0.05)
    assert schedule == pytest.approx([0.001, 0.002, 0.004, 0.008, 0.016, 0.019])
    assert sum(schedule) == pytest.approx(0.05)
    assert claims.pauses(0.0) == [0.0]
    assert claims.pauses(1.5, first=0.5) == [0.5, 1.0]  # no pause of zero, no read more
    # On the chain's clock standing still, the reader keeps to the schedule: the first
    # read, then one after each pause.
    fast, slow = Recording(), Recording()
    chain = ChainedStore([fast, slow], broadcast=False, monotonic=FakeClock(0.0))
    foo = Foo(key=1, zap=1, bar=1)
    slow.put(foo)
    fast.reserve(Foo, [1])  # another reader is filling the key (and never does)
    fast.reads.clear()
    assert chain.get(Foo, 1) == foo
    assert len(fast.reads) == 1 + len(schedule)
    chain.close()


class _SlowReads(Recording):
    """A layer whose every read takes ``cost`` seconds of ``clock``."""

    def __init__(self, clock: FakeClock, cost: float) -> None:
        super().__init__()
        self.clock, self.cost = clock, cost

    def read(self, keys: Sequence[str]) -> list[Any]:
        self.clock.advance(self.cost)
        return super().read(keys)


@pytest.mark.parametrize(("cost", "reads"), [(0.02, 3), (0.025, 2)])
def test_a_waiting_reader_stops_at_the_deadline_on_the_chains_clock(
    cost: float, reads: int
) -> None:
    # Reads of 20 ms each: after the claim, reads end at 20, 40 and 60 ms; the 50 ms
    # deadline has passed after the third, so no fourth follows.  Reads of 25 ms reach
    # the deadline itself with the second: none follows either.
    clock = FakeClock(0.0)
    fast, slow = _SlowReads(clock, cost), Recording()
    chain = ChainedStore([fast, slow], broadcast=False, monotonic=clock)
    foo = Foo(key=1, zap=1, bar=1)
    slow.put(foo)
    fast.reserve(Foo, [1])  # another reader is filling the key (and never does)
    fast.reads.clear()
    assert chain.get(Foo, 1) == foo
    assert len(fast.reads) == 1 + reads
    assert fast.get(Foo, 1) is None  # gave up without filling
    chain.close()


def test_a_lease_older_than_lease_busy_is_not_waited_for() -> None:
    clock = FakeClock()
    fast, slow = ProcessMemoryStore(clock=clock), Recording()
    chain = ChainedStore([fast, slow], broadcast=False, lease_wait=60.0)
    foo = Foo(key=1, zap=1, bar=1)
    slow.put(foo)
    crashed = fast.reserve(Foo, [1])  # a reader that will never fill
    assert crashed.granted == [True]
    clock.advance(fast.lease_busy - 0.01)
    assert fast.reserve(Foo, [1]).busy == [True]  # still young: worth waiting for
    clock.advance(0.02)  # now older than lease_busy (1 s)
    assert fast.lease_busy == 1.0
    assert fast.reserve(Foo, [1]).busy == [False]
    began = time.monotonic()
    assert chain.get(Foo, 1) == foo
    assert time.monotonic() - began < 30.0  # did not wait out the 60 s lease_wait
    assert chain.layer_stats[0].count(Foo, "waits") == 0
    assert fast.get(Foo, 1) is None  # and did not fill over the lease
    clock.advance(fast.tombstone_ttl)  # the lease itself expires: the next reader takes over
    assert chain.get(Foo, 1) == foo
    assert fast.get(Foo, 1) == foo


# -- a chain as a layer of another, and layers failing mid-lease -------------------------------


def test_a_chain_as_a_layer_reserves_and_fills_through_each_layer() -> None:
    fast, slow = Recording(), Recording()
    inner = ChainedStore([fast, slow], broadcast=False)
    foo = Foo(key=1, zap=1, bar=1)
    claim = inner.reserve(Foo, [1, 2])
    assert (claim.granted, claim.busy) == ([True, True], [False, False])
    second = inner.reserve(Foo, [1, 3])  # another reader: 1 is being filled, 3 is free
    assert (second.granted, second.busy) == ([False, True], [True, False])
    inner.fill(claim, [foo, None])
    assert (fast.get(Foo, 1), slow.get(Foo, 1)) == (foo, foo)
    assert inner.reserve(Foo, [2]).granted == [True]  # the lease that found nothing is back
    inner.fill(second, [None, None])
    fast.reserve(Foo, [7])  # a reader of the fast layer alone
    third = inner.reserve(Foo, [7])
    assert (third.granted, third.busy) == ([True], [True])  # one layer granted, one busy


def test_a_chain_as_a_layer_counts_a_layer_failing_to_reserve_or_fill(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fast, slow = Recording(), Recording()
    inner = ChainedStore([fast, slow], broadcast=False, cooldown=0)
    foo = Foo(key=1, zap=1, bar=1)
    fast.down = True
    claim = inner.reserve(Foo, [1])
    assert claim.granted == [True]  # the other layer's lease
    assert inner.layer_stats[0].count(Foo, "errors") == 1
    fast.down = False
    slow.down = True
    inner.fill(claim, [foo])  # the slow layer fails: counted, the rest goes on
    assert inner.layer_stats[1].count(Foo, "errors") == 1
    assert [record.getMessage() for record in caplog.records] == [
        f"sa_stockpyle: layer 0:Recording failed to reserve: {fast!r} is switched off",
        f"sa_stockpyle: layer 1:Recording failed to fill: {slow!r} is switched off",
    ]
    slow.down = False
    assert fast.get(Foo, 1) is None  # it reserved nothing, so it fills nothing
    assert slow.get(Foo, 1) is None
    # The last layer failed to reserve: the layers above still fill through their claims.
    slow.down = True
    claim = inner.reserve(Foo, [2])
    slow.down = False
    inner.fill(claim, [Foo(key=2, zap=2, bar=2)])
    assert fast.get(Foo, 2) == Foo(key=2, zap=2, bar=2)
    assert slow.get(Foo, 2) is None


class _FailsOnceReserved(Recording):
    """A layer that stops answering right after its next reserve (mid-lease)."""

    def reserve(self, klass: type, keys: Sequence[object]) -> Reservation:
        claim = super().reserve(klass, keys)
        self.down = True
        return claim


def test_waiting_for_other_readers_counts_every_key_and_a_layer_failing_meanwhile(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fast, slow = _FailsOnceReserved(), Recording()
    chain = ChainedStore([fast, slow], broadcast=False)
    foos = [Foo(key=i, zap=i, bar=i) for i in (1, 2)]
    slow.batch_put(foos)
    Recording.reserve(fast, Foo, [1, 2])  # other readers are filling both keys
    assert chain.batch_get(Foo, [1, 2]) == foos  # the wait failed: read from the next layer
    assert chain.layer_stats[0].count(Foo, "waits") == 2
    assert chain.layer_stats[0].count(Foo, "errors") == 1
    assert "layer 0:_FailsOnceReserved failed to read: " in caplog.text
    chain.close()


def test_a_closed_chain_schedules_no_more_catch_up(outage: Outage) -> None:
    _, middle, _, chain = outage
    middle.down = True
    chain.put(Foo(key=1, zap=1, bar=1))  # missed: a catch-up retry is scheduled
    layer = chain.health[1]
    retry = layer.retry
    assert retry is not None
    chain.close()
    retry.join()  # cancelled by close()
    layer.remember(classes=[Foo])  # what a catch-up failing while it closes does
    assert layer.retry is retry  # no new retry thread
