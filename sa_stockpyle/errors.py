"""The exception tree of sa_stockpyle.

Every error this package raises on purpose derives from :class:`StockpyleError`::

    StockpyleError
    ├── NotStorableError        (TypeError)   class has no usable __stockpyle_keys__
    ├── UnknownKeyError         (KeyError)    lookup matches no declared key
    ├── InvalidKeyValueError    (ValueError)  a value that cannot be part of a key
    ├── NonUniqueKeyError       (LookupError) a "unique" key matched several rows
    ├── InvalidLifetimeError    (ValueError)  lifetime_cb returned something unusable
    ├── ConfigurationError      (ValueError)  bad store arguments, two classes with one name
    ├── PayloadError                          a value put cannot carry, a bad payload
    └── StoreUnavailable                      a backend did not answer (server down, refused)
        └── StoreTimeout        (TimeoutError) it did not answer within the configured timeout

The built-in base next to each name lets callers that already catch ``TypeError`` or
``KeyError`` keep working; the :class:`StockpyleError` base lets them catch one family.
Stores raise :class:`StoreUnavailable` (and only it) for every client, protocol and socket
failure of their backend, chaining the original exception as ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "InvalidKeyValueError",
    "InvalidLifetimeError",
    "NonUniqueKeyError",
    "NotStorableError",
    "PayloadError",
    "StockpyleError",
    "StoreTimeout",
    "StoreUnavailable",
    "UnknownKeyError",
]


class StockpyleError(Exception):
    """Base class of every error raised by sa_stockpyle."""


class NotStorableError(StockpyleError, TypeError):
    """A class (or object) has no valid ``__stockpyle_keys__`` declaration."""


class UnknownKeyError(StockpyleError, KeyError):
    """A lookup's attribute names match none of the class's declared keys."""

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message and wrap it in quotes.
        return str(self.args[0]) if self.args else ""


class InvalidKeyValueError(StockpyleError, ValueError):
    """A value cannot be part of a key: unhashable, or an object lacks a key attribute."""


class NonUniqueKeyError(StockpyleError, LookupError):
    """A declared-unique key matched more than one stored row."""


class InvalidLifetimeError(StockpyleError, ValueError):
    """``lifetime_cb`` returned a value that is not an int, timedelta, datetime or None."""


class ConfigurationError(StockpyleError, ValueError):
    """A store was constructed with arguments that cannot work together, or two classes
    claim one class token (see docs/keys.md, "Classes made by a factory")."""


class PayloadError(StockpyleError):
    """A value ``put`` cannot store exactly (raised, naming the attribute), or a cached
    payload that failed to decode (stores treat it as a miss and delete it)."""


class StoreUnavailable(StockpyleError):
    """A store's backend did not answer (connection refused, timeout, protocol error)."""


class StoreTimeout(StoreUnavailable, TimeoutError):
    """A store's backend did not answer within the store's connect or read timeout."""
