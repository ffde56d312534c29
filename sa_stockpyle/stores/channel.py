"""The publish/subscribe channel a shared store offers a chain's coherence:
:class:`Channel` and its :class:`Subscription`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

__all__ = ["Channel", "Subscription"]


class Subscription(ABC):
    """An open subscription to a :class:`Channel`."""

    @abstractmethod
    def receive(self, timeout: float) -> list[bytes]:
        """The messages that arrive within ``timeout`` seconds (often none).

        Raises :class:`~sa_stockpyle.errors.StoreUnavailable` once the subscription is
        lost (the connection closed, or the server stopped answering its health checks):
        messages may have been missed.
        """

    @abstractmethod
    def close(self) -> None:
        """Unsubscribe and release the connection."""


class Channel(ABC):
    """A publish/subscribe channel between processes, offered by a shared store."""

    @abstractmethod
    def publish(self, messages: Sequence[bytes]) -> None:
        """Send ``messages``, in order, with as few round trips as the backend allows."""

    @abstractmethod
    def subscribe(self) -> Subscription:
        """Open a subscription; raises StoreUnavailable when the server does not answer."""
