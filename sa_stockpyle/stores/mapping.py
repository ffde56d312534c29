"""ShoveStore: objects in any dictionary-style storage, as safe bytes payloads.

The seed's ShoveStore wrapped the ``shove`` package, which no longer imports on Python
3.10+.  This one takes any :class:`~collections.abc.MutableMapping` (a dict, a ``shelve``,
a ``diskcache.Cache``, an fsspec mapper) or opens one from a URI through fsspec
(``memory://``, ``file:///path``, ``s3://bucket/prefix`` with ``s3fs`` installed).  Values
are the codec's bytes records, which carry their expiry as the seed's ``(obj, expiredate)``
tuples did, and which decode without ever running code even if the storage is shared.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from typing import Any

from sa_stockpyle.codec import LifetimeCallback, now
from sa_stockpyle.errors import ConfigurationError
from sa_stockpyle.stores.base import BaseDictionaryStore, Clock, SharedPayloads

__all__ = ["ShoveStore", "open_mapping"]


def open_mapping(uri: str) -> MutableMapping[str, Any]:
    """Open the fsspec mapper for ``uri`` (``memory://``, ``file:///path``, ``s3://...``)."""
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

    Parameters:
        shove: the mapping to use (a dict, ``shelve``, ``diskcache.Cache``, fsspec mapper).
        shoveuri: instead of ``shove``, a URI opened with :func:`open_mapping`.
        polymorphic: also store each object under every base class that declares
            ``__stockpyle_keys__`` (see :class:`BaseKeyValueStore`).
        lifetime_cb: ``lifetime_cb(obj)`` returns the object's lifetime; see
            :class:`BaseKeyValueStore`.
        prefix: the first part of every cache key.
        clock: returns the current Unix time; injected by tests.
    """

    def __init__(
        self,
        shove: MutableMapping[str, Any] | None = None,
        shoveuri: str | None = None,
        polymorphic: bool = False,
        lifetime_cb: LifetimeCallback | None = None,
        prefix: str = "stockpyle",
        clock: Clock = now,
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
            mapping, polymorphic=polymorphic, lifetime_cb=lifetime_cb, prefix=prefix, clock=clock
        )

    def _read(self, keys: Sequence[str]) -> list[Any]:
        getitems = getattr(self.dictionary, "getitems", None)
        if getitems is None:
            return super()._read(keys)
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
