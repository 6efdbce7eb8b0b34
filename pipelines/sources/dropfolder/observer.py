"""Observer wiring: inotify events become settle evidence and early wake-ups.

Events never claim anything; the reconciling scans are the authority (inotify drops
events silently on overflow). One recursive watch per area folder, plus the root for
new folders; the reserved folders are not watched, so our own moves there cause none.
While the watches are `healthy` the loop scans rarely; an overflow asks for a scan.

Opens and closes without writing are not subscribed to: inotify reports them for
folders too, so on a tree of 20,000 folders one scan floods the queue. Whether a
file is open for writing is the kernel's to say (`pipelines.sources.dropfolder.writers`).
"""

from __future__ import annotations

import logging
import os
import threading

from pipelines.layout import parse_arrival_key
from pipelines.sources.dropfolder import inotify
from pipelines.sources.dropfolder.fs import Root
from pipelines.sources.dropfolder.inotify import Change, Changed
from pipelines.sources.dropfolder.tree import Area, WarnOnce
from pipelines.sources.settle import Evidence, SettleTracker

log = logging.getLogger(__name__)

_EVIDENCE = {Change.CREATED: Evidence.WRITE, Change.MODIFIED: Evidence.WRITE,
             Change.MOVED_IN: Evidence.MOVED_IN, Change.CLOSED: Evidence.CLOSE,
             Change.GONE: Evidence.GONE}


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

    def record(self, changes: list[Changed]) -> None:
        """The file-system events of one read, in order (the reader's thread)."""
        evidence: list[tuple[str, Evidence]] = []
        woken: list[str] = []
        full = False
        gone_areas = []
        for path, seen, is_directory in changes:
            if is_directory:  # a folder came, went or moved: look at the whole tree
                full = True
                if seen is Change.GONE and os.path.dirname(path) == self.root.path:
                    gone_areas.append(path)  # its watch died with it
                continue
            key = self.root.key(path)
            if key is None or parse_arrival_key(key) is None:
                continue
            evidence.append((key, _EVIDENCE[seen]))
            if seen is not Change.MODIFIED and seen is not Change.GONE:
                woken.append(key)
        self.tracker.note(evidence)
        with self._lock:
            self._full_requested |= full
            self._gone_areas.update(gone_areas)
            self._woken.update(woken)
        if full or woken:
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


class Watches:
    """The inotify reader and its watches: the root, and one recursive watch per area."""

    def __init__(self, root: Root, signals: Signals, warn: WarnOnce) -> None:
        self.root = root
        self.signals = signals
        self.warn = warn
        self.watched: dict[str, tuple[inotify.Watch, int]] = {}  # path: (watch, inode)
        self._reader: inotify.Inotify | None = None
        self._unwatched: set[str] = set()  # area folders whose watch could not be made
        self._lock = threading.Lock()

    def healthy(self) -> bool:
        """True while events can be relied on to wake the loop: the reader runs and
        every area folder is watched, with every folder below it. (Lost events are still
        possible; scans stay.)"""
        with self._lock:
            reader = self._reader
            return (reader is not None and reader.is_alive() and not self._unwatched
                    and not any(watch.incomplete for watch, _ in self.watched.values()))

    def start(self, areas: list[Area], scan_interval: float) -> None:
        if self._reader is not None:
            return
        try:
            reader = inotify.Inotify(self.signals.record, self.signals.request_full)
        except OSError as exc:
            log.warning("no file-system events for %s (%s); scanning every %.1f s",
                        self.root.path, exc, scan_interval)
            return
        try:
            reader.add(self.root.path, inotify.ROOT_MASK)
        except OSError as exc:
            reader.stop(None)
            log.warning("no file-system events for %s (%s); scanning every %.1f s",
                        self.root.path, exc, scan_interval)
            return
        reader.start()
        self._reader = reader
        self.sync(areas)

    def sync(self, areas: list[Area]) -> None:
        """Re-make the watch of an area folder that was replaced (seen by a delete or
        move event, or by a new inode number), and watch new ones."""
        with self._lock:
            reader = self._reader
            if reader is None:
                return
            wanted = {area.path: area.inode for area in areas}
            self._unwatched = set()
            gone = self.signals.take_gone_areas()
            for path, (watch, inode) in list(self.watched.items()):
                if path in gone or wanted.get(path) != inode:
                    del self.watched[path]
                    reader.remove(watch)
            for path in sorted(wanted.keys() - self.watched.keys()):
                try:
                    watch = reader.add(path, inotify.FOLDER_MASK, recursive=True)
                except OSError as exc:
                    self.warn(path, "no file-system events for %s (%s); scans only", exc)
                    self._unwatched.add(path)
                    continue
                self.watched[path] = (watch, wanted[path])

    def stop(self, timeout: float | None) -> None:
        with self._lock:
            reader, self._reader, self.watched = self._reader, None, {}
        if reader is not None:
            reader.stop(timeout)
