"""The drop-folder source: files that integrations (email, SFTP) leave in a local inbox.

Where files are looked for (see `pipelines.layout`): ``<root>/<TENANT>/<name...>``
and ``<root>/_operator/<name...>``, recursively. Ignored, and left where they are:
temporary names (``layout.is_temporary_name``: ``*.part``, dotfiles, ``~`` backups,
...), anything inside a dot-folder, symlinks and other non-regular files, the reserved
``_``-folders other than ``_operator``, folders that are not tenant codes, and files
directly in the root (a warning is logged once per name: a file must sit in a
customer folder to say whom it is for).

How a file travels:

1. **Seen.** A reconciling scan (``os.scandir``, one ``stat`` per candidate) is the
   authority. A watchdog observer, when running (one recursive watch per area folder,
   plus the root for new folders; the reserved folders are not watched), only wakes
   the loop early and feeds the settle rule; inotify drops events silently on
   overflow, so nothing depends on an event arriving.
2. **Settled.** `pipelines.sources.settle.SettleTracker` decides when the file is
   complete: it is not held open (more open than close events), and either its
   ``(size, mtime_ns, inode)`` has stayed the same across scans for `settle_seconds`
   with no write event in that time, or it was closed after writing
   (``IN_CLOSE_WRITE``) at least `close_grace` ago and has not changed since.
   Without an observer only the scans count, so a writer that pauses longer than
   `settle_seconds` should upload under a temporary name and rename.
3. **Claimed.** An atomic rename, on the same file system, into
   ``_processing/<area>/<name>``; it never replaces a file there: when that name is
   still in hand the file becomes ``<name>.claim-<12 hex>`` (the `Arrival` keeps the
   original name). A rename failing with FileNotFoundError means another source
   claimed it first.
4. **Held and handed over.** The claimed file is opened and locked (``flock``,
   released by the kernel if the process dies) and checked to still be the same
   file; it is read from that descriptor. If it changed since it was judged settled,
   it is renamed back to settle again. Then ``on_arrival(Arrival(...))`` runs
   synchronously with ``key`` = the ``_processing/...`` key; it processes the file and
   archives it out of ``_processing/``. If it raises, the error is logged and the file
   stays in ``_processing/``. With ``on_batch`` instead, up to `batch_size` files that
   are ready in one pass are claimed and held first, then handed over together as one
   list (one transaction for all of them downstream); a failure leaves them all in
   ``_processing/``.
5. **Recovered.** `recover` (also run when the loop starts, and every
   `retry_interval` if set) hands over again every file in ``_processing/`` whose lock
   it can take: files left by a process that died, or whose processing failed. A file
   locked by a live holder is skipped, so two sources on one folder never hand over
   the same file at the same time.

Order: per area in name order; when several areas have files ready they take turns,
so one customer's backlog does not hold back another's files.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import logging
import os
import re
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

try:  # Linux only; elsewhere there is no move pairing delay to shorten
    from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper
except (ImportError, OSError):  # pragma: no cover
    InotifyMoveEventGrouper = None  # type: ignore[assignment,misc]
from watchdog.observers.api import BaseObserver, ObservedWatch

from pipelines.layout import (
    OPERATOR,
    PROCESSING,
    Arrival,
    is_area,
    is_temporary_name,
    parse_arrival_key,
    parse_processing_key,
    processing_key,
)
from pipelines.sources.settle import SettleTracker, Signature
from pipelines.storage.local import rename_noreplace

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: claims still exclusive, no lock
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

Stopping = Callable[[], bool]
_T = TypeVar("_T")
_CLAIM_MARK = re.compile(r"\.claim-[0-9a-f]{12}$")
_AREA_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileDeletedEvent, FileOpenedEvent,
    FileClosedEvent, FileClosedNoWriteEvent, DirCreatedEvent, DirMovedEvent,
]
MOVE_PAIRING_DELAY = 0.02  # seconds watchdog waits to pair IN_MOVED_FROM/IN_MOVED_TO
_ROOT_EVENTS: list[type[FileSystemEvent]] = [DirCreatedEvent, DirMovedEvent, DirDeletedEvent]


def _never() -> bool:
    return False


# --- file-system primitives ------------------------------------------------------------


def _hold(path: str) -> int | None:
    """Open and lock `path`; the descriptor, or None if it is gone or held by another."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        mine, there = os.fstat(fd), os.stat(path, follow_symlinks=False)
        if (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino):
            return fd
    except (BlockingIOError, FileNotFoundError):
        pass
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


def _same_file(held: os.stat_result, path: str) -> bool:
    try:
        return os.path.samestat(held, os.stat(path, follow_symlinks=False))
    except OSError:
        return False


def _signature(st: os.stat_result) -> Signature:
    return st.st_size, st.st_mtime_ns, st.st_ino


def _round_robin(groups: dict[str, list[tuple[str, str, Signature]]]
                 ) -> Iterator[tuple[str, str, str, Signature]]:
    """(area, name, key, signature) in name order per area, areas taking turns."""
    ordered = [[(area, *item) for item in sorted(groups[area])] for area in sorted(groups)]
    for batch in itertools.zip_longest(*ordered):
        yield from (item for item in batch if item is not None)


@dataclass(frozen=True, slots=True)
class _Held:
    """A claimed file, locked through `fd` until its hand-over returns."""

    arrival: Arrival
    fd: int
    stat: os.stat_result
    path: str


@dataclass(frozen=True, slots=True)
class _PassResult:
    handed: int
    pending: int
    next_due: float


class _Wakeups(FileSystemEventHandler):
    """Turns watchdog events into settle evidence and wake-ups; never claims anything."""

    def __init__(self, source: DropFolderSource) -> None:
        self._source = source

    def on_created(self, event: FileSystemEvent) -> None:
        self._source._event(event.src_path, "created", event.is_directory)

    def on_modified(self, event: FileSystemEvent) -> None:
        self._source._event(event.src_path, "modified", event.is_directory)

    def on_moved(self, event: FileSystemEvent) -> None:
        self._source._event(event.src_path, "gone", event.is_directory)
        self._source._event(event.dest_path, "created", event.is_directory)

    def on_deleted(self, event: FileSystemEvent) -> None:
        self._source._event(event.src_path, "gone", event.is_directory)

    def on_opened(self, event: FileSystemEvent) -> None:
        self._source._event(event.src_path, "opened", event.is_directory)

    def on_closed(self, event: FileSystemEvent) -> None:
        self._source._event(event.src_path, "closed", event.is_directory)

    def on_closed_no_write(self, event: FileSystemEvent) -> None:
        self._source._event(event.src_path, "closed_no_write", event.is_directory)


class DropFolderSource:
    """Watches a drop-folder inbox and hands each complete file to `on_arrival`.

    `settle_seconds`: how long a file must stay unchanged (and free of write events)
    before it is taken. `scan_interval`: seconds between full reconciling scans of the
    tree in the background loop. `close_grace` (default ``settle_seconds / 4``) and
    `open_hold` (default ``max(60, 10 * settle_seconds)``) tune the event rules, see
    `pipelines.sources.settle`. `retry_interval`: how often the background loop
    runs `recover` to retry files whose processing failed (None: only when the loop
    starts). `clock` (seconds, monotonic) and `sleep` (used by `drain`) are injectable
    so tests can run the settle rule without waiting. `hand_off`: the callback passes
    the claimed file on (distributed mode queues it for a worker, which archives it
    later), so a file still in ``_processing/`` after the callback is expected.
    """

    def __init__(self, root: Path, *, on_arrival: Callable[[Arrival], None] | None = None,
                 on_batch: Callable[[list[Arrival]], None] | None = None,
                 batch_size: int = 200, settle_seconds: float, scan_interval: float,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 close_grace: float | None = None, open_hold: float | None = None,
                 retry_interval: float | None = None, hand_off: bool = False) -> None:
        if scan_interval <= 0:
            raise ValueError("scan_interval must be > 0")
        if (on_arrival is None) == (on_batch is None):
            raise ValueError("give exactly one of on_arrival and on_batch")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.root = Path(root).absolute()
        self.settle_seconds = settle_seconds
        self.scan_interval = scan_interval
        self.retry_interval = retry_interval
        self.hand_off = hand_off
        self._root = str(self.root)
        self._on_arrival = on_arrival
        self._on_batch = on_batch
        # One file at a time for on_arrival: exactly the historical behaviour.
        self._batch_size = batch_size if on_batch is not None else 1
        self._clock = clock
        self._sleep = sleep
        self._tracker = SettleTracker(settle_seconds, close_grace=close_grace,
                                      open_hold=open_hold, clock=clock)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._pass_lock = threading.Lock()
        self._woken_lock = threading.Lock()
        self._watch_lock = threading.Lock()
        self._woken: set[str] = set()
        self._full_requested = False
        self._made_dirs: set[str] = set()
        self._warned: set[str] = set()
        self._thread: threading.Thread | None = None
        self._observer: BaseObserver | None = None
        self._handler = _Wakeups(self)
        self._watches: dict[str, tuple[ObservedWatch, int]] = {}
        self._gone_areas: set[str] = set()

    # --- public API ----------------------------------------------------------------------

    def start(self, *, watch: bool = True) -> None:
        """Start the background loop (recovery, then scans); `watch` adds the observer."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("the drop-folder source is already running")
        self.root.mkdir(parents=True, exist_ok=True)
        self._stop.clear()
        if watch:
            self._start_observer()
        self._thread = threading.Thread(target=self._run, args=(self._stop.is_set, None),
                                        name=f"dropfolder-{self.root.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop the loop after the file in hand, then the observer; False if still busy."""
        self._stop.set()
        self._wake.set()
        stopped = True
        if self._thread is not None:
            self._thread.join(timeout)
            stopped = not self._thread.is_alive()
            if stopped:
                self._thread = None
        self._stop_observer(timeout)
        return stopped

    def run_until(self, stop: threading.Event, *, watch: bool = True) -> None:
        """Run the loop in the calling thread until `stop` (or `self.stop()`) is set."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._stop.clear()
        if watch:
            self._start_observer()
        try:
            self._run(lambda: stop.is_set() or self._stop.is_set(), 0.25)
        finally:
            self._stop_observer(5.0)

    def scan_once(self) -> int:
        """One full reconciling pass: observe every candidate, claim and hand over what
        has settled. Returns how many files were handed over."""
        return self._pass(full=True, stopping=_never).handed

    def recover(self) -> int:
        """Hand over again the files in ``_processing/`` that no live holder has locked
        (left by a dead process, or whose processing failed). Returns how many."""
        return self._recover(_never)

    def drain(self, timeout: float) -> bool:
        """Recover, then scan until no candidate file is left in the arrival folders and
        ``_processing/`` is empty. False if `timeout` seconds (by `clock`) pass first."""
        deadline = self._clock() + timeout
        self.recover()
        while True:
            result = self._pass(full=True, stopping=_never)
            if result.pending == 0 and not self._processing_busy():
                return True
            now = self._clock()
            if now >= deadline:
                return False
            self._sleep(max(0.005, min(result.next_due - now, self.scan_interval,
                                       deadline - now)))

    # --- the loop ------------------------------------------------------------------------

    def _run(self, stopping: Stopping, poll_cap: float | None) -> None:
        try:
            self._recover(stopping)
        except Exception:
            log.exception("recovering %s/%s failed", self._root, PROCESSING)
        min_gap = min(0.05, self.scan_interval)
        next_full = float("-inf")
        next_retry = self._clock() + (self.retry_interval or float("inf"))
        while not stopping():
            if self._clock() >= next_retry:
                next_retry = self._clock() + (self.retry_interval or float("inf"))
                try:
                    self._recover(stopping)
                except Exception:
                    log.exception("recovering %s/%s failed", self._root, PROCESSING)
            full = self._clock() >= next_full or self._take_full_request()
            try:
                result = self._pass(full=full, stopping=stopping)
            except Exception:
                log.exception("scanning %s failed", self._root)
                result = _PassResult(0, 0, float("inf"))
            now = self._clock()
            if full:
                next_full = now + self.scan_interval
            wait = min(next_full, result.next_due, next_retry) - now
            if poll_cap is not None:
                wait = min(wait, poll_cap)
            if self._stop.wait(min_gap) or stopping():
                break
            self._wake.wait(max(0.0, wait - min_gap))
            self._wake.clear()

    def _pass(self, *, full: bool, stopping: Stopping) -> _PassResult:
        with self._pass_lock:
            ready: dict[str, list[tuple[str, str, Signature]]] = {}
            next_due = float("inf")
            seen: list[str] = []
            for key, st in (self._walk_arrivals() if full else self._recheck()):
                parsed = parse_arrival_key(key)
                if parsed is None:
                    self._warn_once(key, "ignoring %s: not a valid arrival name")
                    continue
                seen.append(key)
                signature = _signature(st)
                due = self._tracker.due(key, signature)
                if due <= self._clock():
                    ready.setdefault(parsed[0], []).append((parsed[1], key, signature))
                else:
                    next_due = min(next_due, due)
            if full:
                self._tracker.prune(seen)
            handed = 0
            held: list[_Held] = []
            for area, name, key, signature in _round_robin(ready):
                if stopping():
                    break
                one = self._claim(area, name, key, signature)
                if one is not None:
                    held.append(one)
                    if len(held) >= self._batch_size:
                        handed += self._deliver(held)
                        held = []
            handed += self._deliver(held)  # claimed files are always handed over
            return _PassResult(handed, len(seen) - handed, next_due)

    def _recover(self, stopping: Stopping) -> int:
        base = os.path.join(self._root, PROCESSING)
        handed = 0
        with self._pass_lock:
            held: list[_Held] = []
            for key, _entry in self._walk_areas(self._areas(base, PROCESSING)):
                if stopping():
                    break
                parsed = parse_processing_key(key)
                if parsed is None:
                    self._warn_once(key, "ignoring %s: not a valid processing name")
                    continue
                area, name = parsed
                one = self._take(area, _CLAIM_MARK.sub("", name), key)
                if one is not None:
                    held.append(one)
                    if len(held) >= self._batch_size:
                        handed += self._deliver(held)
                        held = []
            handed += self._deliver(held)
        return handed

    # --- walking the tree ----------------------------------------------------------------

    def _walk_arrivals(self) -> Iterator[tuple[str, os.stat_result]]:
        """(key, stat) of every regular, non-temporary file in the arrival folders."""
        areas = self._areas(self._root, None)
        self._sync_watches(areas)
        for key, entry in self._walk_areas(areas):
            try:
                yield key, entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue

    def _areas(self, base: str, prefix: str | None) -> list[tuple[str, str, int]]:
        """(key, path, inode) of the area folders in `base` (root or ``_processing``)."""
        try:
            with os.scandir(base) as it:
                top = sorted(it, key=lambda e: e.name)
        except FileNotFoundError:
            return []
        areas = []
        for entry in top:
            name = entry.name
            if not entry.is_dir(follow_symlinks=False):
                if prefix is None and entry.is_file(follow_symlinks=False) \
                        and not is_temporary_name(name):
                    self._warn_once(name, "ignoring %s: files directly in the inbox root "
                                          "are not for anyone; put them in a customer folder")
                continue
            if name.startswith(".") or (prefix is None and name.startswith("_")
                                        and name != OPERATOR):
                continue
            if not is_area(name):
                self._warn_once(name + "/", "ignoring folder %s: not a customer code")
                continue
            areas.append((name if prefix is None else f"{prefix}/{name}", entry.path,
                          entry.inode()))
        return areas

    def _walk_areas(self, areas: list[tuple[str, str, int]]
                    ) -> Iterator[tuple[str, os.DirEntry]]:
        for key, path, _inode in areas:
            yield from self._walk_tree(path, key)

    def _walk_tree(self, path: str, key: str) -> Iterator[tuple[str, os.DirEntry]]:
        stack = [(path, key)]
        while stack:
            folder, folder_key = stack.pop()
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name, reverse=True)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except PermissionError as exc:
                self._warn_once(folder_key + "/", "cannot read folder %s: %s", exc)
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                entry_key = f"{folder_key}/{entry.name}"
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, entry_key))
                elif entry.is_file(follow_symlinks=False) and not is_temporary_name(entry.name):
                    yield entry_key, entry

    def _recheck(self) -> Iterator[tuple[str, os.stat_result]]:
        """(key, stat) for the keys events pointed at and those still settling."""
        with self._woken_lock:
            keys = self._woken
            self._woken = set()
        for key in sorted(keys.union(self._tracker.pending())):
            try:
                st = os.stat(self._path(key), follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                self._tracker.forget(key)
                continue
            if stat.S_ISREG(st.st_mode):
                yield key, st

    def _processing_busy(self) -> bool:
        base = os.path.join(self._root, PROCESSING)
        return next(iter(self._walk_areas(self._areas(base, PROCESSING))), None) is not None

    # --- claiming and handing over -------------------------------------------------------

    def _claim(self, area: str, name: str, key: str, signature: Signature) -> _Held | None:
        """Rename `key` into ``_processing/`` and take hold of it; None if not taken."""
        self._tracker.forget(key)
        try:
            target = self._move_into_processing(key, processing_key(area, name))
        except FileNotFoundError:
            log.debug("%s was claimed by another source", key)
            return None
        except OSError as exc:
            log.warning("cannot claim %s: %s", key, exc)
            return None
        return self._take(area, name, target, expect=signature, origin=key)

    def _move_into_processing(self, key: str, target: str) -> str:
        """Rename arrival `key` to `target`, or to a ``.claim-`` variant if that is taken."""
        src = self._path(key)
        for attempt in range(2):
            candidate = f"{target}.claim-{uuid.uuid4().hex[:12]}" if attempt else target
            dst = self._path(candidate)
            parent = os.path.dirname(dst)
            if parent not in self._made_dirs:
                os.makedirs(parent, exist_ok=True)
                self._made_dirs.add(parent)
            try:
                rename_noreplace(src, dst)
                return candidate
            except FileExistsError:
                continue
            except FileNotFoundError:
                if os.path.isdir(parent):
                    raise  # the source is gone: claimed by someone else
                self._made_dirs.discard(parent)  # our folder was removed; once more
                os.makedirs(parent, exist_ok=True)
                rename_noreplace(src, dst)
                return candidate
        raise FileExistsError(errno.EEXIST, "no free processing name", target)

    def _take(self, area: str, name: str, key: str, *, expect: Signature | None = None,
              origin: str | None = None) -> _Held | None:
        """Lock and read the file at ``_processing`` `key`; None if it is not ours to pass
        on now (gone, held by another source, unreadable, or put back to settle)."""
        path = self._path(key)
        try:
            fd = _hold(path)
        except OSError as exc:
            log.error("cannot open %s (%s); it stays for recovery", key, exc)
            return None
        if fd is None:
            log.debug("%s is held by another source", key)
            return None
        try:
            with open(fd, "rb", closefd=False) as handle:
                data = handle.read()
            held = os.fstat(fd)
        except OSError as exc:
            os.close(fd)
            log.error("cannot read %s (%s); it stays for recovery", key, exc)
            return None
        changed = expect is not None and (_signature(held) != expect
                                          or len(data) != held.st_size)
        if changed and origin is not None and self._put_back(key, origin):
            os.close(fd)
            return None
        arrival = Arrival(area, name, key, data, hashlib.sha256(data).hexdigest(), len(data))
        # A claim is routine (the outcome line that follows names the file): DEBUG.
        # Recovering a file left by a dead or failed run is not: INFO.
        log.log(logging.DEBUG if origin else logging.INFO, "%s %s (%d bytes, sha256 %s)",
                f"claimed {origin} as" if origin else "recovered", key, arrival.size,
                arrival.sha256[:16])
        return _Held(arrival, fd, held, path)

    def _deliver(self, batch: list[_Held]) -> int:
        """Pass held files to the callback, then release them; how many were handed over.

        The locks stay taken until the callback returns, so no other source hands over
        a file while it is being processed here.
        """
        if not batch:
            return 0
        try:
            if self._on_batch is not None:
                self._call(self._on_batch, [h.arrival for h in batch], batch)
            else:
                assert self._on_arrival is not None
                for one in batch:
                    self._call(self._on_arrival, one.arrival, [one])
        finally:
            for one in batch:
                os.close(one.fd)
        return len(batch)

    def _call(self, callback: Callable[[_T], None], argument: _T, batch: list[_Held]) -> None:
        try:
            callback(argument)
        except Exception:
            log.exception("processing %s failed; it stays for recovery",
                          ", ".join(h.arrival.key for h in batch[:5])
                          + (f" and {len(batch) - 5} more" if len(batch) > 5 else ""))
            return
        for one in [] if self.hand_off else batch:
            if _same_file(one.stat, one.path):
                log.warning("processing %s returned but left it in place", one.arrival.key)

    def _put_back(self, key: str, origin: str) -> bool:
        """Return a file that changed while being claimed; False if it cannot go back."""
        try:
            rename_noreplace(self._path(key), self._path(origin))
        except OSError as exc:
            log.warning("%s changed while being claimed and cannot be put back (%s); "
                        "handing it over as it is", origin, exc)
            return False
        log.warning("%s changed while being claimed; put back to settle again", origin)
        return True

    # --- events and helpers ----------------------------------------------------------------

    def _event(self, path: bytes | str, kind: str, is_directory: bool) -> None:
        """Record one watchdog event (observer thread)."""
        path = os.fsdecode(path)
        if is_directory:  # a folder came, went or moved: look at the whole tree
            with self._woken_lock:
                self._full_requested = True
                if kind == "gone" and os.path.dirname(path) == self._root:
                    self._gone_areas.add(path)  # its watch died with it
            self._wake.set()
            return
        key = self._key(path)
        if key is None or parse_arrival_key(key) is None:
            return
        tracker = self._tracker
        if kind in ("created", "modified"):
            tracker.note_write(key)
        elif kind == "opened":
            tracker.note_open(key)
        elif kind in ("closed", "closed_no_write"):
            tracker.note_close(key, wrote=kind == "closed")
        elif kind == "gone":
            tracker.forget(key)
        if kind in ("created", "closed"):
            with self._woken_lock:
                self._woken.add(key)
            self._wake.set()

    def _take_full_request(self) -> bool:
        with self._woken_lock:
            requested, self._full_requested = self._full_requested, False
        return requested

    def _start_observer(self) -> None:
        """Watch the root for new area folders and each area folder recursively; the
        reserved folders are not watched, so our own moves there cause no events."""
        if self._observer is not None:
            return
        # Every claim renames a file out of a watched folder into an unwatched one: an
        # IN_MOVED_FROM with no partner. watchdog holds such an event (and every event
        # queued behind it) for `delay` seconds hoping to pair it, which would add half
        # a second to the next file's close event. Events are only wake-ups here, so an
        # unpaired move reported quickly as delete + create is exactly as good.
        if InotifyMoveEventGrouper is not None:
            InotifyMoveEventGrouper.delay = MOVE_PAIRING_DELAY
        observer = Observer()
        try:
            observer.schedule(self._handler, self._root, recursive=False,
                              event_filter=_ROOT_EVENTS)
            observer.start()
        except OSError as exc:
            log.warning("no file-system events for %s (%s); scanning every %.1f s",
                        self._root, exc, self.scan_interval)
            return
        self._observer = observer
        self._sync_watches(self._areas(self._root, None))

    def _sync_watches(self, areas: list[tuple[str, str, int]]) -> None:
        """One recursive watch per area folder, re-made when the folder was replaced
        (seen by a delete/move event, or by a new inode number)."""
        with self._watch_lock:
            observer = self._observer
            if observer is None:
                return
            wanted = {path: inode for _key, path, inode in areas}
            with self._woken_lock:
                gone, self._gone_areas = self._gone_areas, set()
            for path, (watch, inode) in list(self._watches.items()):
                if path in gone or wanted.get(path) != inode:
                    del self._watches[path]
                    with contextlib.suppress(KeyError):
                        observer.unschedule(watch)
            for path in sorted(wanted.keys() - self._watches.keys()):
                try:
                    watch = observer.schedule(self._handler, path, recursive=True,
                                              event_filter=_AREA_EVENTS)
                except OSError as exc:
                    self._warn_once(path, "no file-system events for %s (%s); scans only",
                                    exc)
                    continue
                self._watches[path] = (watch, wanted[path])

    def _stop_observer(self, timeout: float | None) -> None:
        with self._watch_lock:
            observer, self._observer, self._watches = self._observer, None, {}
        if observer is not None:
            observer.stop()
            observer.join(timeout)

    def _path(self, key: str) -> str:
        return f"{self._root}{os.sep}{key.replace('/', os.sep)}"

    def _key(self, path: str) -> str | None:
        prefix = self._root + os.sep
        if not path.startswith(prefix):
            return None
        return path[len(prefix):].replace(os.sep, "/")

    def _warn_once(self, what: str, message: str, *args: object) -> None:
        if what not in self._warned and len(self._warned) < 10_000:
            self._warned.add(what)
            log.warning(message, what, *args)
