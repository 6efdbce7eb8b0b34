"""Observer wiring: watchdog events become settle evidence and early wake-ups.

Events never claim anything; the reconciling scans are the authority (inotify drops
events silently on overflow). One recursive watch per area folder, plus the root for
new folders; the reserved folders are not watched, so our own moves there cause none.
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

from pipelines.layout import parse_arrival_key
from pipelines.sources.dropfolder.fs import Root
from pipelines.sources.dropfolder.tree import Area, WarnOnce
from pipelines.sources.settle import SettleTracker

log = logging.getLogger(__name__)

_AREA_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileDeletedEvent, FileOpenedEvent,
    FileClosedEvent, FileClosedNoWriteEvent, DirCreatedEvent, DirMovedEvent,
]
_ROOT_EVENTS: list[type[FileSystemEvent]] = [DirCreatedEvent, DirMovedEvent, DirDeletedEvent]
MOVE_PAIRING_DELAY = 0.02  # seconds watchdog waits to pair IN_MOVED_FROM/IN_MOVED_TO


class Seen(enum.Enum):
    """What an event says happened to a path."""

    CREATED = "created"
    MODIFIED = "modified"
    GONE = "gone"
    OPENED = "opened"
    CLOSED = "closed"  # after writing (IN_CLOSE_WRITE)
    CLOSED_NO_WRITE = "closed_no_write"


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
        if seen in (Seen.CREATED, Seen.MODIFIED):
            self.tracker.note_write(key)
        elif seen is Seen.OPENED:
            self.tracker.note_open(key)
        elif seen in (Seen.CLOSED, Seen.CLOSED_NO_WRITE):
            self.tracker.note_close(key, wrote=seen is Seen.CLOSED)
        elif seen is Seen.GONE:
            self.tracker.forget(key)
        if seen in (Seen.CREATED, Seen.CLOSED):
            with self._lock:
                self._woken.add(key)
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
        self._record(event.src_path, Seen.GONE, event.is_directory)
        self._record(event.dest_path, Seen.CREATED, event.is_directory)

    def on_deleted(self, event: FileSystemEvent) -> None:
        self._record(event.src_path, Seen.GONE, event.is_directory)

    def on_opened(self, event: FileSystemEvent) -> None:
        self._record(event.src_path, Seen.OPENED, event.is_directory)

    def on_closed(self, event: FileSystemEvent) -> None:
        self._record(event.src_path, Seen.CLOSED, event.is_directory)

    def on_closed_no_write(self, event: FileSystemEvent) -> None:
        self._record(event.src_path, Seen.CLOSED_NO_WRITE, event.is_directory)


class Watches:
    """The observer and its watches: the root, and one recursive watch per area."""

    def __init__(self, root: Root, signals: Signals, warn: WarnOnce) -> None:
        self.root = root
        self.signals = signals
        self.warn = warn
        self.watched: dict[str, tuple[ObservedWatch, int]] = {}  # path: (watch, inode)
        self._handler = _Handler(signals)
        self._observer: BaseObserver | None = None
        self._lock = threading.Lock()

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
        observer = Observer()
        try:
            observer.schedule(self._handler, self.root.path, recursive=False,
                              event_filter=_ROOT_EVENTS)
            observer.start()
        except OSError as exc:
            log.warning("no file-system events for %s (%s); scanning every %.1f s",
                        self.root.path, exc, scan_interval)
            return
        self._observer = observer
        self.sync(areas)

    def sync(self, areas: list[Area]) -> None:
        """Re-make the watch of an area folder that was replaced (seen by a delete or
        move event, or by a new inode number), and watch new ones."""
        with self._lock:
            observer = self._observer
            if observer is None:
                return
            wanted = {area.path: area.inode for area in areas}
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
                    continue
                self.watched[path] = (watch, wanted[path])

    def stop(self, timeout: float | None) -> None:
        with self._lock:
            observer, self._observer, self.watched = self._observer, None, {}
        if observer is not None:
            observer.stop()
            observer.join(timeout)
