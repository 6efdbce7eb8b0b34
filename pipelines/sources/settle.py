"""When is a file in a drop folder complete? The settle rule, free of any file I/O.

`SettleTracker` combines three kinds of evidence about a path (an inbox key):

* **Observations** from reconciling scans: a signature ``(size, mtime_ns, inode)``
  and the clock time it was first seen. Scans are the authority; they always run.
* **Activity** from file-system events, when an observer runs: writes (created,
  modified), moves in, and closes after writing. Events can be lost (an inotify
  queue overflow drops them silently), so they may delay a file or let a finished
  one go sooner, but a file is never taken on events alone.
* **The kernel's answer**, asked through a `WriterCheck` once the rules below say
  the file is due: is some process holding it open for writing right now
  (`pipelines.sources.dropfolder.writers`)? True, False, or None (cannot tell).

A file is *due* (may be claimed) at the earliest time when

1. either
   a. **settled**: its signature is unchanged for `settle_seconds` across
      observations, and no write event arrived for it within `settle_seconds`; or
   b. **closed**: a close-after-write event (inotify ``IN_CLOSE_WRITE``) arrived
      after its last write event, and both that close and the first observation of
      the current signature are at least the close grace old;

   and in both cases its last close is at least the close grace old;
2. and it is not open for writing:
   a. when the kernel answers, by its answer alone, with no time limit: a writer
      that pauses for minutes with the file open keeps it; the close grace is then
      `KERNEL_CLOSE_GRACE` (a client may still set times and modes by name right
      after closing, as rsync does). An open file is asked about again every
      `OPEN_RECHECK` seconds, or sooner on its close event;
   b. otherwise (not Linux, a file the watcher may not lease) by the events: a
      write event with no close-after-write since holds the file until
      `open_hold` after that write (a lost close event must not hold a file
      forever), and the close grace is `close_grace`. When the hold runs out and
      the file is taken anyway, one warning names it.

Rule 1b lets a finished upload go well before `settle_seconds`; rule 2 keeps a
writer that pauses longer than `settle_seconds` with the file open from losing its
file early. Writers that close and reopen a file are seen by no rule but 1a:
they should upload under a temporary name (``*.part``) and rename, or pick a
`settle_seconds` longer than their longest pause.

Thread safety: event methods are called from the observer thread, `due` from the
scanning thread; one lock guards the state (the kernel is asked outside it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

log = logging.getLogger(__name__)

Signature = tuple[int, int, int]
"""(size, mtime_ns, inode) of a file as seen by one stat call."""

WriterCheck = Callable[[], bool | None]
"""Asks the kernel whether a file is open for writing now; None: it cannot tell."""

# Seconds after a close when the kernel vouches for no writer: only for a client that
# sets times or modes by name right after its close (scp -p); the data is complete.
KERNEL_CLOSE_GRACE = 0.01
OPEN_RECHECK = 1.0  # seconds between questions about a file the kernel says is open


class Evidence(Enum):
    """What a file-system event says about a key."""

    WRITE = "write"  # created or modified: its writer has it open
    MOVED_IN = "moved in"  # renamed to the key: changed, not open for writing
    CLOSE = "close"  # closed after writing
    GONE = "gone"  # deleted or moved away


@dataclass(slots=True)
class _Observation:
    signature: Signature
    since: float
    ask_after: float = float("-inf")  # the kernel said open: not asked again before
    due: float = float("-inf")  # the last decision: not worth a look before, unless woken
    blind: bool = False  # the kernel could not tell last time: the events decide


@dataclass(slots=True)
class _Activity:
    last_event: float
    last_write: float | None = None  # a write or a move in
    closed_at: float | None = None
    writing: bool = False  # written to since the last close-after-write (per events)
    warned: bool = False  # the open hold ran out and that was logged


class SettleTracker:
    """Decides, per key, when a file has been quiet long enough to be claimed."""

    def __init__(self, settle_seconds: float, *, close_grace: float | None = None,
                 open_hold: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if settle_seconds < 0:
            raise ValueError("settle_seconds must be >= 0")
        self.settle_seconds = settle_seconds
        self.close_grace = settle_seconds / 4 if close_grace is None else close_grace
        self.kernel_close_grace = min(self.close_grace, KERNEL_CLOSE_GRACE)
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

    def note_write(self, key: str, *, moved_in: bool = False) -> None:
        """A created or modified event for `key` (its writer has it open), or with
        `moved_in` a file renamed to `key` (changed, but not open for writing)."""
        self.note([(key, Evidence.MOVED_IN if moved_in else Evidence.WRITE)])

    def note_close(self, key: str) -> None:
        """A close-after-write event for `key` (IN_CLOSE_WRITE)."""
        self.note([(key, Evidence.CLOSE)])

    def note(self, events: Iterable[tuple[str, Evidence]]) -> None:
        """Events in the order they happened, under one taking of the lock (a burst of
        uploads brings thousands)."""
        with self._lock:
            for key, evidence in events:
                if evidence is Evidence.GONE:
                    self._seen.pop(key, None)
                    self._activity.pop(key, None)
                    continue
                act = self._touch(key)
                if evidence is Evidence.CLOSE:
                    act.closed_at = act.last_event
                    act.writing = False
                    obs = self._seen.get(key)
                    if obs is not None:  # looked at, and the kernel asked, on the next pass
                        obs.ask_after = obs.due = float("-inf")
                else:
                    act.last_write = act.last_event
                    act.writing = evidence is Evidence.WRITE

    def forget(self, key: str) -> None:
        """Drop everything known about `key` (claimed, deleted or moved away)."""
        with self._lock:
            self._seen.pop(key, None)
            self._activity.pop(key, None)

    # --- decisions for the scanning thread -------------------------------------------

    def due(self, key: str, signature: Signature, open_check: WriterCheck | None = None
            ) -> float:
        """Record an observation of `key` and return the time it is (or will be) due.

        The file may be claimed now when the result is <= the clock's current time;
        otherwise the result says when to look again, assuming nothing changes.
        `open_check` (the kernel) is asked only once the file would otherwise be due.
        """
        obs, when = self._decide(key, signature, open_check)
        obs.due = when
        return when

    def _decide(self, key: str, signature: Signature, open_check: WriterCheck | None
                ) -> tuple[_Observation, float]:
        with self._lock:
            now = self._clock()
            obs = self._seen.get(key)
            if obs is None or obs.signature != signature:
                obs = self._seen[key] = _Observation(signature, now)
            act = self._activity.get(key)
            if open_check is None:
                return obs, self._taken(key, act, self._held(obs, act, now), now)
            if obs.blind:  # the kernel could not tell last time: not asked before due
                due = self._held(obs, act, now)
                if due > now:
                    return obs, due
            else:
                due = self._settled(obs, act, self.kernel_close_grace)
                if due > now or obs.ask_after > now:
                    return obs, max(due, obs.ask_after)
        answer = open_check()
        with self._lock:
            act = self._activity.get(key)
            obs.blind = answer is None
            if answer is True:
                log.debug("%s is open for writing; it waits for its writer", key)
                obs.ask_after = now + OPEN_RECHECK
                return obs, obs.ask_after
            if answer is False:
                return obs, self._settled(obs, act, self.kernel_close_grace)
            return obs, self._taken(key, act, self._held(obs, act, now), now)

    def _settled(self, obs: _Observation, act: _Activity | None, grace: float) -> float:
        """Rule 1: when the file is settled (a), or closed long enough ago (b)."""
        due = obs.since + self.settle_seconds
        if act is None:
            return due
        if act.last_write is not None:
            due = max(due, act.last_write + self.settle_seconds)
        if act.closed_at is not None and (act.last_write is None
                                          or act.closed_at >= act.last_write):
            due = min(due, max(obs.since, act.closed_at) + grace)
        if act.closed_at is not None:  # a client may still set times and modes by name
            due = max(due, act.closed_at + grace)
        return due

    def _held(self, obs: _Observation, act: _Activity | None, now: float) -> float:
        """Rules 1 and 2b: when the file is due going by the events alone."""
        due = self._settled(obs, act, self.close_grace)
        if act is not None and act.writing and act.last_write is not None \
                and now < act.last_write + self.open_hold:
            due = max(due, act.last_write + self.open_hold)
        return due

    @staticmethod
    def _taken(key: str, act: _Activity | None, due: float, now: float) -> float:
        """`due`; warns (once) when the file goes with its open hold run out."""
        if due <= now and act is not None and act.writing and act.last_write is not None \
                and not act.warned:
            act.warned = True
            log.warning("%s was written to %.0f s ago and its close was never seen; the "
                        "kernel cannot tell whether it is still open: taking it "
                        "(AIRLOCK_OPEN_HOLD_SECONDS)", key, now - act.last_write)
        return due

    def pending(self) -> list[str]:
        """Keys observed but not yet forgotten."""
        with self._lock:
            return list(self._seen)

    def come_due(self, now: float) -> tuple[list[str], float]:
        """The keys observed whose last decision has come due by `now` (a quick pass
        looks at them again), and when the next of the others does. The others need no
        look before then: what could make one due sooner is a close or a move in, whose
        event wakes its key; a missed event is caught by the full scans."""
        keys = []
        soonest = float("inf")
        with self._lock:
            for key, obs in self._seen.items():
                if obs.due <= now:
                    keys.append(key)
                elif obs.due < soonest:
                    soonest = obs.due
        return keys, soonest

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
