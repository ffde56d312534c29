"""Stores whose backend other processes share: records travel as codec bytes.

Whatever another process wrote under a key can at worst be a counted miss, or a
well-formed entry of the right class and key (see docs/security.md); with a
``signing_key``, not even that: every payload and every invalidation message carries a
MAC of itself (:class:`~sa_stockpyle.signing.Signer`) under a key the application's
processes share.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sa_stockpyle.codec import (
    Marker,
    Record,
    decode_marker,
    decode_record,
    encode_marker,
    encode_record,
    entry_version,
)
from sa_stockpyle.errors import PayloadError
from sa_stockpyle.signing import Signer
from sa_stockpyle.stores.channel import Channel, Subscription

__all__ = ["SharedPayloads", "SignedChannel"]


class SharedPayloads:
    """Mixin for stores whose backend other processes share: records travel as codec bytes.

    Put it before the store base class (``class RedisStore(SharedPayloads,
    BaseKeyValueStore)``); decoding goes through the codec's allow-list, so whatever
    another process wrote under a key can at worst be a counted miss, or a well-formed
    entry of the right class and key.  With a ``signing_key`` (keyword argument, bytes
    shared by every process of the application) each payload carries a MAC of itself,
    and one without a valid signature is a counted miss too; so do the messages of the
    store's :meth:`channel`, if it has one.
    """

    #: Every decoded record is new: restoring an object may take its state over.
    decodes_copies = True

    def __init__(self, *args: Any, signing_key: bytes | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._signer = None if signing_key is None else Signer(signing_key)

    def encode(self, record: Record) -> bytes:
        data = encode_record(record)
        signer = self._signer
        return data if signer is None else signer.sign(data)

    def decode(self, raw: Any, klass: type) -> Record:
        signer = self._signer
        return decode_record(raw if signer is None else signer.verify(raw), klass)

    def encode_marker(self, marker: Marker) -> bytes:
        return encode_marker(marker)

    def marker_of(self, raw: Any) -> Marker | None:
        return decode_marker(raw) if isinstance(raw, bytes) else None

    def version_held(self, raw: Any) -> int | None:
        return entry_version(raw) if isinstance(raw, bytes) else None

    def channel(self, name: str) -> Channel | None:
        """The backend's channel ``name`` (see :meth:`BaseStore.channel`), its messages
        signed with the store's ``signing_key`` when it has one."""
        channel = self.backend_channel(name)
        signer = self._signer
        if channel is None or signer is None:
            return channel
        return SignedChannel(channel, signer)

    def backend_channel(self, name: str) -> Channel | None:
        """The backend's own channel ``name``, or None (the default: it has none)."""
        return None


class SignedChannel(Channel):
    """A channel whose messages ``signer`` signs.  A message received without a valid
    signature is handed on as ``b""``, which no decoder accepts: the subscriber counts it
    as corrupt and ignores it."""

    def __init__(self, channel: Channel, signer: Signer) -> None:
        self.channel = channel
        self.signer = signer

    def publish(self, messages: Sequence[bytes]) -> None:
        """Sign and send ``messages``."""
        self.channel.publish([self.signer.sign(data) for data in messages])

    def subscribe(self) -> Subscription:
        """Open a subscription that checks every message's signature."""
        return _SignedSubscription(self.channel.subscribe(), self.signer)


class _SignedSubscription(Subscription):
    def __init__(self, subscription: Subscription, signer: Signer) -> None:
        self.subscription = subscription
        self.signer = signer

    def receive(self, timeout: float) -> list[bytes]:
        return [self._verified(data) for data in self.subscription.receive(timeout)]

    def _verified(self, data: bytes) -> bytes:
        try:
            return self.signer.verify(data)
        except PayloadError:
            return b""

    def close(self) -> None:
        self.subscription.close()
