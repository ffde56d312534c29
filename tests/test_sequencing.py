"""The numbering of broadcast messages and what a subscriber tells from it, clock injected;
and a forked child's identity of its own, over a real Redis."""

from __future__ import annotations

import multiprocessing
from multiprocessing.connection import Connection

import pytest
import redis

from sa_stockpyle.messages import Invalidation, decode_invalidation
from sa_stockpyle.stores import ChainedStore, RedisStore, sequencing
from sa_stockpyle.stores.sequencing import SILENT_BEATS, Numbering, Tracker
from sa_stockpyle.testing import Foo
from tests.helpers import until


def _message(origin: str, seq: int, kind: str = "", heartbeat: float = 1.0) -> Invalidation:
    return Invalidation(origin, 0.0, [], [], seq, kind, heartbeat)


def test_messages_are_numbered_and_signals_repeat_the_last_number() -> None:
    numbering = Numbering(heartbeat=0.5)
    assert numbering.due_in(0.0) < 0  # the first heartbeat goes at once
    assert numbering.signal("beat").seq == 0
    first = numbering.message([(Foo, {"key": 1})], [])
    second = numbering.message([], [Foo])
    assert (first.seq, second.seq) == (1, 2)
    assert first.origin == second.origin == numbering.origin
    assert (first.kind, first.heartbeat) == ("", 0.5)
    bye = numbering.signal("bye")
    assert (bye.seq, bye.kind, bye.removals, bye.classes) == (2, "bye", [], [])
    numbering.sent_at = 10.0
    assert numbering.due_in(10.2) == pytest.approx(0.3)


def test_a_number_skipped_is_a_gap_of_that_many() -> None:
    tracker = Tracker()
    assert tracker.heard(_message("a", 0, "beat"), 0.0) == 0  # first heard: nothing to tell
    assert tracker.heard(_message("a", 1), 0.1) == 0
    assert tracker.heard(_message("a", 4), 0.2) == 2  # 2 and 3 lost
    assert tracker.heard(_message("a", 3), 0.3) == 0  # came late: no gap, and no rewind
    assert tracker.heard(_message("a", 5), 0.4) == 0
    assert tracker.heard(_message("b", 7), 0.5) == 0  # another publisher, first heard
    assert tracker.heard(_message("b", 8), 0.6) == 0


def test_a_heartbeat_past_the_last_number_is_a_gap() -> None:
    tracker = Tracker()
    tracker.heard(_message("a", 2), 0.0)
    assert tracker.heard(_message("a", 2, "beat"), 1.0) == 0
    assert tracker.heard(_message("a", 3, "beat"), 2.0) == 1  # message 3 never came
    assert tracker.heard(_message("a", 5, "bye"), 3.0) == 2  # nor 4 and 5
    assert tracker.heard(_message("a", 9), 4.0) == 0  # gone: a new start


def test_a_publisher_unheard_for_its_bound_falls_silent_once() -> None:
    tracker = Tracker()
    tracker.heard(_message("a", 0, "beat", heartbeat=1.0), 0.0)
    tracker.heard(_message("b", 0, "beat", heartbeat=10.0), 0.0)
    assert tracker.silenced(SILENT_BEATS * 1.0) == 0  # just at the bound
    assert tracker.silenced(SILENT_BEATS * 1.0 + 0.1) == 1  # a, by its own interval
    assert tracker.silenced(SILENT_BEATS * 5.0) == 0  # counted once
    assert tracker.heard(_message("a", 2, "beat"), 20.0) == 2  # back: its gap shows
    assert tracker.silenced(20.0 + SILENT_BEATS * 1.0) == 0
    assert tracker.silenced(SILENT_BEATS * 10.0 + 0.1) == 2  # b, and a again


def test_a_goodbye_is_no_silence_and_unnumbered_messages_tell_nothing() -> None:
    tracker = Tracker()
    tracker.heard(_message("a", 3), 0.0)
    assert tracker.heard(_message("a", 3, "bye"), 0.5) == 0
    assert tracker.silenced(1000.0) == 0
    assert tracker.heard(Invalidation("old", 0.0, [], []), 0.0) == 0
    assert tracker.silenced(1000.0) == 0


def test_after_a_resubscription_the_silence_bound_starts_again() -> None:
    tracker = Tracker()
    tracker.heard(_message("a", 0, "beat"), 0.0)
    tracker.resubscribed(100.0)  # the local layers were just cleared
    assert tracker.silenced(100.0 + SILENT_BEATS * 1.0) == 0
    assert tracker.silenced(100.0 + SILENT_BEATS * 1.0 + 0.1) == 1


def test_publishers_remembered_are_bounded_the_silent_forgotten_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sequencing, "MAX_PUBLISHERS", 3)
    tracker = Tracker()
    tracker.heard(_message("old", 1), 0.0)
    tracker.heard(_message("a", 1), 9.0)
    tracker.heard(_message("b", 1), 9.0)
    assert tracker.silenced(9.5) == 1  # "old"
    tracker.heard(_message("c", 1), 9.6)  # one too many: "old" is forgotten
    assert tracker.heard(_message("old", 5), 9.7) == 0  # so its gap goes unseen
    tracker.heard(_message("d", 1), 9.8)  # none silent: the longest unheard goes ("a")
    assert tracker.heard(_message("a", 5), 9.9) == 0
    assert tracker.heard(_message("d", 3), 9.9) == 1  # the rest are still known


def _forked_child(redis_url: str, chain: ChainedStore, pipe: Connection) -> None:
    chain.write_committed([], [(Foo, {"key": 2})])
    assert chain.coherence is not None
    pipe.send(chain.coherence.origin)
    chain.close()  # sends what is queued, then its goodbye


def test_a_forked_child_publishes_under_an_identity_of_its_own(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    pubsub.subscribe("stockpyle:0:invalidations")
    heard: list[Invalidation] = []

    def hear(count: int) -> bool:
        message = pubsub.get_message(timeout=0.1)
        if message is not None and message["type"] == "message":
            heard.append(decode_invalidation(message["data"]))
        return len(heard) >= count

    chain = ChainedStore([RedisStore(url=redis_url)])
    try:
        assert chain.coherence is not None
        parent = chain.coherence.origin
        chain.write_committed([], [(Foo, {"key": 1})])
        assert until(lambda: hear(2))  # its first heartbeat, message 1
        ours, theirs = multiprocessing.Pipe()
        context = multiprocessing.get_context("fork")
        process = context.Process(target=_forked_child, args=(redis_url, chain, theirs))
        process.start()
        assert ours.poll(30)
        child = ours.recv()
        process.join(30)
        assert process.exitcode == 0
        chain.write_committed([], [(Foo, {"key": 3})])

        def numbered(origin: str) -> list[tuple[str, int]]:
            # Heartbeats after the first come whenever a publisher was quiet for a second
            # (a loaded machine forks slowly): only the numbering is asserted.
            return [
                (m.kind, m.seq)
                for m in heard
                if m.origin == origin and (m.kind != "beat" or m.seq == 0)
            ]

        def all_heard() -> bool:
            hear(0)  # one message more, if there is one
            return len(numbered(parent)) >= 3 and len(numbered(child)) >= 3

        # The child's heartbeat, message and goodbye, and the parent's second message.
        assert until(all_heard, timeout=30)
    finally:
        chain.close()
        pubsub.close()
        client.close()
    assert child != parent
    assert numbered(parent) == [("beat", 0), ("", 1), ("", 2)]
    assert numbered(child) == [("beat", 0), ("", 1), ("bye", 1)]
