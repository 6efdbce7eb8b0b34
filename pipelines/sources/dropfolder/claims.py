"""Claims: moving a settled file into ``_processing/``, holding it, putting it back."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from pipelines.layout import Arrival, parse_processing_key, processing_key
from pipelines.sources.dropfolder import fs
from pipelines.sources.dropfolder.fs import Root
from pipelines.sources.settle import SettleTracker, Signature

log = logging.getLogger(__name__)

_CLAIM_MARK = re.compile(r"\.claim-[0-9a-f]{12}$")


@dataclass(frozen=True, slots=True)
class Held:
    """A claimed file, locked through `fd` until `release`."""

    arrival: Arrival
    fd: int
    stat: os.stat_result
    path: str

    def still_there(self) -> bool:
        """True while the file is where it was claimed (not archived yet)."""
        return fs.same_file(self.stat, self.path)

    def release(self) -> None:
        os.close(self.fd)


class Claims:
    """Takes files into ``_processing/`` and holds them; never replaces a file there."""

    def __init__(self, root: Root, tracker: SettleTracker, *,
                 open_check: Callable[[int], bool | None] | None = None) -> None:
        self.root = root
        self.tracker = tracker
        # Asked of a claimed file's descriptor: a writer that opened it between the
        # settle decision and the rename still has it; it goes back to settle again.
        self.open_check = open_check
        self._made_dirs: set[str] = set()

    def claim(self, area: str, name: str, key: str, signature: Signature) -> Held | None:
        """Rename arrival `key` into ``_processing/`` and take hold of it; None if it was
        not taken (claimed by another source first, or put back to settle again)."""
        self.tracker.forget(key)
        try:
            target = self._move_into_processing(key, processing_key(area, name))
        except FileNotFoundError:
            log.debug("%s was claimed by another source", key)
            return None
        except OSError as exc:
            log.warning("cannot claim %s: %s", key, exc)
            return None
        return self._take(area, name, target, expect=signature, origin=key)

    def take(self, key: str, *, retry: bool = False) -> Held | None:
        """Take hold of ``_processing`` `key` again (recovery, or a `retry` of a failed
        hand-over); None if it is not ours to pass on now (gone, held by another
        source, unreadable, misnamed)."""
        parsed = parse_processing_key(key)
        if parsed is None:
            return None
        area, name = parsed
        return self._take(area, _CLAIM_MARK.sub("", name), key, quiet=retry)

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
              origin: str | None = None, quiet: bool = False) -> Held | None:
        path = self.root.of(key)
        try:
            fd = fs.hold(path)
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
        changed = expect is not None and (fs.signature(held) != expect
                                          or len(data) != held.st_size
                                          or self._being_written(fd))
        if changed and origin is not None and self._put_back(key, origin):
            os.close(fd)
            return None
        arrival = Arrival(area, name, key, data, hashlib.sha256(data).hexdigest(), len(data))
        # A claim is routine (the outcome line that follows names the file): DEBUG.
        # Taking again a file left by a dead run is not: INFO (a retry is DEBUG: the
        # outage, or the failure, was logged when it happened).
        log.log(logging.DEBUG if origin or quiet else logging.INFO, "%s %s (%d bytes, sha256 %s)",
                f"claimed {origin} as" if origin else "took again", key, arrival.size,
                arrival.sha256[:16])
        return Held(arrival, fd, held, path)

    def _being_written(self, fd: int) -> bool:
        return self.open_check is not None and self.open_check(fd) is True

    def _put_back(self, key: str, origin: str) -> bool:
        """Return a file that changed while being claimed; False if it cannot go back."""
        try:
            fs.rename_noreplace(self.root.of(key), self.root.of(origin))
        except OSError as exc:
            log.warning("%s changed while being claimed and cannot be put back (%s); "
                        "handing it over as it is", origin, exc)
            return False
        log.warning("%s changed while being claimed; put back to settle again", origin)
        return True
