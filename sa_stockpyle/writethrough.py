"""Writing a committed transaction through a store: what to write for each flushed
object, and the write itself, started right after the COMMIT and finished later.

Nothing here raises into the application: the database has committed, and raising would
tell the caller otherwise.  Failures are logged and counted in the attachment's stats.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from sa_stockpyle.changes import Buffer
from sa_stockpyle.codec import carriable
from sa_stockpyle.column_values import Check
from sa_stockpyle.errors import PayloadError
from sa_stockpyle.greenlets import cancellation_deferred, in_greenlet
from sa_stockpyle.snapshots import restore, snapshot
from sa_stockpyle.stores.base import BaseStore, Finish, Removal, Start
from sa_stockpyle.stores.stats import Stats

__all__ = ["WriteThrough"]

log = logging.getLogger("sa_stockpyle")


class WriteThrough:
    """Writes committed buffers through ``store``, counting in ``stats``.

    Parameters:
        store: the attached store.
        stats: the attachment's counters (``written``, ``removed``,
            ``class_invalidations``, ``errors``, ``inexact``, ``refused``).
        primary_of: the primary-key attribute names of a storable class.
    """

    def __init__(
        self, store: BaseStore, stats: Stats, primary_of: Callable[[type], tuple[str, ...]]
    ) -> None:
        self.store = store
        self.stats = stats
        self.primary_of = primary_of

    def __repr__(self) -> str:
        return f"<WriteThrough to {self.store!r}>"

    def committed_copy(self, obj: object, checks: dict[str, Check]) -> object | None:
        """The detached copy of ``obj`` to write through at commit, or None, and every
        layer removes it instead (the rest of the commit is written as usual): when one of
        its values may differ from what the database stored (see
        :mod:`sa_stockpyle.column_values`; counted as ``inexact``), or when a shared layer
        could not carry one (logged, counted as ``refused``)."""
        try:
            state = snapshot(obj)
        except PayloadError as exc:  # expired, or a value that does not copy
            self._refused(obj, exc)
            return None
        for name, value in state.items():
            check = checks.get(name)
            if check is not None and not check(value):
                log.debug("sa_stockpyle: %s.%s is removed at commit", type(obj).__qualname__, name)
                self.stats.add(type(obj), "inexact")
                return None
        try:
            carriable(type(obj), state)
        except PayloadError as exc:
            self._refused(obj, exc)
            return None
        put: object = restore(type(obj), state, owned=True)
        return put

    def _refused(self, obj: object, exc: Exception) -> None:
        log.warning(
            "sa_stockpyle: a %s will be removed from the caches at commit, not written: %s",
            type(obj).__qualname__,
            exc,
        )
        self.stats.add(type(obj), "refused")

    def writers(self, buffer: Buffer) -> tuple[Callable[[], None], Callable[[], None]]:
        """What writes ``buffer`` through at once, and its removals only; neither raises."""

        def write(what: Buffer) -> None:
            finish = self.start(what)
            if finish is not None:
                finish()

        return (lambda: write(buffer)), (lambda: write(buffer.removals_only(self.primary_of)))

    def prepare(self, buffer: Buffer) -> Start:
        """Build the write of ``buffer``, a transaction's whose COMMIT is on its way (see
        :meth:`BaseStore.prepare_committed`); the call returned is for :meth:`start`.
        Nothing is written or counted here, and nothing raises: what fails to build is
        built again by the start, which counts it."""
        puts, removals = buffer.written()
        prepared = None
        # With classes to invalidate, the write is built after their new generations.
        if not buffer.classes:
            try:
                prepared = self.store.prepare_committed(puts, removals)
            except Exception:
                prepared = None
        return self._starter(buffer, puts, removals, prepared)

    def start(self, buffer: Buffer, prepared: Start | None = None) -> Finish | None:
        """Start writing a committed transaction's buffer through (see
        :meth:`BaseStore.start_committed`), with the write :meth:`prepare` built for it
        if there is one; the call returned finishes it, None when it failed to start or
        is finished already.  Neither raises: the database has committed, and raising
        would tell the caller otherwise.

        In a greenlet (an ``AsyncSession``'s commit) the write is finished here, whole: a
        cancellation of the task meanwhile is requested again once every layer has the
        commit (a write cut short would leave the replaced entries in the caches)."""
        begin = prepared or self._starter(buffer, *buffer.written(), None)
        if not in_greenlet():
            return begin()
        with cancellation_deferred():
            finish = begin()
            if finish is not None:
                finish()
        return None

    def _starter(
        self,
        buffer: Buffer,
        puts: list[object],
        removals: list[Removal],
        prepared: Start | None,
    ) -> Start:
        """The start of ``buffer``'s write of ``puts`` and ``removals``, with the store's
        write ``prepared`` ahead, or not."""
        written = Counter(type(obj) for obj in puts)
        removed = Counter(klass for klass, _ in removals)

        def start() -> Finish | None:
            try:
                for klass in buffer.classes:
                    self.store.invalidate_class(klass)
                    self.stats.add(klass, "class_invalidations")
                started = prepared() if prepared else self.store.start_committed(puts, removals)
            except Exception:
                self._failed(puts, removals)
                return None

            def finish() -> None:
                try:
                    if started is not None:
                        started()
                except Exception:
                    self._failed(puts, removals)
                    return
                for klass, count in written.items():
                    self.stats.add(klass, "written", count)
                for klass, count in removed.items():
                    self.stats.add(klass, "removed", count)

            return finish

        return start

    def _failed(self, puts: list[object], removals: list[Removal]) -> None:
        log.exception("sa_stockpyle: write-through after commit failed in %r", self)
        for klass in {type(obj) for obj in puts} | {k for k, _ in removals}:
            self.stats.add(klass, "errors")
