"""When is a file in a drop folder complete? The settle rule, free of any file I/O.

`SettleTracker` combines two kinds of evidence about a path (an inbox key):

* **Observations** from reconciling scans: a signature ``(size, mtime_ns, inode)``
  and the clock time it was first seen. Scans are the authority; they always run.
* **Activity** from file-system events, when an observer runs: writes
  (created/modified/moved-in), opens, and closes. Events can be lost (an inotify
  queue overflow drops them silently), so they may delay a file or let a finished
  one go sooner, but a file is never taken on events alone.

A file is *due* (may be claimed) at the earliest time when all of these hold:

1. it is not held open: the observer has not seen more opens than closes for it,
   or the last such event is older than `open_hold` (a lost close event must not
   hold a file forever);
2. and either
   a. **settled**: its signature is unchanged for `settle_seconds` across
      observations, and no write event arrived for it within `settle_seconds`; or
   b. **closed**: a close-after-write event (inotify ``IN_CLOSE_WRITE``) arrived
      after its last write event, and both that close and the first observation of
      the current signature are at least `close_grace` old.

Rule 2b lets a finished upload go well before `settle_seconds`; rule 1 keeps a
writer that pauses longer than `settle_seconds` with the file open from losing
its file early. Without an observer only rule 2a applies, so a writer that pauses
longer than `settle_seconds` between writes can still be taken early: writers
should upload under a temporary name (``*.part``) and rename, or pick a
`settle_seconds` longer than their longest pause.

Thread safety: event methods are called from the observer thread, `due` from the
scanning thread; one lock guards the state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

Signature = tuple[int, int, int]
"""(size, mtime_ns, inode) of a file as seen by one stat call."""


@dataclass(slots=True)
class _Observation:
    signature: Signature
    since: float


@dataclass(slots=True)
class _Activity:
    last_event: float
    last_write: float | None = None
    closed_at: float | None = None
    opens: int = 0


class SettleTracker:
    """Decides, per key, when a file has been quiet long enough to be claimed."""

    def __init__(self, settle_seconds: float, *, close_grace: float | None = None,
                 open_hold: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if settle_seconds < 0:
            raise ValueError("settle_seconds must be >= 0")
        self.settle_seconds = settle_seconds
        self.close_grace = settle_seconds / 4 if close_grace is None else close_grace
        self.open_hold = max(60.0, 10 * settle_seconds) if open_hold is None else open_hold
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, _Observation] = {}
        self._activity: dict[str, _Activity] = {}

    # --- evidence from the observer thread -------------------------------------------

    def _touch(self, key: str) -> _Activity:
        now = self._clock()
        act = self._activity.get(key)
        if act is None:
            act = self._activity[key] = _Activity(last_event=now)
        act.last_event = now
        return act

    def note_write(self, key: str) -> None:
        """A created, modified or moved-in event for `key`."""
        with self._lock:
            act = self._touch(key)
            act.last_write = act.last_event

    def note_open(self, key: str) -> None:
        """An open event for `key` (inotify does not say for reading or writing)."""
        with self._lock:
            self._touch(key).opens += 1

    def note_close(self, key: str, *, wrote: bool) -> None:
        """A close event for `key`; `wrote` for a close after writing (IN_CLOSE_WRITE)."""
        with self._lock:
            act = self._touch(key)
            act.opens = max(0, act.opens - 1)
            if wrote:
                act.closed_at = act.last_event

    def forget(self, key: str) -> None:
        """Drop everything known about `key` (claimed, deleted or moved away)."""
        with self._lock:
            self._seen.pop(key, None)
            self._activity.pop(key, None)

    # --- decisions for the scanning thread -------------------------------------------

    def due(self, key: str, signature: Signature) -> float:
        """Record an observation of `key` and return the time it is (or will be) due.

        The file may be claimed now when the result is <= the clock's current time;
        otherwise the result says when to look again, assuming nothing changes.
        """
        with self._lock:
            now = self._clock()
            obs = self._seen.get(key)
            if obs is None or obs.signature != signature:
                obs = self._seen[key] = _Observation(signature, now)
            act = self._activity.get(key)
            due = obs.since + self.settle_seconds
            if act is None:
                return due
            if act.last_write is not None:
                due = max(due, act.last_write + self.settle_seconds)
            if act.closed_at is not None and (act.last_write is None
                                              or act.closed_at >= act.last_write):
                due = min(due, max(obs.since, act.closed_at) + self.close_grace)
            if act.opens > 0 and now < act.last_event + self.open_hold:
                due = max(due, act.last_event + self.open_hold)
            return due

    def pending(self) -> list[str]:
        """Keys observed but not yet forgotten (candidates a quick pass looks at again)."""
        with self._lock:
            return list(self._seen)

    def prune(self, present: Iterable[str]) -> None:
        """After a full scan: forget keys no longer present and stale activity."""
        keep = set(present)
        with self._lock:
            now = self._clock()
            for key in [k for k in self._seen if k not in keep]:
                del self._seen[key]
            for key in [k for k, a in self._activity.items()
                        if k not in keep and now - a.last_event > self.open_hold]:
                del self._activity[key]
