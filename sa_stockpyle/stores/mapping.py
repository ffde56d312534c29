"""ShoveStore: objects in any dictionary-style storage, as safe bytes payloads.

The seed's ShoveStore wrapped the ``shove`` package, which no longer imports on Python
3.10+.  This one takes any :class:`~collections.abc.MutableMapping` (a dict, a ``shelve``,
a ``diskcache.Cache``, an fsspec mapper) or opens one from a URI: ``file:///path`` as
:class:`~sa_stockpyle.stores.files.LocalFiles` (safe for several processes), anything else
through fsspec (``memory://``, ``s3://bucket/prefix`` with ``s3fs`` installed).  Values
are the codec's bytes records, which carry their expiry as the seed's ``(obj, expiredate)``
tuples did, and which decode without ever running code even if the storage is shared.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from typing import Any

from sa_stockpyle.codec import LifetimeCallback, now
from sa_stockpyle.errors import ConfigurationError
from sa_stockpyle.stores.base import Clock
from sa_stockpyle.stores.dictionary import BaseDictionaryStore
from sa_stockpyle.stores.shared import SharedPayloads

__all__ = ["ShoveStore", "open_mapping"]

FILE_SCHEME = "file://"


def open_mapping(uri: str) -> MutableMapping[str, Any]:
    """Open the mapping for ``uri``: :class:`~sa_stockpyle.stores.files.LocalFiles` for
    ``file:///path``, else the fsspec mapper (``memory://name``, ``s3://bucket/prefix``)."""
    if uri.startswith(FILE_SCHEME):
        # Not fsspec's local mapper: its writes tear under a concurrent reader.  Imported
        # here because it needs POSIX file locks (fcntl).
        from sa_stockpyle.stores.files import LocalFiles  # noqa: PLC0415

        return LocalFiles(uri[len(FILE_SCHEME) :])
    try:
        import fsspec  # noqa: PLC0415 - optional dependency, loaded only when asked for
    except ImportError as exc:
        raise ImportError(
            'ShoveStore(shoveuri=...) needs fsspec: pip install "sa_stockpyle[shove]"'
        ) from exc
    mapping: MutableMapping[str, Any] = fsspec.get_mapper(uri, create=True)
    return mapping


class ShoveStore(SharedPayloads, BaseDictionaryStore):
    """Objects in any dictionary-style storage.

    Its writes exclude each other with a lock of this process, or with the mapping's
    ``process_lock`` when it has one (:class:`~sa_stockpyle.stores.files.LocalFiles`,
    what ``file://`` opens, has a file lock): only then may several processes share the
    storage without stale sets.

    Parameters:
        shove: the mapping to use (a dict, ``shelve``, ``diskcache.Cache``, fsspec mapper,
            :class:`~sa_stockpyle.stores.files.LocalFiles`).
        shoveuri: instead of ``shove``, a URI opened with :func:`open_mapping`.
        polymorphic: also store each object under every base class that declares
            ``__stockpyle_keys__`` (see :class:`BaseKeyValueStore`).
        lifetime_cb: ``lifetime_cb(obj)`` returns the object's lifetime; see
            :class:`BaseKeyValueStore`.
        prefix: the first part of every cache key.
        clock: returns the current Unix time; injected by tests.
        signing_key: bytes (16 to 64) shared by every process of the application:
            payloads carry a MAC of themselves, and one that does not match is a miss
            (see docs/security.md).  None (the default): unsigned.
    """

    def __init__(
        self,
        shove: MutableMapping[str, Any] | None = None,
        shoveuri: str | None = None,
        polymorphic: bool = False,
        lifetime_cb: LifetimeCallback | None = None,
        prefix: str = "stockpyle",
        clock: Clock = now,
        signing_key: bytes | None = None,
    ) -> None:
        if shove is not None and shoveuri is None:
            mapping = shove
        elif shoveuri is not None and shove is None:
            mapping = open_mapping(shoveuri)
        else:
            raise ConfigurationError(
                "ShoveStore takes exactly one of shove= (a mutable mapping) or shoveuri= "
                f"(a URI such as 'memory://cache'); got shove={shove!r}, shoveuri={shoveuri!r}"
            )
        super().__init__(
            mapping,
            polymorphic=polymorphic,
            lifetime_cb=lifetime_cb,
            prefix=prefix,
            clock=clock,
            signing_key=signing_key,
        )
        self._take_process_lock()

    def _take_process_lock(self) -> None:
        # A storage that other processes share may offer a lock that excludes them too
        # (LocalFiles does): a conditional write reads, then writes, and no other
        # process's write may land between the two.
        process_lock = getattr(self.dictionary, "process_lock", None)
        if process_lock is not None:
            self._lock = process_lock

    def after_fork(self) -> None:
        """In a forked child: a new lock, or again the storage's (which is fork-safe)."""
        super().after_fork()
        self._take_process_lock()

    def read(self, keys: Sequence[str]) -> list[Any]:
        getitems = getattr(self.dictionary, "getitems", None)
        if getitems is None:
            return super().read(keys)
        # fsspec mappers fetch many keys concurrently in one call.
        found = getitems(list(keys), on_error="omit")
        return [found.get(key) for key in keys]

    def _set_items(self, values: dict[str, Any]) -> None:
        setitems = getattr(self.dictionary, "setitems", None)
        if setitems is None:
            super()._set_items(values)
        else:
            setitems(values)  # fsspec mappers write many keys concurrently in one call

    def close(self) -> None:
        """Close the mapping when it can be closed (shelve, diskcache)."""
        closer = getattr(self.dictionary, "close", None)
        if closer is not None:
            closer()
