"""Claims: moving a settled entry into ``_processing/``, holding it, putting it back.

A claimed regular file is opened without blocking or following a link, checked to be
a regular file, locked, and read at most `SizeLimits` + 1 bytes. What must not be
read is handed over refused (`layout.Arrival.refused`, see
`pipelines.sources.refusals`): an entry that is not a regular file (never opened),
a file over its limit (its ``stat`` says so), a name no store can hold (moved to a
stand-in name first), and a file that still cannot be read after a few tries.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import stat
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from pipelines.errors import RejectReason
from pipelines.layout import PROCESSING, Arrival, is_area, processing_key
from pipelines.outage import Retries
from pipelines.sources import refusals
from pipelines.sources.dropfolder import fs
from pipelines.sources.dropfolder.fs import Root
from pipelines.sources.refusals import SizeLimits, escaped
from pipelines.sources.settle import SettleTracker, Signature

log = logging.getLogger(__name__)

_CLAIM_MARK = re.compile(r"\.claim-[0-9a-f]{12}$")
UNREADABLE_TRIES = 4  # reads of a file that fails with EACCES or EIO before quarantine


@dataclass(frozen=True, slots=True)
class Held:
    """A claimed entry, locked through `fd` until `release` (no descriptor for one
    handed over without being opened)."""

    arrival: Arrival
    fd: int | None
    stat: os.stat_result
    path: str

    def still_there(self) -> bool:
        """True while the entry is where it was claimed (not archived yet)."""
        return fs.same_file(self.stat, self.path)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)


def split_processing_key(key: str) -> tuple[str, str] | None:
    """(area, name as stored) of an entry in ``_processing/<area>/``, whatever its name."""
    head, _, rest = key.partition("/")
    area, sep, name = rest.partition("/")
    if head != PROCESSING or not sep or not name or not is_area(area):
        return None
    return area, name


class Claims:
    """Takes entries into ``_processing/`` and holds them; never replaces one there.

    `unreadable` schedules the next read of a file that could not be read (EACCES,
    EIO); after `unreadable_tries` reads it is handed over refused ``unreadable``.
    """

    def __init__(self, root: Root, tracker: SettleTracker, *, limits: SizeLimits,
                 unreadable: Retries[str], unreadable_tries: int = UNREADABLE_TRIES,
                 open_check: Callable[[int], bool | None] | None = None) -> None:
        self.root = root
        self.tracker = tracker
        # Asked of a claimed file's descriptor: a writer that opened it between the
        # settle decision and the rename still has it; it goes back to settle again.
        self.open_check = open_check
        self.limits = limits
        self.unreadable = unreadable
        self.unreadable_tries = unreadable_tries
        self._gave_up: set[str] = set()
        self._made_dirs: set[str] = set()

    def claim(self, area: str, name: str, key: str, st: os.stat_result) -> Held | None:
        """Rename arrival `key` (seen with `st`) into ``_processing/`` and take hold of
        it; None if it was not taken (claimed by another source first, put back to
        settle again, or failing). Never raises: one entry never stops a pass."""
        self.tracker.forget(key)
        try:
            return self._claim(area, name, key, st)
        except Exception:
            log.exception("claiming %s failed; it is left where it is", escaped(key))
            return None

    def take(self, key: str, *, retry: bool = False) -> Held | None:
        """Take hold of ``_processing`` `key` again (recovery, or a `retry` of a failed
        hand-over or read); None if it is not ours to pass on now (gone, held by
        another source, waiting for another read). Never raises."""
        try:
            return self._take_again(key, retry)
        except Exception:
            log.exception("taking %s again failed; it stays for recovery", escaped(key))
            return None

    def _claim(self, area: str, name: str, key: str, st: os.stat_result) -> Held | None:
        problem = refusals.name_problem(area, name)
        final = refusals.stand_in(name) if problem else name
        try:
            target = self._move_into_processing(key, processing_key(area, final))
        except FileNotFoundError:
            if log.isEnabledFor(logging.DEBUG):  # routine with several runners
                log.debug("%s was claimed by another source", escaped(key))
            return None
        except OSError as exc:
            log.warning("cannot claim %s: %s", escaped(key), exc)
            return None
        bad_name = None
        if problem:
            bad_name = refusals.bad_name_detail(name, problem)
            log.warning("%s: name %s; claimed as %s", escaped(key), problem, target)
        return self._take(area, final, target, expect=fs.signature(st), origin=key,
                          bad_name=bad_name)

    def _take_again(self, key: str, retry: bool) -> Held | None:
        parsed = split_processing_key(key)
        if parsed is None:
            return None
        area, stored = parsed
        name = _CLAIM_MARK.sub("", stored)
        bad_name = None
        if refusals.is_stand_in(name):
            bad_name = refusals.RENAMED
        elif problem := refusals.name_problem(area, name):  # put there by someone else
            final = refusals.stand_in(name)
            try:
                moved = self._move_into_processing(key, processing_key(area, final))
            except OSError as exc:
                log.warning("cannot rename %s: %s", escaped(key), exc)
                return None
            log.warning("%s: name %s; renamed to %s", escaped(key), problem, moved)
            key, name, bad_name = moved, final, refusals.bad_name_detail(name, problem)
        return self._take(area, name, key, quiet=retry, bad_name=bad_name)

    def _move_into_processing(self, key: str, target: str) -> str:
        """Rename arrival `key` to `target`, or to a ``.claim-`` variant if that is taken."""
        src = self.root.of(key)
        for attempt in range(2):
            candidate = f"{target}.claim-{uuid.uuid4().hex[:12]}" if attempt else target
            dst = self.root.of(candidate)
            parent = os.path.dirname(dst)
            if parent not in self._made_dirs:
                os.makedirs(parent, exist_ok=True)
                self._made_dirs.add(parent)
            try:
                fs.rename_noreplace(src, dst)
                return candidate
            except FileExistsError:
                continue
            except FileNotFoundError:
                if os.path.isdir(parent):
                    raise  # the source is gone: claimed by someone else
                self._made_dirs.discard(parent)  # our folder was removed; once more
                os.makedirs(parent, exist_ok=True)
                fs.rename_noreplace(src, dst)
                return candidate
        raise FileExistsError(errno.EEXIST, "no free processing name", target)

    def _take(self, area: str, name: str, key: str, *, expect: Signature | None = None,
              origin: str | None = None, quiet: bool = False,
              bad_name: str | None = None) -> Held | None:
        if self.unreadable.is_waiting(key):
            return None
        path = self.root.of(key)
        try:
            seen = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            self.unreadable.forget(key)
            return None
        if not stat.S_ISREG(seen.st_mode):  # never opened: a FIFO could block, a device act
            return self._refused(area, name, key, seen, RejectReason.NOT_A_FILE,
                                 refusals.not_a_file_detail(path, seen))
        try:
            fd = fs.hold(path)
        except fs.NotAFile:  # swapped since the lstat
            return self._refused(area, name, key, os.lstat(path), RejectReason.NOT_A_FILE,
                                 "not a regular file when opened (never read)")
        except OSError as exc:
            return self._failed_read(area, name, key, seen, exc)
        if fd is None:
            log.debug("%s is held by another source", key)
            self.unreadable.forget(key)  # or gone: not ours to read again
            return None
        try:
            return self._read(area, name, key, fd, expect=expect, origin=origin,
                              quiet=quiet, bad_name=bad_name)
        except BaseException:
            os.close(fd)
            raise

    def _read(self, area: str, name: str, key: str, fd: int, *, expect: Signature | None,
              origin: str | None, quiet: bool, bad_name: str | None) -> Held | None:
        """Read the held file `fd` (at most its limit + 1 bytes), or refuse it unread."""
        path = self.root.of(key)
        held = os.fstat(fd)
        if expect is not None and fs.signature(held) != expect and self._give_back(
                key, origin, fd):
            return None
        limit = self.limits.for_name(area, name)
        if bad_name is not None:
            return self._refused(area, name, key, held, RejectReason.BAD_NAME, bad_name, fd)
        if held.st_size > limit:
            return self._refused(area, name, key, held, RejectReason.TOO_LARGE,
                                 refusals.too_large_detail(held.st_size, limit), fd)
        try:
            data = fs.read_up_to(fd, limit + 1)
        except OSError as exc:
            os.close(fd)
            return self._failed_read(area, name, key, held, exc)
        if len(data) > limit:  # it grew since the fstat
            return self._refused(area, name, key, held, RejectReason.TOO_LARGE,
                                 refusals.too_large_detail(len(data), limit), fd)
        if expect is not None and (len(data) != held.st_size or self._being_written(fd)) \
                and self._give_back(key, origin, fd):
            return None
        self.unreadable.forget(key)
        self._gave_up.discard(key)
        arrival = Arrival(area, name, key, data, hashlib.sha256(data).hexdigest(), len(data),
                          first_try=origin is not None)
        # A claim is routine (the outcome line that follows names the file): DEBUG.
        # Taking again a file left by a dead run is not: INFO (a retry is DEBUG: the
        # outage, or the failure, was logged when it happened).
        level = logging.DEBUG if origin or quiet else logging.INFO
        if log.isEnabledFor(level):  # the escaping costs more than the line, at DEBUG
            log.log(level, "%s %s (%d bytes, sha256 %s)",
                    f"claimed {escaped(origin)} as" if origin else "took again", key,
                    arrival.size, arrival.sha256[:16])
        return Held(arrival, fd, held, path)

    def _give_back(self, key: str, origin: str | None, fd: int) -> bool:
        """Put back a file that changed while being claimed (True, `fd` closed)."""
        if origin is None or not self._put_back(key, origin):
            return False
        os.close(fd)
        return True

    def _refused(self, area: str, name: str, key: str, st: os.stat_result,
                 reason: RejectReason, detail: str, fd: int | None = None) -> Held:
        """Hand over `key` without its content (locked through `fd` if it was opened)."""
        log.info("%s refused unread: %s (%s)", key, reason, detail)
        arrival = Arrival.refused(area=area, name=name, key=key, reason=reason,
                                  size=st.st_size, identity=refusals.identity(st),
                                  detail=detail)
        return Held(arrival, fd, st, self.root.of(key))

    def _failed_read(self, area: str, name: str, key: str, st: os.stat_result,
                     exc: OSError) -> Held | None:
        """A read failed: None while it is tried again, then an ``unreadable`` refusal."""
        if exc.errno == errno.ENOENT:
            return None
        tries = self.unreadable_tries if key in self._gave_up else self.unreadable.failed(key)
        if tries < self.unreadable_tries:
            log.warning("cannot read %s (%s); trying again (%d of %d)", key, exc, tries,
                        self.unreadable_tries)
            return None
        self.unreadable.forget(key)
        self._gave_up.add(key)
        return self._refused(area, name, key, st, RejectReason.UNREADABLE,
                             f"{exc.strerror or exc} after {tries} reads")

    def _being_written(self, fd: int) -> bool:
        return self.open_check is not None and self.open_check(fd) is True

    def _put_back(self, key: str, origin: str) -> bool:
        """Return a file that changed while being claimed; False if it cannot go back."""
        try:
            fs.rename_noreplace(self.root.of(key), self.root.of(origin))
        except OSError as exc:
            log.warning("%s changed while being claimed and cannot be put back (%s); "
                        "handing it over as it is", escaped(origin), exc)
            return False
        log.warning("%s changed while being claimed; put back to settle again",
                    escaped(origin))
        return True
