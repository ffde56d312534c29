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
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.util import concurrency

__all__ = ["blocking", "in_greenlet", "on_event_loop", "pause", "run", "wait_for"]

T = TypeVar("T")


def _never() -> bool:
    return False


#: Whether this code runs in a greenlet that may await (started by :func:`run`, or by
#: ``AsyncSession``); never without the greenlet package (the ``asyncio`` extra), where
#: SQLAlchemy's own check would raise.
in_greenlet: Callable[[], bool] = (
    concurrency.in_greenlet if importlib.util.find_spec("greenlet") is not None else _never
)

#: ``wait_for(awaitable)``: await it from synchronous code running in a greenlet.
wait_for: Callable[[Awaitable[Any]], Any] = getattr(concurrency, "await_", None) or (
    concurrency.await_only
)


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


def blocking(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, a call that blocks (a wait for another thread): in a greenlet, on a
    worker thread, while the event loop runs other tasks."""
    if in_greenlet():
        result: T = wait_for(asyncio.to_thread(fn, *args))
        return result
    return fn(*args)
