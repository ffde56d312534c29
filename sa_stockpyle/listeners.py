"""Every SQLAlchemy event listener sa_stockpyle installs, and who holds it.

The one module that calls ``event.listen`` and ``event.remove``.  An owner (an
:class:`~sa_stockpyle.orm.Attachment`, a
:class:`~sa_stockpyle.stores.SqlAlchemyStore`, a migration's check) installs its
listeners through a :class:`Listeners` set and removes them all with one call
(``detach()``, ``close()``).  A listener several owners install on one target (two
stores sharing a ``scoped_session``) is installed once and counted: it stays until its
last owner removes it.  Listeners go on the sessions, sessionmakers, engines or
connections they serve, never on a mapper, whose load events fire for every session in
the process.  (``attach(engine)`` and ``attach(SessionSubclass)`` listen on a ``Session``
class: every session of it runs the flush and transaction listeners, which return at
once for a session bound elsewhere.)

Two kinds of listener stay for the life of their target, installed with
:func:`listen_for_life`: a joined connection's rollback watch
(:mod:`sa_stockpyle.connections`), and, on the ``Mapper`` class, the reset of the
table-to-class cache when a class is mapped (:mod:`sa_stockpyle.mapped`).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

from sqlalchemy import event

__all__ = ["Listeners", "listen_for_life"]

#: (event name, function): one listener of a target
_Listener = tuple[str, Callable[..., Any]]

#: Per target, how many owners hold each of its listeners.  Weak, as SQLAlchemy's own
#: event registry is: a listener never keeps an engine or a session alive.
_HELD: weakref.WeakKeyDictionary[Any, dict[_Listener, int]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


class Listeners:
    """The event listeners one owner installed; :meth:`remove` takes them all away."""

    def __init__(self) -> None:
        self._held: weakref.WeakKeyDictionary[Any, list[_Listener]] = weakref.WeakKeyDictionary()

    def listen(self, target: Any, name: str, function: Callable[..., Any], **options: Any) -> None:
        """Install ``function`` for ``target``'s ``name`` event (``event.listen``'s
        options), unless another owner already did; held until :meth:`remove`."""
        listener = (name, function)
        if listener in self._held.get(target, ()):
            return  # held already (attach() asks at every transaction's begin)
        with _LOCK:
            mine = self._held.setdefault(target, [])
            if listener in mine:
                return
            counts = _HELD.setdefault(target, {})
            if not counts.get(listener):
                event.listen(target, name, function, **options)
            counts[listener] = counts.get(listener, 0) + 1
            mine.append(listener)

    def remove(self) -> None:
        """Let go of every listener; those no other owner holds are removed."""
        with _LOCK:
            for target, mine in list(self._held.items()):
                counts = _HELD.get(target, {})
                for listener in reversed(mine):
                    left = counts.pop(listener, 1) - 1
                    if left:
                        counts[listener] = left
                    elif event.contains(target, *listener):
                        event.remove(target, *listener)
            self._held.clear()

    def __len__(self) -> int:
        return sum(map(len, self._held.values()))


def listen_for_life(target: Any, name: str, function: Callable[..., Any]) -> None:
    """Install a listener once for the life of ``target``; it is never removed."""
    if not event.contains(target, name, function):
        event.listen(target, name, function)
