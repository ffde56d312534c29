"""Namespace generations (:class:`Generations`): how a key-value store makes every entry
of a class unreachable at once, in every process that shares its backend.

Every class's keys carry a generation made of tokens read from the backend, so that
``invalidate_class()`` can make all of a class's entries unreachable at once, in every
process: it writes new tokens.  A mapped class's tokens are its tables' (see
:meth:`KeyMaker.generation_keys <sa_stockpyle.keys.KeyMaker.generation_keys>`), so every
release's model of a table, whatever its schema fingerprint, loses its entries with the
others: a migration run by any release, up or down, leaves no release's old entries
reachable.  A missing token (never set, evicted, server restarted empty) is replaced by a
new random one, never taken as "no generation", so entries written under an older token
can never come back.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from sa_stockpyle.keys import storage_classes
from sa_stockpyle.stores.base import Finish, finish_write
from sa_stockpyle.stores.ops import Op, OpKind, soonest_expiry, unexpired

if TYPE_CHECKING:
    from sa_stockpyle.stores.keyvalue import BaseKeyValueStore

__all__ = ["MAX_GENERATION_RETRIES", "Generations"]

#: How often a write is made again when another process keeps starting new namespace
#: generations of its classes while it writes (each new generation starts empty).
MAX_GENERATION_RETRIES = 3


class Generations:
    """The namespace generations of one key-value store's classes: learned from its
    backend (or, where :attr:`~sa_stockpyle.stores.BaseKeyValueStore.shared_generations`
    is False, kept in this process), started where missing, and checked after every
    conditional write."""

    def __init__(self, store: BaseKeyValueStore) -> None:
        self.store = store

    def learn(self, objs: Sequence[object]) -> None:
        """Know the generation of every class ``objs`` are stored under."""
        self.learn_classes(
            {c for obj in objs for c in storage_classes(type(obj), self.store.polymorphic)}
        )

    def learn_classes(self, classes: Iterable[type]) -> None:
        """Know the generation of each of ``classes``: read where not known yet."""
        keymaker = self.store.keymaker
        unknown = [c for c in classes if c not in keymaker.generations]
        if not unknown:
            return
        keys = list(dict.fromkeys(key for c in unknown for key in keymaker.generation_keys(c)))
        if not self.store.shared_generations:
            held = keymaker.tokens
            keymaker.set_tokens({key: held.get(key) or secrets.token_hex(4) for key in keys})
            return
        self.adopt(keys, self.store.read(keys))

    def adopt(self, keys: Sequence[str], raws: Sequence[Any]) -> None:
        """Use the generation tokens ``raws`` read at ``keys``; start one where none is."""
        tokens = _tokens(keys, raws)
        missing = [key for key in keys if key not in tokens]
        if missing:
            # Added only where none is: processes that all find one missing (a restarted
            # server) agree on the first one written instead of replacing each other's.
            new = {key: secrets.token_hex(4) for key in missing}
            added = self.store.apply_unexpired(
                [Op(OpKind.ADD, key, new[key].encode(), None) for key in missing]
            )
            won = {key: new[key] for key, done in zip(missing, added, strict=True) if done}
            lost = [key for key in missing if key not in won]
            found = _tokens(lost, self.store.read(lost)) if lost else {}
            # Gone again since another process added it (evicted at once): start one anyway.
            gone = {key: new[key] for key in lost if key not in found}
            if gone:
                self.store.write([(key, token.encode(), None) for key, token in gone.items()])
            tokens |= won | found | gone
        self.store.keymaker.set_tokens(tokens)

    def invalidate(self, klass: type) -> None:
        """Start new generation tokens for ``klass`` (see
        :meth:`BaseKeyValueStore.invalidate_class
        <sa_stockpyle.stores.BaseKeyValueStore.invalidate_class>`)."""
        store = self.store
        tokens = {key: secrets.token_hex(4) for key in store.keymaker.generation_keys(klass)}
        if store.shared_generations:
            store.write([(key, token.encode(), None) for key, token in tokens.items()])
        store.keymaker.set_tokens(tokens)

    def write_current(
        self,
        classes: set[type],
        write: Callable[[], list[Op]],
        attempts: int = MAX_GENERATION_RETRIES,
    ) -> Finish | None:
        """Apply the ops ``write`` builds until the namespace generations their keys were
        made in are still current (at most ``attempts`` times).  Returns None when done,
        or the call that finishes once the backend's reply is read (see
        :meth:`BaseKeyValueStore.start_apply_then_read
        <sa_stockpyle.stores.BaseKeyValueStore.start_apply_then_read>`).

        Writes build their keys from the generations this process last read.  Another
        process may have started a new one meanwhile (``invalidate_class``, a server
        restarted empty); a write under the old one would leave stale entries in the new
        one.  So a shared store reads the generations right after writing (in the same
        round trip where the backend allows), and writes again under any that moved.  A
        generation that moves after that read was started after this write, and its
        readers read the database after this commit.
        """
        self.learn_classes(classes)
        return self.prepare_current(classes, write, attempts)()

    def prepare_current(
        self,
        classes: set[type],
        write: Callable[[], list[Op]],
        attempts: int = MAX_GENERATION_RETRIES,
    ) -> Callable[[], Finish | None]:
        """:meth:`write_current` in two steps: the ops are built now, and written by the
        call returned (which returns what :meth:`write_current` does).  Nothing is read
        or written before that call: when a class's generation is not known yet, the ops
        are built then too; ops built under a generation this process has replaced
        meanwhile are built again then."""
        if not classes:
            return _done
        keymaker = self.store.keymaker
        if not all(klass in keymaker.generations for klass in classes):
            # Learning a generation may take I/O (and write a token where none is): not
            # before the write starts, which may be never.
            return lambda: self.write_current(classes, write, attempts)
        keys = list(dict.fromkeys(key for c in classes for key in keymaker.generation_keys(c)))
        used = {key: keymaker.tokens.get(key) for key in keys}
        store, clock = self.store, self.store.clock
        built = unexpired(write(), clock())
        soonest = soonest_expiry(built)
        shared = store.shared_generations
        send = store.prepare_apply_then_read(built, keys) if shared else None

        def start() -> Finish | None:
            if any(keymaker.tokens.get(key) != token for key, token in used.items()):
                return self.write_current(classes, write, attempts)
            fresh = soonest is None or soonest > clock()
            if send is None:  # generations of this process only: nothing to read back
                ops = built if fresh else unexpired(built, clock())
                if ops:
                    store.apply(ops)
                return None
            receive = (
                send() if fresh else store.start_apply_then_read(unexpired(built, clock()), keys)
            )

            def finish() -> None:
                _, raws = receive()
                if _tokens(keys, raws) != used:
                    self.adopt(keys, raws)
                    if attempts > 1:
                        finish_write(self.write_current(classes, write, attempts - 1))

            return finish

        return start

    def read_with(self, klass: type, known: str | None, keys: list[str]) -> list[Any] | None:
        """Read ``keys`` with the generation tokens of ``klass``, in one round trip.

        Returns the raw values, or None when a token was missing and a new one was
        started (a new generation holds nothing).  When the generation differs from
        ``known`` (another process bumped it), the key maker now holds the new one and
        the values read are stale: the caller reads again under the new keys.
        """
        generation_keys = self.store.keymaker.generation_keys(klass)
        count = len(generation_keys)
        raws = self.store.read([*generation_keys, *keys])
        tokens = raws[:count]
        del raws[:count]
        try:
            current = b".".join(tokens).decode("ascii", "replace")
        except TypeError:  # a token is missing (None), or not a token at all
            current = None
        if current is not None and current == known:
            return raws
        self.adopt(generation_keys, tokens)
        return None if None in tokens else raws


def _done() -> None:
    """The start of a write that has nothing to write."""


def _tokens(keys: Sequence[str], raws: Sequence[Any]) -> dict[str, str]:
    """The generation tokens read at ``keys``, where one was."""
    return {
        key: raw.decode("ascii", "replace")
        for key, raw in zip(keys, raws, strict=True)
        if isinstance(raw, bytes) and raw
    }
