"""Code that must run again in a forked child (gunicorn --preload, Celery's prefork pool,
multiprocessing's fork context): :func:`watch_forks`."""

from __future__ import annotations

import os
import weakref
from typing import Any

__all__ = ["watch_forks"]

# Objects whose after_fork() runs in every forked child of this process (gunicorn --preload,
# Celery's prefork pool, multiprocessing's fork context): the child has only the forking
# thread, so a lock another thread held would never be released, and a background thread
# is gone.
_FORK_AWARE: weakref.WeakSet[Any] = weakref.WeakSet()


def watch_forks(obj: Any) -> None:
    """Call ``obj.after_fork()`` in every forked child of this process."""
    _FORK_AWARE.add(obj)


def _in_forked_child() -> None:
    for obj in list(_FORK_AWARE):
        obj.after_fork()


os.register_at_fork(after_in_child=_in_forked_child)
