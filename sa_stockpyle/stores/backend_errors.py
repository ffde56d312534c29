"""The error policy at a store's boundary with its server: :class:`ErrorTranslator`."""

from __future__ import annotations

from types import TracebackType

from sa_stockpyle.errors import StoreTimeout, StoreUnavailable

__all__ = ["ErrorTranslator"]


class ErrorTranslator:
    """The error policy at a store's boundary, as a context manager: ``with self._errors:``.

    Exceptions of ``timeouts`` become :class:`~sa_stockpyle.errors.StoreTimeout`, those of
    ``failures`` :class:`~sa_stockpyle.errors.StoreUnavailable`, chained with
    ``raise ... from``; anything else (a bug, not an outage) passes through unchanged.
    Stateless, so one instance serves every thread of a store.

    Parameters:
        backend: names the server in messages, e.g. ``"Redis at redis://host:6379/0"``.
        timeouts: exception types meaning "no answer in time".
        failures: exception types meaning "cannot be reached or cannot serve now".
    """

    def __init__(
        self,
        backend: str,
        timeouts: tuple[type[BaseException], ...],
        failures: tuple[type[BaseException], ...],
    ) -> None:
        self.backend = backend
        self.timeouts = timeouts
        self.failures = failures

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            return
        if isinstance(exc, self.timeouts):
            raise StoreTimeout(f"{self.backend} did not answer in time: {exc}") from exc
        if isinstance(exc, self.failures):
            raise StoreUnavailable(f"{self.backend} is unavailable: {exc}") from exc
