"""Is a file open for writing right now? Asked of the kernel, not guessed from a timer.

Linux answers through a read lease (``fcntl(F_SETLEASE, F_RDLCK)``): the kernel
grants one only while no process, of any user, has the file open for writing, and
it is released at once. A lease needs the caller to own the file or to hold
``CAP_LEASE`` (root has it): a watcher running as another user than the uploader
gets EACCES and the answer is None (cannot tell; the settle rule decides). Give
such a watcher the capability (systemd ``AmbientCapabilities=CAP_LEASE``) to have
the kernel's answer for every file.

Why not ``/proc/*/fd``: a process may read only its own user's descriptor tables
unless it is root, so a scan run without privilege misses other users' writers and
cannot tell that it did; the lease fails loudly instead.

A writer that opens the file during the microseconds the lease is held waits for
its release (one opening with ``O_NONBLOCK`` gets EWOULDBLOCK). The kernel signals
the lease holder when that happens; the signal is set to SIGURG, which is ignored
unless handled, instead of the default SIGIO, which would end the process.

Stdlib only, so a test can run this file as an unprivileged user with any
interpreter (``runpy.run_path``).
"""

from __future__ import annotations

import errno
import os
import signal
import stat
from typing import Protocol

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["KERNEL", "WriterProbe", "fd_open_for_writing", "open_for_writing", "supported"]

_SETLEASE: int = getattr(fcntl, "F_SETLEASE", -1)
_SETSIG: int = getattr(fcntl, "F_SETSIG", -1)
_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
               | getattr(os, "O_CLOEXEC", 0))
_BREAK_SIGNAL = int(getattr(signal, "SIGURG", 0))


def supported() -> bool:
    """Whether this platform can answer at all (Linux leases)."""
    return fcntl is not None and _SETLEASE >= 0 and _SETSIG >= 0


def open_for_writing(path: str) -> bool | None:
    """True while some process has `path` open for writing, False when none has,
    None when the kernel cannot tell (not Linux, a file the caller may not lease,
    a file system without leases, not a regular file, or gone)."""
    if not supported():
        return None
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except BlockingIOError:  # a write lease is held on it: someone is about to write
        return True
    except OSError:
        return None
    try:
        return fd_open_for_writing(fd)
    finally:
        os.close(fd)


def fd_open_for_writing(fd: int) -> bool | None:
    """`open_for_writing` for a file the caller has open read-only as `fd`."""
    if not supported():
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        fcntl.fcntl(fd, _SETSIG, _BREAK_SIGNAL)
        fcntl.fcntl(fd, _SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            return True
        return None  # EACCES (not ours, no CAP_LEASE), EINVAL (no leases here), ...
    fcntl.fcntl(fd, _SETLEASE, fcntl.F_UNLCK)
    return False


class WriterProbe(Protocol):
    """Where the drop folder asks whether a file is open for writing (the kernel; a
    test passes one that cannot tell, to exercise the settle rule's fallback)."""

    def open_for_writing(self, path: str) -> bool | None: ...

    def fd_open_for_writing(self, fd: int) -> bool | None: ...


class Kernel:
    """The `WriterProbe` of this module's functions."""

    open_for_writing = staticmethod(open_for_writing)
    fd_open_for_writing = staticmethod(fd_open_for_writing)


KERNEL = Kernel()
