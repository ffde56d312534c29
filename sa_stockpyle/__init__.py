"""sa_stockpyle: a write-through object cache for SQLAlchemy 2.x.

Stores live in :mod:`sa_stockpyle.stores`; this module exports :func:`attach` (the ORM
write-through plugin), the errors and the version.
"""

from __future__ import annotations

from sa_stockpyle.errors import (
    ConfigurationError,
    InvalidKeyValueError,
    InvalidLifetimeError,
    NonUniqueKeyError,
    NotStorableError,
    PayloadError,
    StockpyleError,
    StoreTimeout,
    StoreUnavailable,
    UnknownKeyError,
)
from sa_stockpyle.orm import Attachment, attach

__version__ = "0.1.0.dev0"

__all__ = [
    "Attachment",
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
    "__version__",
    "attach",
]
