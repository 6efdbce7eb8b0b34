"""Observer wiring: watchdog events become settle evidence and early wake-ups.

Events never claim anything; the reconciling scans are the authority (inotify drops
events silently on overflow). One recursive watch per area folder, plus the root for
new folders; the reserved folders are not watched, so our own moves there cause none.
While the watches are `healthy` the loop scans rarely; an overflow asks for a scan.

Opens and closes without writing are not subscribed to: inotify reports them for
folders too, so on a tree of 20,000 folders one scan (or watchdog's own walk after an
overflow, which then overflows again, for ever) floods the queue. Whether a file is
open for writing is the kernel's to say (`pipelines.sources.dropfolder.writers`).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import threading

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

try:  # Linux only; elsewhere there is no move pairing delay to shorten
    from watchdog.observers.inotify import InotifyObserver
    from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper
except (ImportError, OSError):  # pragma: no cover
    InotifyObserver = None  # type: ignore[assignment,misc]
    InotifyMoveEventGrouper = None  # type: ignore[assignment,misc]
from watchdog.observers.api import BaseObserver, ObservedWatch

from pipelines.layout import parse_arrival_key
from pipelines.sources.dropfolder.fs import Root
from pipelines.sources.dropfolder.tree import Area, WarnOnce
from pipelines.sources.settle import SettleTracker

log = logging.getLogger(__name__)

_AREA_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileDeletedEvent, FileClosedEvent,
    DirCreatedEvent, DirMovedEvent,
]
_ROOT_EVENTS: list[type[FileSystemEvent]] = [DirCreatedEvent, DirMovedEvent, DirDeletedEvent]
MOVE_PAIRING_DELAY = 0.02  # seconds watchdog waits to pair IN_MOVED_FROM/IN_MOVED_TO
_OVERFLOW_LOGGER = "watchdog.observers.inotify_c"
_OVERFLOW_MESSAGE = "Inotify queue overflowed"


class Seen(enum.Enum):
    """What an event says happened to a path."""

    CREATED = "created"
    MODIFIED = "modified"
    MOVED_IN = "moved_in"  # renamed to this name: changed, not open for writing
    GONE = "gone"
    CLOSED = "closed"  # after writing (IN_CLOSE_WRITE)


class Signals:
    """What the events told the loop since it last looked (thread-safe)."""

    def __init__(self, root: Root, tracker: SettleTracker) -> None:
        self.root = root
        self.tracker = tracker
        self.wake = threading.Event()
        self._lock = threading.Lock()
        self._woken: set[str] = set()
        self._full_requested = False
        self._gone_areas: set[str] = set()

    def record(self, path: bytes | str, seen: Seen, is_directory: bool) -> None:
        """One watchdog event (observer thread)."""
        path = os.fsdecode(path)
        if is_directory:  # a folder came, went or moved: look at the whole tree
            with self._lock:
                self._full_requested = True
                if seen is Seen.GONE and os.path.dirname(path) == self.root.path:
                    self._gone_areas.add(path)  # its watch died with it
            self.wake.set()
            return
        key = self.root.key(path)
        if key is None or parse_arrival_key(key) is None:
            return
        if seen in (Seen.CREATED, Seen.MODIFIED, Seen.MOVED_IN):
            self.tracker.note_write(key, moved_in=seen is Seen.MOVED_IN)
        elif seen is Seen.CLOSED:
            self.tracker.note_close(key)
        elif seen is Seen.GONE:
            self.tracker.forget(key)
        if seen in (Seen.CREATED, Seen.MOVED_IN, Seen.CLOSED):
            with self._lock:
                self._woken.add(key)
            self.wake.set()

    def request_full(self) -> None:
        """Events were lost: look at the whole tree (any thread)."""
        with self._lock:
            self._full_requested = True
        self.wake.set()

    def take_woken(self) -> set[str]:
        with self._lock:
            keys, self._woken = self._woken, set()
        return keys

    def take_full_request(self) -> bool:
        with self._lock:
            requested, self._full_requested = self._full_requested, False
        return requested

    def take_gone_areas(self) -> set[str]:
        with self._lock:
            gone, self._gone_areas = self._gone_areas, set()
        return gone


class _Handler(FileSystemEventHandler):
    def __init__(self, signals: Signals) -> None:
        self._record = signals.record

    def on_created(self, event: FileSystemEvent) -> None:
        self._record(event.src_path, Seen.CREATED, event.is_directory)

    def on_modified(self, event: FileSystemEvent) -> None:
        self._record(event.src_path, Seen.MODIFIED, event.is_directory)

    def on_moved(self, event: FileSystemEvent) -> None:
        # Full events: a move from or to an unwatched folder has "" as its other side.
        self._record(event.src_path, Seen.GONE, event.is_directory)
        self._record(event.dest_path, Seen.MOVED_IN, event.is_directory)

    def on_deleted(self, event: FileSystemEvent) -> None:
        self._record(event.src_path, Seen.GONE, event.is_directory)

    def on_closed(self, event: FileSystemEvent) -> None:
        self._record(event.src_path, Seen.CLOSED, event.is_directory)


class _OverflowAlarm(logging.Handler):
    """watchdog reports a queue overflow only as a log line: turn it into a scan.
    (Were the line ever reworded, the slow periodic scan still finds the files.)"""

    def __init__(self, signals: Signals) -> None:
        super().__init__(logging.WARNING)
        self._signals = signals

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith(_OVERFLOW_MESSAGE):
            self._signals.request_full()


def _new_observer() -> BaseObserver:
    # Full events: a file renamed in from an unwatched folder is a move (not open for
    # writing), not a creation (which would be).
    if InotifyObserver is not None and Observer is InotifyObserver:
        return InotifyObserver(generate_full_events=True)
    return Observer()


class Watches:
    """The observer and its watches: the root, and one recursive watch per area."""

    def __init__(self, root: Root, signals: Signals, warn: WarnOnce) -> None:
        self.root = root
        self.signals = signals
        self.warn = warn
        self.watched: dict[str, tuple[ObservedWatch, int]] = {}  # path: (watch, inode)
        self._handler = _Handler(signals)
        self._alarm = _OverflowAlarm(signals)
        self._observer: BaseObserver | None = None
        self._unwatched: set[str] = set()  # area folders whose watch could not be made
        self._lock = threading.Lock()

    def healthy(self) -> bool:
        """True while events can be relied on to wake the loop: the observer runs and
        every area folder is watched. (Lost events are still possible; scans stay.)"""
        with self._lock:
            observer = self._observer
            return observer is not None and observer.is_alive() and not self._unwatched

    def start(self, areas: list[Area], scan_interval: float) -> None:
        if self._observer is not None:
            return
        # Every claim renames a file out of a watched folder into an unwatched one: an
        # IN_MOVED_FROM with no partner. watchdog holds such an event (and every event
        # queued behind it) for `delay` seconds hoping to pair it, which would add half
        # a second to the next file's close event. Events are only wake-ups here, so an
        # unpaired move reported quickly as delete + create is exactly as good.
        if InotifyMoveEventGrouper is not None:
            InotifyMoveEventGrouper.delay = MOVE_PAIRING_DELAY
        observer = _new_observer()
        try:
            observer.schedule(self._handler, self.root.path, recursive=False,
                              event_filter=_ROOT_EVENTS)
            observer.start()
        except OSError as exc:
            log.warning("no file-system events for %s (%s); scanning every %.1f s",
                        self.root.path, exc, scan_interval)
            return
        self._observer = observer
        logging.getLogger(_OVERFLOW_LOGGER).addHandler(self._alarm)
        self.sync(areas)

    def sync(self, areas: list[Area]) -> None:
        """Re-make the watch of an area folder that was replaced (seen by a delete or
        move event, or by a new inode number), and watch new ones."""
        with self._lock:
            observer = self._observer
            if observer is None:
                return
            wanted = {area.path: area.inode for area in areas}
            self._unwatched = set()
            gone = self.signals.take_gone_areas()
            for path, (watch, inode) in list(self.watched.items()):
                if path in gone or wanted.get(path) != inode:
                    del self.watched[path]
                    with contextlib.suppress(KeyError):
                        observer.unschedule(watch)
            for path in sorted(wanted.keys() - self.watched.keys()):
                try:
                    watch = observer.schedule(self._handler, path, recursive=True,
                                              event_filter=_AREA_EVENTS)
                except OSError as exc:
                    self.warn(path, "no file-system events for %s (%s); scans only", exc)
                    self._unwatched.add(path)
                    continue
                self.watched[path] = (watch, wanted[path])

    def stop(self, timeout: float | None) -> None:
        with self._lock:
            observer, self._observer, self.watched = self._observer, None, {}
        logging.getLogger(_OVERFLOW_LOGGER).removeHandler(self._alarm)
        if observer is not None:
            observer.stop()
            observer.join(timeout)
