"""Synchronous code that awaits: the bridge between the stores' decisions and asyncio.

The stores decide everything in synchronous code.  An asyncio caller runs that code in
a greenlet (:func:`run`), the way SQLAlchemy's ``AsyncSession`` runs its synchronous ORM,
and the code's I/O awaits the asyncio client (:func:`wait_for`): the greenlet switches
back to the event loop, which runs other tasks until the reply arrives.  ``attach()``'s
listeners already run inside ``AsyncSession``'s greenlet, so a commit's write-through
awaits the same way.  Synchronous callers run the same code with no greenlet and pay
nothing for it.

The bridge is SQLAlchemy's own (``sqlalchemy.util.concurrency``, on 2.0 and 2.1): a
store's code that awaits must run in the greenlets SQLAlchemy starts, since ``attach()``'s
listeners run in them.

Rules for code that may run in a greenlet: no thread lock is held across a call that may
await (another task of the same thread would wait for it on the loop's own thread, which
would never run the task holding it), and nothing waits except through :func:`pause` or
:func:`blocking`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy.util import concurrency

__all__ = [
    "blocking",
    "cancellation_deferred",
    "current",
    "in_greenlet",
    "on_event_loop",
    "pause",
    "run",
    "run_apart",
    "wait_for",
    "wait_until",
]

T = TypeVar("T")


def _never() -> bool:
    return False


#: Whether this code runs in a greenlet that may await (started by :func:`run`, or by
#: ``AsyncSession``); never without the greenlet package (the ``asyncio`` extra), where
#: SQLAlchemy's own check would raise.
in_greenlet: Callable[[], bool] = (
    concurrency.in_greenlet if importlib.util.find_spec("greenlet") is not None else _never
)

_await: Callable[[Awaitable[Any]], Any] = getattr(concurrency, "await_", None) or (
    concurrency.await_only
)

#: Per greenlet that defers cancellation (see :func:`cancellation_deferred`): the
#: cancellations it caught so far.
_DEFERRING: weakref.WeakKeyDictionary[Any, list[BaseException]] = weakref.WeakKeyDictionary()


def wait_for(awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` from synchronous code running in a greenlet.

    Inside :func:`cancellation_deferred`, a cancellation of the task does not interrupt
    the wait: the awaitable runs to its end (each is bounded by its server's timeout),
    and the cancellation is requested again when the deferring block ends.
    """
    caught = _DEFERRING.get(current()) if _DEFERRING else None
    if caught is None:
        result: T = _await(awaitable)
        return result
    return _wait_held(_relayed(awaitable), caught)


def run_apart(fn: Callable[[], T], alongside: Callable[[], object] | None = None) -> T:
    """``fn()``, synchronous code that awaits (an asyncio driver's COMMIT, whose awaits
    are SQLAlchemy's own), run in a greenlet and task of its own, to its end: a
    cancellation of the caller's task does not reach it, and is requested again once it
    has ended (see :func:`cancellation_deferred`).  ``alongside``, if given, runs on the
    event loop, outside any greenlet, right after ``fn`` has run up to its first wait
    (or to its end); it must neither raise nor await.  Call it in a greenlet only."""
    with cancellation_deferred():
        held = _relayed(concurrency.greenlet_spawn(fn))
        # After the relay's first step, which runs ``fn`` up to its first wait.
        extra = None if alongside is None else asyncio.get_running_loop().call_soon(alongside)
        try:
            return _wait_held(held, _DEFERRING[current()])
        finally:
            if extra is not None:
                extra.cancel()  # not run yet: ``fn`` never waited


def _relayed(awaitable: Awaitable[T]) -> _Held[T]:
    """``awaitable``, started in a task of its own, which a cancellation of the caller's
    task does not reach; the task hands its outcome over itself (one event-loop turn
    sooner than ``asyncio.shield``, which relays it through a callback)."""
    loop = asyncio.get_running_loop()
    held: _Held[T] = _Held(loop=loop)
    held.awaitable = awaitable
    # A Task made here, not by the loop's task factory: an eager one would run its first
    # step in this greenlet, and the greenlets it starts would return into this one.
    held.relay = asyncio.Task(_relay(awaitable, held), loop=loop)
    held.relay.add_done_callback(held.settle)
    return held


def _wait_held(held: _Held[T], caught: list[BaseException]) -> T:
    """The outcome of ``held``; a cancellation of the task meanwhile is added to
    ``caught``, for :func:`cancellation_deferred` to request again."""
    try:
        done: T = _await(held)
        return done
    except asyncio.CancelledError as exc:
        if not held.done() or held.cancelled():
            raise  # the awaitable itself was cancelled (its loop is closing)
        caught.append(exc)
        return held.result()


class _Held(asyncio.Future[T]):
    """The outcome of an awaitable run by :func:`_relay`: a cancellation of the task
    awaiting it does not cancel it (``cancel`` refuses), so the task is cancelled only
    once the outcome is in."""

    #: what the relay awaits
    awaitable: Awaitable[T]
    #: the task running the relay (held here: the loop keeps only a weak reference)
    relay: asyncio.Future[None]

    def cancel(self, msg: Any = None) -> bool:
        return False

    def settle(self, relay: asyncio.Future[None]) -> None:
        """When the relay ended without handing an outcome over (cancelled, even before
        its first step as a loop's shutdown cancels every task, or interrupted):
        cancelled too."""
        if not self.done():
            asyncio.Future.cancel(self)
            if asyncio.iscoroutine(self.awaitable):
                self.awaitable.close()  # never started: closed, not left unawaited


async def _relay(awaitable: Awaitable[T], held: _Held[T]) -> None:
    """Await ``awaitable`` and hand its outcome to ``held``."""
    try:
        result = await awaitable
    except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
        raise  # ``held`` is cancelled by its settle; an interrupt stops the loop, once
    except BaseException as exc:  # handed over whole, as the await would raise it
        held.set_exception(exc)
        return
    held.set_result(result)


@contextmanager
def cancellation_deferred() -> Iterator[None]:
    """A block that a cancellation of its task does not cut short: what must not stop
    halfway (a COMMIT sent to the database, a committed transaction's write-through, a
    layer's catch-up) finishes.  A cancellation that arrived meanwhile is requested again
    when the block ends, so the task's next ``await`` raises it, as the task's
    canceller (``asyncio.timeout``, a task group) expects; nothing raises it inside the
    block's caller (SQLAlchemy's commit, which goes on to close its transaction).
    Outside a greenlet, nothing changes.

    Only the block's waits through :func:`wait_for` (and :func:`pause`,
    :func:`blocking`) are covered: code whose awaits are SQLAlchemy's own (a driver's
    COMMIT) runs under :func:`run_apart` instead."""
    running = current() if in_greenlet() else None
    if running is None or running in _DEFERRING:  # not a greenlet's, or nested
        yield
        return
    caught = _DEFERRING[running] = []
    try:
        yield
    finally:
        del _DEFERRING[running]
        if caught:
            _cancel_again()


def _cancel_again() -> None:
    """Request again the cancellation of the current task that a deferring block caught:
    one request, as the canceller made (``uncancel`` first, from Python 3.11 on, so
    that ``asyncio.timeout`` still tells its own cancellation apart)."""
    task = asyncio.current_task()
    if task is None:
        return
    uncancel = getattr(task, "uncancel", None)
    if uncancel is not None:
        uncancel()
    task.cancel()


def current() -> Any:
    """The greenlet running this code (call it only where :func:`in_greenlet`)."""
    from greenlet import getcurrent  # noqa: PLC0415 - present whenever a greenlet runs

    return getcurrent()


async def run(fn: Callable[..., T], *args: Any) -> T:
    """Await ``fn(*args)``, run in a greenlet whose I/O awaits (:func:`wait_for`)."""
    return await concurrency.greenlet_spawn(fn, *args)


def on_event_loop() -> bool:
    """Whether this thread runs an event loop (a call that blocks here blocks it)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def pause(seconds: float) -> None:
    """Sleep: in a greenlet, the event loop runs other tasks meanwhile."""
    if in_greenlet():
        wait_for(asyncio.sleep(seconds))
    else:
        time.sleep(seconds)


def wait_until(event: threading.Event, timeout: float) -> bool:
    """``event.wait(timeout)``: in a greenlet, polled with ``asyncio.sleep`` (no worker
    thread is held, however many tasks wait); returns whether the event is set."""
    if not in_greenlet():
        return event.wait(timeout)
    deadline = time.monotonic() + timeout
    step = 0.001
    while not event.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        pause(min(step, remaining))
        step = min(step * 2, 0.05)
    return True


def blocking(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, a call that blocks (a wait for another thread): in a greenlet, on a
    worker thread, while the event loop runs other tasks."""
    if in_greenlet():
        result: T = wait_for(asyncio.to_thread(fn, *args))
        return result
    return fn(*args)
