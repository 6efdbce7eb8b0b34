"""File-system primitives of the drop folder: keys and paths, holding a file, renames."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from pipelines.sources.settle import Signature
from pipelines.storage.local import rename_noreplace

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: claims still exclusive, no lock
    fcntl = None  # type: ignore[assignment]

__all__ = ["NotAFile", "Root", "hold", "rename_noreplace", "same_file", "signature"]

# Never blocks (a FIFO opens at once instead of waiting for a writer) and never follows
# a symlink; the descriptor is checked to be a regular file before anything is read.
_OPEN_FLAGS = (os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
               | getattr(os, "O_CLOEXEC", 0))
# What opening something other than a regular file fails with: a symlink (ELOOP with
# O_NOFOLLOW), a socket (ENXIO), a device without a driver (ENODEV).
_NOT_A_FILE = {errno.ELOOP, errno.ENXIO, errno.ENODEV}


class NotAFile(Exception):
    """The entry is not a regular file (it was swapped in after it was looked at)."""



@dataclass(frozen=True, slots=True)
class Root:
    """The inbox folder: turns inbox keys (``ACME/a.req``) into paths and back."""

    path: str

    def of(self, key: str) -> str:
        return f"{self.path}{os.sep}{key.replace('/', os.sep)}"

    def key(self, path: str) -> str | None:
        prefix = self.path + os.sep
        if not path.startswith(prefix):
            return None
        return path[len(prefix):].replace(os.sep, "/")


def read_up_to(fd: int, limit: int) -> bytes:
    """Read from `fd` until its end or `limit` bytes, whichever comes first (straight
    from the descriptor: a file object costs three syscalls more per file)."""
    parts: list[bytes] = []
    left = limit
    while left > 0:
        part = os.read(fd, min(left, 1024 * 1024))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def hold(path: str) -> int | None:
    """Open and lock the regular file `path`; the descriptor, or None if it is gone or
    held by another. `NotAFile` for anything else (never blocks on a FIFO, never
    follows a symlink); other `OSError`s (EACCES, EIO) as they are.

    The lock (``flock``) is released by the kernel if the process dies, so a file
    in hand is never handed over twice and a file left by a dead process is free.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno in _NOT_A_FILE:
            raise NotAFile(path) from exc
        raise
    try:
        mine = os.fstat(fd)  # the inode an fd names never changes: one look is enough
        if not stat.S_ISREG(mine.st_mode):
            raise NotAFile(path)
        os.set_blocking(fd, True)
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        there = os.stat(path, follow_symlinks=False)
        if (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino):
            return fd
    except (BlockingIOError, FileNotFoundError):
        pass
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


def same_file(held: os.stat_result, path: str) -> bool:
    """True while `path` is still the file `held` was taken from."""
    try:
        return os.path.samestat(held, os.stat(path, follow_symlinks=False))
    except OSError:
        return False


def signature(st: os.stat_result) -> Signature:
    return st.st_size, st.st_mtime_ns, st.st_ino
