"""Payload signatures: an optional MAC that every shared payload ends with.

A shared layer given a ``signing_key`` signs what it writes and checks what it reads
(see :mod:`sa_stockpyle.stores.shared`), so that bytes written by anyone without the key
(a forged or corrupt entry, or another application's) decode as a miss.
"""

from __future__ import annotations

import hashlib
import hmac

from sa_stockpyle.errors import ConfigurationError, PayloadError

__all__ = ["SIGNATURE_BYTES", "Signer"]

#: The length of the MAC that a signed payload ends with (128 bits).
SIGNATURE_BYTES = 16


class Signer:
    """Signs payloads, and checks their signatures, under one key that every process of
    the application shares.

    The MAC is keyed BLAKE2b, the MAC mode BLAKE2 defines for itself (it needs no HMAC
    construction: BLAKE2 is not open to length extension).  Its keyed state is made once
    and copied per payload, which costs about what a plain SHA-256 of the payload does:
    under half of ``hmac.digest(key, payload, "sha256")`` (see docs/security.md).

    Raises :class:`ConfigurationError` unless ``signing_key`` is bytes of 16 to 64.
    """

    def __init__(self, signing_key: object) -> None:
        if type(signing_key) is not bytes or not 16 <= len(signing_key) <= 64:
            shown = (
                f"{len(signing_key)} bytes"
                if isinstance(signing_key, bytes)
                else type(signing_key).__name__
            )
            raise ConfigurationError(
                f"signing_key must be bytes, 16 to 64 of them (e.g. secrets.token_bytes(32)), "
                f"shared by every process that uses the cache; got {shown}"
            )
        self._keyed = hashlib.blake2b(
            key=signing_key, digest_size=SIGNATURE_BYTES, person=b"sa_stockpyle"
        )

    def _mac(self, data: bytes) -> bytes:
        mac = self._keyed.copy()
        mac.update(data)
        return mac.digest()

    def sign(self, data: bytes) -> bytes:
        """``data`` followed by its signature."""
        return data + self._mac(data)

    def verify(self, data: object) -> bytes:
        """The payload a signed ``data`` carries; PayloadError unless it is bytes whose
        signature matches (forged or corrupt bytes, or written by a process with another
        key or none)."""
        if type(data) is not bytes or len(data) <= SIGNATURE_BYTES:
            raise PayloadError("payload is too short to be signed")
        body = data[:-SIGNATURE_BYTES]
        if not hmac.compare_digest(self._mac(body), data[-SIGNATURE_BYTES:]):
            raise PayloadError("payload signature does not match the signing key")
        return body
