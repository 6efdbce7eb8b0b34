"""Linux inotify, read by one thread: the drop folder's file-system events.

A watchdog observer did this before, with three threads (reader, emitter,
dispatcher), an event object per record, a delay to pair moves and a log line to
learn of an overflow; on a busy inbox that was a tenth of the runner's CPU, and its
threads took the interpreter lock from the one doing the work. Events are only
evidence and wake-ups here (the scans are the authority), so a small reader does:
it asks the kernel for just the events the loop uses, decodes each buffer at once,
drops repeats within it, hands the buffer's changes over in one call, and reports an
overflow as what it is. While events stream in it waits `COALESCE` seconds between
reads, so that a burst of uploads is read and handed over in a few large buffers
rather than one wake-up (and one turn of the interpreter lock) per event.

Not on Linux (no inotify in the C library), `available()` is False and the drop
folder runs on its scans alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import select
import struct
import threading
import time
from collections.abc import Callable
from enum import IntFlag

log = logging.getLogger(__name__)


class Mask(IntFlag):
    """The inotify(7) event bits used here."""

    MODIFY = 0x00000002
    CLOSE_WRITE = 0x00000008
    MOVED_FROM = 0x00000040
    MOVED_TO = 0x00000080
    CREATE = 0x00000100
    DELETE = 0x00000200
    DELETE_SELF = 0x00000400
    MOVE_SELF = 0x00000800
    Q_OVERFLOW = 0x00004000
    IGNORED = 0x00008000
    ONLYDIR = 0x01000000
    DONT_FOLLOW = 0x02000000
    EXCL_UNLINK = 0x04000000
    ISDIR = 0x40000000


class Change(IntFlag):
    """What an event says happened to the name it carries."""

    CREATED = 1
    MODIFIED = 2
    MOVED_IN = 4  # renamed to this name: changed, not open for writing
    GONE = 8
    CLOSED = 16  # after writing (IN_CLOSE_WRITE)


# A watched folder's files: written, closed after writing, created or renamed in; its
# folders: created, renamed in or out, deleted (a new one is watched too, any change
# asks for a scan). A file leaving (every claim renames one out) is not subscribed
# to: the claim forgets it itself, and a scan forgets one deleted by someone else.
FOLDER_MASK = (Mask.CREATE | Mask.MODIFY | Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.MOVED_FROM
               | Mask.DELETE | Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.ONLYDIR
               | Mask.DONT_FOLLOW | Mask.EXCL_UNLINK)
# The inbox root: only its folders coming and going.
ROOT_MASK = (Mask.CREATE | Mask.MOVED_TO | Mask.MOVED_FROM | Mask.DELETE | Mask.DELETE_SELF
             | Mask.MOVE_SELF | Mask.ONLYDIR | Mask.DONT_FOLLOW)

# Plain ints for the per-event tests: `int & IntFlag` goes through the flag's __rand__
# and builds a flag object each time, which on a busy inbox was a few percent of a pass.
_CLOSE_WRITE, _CREATE, _MOVED_TO, _MODIFY = (int(m) for m in (
    Mask.CLOSE_WRITE, Mask.CREATE, Mask.MOVED_TO, Mask.MODIFY))
_LEAVING = int(Mask.MOVED_FROM | Mask.DELETE)
_OVERFLOW, _IGNORED, _ISDIR = int(Mask.Q_OVERFLOW), int(Mask.IGNORED), int(Mask.ISDIR)
_SELF_GONE = int(Mask.DELETE_SELF | Mask.MOVE_SELF)

_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (struct inotify_event)
_BUFFER = 256 * 1024
COALESCE = 0.002  # seconds between reads while events keep coming (not before the first)
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC

Changed = tuple[str, Change, bool]  # (path, change, is a folder)
OnChanges = Callable[[list[Changed]], None]


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6", use_errno=True)
        libc.inotify_init1  # noqa: B018 - raises AttributeError where there is none
    except (OSError, AttributeError):
        return None
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


_LIBC = _libc()


def available() -> bool:
    return _LIBC is not None


def decode(buffer: bytes) -> list[tuple[int, int, bytes]]:
    """(wd, mask, name) of each event in a buffer read from the inotify descriptor."""
    events = []
    offset, end = 0, len(buffer)
    while offset + _HEADER.size <= end:
        wd, mask, _cookie, length = _HEADER.unpack_from(buffer, offset)
        offset += _HEADER.size
        name = buffer[offset:offset + length].rstrip(b"\0")
        offset += length
        events.append((wd, mask, name))
    return events


def change_of(mask: int) -> Change | None:
    """The change an event's mask reports about the name it carries (None: nothing the
    drop folder uses)."""
    if mask & _CLOSE_WRITE:
        return Change.CLOSED
    if mask & _CREATE:
        return Change.CREATED
    if mask & _MOVED_TO:
        return Change.MOVED_IN
    if mask & _MODIFY:
        return Change.MODIFIED
    if mask & _LEAVING:
        return Change.GONE
    return None


class Watch:
    """One watched folder, and with `recursive` every folder below it."""

    def __init__(self, path: str, mask: int, recursive: bool) -> None:
        self.path = path
        self.mask = mask
        self.recursive = recursive
        self.wds: set[int] = set()
        self.incomplete = False  # a folder below could not be watched (no watches left)


class Inotify:
    """One inotify descriptor and the thread that reads it; `on_changes` (the changes of
    one buffer, in order) and `on_overflow` are called on that thread."""

    def __init__(self, on_changes: OnChanges, on_overflow: Callable[[], None]) -> None:
        if _LIBC is None:
            raise OSError(errno.ENOSYS, "inotify is not available here")
        self._on_changes = on_changes
        self._on_overflow = on_overflow
        fd = _LIBC.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._fd = fd
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._paths: dict[int, tuple[str, Watch]] = {}  # wd: (folder, its watch)
        self._thread = threading.Thread(target=self._run, name="airlock-inotify", daemon=True)
        self._stopping = False

    # --- watches -------------------------------------------------------------------------

    def add(self, path: str, mask: int, *, recursive: bool = False) -> Watch:
        """Watch `path` (and, `recursive`, the folders below it); OSError if the folder
        itself cannot be watched (a sub-folder that cannot be is left to the scans)."""
        watch = Watch(path, mask, recursive)
        self._add_one(watch, path)
        if recursive:
            self._add_below(watch, path)
        return watch

    def remove(self, watch: Watch) -> None:
        with self._lock:
            wds, watch.wds = watch.wds, set()
            for wd in wds:
                self._paths.pop(wd, None)
        for wd in wds:
            _LIBC.inotify_rm_watch(self._fd, wd)  # type: ignore[union-attr]  # EINVAL if gone

    def _add_one(self, watch: Watch, path: str) -> None:
        wd = _LIBC.inotify_add_watch(self._fd, os.fsencode(path), watch.mask)  # type: ignore[union-attr]
        if wd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
        with self._lock:
            watch.wds.add(wd)
            self._paths[wd] = (path, watch)

    def _add_below(self, watch: Watch, path: str) -> None:
        for folder, names, _files in os.walk(path):
            names[:] = [n for n in names if not os.path.islink(os.path.join(folder, n))]
            for name in names:
                try:
                    self._add_one(watch, os.path.join(folder, name))
                except FileNotFoundError:
                    pass  # gone meanwhile
                except OSError:
                    watch.incomplete = True  # no watches left (ENOSPC): the scans see it

    # --- the thread ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float | None) -> None:
        self._stopping = True
        os.write(self._wake_w, b"x")
        if self._thread.ident is not None:
            self._thread.join(timeout)
        if not self._thread.is_alive():
            for fd in (self._fd, self._wake_r, self._wake_w):
                os.close(fd)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stopping:
            poller.poll()
            try:
                buffer = os.read(self._fd, _BUFFER)
            except BlockingIOError:
                continue
            except OSError:
                log.exception("reading file-system events failed; scans only")
                return
            try:
                self._dispatch(decode(buffer))
            except Exception:
                log.exception("handling file-system events failed")
                self._on_overflow()  # whatever was lost, a scan finds
            # A lone event was answered at once; what follows it in a burst waits a
            # moment, to be read with the rest.
            time.sleep(COALESCE)

    def _dispatch(self, events: list[tuple[int, int, bytes]]) -> None:
        changes: list[Changed] = []
        last: dict[tuple[int, bytes], Change] = {}  # the change last kept for each name
        for wd, mask, name in events:
            if mask & _OVERFLOW:
                self._on_overflow()
                continue
            is_dir = bool(mask & _ISDIR)
            change = change_of(mask)
            if not mask & (_IGNORED | _SELF_GONE) and (
                    change is None or (change is Change.GONE and not is_dir)):
                continue  # a file leaving (every claim renames one out): nothing to say
            with self._lock:
                entry = self._paths.get(wd)
                if mask & _IGNORED:  # the watch is gone (its folder deleted, or removed)
                    self._paths.pop(wd, None)
                    if entry is not None:
                        entry[1].wds.discard(wd)
            if entry is None or (change is None and not mask & _SELF_GONE):
                continue
            folder, watch = entry
            if mask & _SELF_GONE:
                changes.append((folder, Change.GONE, True))
                continue
            assert change is not None
            # Created and modified say the same (being written): of a run of either,
            # one is enough; a write after a close is kept (the writer came back).
            kind = Change.MODIFIED if change is Change.CREATED else change
            if last.get((wd, name)) is kind:
                continue
            last[(wd, name)] = kind
            path = os.path.join(folder, os.fsdecode(name))
            if is_dir and watch.recursive and change in (Change.CREATED, Change.MOVED_IN):
                try:
                    self._add_one(watch, path)
                    self._add_below(watch, path)
                except FileNotFoundError:
                    pass  # gone again: the scan asked for below sees what became of it
                except OSError:
                    watch.incomplete = True
            changes.append((path, change, is_dir))
        if changes:
            self._on_changes(changes)
