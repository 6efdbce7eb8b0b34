"""The drop-folder source: scans, claims and hands over, and retries what failed."""

from __future__ import annotations

import functools
import itertools
import logging
import os
import stat
import threading
import time
import zlib
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pipelines.outage import Backoff, Outage, Retries
from pipelines.sources.base import OnBatch
from pipelines.sources.dropfolder import fs
from pipelines.sources.dropfolder.claims import Claims, Held
from pipelines.sources.dropfolder.fs import Root
from pipelines.sources.dropfolder.observer import Signals, Watches
from pipelines.sources.dropfolder.tree import Tree, WarnOnce
from pipelines.sources.dropfolder.writers import KERNEL, WriterProbe
from pipelines.sources.refusals import SizeLimits
from pipelines.sources.settle import SettleTracker

log = logging.getLogger(__name__)

Stopping = Callable[[], bool]
STOP_CHECK = 0.25  # seconds: how soon the loop notices its stop event
EVENTS_RESCAN = 60.0  # seconds between full scans while the events can be relied on
SCAN_SHARE = 0.02  # a full scan repeats no sooner than its duration / SCAN_SHARE
# After a pass, events wait at least as long as it took (within these bounds, seconds):
# a stream of events is taken in batches, not one pass per event, while a lone close
# is answered at once. A timer that falls due sooner is never delayed by it.
PASS_GAP = (0.002, 0.05)


def _never() -> bool:
    return False


Ready = dict[str, list[tuple[str, str, os.stat_result]]]  # area: [(name, key, lstat)]


def _round_robin(groups: Ready) -> Iterator[tuple[str, str, str, os.stat_result]]:
    """(area, name, key, lstat) in each area's order, areas taking turns."""
    ordered = [[(area, *item) for item in groups[area]] for area in sorted(groups)]
    for batch in itertools.zip_longest(*ordered):
        yield from (item for item in batch if item is not None)


def _in_order(groups: Ready, *, reverse: bool = False) -> Ready:
    return {area: sorted(items, key=lambda item: item[0], reverse=reverse)
            for area, items in groups.items()}


def _share(name: str, count: int) -> int:
    """The runner (of `count`) that takes the file `name` first: the same in each.

    Runner `index` of `count` sharing the inbox takes first the files whose name hashes
    to it, in name order, then what is left of the others' from the end of their list:
    runners walking one list in step would race for every file (a loser's rename is
    wasted work), while these meet only where one that finished its share meets the
    owner of the rest. One runner alone has every file in its share, in name order."""
    return zlib.crc32(name.encode("utf-8", "surrogateescape")) % count


def _names(held: list[Held]) -> str:
    keys = [h.arrival.key for h in held]
    return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


@dataclass(frozen=True, slots=True)
class _PassResult:
    claimed: int
    pending: int  # seen in the arrival folders and not claimed
    next_due: float


class DropFolderSource:
    """Watches a drop-folder inbox and hands complete files to `on_batch`, up to
    `batch_size` at a time (see the package for how a file travels).

    `settle_seconds`: how long a file must stay unchanged (and free of write events)
    before it is taken. `scan_interval`: seconds between full reconciling scans.
    While the file-system events are healthy (every area folder watched) a full scan
    runs only every `EVENTS_RESCAN` seconds (the events bring new files in); and never
    more often than its own duration / `SCAN_SHARE`, so a huge tree of empty folders
    does not keep the process busy. `close_grace` (default ``settle_seconds / 4``)
    and `open_hold` (default ``max(60, 10 * settle_seconds)``) tune the rules used
    when `probe` (the kernel) cannot tell whether a file is open for writing, see
    `pipelines.sources.settle`. `backoff` spaces the retries of failed hand-overs
    and of reads that failed. `limits`: the largest file read (larger ones are
    refused from their ``stat``).
    `clock` (seconds, monotonic) and `sleep` (used by `drain`) are the time it runs on.
    `slot` (index, count): this source's place among `count` sharing the inbox.
    """

    def __init__(self, root: Path, *, on_batch: OnBatch, batch_size: int = 200,
                 settle_seconds: float, scan_interval: float,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 close_grace: float | None = None, open_hold: float | None = None,
                 backoff: Backoff | None = None, limits: SizeLimits | None = None,
                 probe: WriterProbe = KERNEL, slot: tuple[int, int] = (0, 1)) -> None:
        if not 0 <= slot[0] < slot[1]:
            raise ValueError("slot must be (index, count) with 0 <= index < count")
        if scan_interval <= 0:
            raise ValueError("scan_interval must be > 0")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.root = Path(root).absolute()
        self.settle_seconds = settle_seconds
        self.scan_interval = scan_interval
        self._on_batch = on_batch
        self._batch_size = batch_size
        self._slot = slot
        self._clock = clock
        self._sleep = sleep
        self._tracker = SettleTracker(settle_seconds, close_grace=close_grace,
                                      open_hold=open_hold, clock=clock)
        where = Root(str(self.root))
        self._where = where
        self._probe = probe
        self._warn = WarnOnce()
        self._tree = Tree(where, self._warn)
        self._signals = Signals(where, self._tracker)
        self._watches = Watches(where, self._signals, self._warn)
        self._claims = Claims(where, self._tracker, limits=limits or SizeLimits(),
                              unreadable=Retries(backoff, clock=clock),
                              open_check=probe.fd_open_for_writing)
        self._retries: Retries[str] = Retries(backoff, clock=clock)
        self._outage = Outage(log, clock=clock)
        self._pass_lock = threading.Lock()

    # --- the Source protocol -----------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Recover, then scan, claim and hand over until `stop` is set; the files in
        hand are finished first. A failed hand-over is retried with backoff."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._watches.start(self._tree.arrival_areas(), self.scan_interval)
        try:
            self._loop(stop)
        finally:
            self._watches.stop(5.0)

    def recover(self) -> int:
        """Hand over again the files in ``_processing/`` that no live holder has locked
        (left by a dead process, or whose hand-over failed); how many were taken."""
        return self._recover(_never)

    def drain(self, timeout: float, stop: threading.Event | None = None) -> bool:
        """Recover, then scan until the arrival folders and ``_processing/`` are empty
        (True). False once `timeout` seconds (by `clock`) pass, on `stop`, or as soon
        as the files left are only ones whose hand-over failed here (they wait for a
        retry, which a running source makes; `recover` takes them next time)."""
        stopping = stop.is_set if stop is not None else _never
        deadline = self._clock() + timeout
        self._recover(stopping)
        while True:
            result = self._pass(full=True, stopping=stopping)
            if self._outage.down:
                return False  # a dependency is gone: nothing more can be handed over now
            if result.pending == 0:
                self._recover(stopping, skip=self._retries)  # released by other sources
                left = self._tree.processing_keys()
                if not left:
                    return True
                if all(key in self._retries for key in left):
                    return False
            now = self._clock()
            if now >= deadline or stopping():
                return False
            if result.claimed:
                continue  # more may be ready at once (or lost to another source)
            self._sleep(max(0.005, min(result.next_due - now, self.scan_interval,
                                       deadline - now)))

    # --- the loop ------------------------------------------------------------------------

    def _loop(self, stop: threading.Event) -> None:
        try:
            self._recover(stop.is_set)
        except Exception:
            log.exception("recovering the files in %s/_processing failed", self.root)
        next_full = float("-inf")
        while not stop.is_set():
            self._signals.wake.clear()  # events from here on wake the wait below
            started = self._clock()
            full = started >= next_full or self._signals.take_full_request()
            try:
                # While a dependency is down only the retries run (they find out when
                # it is back); new files wait in the arrival folders, unclaimed.
                result = self._pass(full=full, stopping=stop.is_set,
                                    claim=not (self._outage.down and len(self._retries)))
                self._retry_due(stop.is_set)
            except Exception:
                log.exception("scanning %s failed", self.root)
                result = _PassResult(0, 0, float("inf"))
            now = self._clock()
            if full:
                gap = self._full_scan_gap(now - started)
                if next_full == float("-inf"):
                    log.info("scanned %s in %.1f s; %s, the next full scan in %.0f s",
                             self.root, now - started, "file-system events on"
                             if self._watches.healthy() else "no file-system events", gap)
                next_full = now + gap
            wait = min(next_full, result.next_due, self._retries.next_due(),
                       self._claims.unreadable.next_due(), now + STOP_CHECK) - now
            gap = min(max(now - started, PASS_GAP[0]), PASS_GAP[1], self.scan_interval)
            # Never a busy loop, even for a timer that stays due.
            if stop.wait(min(gap, max(wait, PASS_GAP[0]))):
                break
            self._signals.wake.wait(max(0.0, wait - gap))

    def _full_scan_gap(self, took: float) -> float:
        """Seconds until the next full scan, after one that took `took` seconds."""
        gap = max(self.scan_interval, EVENTS_RESCAN) if self._watches.healthy() \
            else self.scan_interval
        return max(gap, took / SCAN_SHARE)

    def _pass(self, *, full: bool, stopping: Stopping, claim: bool = True) -> _PassResult:
        """Observe the candidates (all of them, or those events pointed at and those
        still settling that are due for a look), then claim and hand over the ones that
        are due: this runner's share first, then what the others left of theirs (see
        `_share`). The others' files are looked at (a stat, the kernel asked) only then,
        when most are gone."""
        with self._pass_lock:
            if full:
                areas = self._tree.arrival_areas()
                self._watches.sync(areas)
                candidates = list(self._tree.arrivals(areas))
                self._tracker.prune(key for key, _st in candidates)
                mine: Iterable[tuple[str, os.stat_result]] = [
                    (key, st) for key, st in candidates if self._is_mine(key)]
                theirs = [key for key, _st in candidates if not self._is_mine(key)]
                later = float("inf")
            else:
                settling, later = self._tracker.come_due(self._clock())
                keys = self._signals.take_woken().union(settling)
                theirs = [key for key in keys if not self._is_mine(key)]
                mine = self._rechecked(key for key in keys if self._is_mine(key))
            ready: Ready = {}
            seen, next_due = self._observe(mine, ready)
            next_due = min(next_due, later)
            held: list[Held] = []
            claimed = self._claim_each(_in_order(ready), held, stopping) if claim else 0
            if theirs and not stopping():
                left: Ready = {}
                there, due = self._observe(self._rechecked(theirs), left)
                seen, next_due = seen + there, min(next_due, due)
                if claim:
                    claimed += self._claim_each(_in_order(left, reverse=True), held,
                                                stopping)
            else:
                seen += len(theirs)  # not looked at: still waiting, as far as is known
            self._deliver(held)  # claimed files are always handed over
            return _PassResult(claimed, seen - claimed, next_due)

    def _is_mine(self, key: str) -> bool:
        index, count = self._slot
        return count == 1 or _share(key.partition("/")[2], count) == index

    def _observe(self, candidates: Iterable[tuple[str, os.stat_result]], ready: Ready
                 ) -> tuple[int, float]:
        """Add the `candidates` that are due to `ready`; how many there were, and when
        the next of the others falls due."""
        next_due = float("inf")
        seen = 0
        for key, st in candidates:
            # Any name (the claim renames one no store accepts); an entry that is
            # not a regular file has nothing to settle and is never opened.
            area, _, name = key.partition("/")
            seen += 1
            due = (self._tracker.due(key, fs.signature(st), functools.partial(
                self._probe.open_for_writing, self._where.of(key)))
                   if stat.S_ISREG(st.st_mode) else float("-inf"))
            if due <= self._clock():
                ready.setdefault(area, []).append((name, key, st))
            else:
                next_due = min(next_due, due)
        return seen, next_due

    def _claim_each(self, ready: Ready, held: list[Held], stopping: Stopping) -> int:
        """Claim `ready` into `held`, handing over each full batch; how many were taken."""
        claimed = 0
        for area, name, key, st in _round_robin(ready):
            if stopping():
                break
            one = self._claims.claim(area, name, key, st)
            if one is not None:
                claimed += 1
                held.append(one)
                if len(held) >= self._batch_size:
                    self._deliver(held)
                    held.clear()
        return claimed

    def _rechecked(self, keys: Iterable[str]) -> Iterator[tuple[str, os.stat_result]]:
        for key, st in self._tree.recheck(keys):
            if st is None:
                self._tracker.forget(key)
            else:
                yield key, st

    def _recover(self, stopping: Stopping, skip: Container[str] = ()) -> int:
        with self._pass_lock:
            held: list[Held] = []
            taken = 0
            for key, _entry in self._tree.files(self._tree.processing_areas()):
                if stopping():
                    break
                if key in skip:
                    continue
                one = self._claims.take(key)
                if one is not None:
                    held.append(one)
                    if len(held) >= self._batch_size:
                        taken += self._deliver(held)
                        held = []
            return taken + self._deliver(held)

    def _retry_due(self, stopping: Stopping) -> int:
        """Hand over again the files whose failed hand-over is due for another try."""
        with self._pass_lock:
            held: list[Held] = []
            taken = 0
            for key in [*self._retries.due(), *self._claims.unreadable.due()]:
                if stopping():
                    break
                one = self._claims.take(key, retry=True)
                if one is None:  # archived meanwhile, or another source has it now
                    self._retries.forget(key)
                    continue
                held.append(one)
                if len(held) >= self._batch_size:
                    taken += self._deliver(held)
                    held = []
            return taken + self._deliver(held)

    # --- handing over ----------------------------------------------------------------------

    def _deliver(self, batch: list[Held]) -> int:
        """Pass held files to the callback, then release them; how many it took.

        The locks stay taken until the callback returns, so no other source hands over
        a file while it is being processed here. A file the callback returned as not
        finished, or every file still here when it raised, is scheduled for a retry.
        """
        if not batch:
            return 0
        error: Exception | None = None
        try:
            try:
                left = {a.key for a in self._on_batch([h.arrival for h in batch])}
            except Exception as exc:  # noqa: BLE001 - retried with backoff, logged below
                error, left = exc, {h.arrival.key for h in batch}
            failed = [h for h in batch if h.arrival.key in left and h.still_there()]
        finally:
            for one in batch:
                one.release()
        failed_keys = {h.arrival.key for h in failed}
        for one in batch:
            if one.arrival.key not in failed_keys:
                self._retries.forget(one.arrival.key)
        first = min((self._retries.failed(key) for key in failed_keys), default=0) == 1
        if error is None:
            if self._outage.recovered():
                self._retries.hurry()  # the files that waited for it go now, not at 30 s
            if failed:  # the handler logged why; the core quarantines it in the end
                log.log(logging.INFO if first else logging.DEBUG,
                        "%s not finished; it is tried again", _names(failed))
        else:
            self._outage.failed(error, _names(failed or batch), first=first or not failed)
        return len(batch) - len(failed)
