"""Reading bulk archives safely: zip, tar (plain or gzip) and NDJSON, one member at a time.

Members come out as (name, bytes) and go straight to job rows; nothing is ever
written to a path built from a member name. A member name must be relative, without
``..`` segments, backslashes or control characters; links, devices and other special
entries are refused, and so are duplicate names (different tools would pick
different copies). Limits (member count, per-member size, total size, compression
ratio) are checked on the sizes an archive declares and again on the bytes actually
produced while reading, so a header that lies cannot inflate past a cap.

Any violation raises `ArchiveError` with a reason code from `pipelines.errors`:
``unsafe_archive``, ``archive_too_large`` or ``unsupported_archive``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import stat
import tarfile
import unicodedata
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from pipelines import zipformat
from pipelines.errors import MESSAGES, RejectReason

if TYPE_CHECKING:
    from config.settings import Settings

ZIP, TAR, NDJSON = "zip", "tar", "ndjson"
_SUFFIXES = ((".tar.gz", TAR), (".tgz", TAR), (".tar", TAR), (".zip", ZIP),
             (".ndjson", NDJSON), (".jsonl", NDJSON))
MAX_NAME_BYTES = 512
# The central directory is read one entry at a time (`pipelines.zipformat`), but its size
# is still bounded, since reading it is work: 32 MiB is ~160 bytes an entry at the
# 200,000-member cap (short names), or 512-byte names for 50,000 members; an entry's
# record is 46 bytes plus its name, extra field and comment, allowed `_ZIP_ENTRY_SLACK`
# bytes beyond the name.
MAX_CENTRAL_DIRECTORY_BYTES = 32 * 1024 * 1024
_ZIP_ENTRY_FIXED = 46
_ZIP_ENTRY_SLACK = 128
RATIO_FLOOR = 4096  # below this many bytes a "ratio" says nothing and can harm nothing
STREAM_RATIO_FLOOR = 1024 * 1024  # a whole-stream ratio is judged once this much came out
_BLOCK = 64 * 1024
_DRIVE = re.compile(r"^[A-Za-z]:")
_GZIP_MAGIC = b"\x1f\x8b"
_OTHER_COMPRESSION = (b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")  # bzip2, xz, zstd


def archive_format(name: str) -> str | None:
    """``zip``, ``tar`` or ``ndjson`` judged by the name's suffix; None for other files."""
    lowered = name.lower()
    for suffix, fmt in _SUFFIXES:
        if lowered.endswith(suffix):
            return fmt
    return None


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps for one archive; `from_settings` reads the ``AIRLOCK_MAX_*`` settings."""

    max_members: int
    max_total_bytes: int
    max_member_bytes: int
    max_ratio: float
    max_archive_bytes: int = 1024**3

    @classmethod
    def from_settings(cls, settings: Settings) -> ArchiveLimits:
        return cls(max_members=settings.max_archive_members,
                   max_total_bytes=settings.max_uncompressed_bytes,
                   max_member_bytes=settings.max_file_bytes,
                   max_ratio=settings.max_compression_ratio,
                   max_archive_bytes=settings.max_archive_bytes)

    def check_size(self, size: int) -> None:
        """`ArchiveError` if an archive file of `size` bytes is over its own limit."""
        if size > self.max_archive_bytes:
            raise _too_large(f"The archive is {size} bytes "
                             f"(at most {self.max_archive_bytes}).")


class ArchiveError(Exception):
    """The archive as a whole is refused; `reason` is a code, `message` a sentence."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        self.message = f"{MESSAGES[RejectReason(reason)]} {detail}".strip()
        super().__init__(f"{reason}: {detail}")


def _unsafe(detail: str) -> ArchiveError:
    return ArchiveError(RejectReason.UNSAFE_ARCHIVE, detail)


def _too_large(detail: str) -> ArchiveError:
    return ArchiveError(RejectReason.ARCHIVE_TOO_LARGE, detail)


def _unsupported(detail: str) -> ArchiveError:
    return ArchiveError(RejectReason.UNSUPPORTED_ARCHIVE, detail)


@dataclass(frozen=True)
class Member:
    """One file inside an archive: its checked name and its exact bytes."""

    name: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


# Invisible characters (Unicode's format class: bidirectional controls, zero-width
# spaces, soft hyphens, tags) let a report row read otherwise than the name it stands
# for ("invoice\u202eqer.exe" shows as "invoiceexe.req"); line and paragraph separators
# split it. The two joiners stay allowed: scripts such as Persian need them.
_JOINERS = frozenset("\u200c\u200d")
_CONTROLS = frozenset({"Cc", "Cs", "Zl", "Zp"})  # controls, surrogates, line breaks
_ASCII_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")


def _character_flaw(raw: str) -> str | None:
    """What is wrong with the characters of a name, if anything."""
    if raw.isascii():  # most names: only the C0 controls and DEL to look for
        return "a control character" if _ASCII_CONTROLS.search(raw) else None
    categories = [unicodedata.category(ch) for ch in raw]
    if not _CONTROLS.isdisjoint(categories):
        return "a control character"
    if any(cat == "Cf" and ch not in _JOINERS for ch, cat in zip(raw, categories, strict=True)):
        return "an invisible or bidirectional control character"
    return None


def safe_member_name(raw: str) -> str:
    """The member name with ``.`` and empty segments dropped; `ArchiveError` if unsafe."""
    shown = repr(raw[:80])
    if not raw:
        raise _unsafe("A member has an empty name.")
    flaw = _character_flaw(raw)
    if flaw:
        raise _unsafe(f"Member {shown} has {flaw} in its name.")
    if "\\" in raw:
        raise _unsafe(f"Member {shown} has a backslash in its name.")
    if raw.startswith("/") or _DRIVE.match(raw):
        raise _unsafe(f"Member {shown} has an absolute path.")
    segments = [seg for seg in raw.split("/") if seg not in ("", ".")]
    if ".." in segments:
        raise _unsafe(f"Member {shown} has a '..' segment.")
    if not segments:
        raise _unsafe(f"Member {shown} has no file name.")
    name = "/".join(segments)
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise _unsafe(f"Member {shown}... has a name longer than {MAX_NAME_BYTES} bytes.")
    return name


class _Budget:
    """Counts members and bytes against the limits; raises as soon as one is passed."""

    def __init__(self, limits: ArchiveLimits) -> None:
        self.limits = limits
        self.members = 0
        self.total = 0
        self.names: set[str] = set()

    def entry(self) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise _too_large(f"It has more than {self.limits.max_members} members.")

    def name(self, raw: str) -> str:
        name = safe_member_name(raw)
        # Two spellings that read as one name (composed and decomposed accents, a
        # ligature or full-width letters) are one name. Case is not folded: it shows.
        seen = name if name.isascii() else unicodedata.normalize("NFKC", name)
        if seen in self.names:
            raise _unsafe(f"Member name {name!r} appears more than once.")
        self.names.add(seen)
        return name

    @staticmethod
    def folder(raw: str) -> None:
        """Folders are skipped, but their names must be as safe as file names."""
        if raw.strip("./"):
            safe_member_name(raw)

    def declared(self, name: str, size: int) -> None:
        if size > self.limits.max_member_bytes:
            raise _too_large(f"Member {name!r} is {size} bytes "
                             f"(at most {self.limits.max_member_bytes}).")

    def read(self, name: str, handle: IO[bytes], cap: int) -> bytes:
        """Read a member in blocks, counting the bytes that actually come out."""
        cap = min(cap, self.limits.max_member_bytes)
        parts: list[bytes] = []
        count = 0
        while True:
            block = handle.read(_BLOCK)
            if not block:
                break
            count += len(block)
            if count > cap:
                raise _too_large(f"Member {name!r} produces more bytes than its declared "
                                 f"size or the {self.limits.max_member_bytes}-byte limit.")
            parts.append(block)
        self.add(count)
        return b"".join(parts)

    def add(self, size: int) -> None:
        self.total += size
        if self.total > self.limits.max_total_bytes:
            raise _too_large(f"Its members add up to more than "
                             f"{self.limits.max_total_bytes} bytes.")

    def ratio(self, what: str, produced: int, consumed: int, floor: int = RATIO_FLOOR) -> None:
        if produced >= floor and produced > self.limits.max_ratio * max(consumed, 1):
            raise _too_large(f"{what} expands {produced} bytes from {consumed} "
                             f"(more than {self.limits.max_ratio:g} times).")


def read_members(fileobj: IO[bytes], fmt: str, limits: ArchiveLimits) -> Iterator[Member]:
    """Every file member of the archive in `fileobj` (seekable, read from its start)."""
    limits.check_size(fileobj.seek(0, io.SEEK_END))
    fileobj.seek(0)
    budget = _Budget(limits)
    if fmt == ZIP:
        return _zip_members(fileobj, budget)
    if fmt == TAR:
        return _tar_members(fileobj, budget)
    if fmt == NDJSON:
        return _ndjson_members(fileobj, budget)
    raise _unsupported(f"Archives of type {fmt!r} are not supported.")


def scan(fileobj: IO[bytes], fmt: str, limits: ArchiveLimits) -> list[tuple[str, str]]:
    """Check the whole archive before anything is imported: (member name, sha256) each."""
    return list(iter_entries(fileobj, fmt, limits))


def iter_entries(fileobj: IO[bytes], fmt: str, limits: ArchiveLimits
                 ) -> Iterator[tuple[str, str]]:
    """`scan` one member at a time; an `ArchiveError` can come at any step."""
    return ((member.name, member.sha256) for member in read_members(fileobj, fmt, limits))


# --- zip ---------------------------------------------------------------------------------


def _zip_directory(fileobj: IO[bytes], limits: ArchiveLimits) -> zipformat.Directory:
    """The end record, checked before any entry is read: the entry count against the
    member cap, and the directory's size against the cap and against what that many
    entries can take (the entries are then read and counted against it exactly)."""
    try:
        where = zipformat.directory(fileobj)
    except zipformat.ZipFormatError as exc:
        raise _unsupported(f"It is not a readable zip archive ({exc.detail}).") from None
    if where.entries > limits.max_members:
        raise _too_large(f"It has more than {limits.max_members} members.")
    if where.size > MAX_CENTRAL_DIRECTORY_BYTES:
        raise _too_large(f"Its central directory is {where.size} bytes "
                         f"(at most {MAX_CENTRAL_DIRECTORY_BYTES}).")
    most = where.entries * (_ZIP_ENTRY_FIXED + MAX_NAME_BYTES + _ZIP_ENTRY_SLACK)
    if where.size > most or where.size < where.entries * _ZIP_ENTRY_FIXED:
        raise _unsafe(f"Its central directory ({where.size} bytes) does not match the "
                      f"{where.entries} entries its end record declares.")
    return where


def _zip_member_type(entry: zipformat.Entry) -> str:
    """``file``, ``dir`` or what else the entry is (from its Unix mode, when it has one)."""
    kind = stat.S_IFMT(entry.mode)
    if kind == stat.S_IFLNK:
        return "symlink"
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        return "special file"
    if entry.is_dir or kind == stat.S_IFDIR:
        return "dir"
    return "file"


def _zip_entries(fileobj: IO[bytes], where: zipformat.Directory
                 ) -> Iterator[zipformat.Entry]:
    try:
        yield from zipformat.entries(fileobj, where)
    except zipformat.ZipFormatError as exc:
        if exc.kind is zipformat.Damage.UNSUPPORTED:
            raise _unsupported(f"It uses a zip feature that is not supported "
                               f"({exc.detail}).") from None
        raise _unsupported(f"It is not a readable zip archive ({exc.detail}).") from None


def _zip_members(fileobj: IO[bytes], budget: _Budget) -> Iterator[Member]:
    """Check the whole central directory now, one entry at a time; the returned
    iterator reads it again, with the data (nothing per entry is held in between)."""
    where = _zip_directory(fileobj, budget.limits)
    archive_size = fileobj.seek(0, io.SEEK_END)
    total_declared = 0
    extents = zipformat.Extents(where)
    for entry in _zip_entries(fileobj, where):
        extents.add(entry)
        name = _zip_check_entry(entry, budget)
        if name is not None:
            total_declared += entry.size
    if total_declared > budget.limits.max_total_bytes:
        raise _too_large(f"Its members add up to more than "
                         f"{budget.limits.max_total_bytes} bytes.")
    budget.ratio("The archive", total_declared, archive_size, STREAM_RATIO_FLOOR)
    return _zip_read(fileobj, where, extents, budget)


def _zip_check_entry(entry: zipformat.Entry, budget: _Budget) -> str | None:
    """The member's checked name, or None for a folder; `ArchiveError` if refused."""
    budget.entry()
    kind = _zip_member_type(entry)
    if kind == "dir":
        budget.folder(entry.name)
        return None
    name = budget.name(entry.name)
    if kind != "file":
        raise _unsafe(f"Member {name!r} is a {kind}.")
    if entry.encrypted:
        raise _unsupported(f"Member {name!r} is encrypted.")
    budget.declared(name, entry.size)
    budget.ratio(f"Member {name!r}", entry.size, entry.compressed)
    return name


def _zip_read(fileobj: IO[bytes], where: zipformat.Directory, extents: zipformat.Extents,
              budget: _Budget) -> Iterator[Member]:
    for entry in _zip_entries(fileobj, where):
        if _zip_member_type(entry) == "dir":
            continue
        name = safe_member_name(entry.name)  # checked, duplicates too, by the first pass
        try:
            # its size was checked against the cap by the first pass
            data = zipformat.read(fileobj, entry, extents.end_of(entry))
        except zipformat.ZipFormatError as exc:
            if exc.kind is zipformat.Damage.UNSUPPORTED:
                raise _unsupported(f"Member {name!r} cannot be read: {exc.detail}.") \
                    from None
            raise _unsafe(f"Member {name!r} is damaged or its declared size is wrong "
                          f"({exc.detail}).") from None
        budget.add(len(data))
        budget.ratio(f"Member {name!r}", len(data), entry.compressed)
        yield Member(name, data)


# --- tar -----------------------------------------------------------------------------------


class _Counted(io.RawIOBase):
    """A read-only stream that counts what passes through and calls `check` after reads."""

    def __init__(self, inner: IO[bytes], check: object = None) -> None:
        self.inner = inner
        self.count = 0
        self.window = 0  # bytes since the caller last reset it (one tar step)
        self._check = check

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.inner.read(len(buffer))
        size = len(data)
        buffer[:size] = data
        self.count += size
        self.window += size
        if self._check is not None:
            self._check()  # type: ignore[operator]
        return size

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = _BLOCK
        buffer = bytearray(size)
        got = self.readinto(buffer)
        return bytes(buffer[:got])


def _tar_stream(fileobj: IO[bytes], budget: _Budget) -> _Counted:
    """The uncompressed tar byte stream, guarded by the size and ratio limits."""
    head = fileobj.read(6)
    fileobj.seek(0)
    if head.startswith(_OTHER_COMPRESSION):
        raise _unsupported("Only plain and gzip-compressed tar archives are supported.")
    raw: _Counted | None = None
    inner: IO[bytes] = fileobj
    if head.startswith(_GZIP_MAGIC):
        raw = _Counted(fileobj)
        inner = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
    limits = budget.limits
    step_cap = limits.max_member_bytes + 1024 * 1024  # one member plus its headers

    def check() -> None:
        if tar.count > limits.max_total_bytes:
            raise _too_large(f"It expands to more than {limits.max_total_bytes} bytes.")
        if tar.window > step_cap:
            raise _too_large("A member or header is larger than the per-member limit.")
        if raw is not None:
            budget.ratio("The archive", tar.count, raw.count, STREAM_RATIO_FLOOR)

    tar = _Counted(inner, check)
    return tar


def _tar_members(fileobj: IO[bytes], budget: _Budget) -> Iterator[Member]:
    stream = _tar_stream(fileobj, budget)
    try:
        archive = tarfile.open(fileobj=stream, mode="r|")  # type: ignore[call-overload]
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise _unsupported(f"It is not a readable tar archive ({exc}).") from None
    with archive:
        while True:
            try:
                info = archive.next()
            except ArchiveError:
                raise
            except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
                raise _unsupported(f"The tar archive is damaged ({exc}).") from None
            stream.window = 0
            if info is None:
                return
            archive.members.clear()  # type: ignore[attr-defined]  # stream mode still collects members; keep memory flat
            budget.entry()
            if info.isdir():
                budget.folder(info.name)
                continue
            name = budget.name(info.name)
            if info.issym() or info.islnk():
                raise _unsafe(f"Member {name!r} is a {'symbolic' if info.issym() else 'hard'} "
                              "link.")
            if not info.isreg() or info.issparse():
                raise _unsafe(f"Member {name!r} is not a regular file.")
            budget.declared(name, info.size)
            handle = archive.extractfile(info)
            if handle is None:
                raise _unsafe(f"Member {name!r} cannot be read as a file.")
            try:
                data = budget.read(name, handle, info.size)
            except ArchiveError:
                raise
            except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
                raise _unsupported(f"The tar archive is damaged ({exc}).") from None
            yield Member(name, data)


# --- NDJSON ---------------------------------------------------------------------------------


def _ndjson_members(fileobj: IO[bytes], budget: _Budget) -> Iterator[Member]:
    """One JSON object per line: ``{"name": "...", "data": "<armoured file text>"}``."""
    line_cap = budget.limits.max_member_bytes * 2 + 4096  # JSON escapes newlines as "\n"
    number = 0
    while True:
        line = fileobj.readline(line_cap + 1)
        if not line:
            return
        number += 1
        if len(line) > line_cap:
            raise _too_large(f"Line {number} is longer than {line_cap} bytes.")
        if number == 1:
            line = line.removeprefix(b"\xef\xbb\xbf")
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            raise _unsupported(f"Line {number} is not JSON.") from None
        if not isinstance(record, dict) or not isinstance(record.get("name"), str) \
                or not isinstance(record.get("data"), str):
            raise _unsupported(f'Line {number} needs string fields "name" and "data".')
        budget.entry()
        name = budget.name(record["name"])
        try:
            data = record["data"].encode("utf-8")
        except UnicodeEncodeError:
            raise _unsupported(f"Line {number} has data that is not valid text.") from None
        budget.declared(name, len(data))
        budget.add(len(data))
        yield Member(name, data)
