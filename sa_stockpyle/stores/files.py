"""LocalFiles: one file per key in a local folder, safe for several processes at once.

The mapping behind ``ShoveStore(shoveuri="file:///path")``.  fsspec's local mapper
truncates a file and then writes it, so a process reading at that moment gets empty or
partial bytes (a ``corrupt`` miss that also throws a good entry away); and a process-local
lock cannot keep another process's write out of a conditional write's read-then-write.
Here a write goes to a temporary file in the same folder and :func:`os.replace` puts it in
place (a reader opens the old file or the new one, never half of one), and
:attr:`LocalFiles.process_lock` is a POSIX file lock that excludes the threads of every
process that opened the folder.  No well-kept library does the first for fsspec's local
mapper (fsspec's transactions write to the system temporary folder, which may be another
file system, and are shared by every thread of a process); the second is ``flock(2)``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import threading
from collections.abc import Iterator, MutableMapping
from types import TracebackType

__all__ = ["LocalFiles", "ProcessLock"]

#: Names in the folder that are not keys: the lock file and temporary files.
RESERVED = ".sa_stockpyle."


class ProcessLock:
    """An exclusive lock on a file, for the threads of this process and of every other.

    Each ``with`` opens the file anew and takes ``flock(2)`` on it: locks on separate
    opens exclude each other even within one process, so no thread lock is needed, and a
    forked child's own ``with`` never shares an open file with its parent (a child forked
    while the lock is held keeps only a copy, which the release unlocks too).  Not
    reentrant, like :class:`threading.Lock`.

    Parameters:
        path: the lock file, created when missing (it stays, empty).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._held = threading.local()

    def __enter__(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._held.fd = fd

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        fd: int = self._held.fd
        del self._held.fd
        # Unlocked explicitly: a child forked meanwhile holds a copy of this open file,
        # and closing ours alone would leave the lock held by that copy.
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class LocalFiles(MutableMapping[str, bytes]):
    """Bytes values in a local folder, one file per key (``a/b`` is a subfolder).

    Writes are atomic (a temporary file in the same folder, then :func:`os.replace`);
    :attr:`process_lock` excludes every process using the folder, and a
    :class:`~sa_stockpyle.stores.ShoveStore` holds it around each of its writes.  The
    folder is flat: one file per key, named by the key with ``%`` and ``/`` escaped (a
    name over 255 bytes is a hash of the key), so no key, however hostile its lookup
    values (``name="/../../etc/x"``), names a file outside the folder, and no key is
    another's folder.
    POSIX only (``flock``).  Values are not fsynced: after a power loss a file may be
    empty, which a store counts as a ``corrupt`` miss.

    Parameters:
        root: the folder, created when missing.
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)
        #: Held by a :class:`~sa_stockpyle.stores.ShoveStore` around each of its writes.
        self.process_lock = ProcessLock(os.path.join(self.root, RESERVED + "lock"))

    def _path(self, key: str) -> str:
        return os.path.join(self.root, _file_name(key))

    def __getitem__(self, key: str) -> bytes:
        try:
            with open(self._path(key), "rb") as file:
                return file.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise KeyError(key) from exc

    def __setitem__(self, key: str, value: bytes) -> None:
        path = self._path(key)
        # Created with the umask's permissions (mkstemp would make it private), under a
        # name no key has and no other writer picks.
        temporary = os.path.join(self.root, f"{RESERVED}tmp-{secrets.token_hex(8)}")
        try:
            with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
                f.write(value)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise

    def __delitem__(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise KeyError(key) from exc

    def __iter__(self) -> Iterator[str]:
        with os.scandir(self.root) as entries:
            names = [e.name for e in entries if e.is_file() and not e.name.startswith(RESERVED)]
        yield from map(_key_of, names)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def clear(self) -> None:
        """Remove every key (and any temporary file a crashed writer left) at once."""
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.name == RESERVED + "lock":
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)

    def __repr__(self) -> str:
        return f"LocalFiles({self.root!r})"


_UNESCAPE = {"25": "%", "2F": "/", "2E": "."}


def _file_name(key: str) -> str:
    """The file name of ``key``: ``%`` and ``/`` escaped, and ``.``/``..`` spelled with
    escapes; a hash of the key where that would pass the file systems' 255 bytes."""
    name = key.replace("%", "%25").replace("/", "%2F")
    if name in (".", ".."):
        name = name.replace(".", "%2E")
    if len(name.encode("utf-8", "surrogatepass")) > 255:
        name = "%H" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return name


def _key_of(name: str) -> str:
    """The key a file name was made from (a hashed name stands for itself)."""
    return re.sub("%(25|2F|2E)", lambda match: _UNESCAPE[match.group(1)], name)
