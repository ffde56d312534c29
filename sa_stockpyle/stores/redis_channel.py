"""Redis pub/sub as a :class:`~sa_stockpyle.stores.channel.Channel`: what a chain's
coherence broadcast travels on, with a PING-based watch for a server gone silent."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sa_stockpyle.errors import StoreTimeout
from sa_stockpyle.stores.backend_errors import ErrorTranslator
from sa_stockpyle.stores.channel import Channel, Subscription

if TYPE_CHECKING:
    from sa_stockpyle.stores.redis import RedisStore

__all__ = ["HEALTH_CHECK_INTERVAL", "MAX_SILENCE", "RedisChannel"]

#: Seconds between the PINGs a subscription sends to find out that its server is gone.
HEALTH_CHECK_INTERVAL = 1.0
#: A subscription that heard nothing, not even a PONG, for this long counts as lost.
MAX_SILENCE = 3.0


class RedisChannel(Channel):
    """The pub/sub channel ``name`` of a :class:`~sa_stockpyle.stores.RedisStore`."""

    def __init__(self, store: RedisStore, name: str) -> None:
        self.store = store
        self.name = name

    def publish(self, messages: Sequence[bytes]) -> None:
        """Send ``messages``, pipelined (one by one on a cluster)."""
        store = self.store
        with store._errors:
            if store._cluster:
                for message in messages:
                    store.client.publish(self.name, message)
                return
            pipe = store.client.pipeline(transaction=False)
            for message in messages:
                pipe.publish(self.name, message)
            pipe.execute()

    def subscribe(self) -> Subscription:
        """Subscribe, once the server has confirmed it."""
        store = self.store
        with store._errors:
            # redis-py annotates pubsub() from 8.2 on; the ignore serves older releases.
            pubsub = store.client.pubsub()  # type: ignore[no-untyped-call, unused-ignore]
            pubsub.subscribe(self.name)
            # Subscribed once the server confirms: only then is nothing published missed.
            deadline = time.monotonic() + MAX_SILENCE
            while time.monotonic() < deadline:
                message = pubsub.get_message(timeout=0.1)
                if message is not None and message["type"] in ("subscribe", "ssubscribe"):
                    return _RedisSubscription(pubsub, store._errors)
        pubsub.close()
        raise StoreTimeout(f"{store._errors.backend}: SUBSCRIBE was not confirmed")


class _RedisSubscription(Subscription):
    def __init__(self, pubsub: Any, errors: ErrorTranslator) -> None:
        self.pubsub = pubsub
        self.errors = errors
        self.pinged = self.heard = time.monotonic()

    def receive(self, timeout: float) -> list[bytes]:
        messages: list[bytes] = []
        with self.errors:
            if time.monotonic() - self.pinged >= HEALTH_CHECK_INTERVAL:
                # A frozen or partitioned server closes nothing: only its silence tells.
                self.pubsub.ping()
                self.pinged = time.monotonic()
            message = self.pubsub.get_message(timeout=timeout)
            while message is not None:
                self.heard = time.monotonic()
                if message["type"] in ("message", "smessage"):
                    messages.append(message["data"])
                message = self.pubsub.get_message(timeout=0)
        if time.monotonic() - self.heard > MAX_SILENCE:
            raise StoreTimeout(f"{self.errors.backend}: no answer to PING in {MAX_SILENCE} s")
        return messages

    def close(self) -> None:
        # Closing a connection that broke may fail in any way; it is gone either way.
        with contextlib.suppress(Exception):
            self.pubsub.close()
