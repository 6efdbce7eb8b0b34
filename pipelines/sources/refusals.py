"""What a source refuses from what it sees of an entry, without reading it.

Every entry that arrives ends in processed, rejected or quarantine. Some cannot be
opened or kept under their own name, so the source hands them over as
`layout.Arrival.refused` (an identity instead of content) and the core turns them
into their rejection or quarantine like any file:

- a name the stores cannot hold (not UTF-8, a control character or backslash, or so
  long that an archive key derived from it would pass `MAX_KEY_BYTES`): ``bad_name``,
  moved first to a stand-in name (`stand_in`) that every store accepts; the report
  keeps the original, escaped (`escaped`);
- a size over the limit for its kind (`SizeLimits`): ``too_large``, from ``stat`` or
  the listed size, never read;
- a FIFO, socket, device or symlink: ``not_a_file``, never opened;
- a file that cannot be read after a few tries: ``unreadable``.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from typing import NamedTuple
from urllib.parse import quote

from config.settings import Settings
from pipelines.archives import archive_format
from pipelines.layout import ERROR_SUFFIX, OPERATOR, PROCESSING, Disposition
from pipelines.storage.base import MAX_KEY_BYTES, InvalidKey, check_key

_FOLDER_BYTES = max(len(PROCESSING), *(len(d.folder) for d in Disposition)) + 1
# ``.<sha12>.<n>`` that `layout.archive_key_candidates` may add (n below 1000), or the
# ``.claim-<12 hex>`` of a claim under a name still in hand.
_SUFFIX_BYTES = max(len(".0123456789ab.999"), len(".claim-0123456789ab"))
LONGEST_ARRIVAL_KEY = MAX_KEY_BYTES - _FOLDER_BYTES - _SUFFIX_BYTES - len(ERROR_SUFFIX)
"""The longest ``<area>/<name>`` (UTF-8 bytes) whose every archive and report key fits."""

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_STAND_IN = re.compile(r"\.bad-name-[0-9a-f]{12}$")
_STAND_IN_HEAD = 96  # bytes of the escaped original kept in a stand-in name
RENAMED = "renamed from a name that could not be kept (the original is in the log)"


class SizeLimits(NamedTuple):
    """The largest file a source reads: single files, and bulk archives (by name)."""

    file: int = 256 * 1024
    archive: int = 1024**3

    @classmethod
    def from_settings(cls, settings: Settings) -> SizeLimits:
        return cls(settings.max_file_bytes, settings.max_archive_bytes)

    def for_name(self, area: str, name: str) -> int:
        """The limit for `name` arriving in `area` (archives count only in a customer's
        area, as `pipelines.bulk.is_bulk` decides)."""
        if area != OPERATOR and archive_format(name) is not None:
            return self.archive
        return self.file


def name_problem(area: str, name: str) -> str | None:
    """Why ``<area>/<name>`` cannot be kept as it is; None for a name that can."""
    try:
        size = len(f"{area}/{name}".encode())
    except UnicodeEncodeError:
        return "not UTF-8"
    if _CONTROL.search(name):
        return "holds a control character"
    if size > LONGEST_ARRIVAL_KEY:
        return f"{size} bytes long (at most {LONGEST_ARRIVAL_KEY})"
    if is_stand_in(name):
        return "ends like the name given to a renamed entry"
    try:
        check_key(f"{area}/{name}")
    except InvalidKey as exc:
        return str(exc).replace(repr(f"{area}/{name}"), "").replace("  ", " ").strip()
    return None


def is_stand_in(name: str) -> bool:
    """True for a name made by `stand_in`."""
    return _STAND_IN.search(name) is not None


def stand_in(name: str) -> str:
    """A name every store accepts for `name`: its start percent-escaped and cut, and a
    hash of the whole (so two bad names never meet), e.g. ``caf%FF.req.bad-name-1a2b...``."""
    raw = os.fsencode(name)
    head = quote(raw, safe=" !#$&'()+,-.;=@[]^_{}")[:_STAND_IN_HEAD]
    head = re.sub(r"%[0-9A-F]?$", "", head)  # never half an escape
    if head.startswith("."):
        head = "%2E" + head[1:]
    return f"{head}.bad-name-{hashlib.sha256(raw).hexdigest()[:12]}"


def escaped(text: str) -> str:
    """`text` printable on one line: bytes that are not UTF-8 (as ``os.fsdecode``
    leaves them) as ``\\xNN``, control characters as ``\\xNN``, backslashes doubled."""
    out = []
    for char in text:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        elif char == "\\":
            out.append("\\\\")
        elif _CONTROL.match(char):
            out.append(f"\\x{code:02x}")
        else:
            out.append(char)
    return "".join(out)


def bad_name_detail(name: str, problem: str) -> str:
    return f"original name '{escaped(name)}': {problem}"


def too_large_detail(size: int, limit: int) -> str:
    return f"{size} bytes, more than the limit of {limit}"


def identity(st: os.stat_result) -> str:
    """What names an entry refused unread: the same entry gives the same text."""
    return f"dev {st.st_dev} inode {st.st_ino} size {st.st_size} mtime {st.st_mtime_ns}"


_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))


def kind(mode: int) -> str:
    """What an entry that is not a regular file is, for its report."""
    return next((text for test, text in _KINDS if test(mode)), "not a regular file")


def not_a_file_detail(path: str, st: os.stat_result) -> str:
    what = kind(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        try:
            return f"{what} to '{escaped(os.readlink(path))}' (moved, never followed)"
        except OSError:
            pass
    return f"{what} (moved, never opened)"
