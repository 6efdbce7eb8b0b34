"""The zip file format, read one central-directory entry at a time.

`zipfile` parses the whole central directory into one `ZipInfo` per entry before the
first member can be read (about 0.8 KB an entry: 80 MB for a 100,000-member archive).
Here the directory is read in blocks and each entry is given out and dropped, and a
member's data is read from its local header, so reading an archive takes the same
memory whatever its size. Only what bulk archives use is supported: stored, deflate
and bzip2 members, Zip64, data descriptors; encrypted or patched members, multi-disk
archives and other methods are refused.

This module knows the format only; policy (names, limits, ratios) is
`pipelines.archives`. Damage is a `ZipFormatError` whose `kind` tells a directory that
cannot be read (`UNREADABLE`) from a member that is damaged (`DAMAGED`) or that uses a
feature not supported (`UNSUPPORTED`).
"""

from __future__ import annotations

import array
import bisect
import bz2
import enum
import io
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")  # 46 bytes
_LOCAL = struct.Struct("<4s2B4HL2L2H")  # 30 bytes
_CENTRAL_MAGIC, _LOCAL_MAGIC = b"PK\x01\x02", b"PK\x03\x04"
_END64_BYTES = 56 + 20  # the Zip64 end record and its locator
_ZIP64_EXTRA = 0x0001
_UTF8_NAME, _ENCRYPTED, _PATCHED, _STRONG = 0x800, 0x1, 0x20, 0x40
_MAX_EXTRACT_VERSION = 63
STORED, DEFLATED, BZIP2 = 0, 8, 12
_BLOCK = 64 * 1024


class Damage(enum.Enum):
    UNREADABLE = "unreadable"  # the end record or the central directory
    DAMAGED = "damaged"  # one member's header or data
    UNSUPPORTED = "unsupported"  # a feature this reader refuses


class ZipFormatError(Exception):
    def __init__(self, kind: Damage, detail: str) -> None:
        self.kind = kind
        self.detail = detail
        super().__init__(detail)


@dataclass(frozen=True, slots=True)
class Directory:
    """Where the central directory is and what the end record says of it."""

    start: int  # absolute offset of the first entry
    size: int  # bytes the directory takes
    entries: int  # entries the end record declares
    shift: int  # bytes prepended to the archive (a self-extractor's stub): added to offsets


@dataclass(frozen=True, slots=True)
class Entry:
    """One central-directory entry: what is needed to check it and read its data."""

    name: str
    raw_name: bytes
    flags: int
    method: int
    crc: int
    compressed: int
    size: int
    offset: int  # absolute offset of its local header
    mode: int  # Unix mode bits (0 when the archive was not made on Unix)

    @property
    def is_dir(self) -> bool:
        return self.name.endswith("/")

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & (_ENCRYPTED | _STRONG))


def directory(fileobj: IO[bytes]) -> Directory:
    """The end record's account of the central directory; nothing of it is read."""
    try:
        end = zipfile._EndRecData(fileobj)  # type: ignore[attr-defined]  # stable helper
    except (OSError, ValueError, AttributeError, OverflowError, struct.error,
            zipfile.BadZipFile):  # BadZipFile: a Zip64 locator naming other disks
        end = None
    if not end:
        raise ZipFormatError(Damage.UNREADABLE, "no end of central directory")
    size, offset = int(end[zipfile._ECD_SIZE]), int(end[zipfile._ECD_OFFSET])  # type: ignore[attr-defined]
    entries = int(end[zipfile._ECD_ENTRIES_TOTAL])  # type: ignore[attr-defined]
    start = int(end[zipfile._ECD_LOCATION]) - size  # type: ignore[attr-defined]
    if end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:  # type: ignore[attr-defined]
        start -= _END64_BYTES
    if start < 0 or offset > start:
        raise ZipFormatError(Damage.UNREADABLE, "bad offset for the central directory")
    return Directory(start=start, size=size, entries=entries, shift=start - offset)


def entries(fileobj: IO[bytes], where: Directory) -> Iterator[Entry]:
    """Every entry of the central directory, in order, read in blocks; the directory
    must hold exactly the entries and bytes its end record declares. The caller may
    read members (move the file) between entries."""
    reader = _Window(fileobj, where.start, where.size)
    for _ in range(where.entries):
        fixed = reader.take(_CENTRAL.size)
        (magic, _made_by, _system, version, _reserved, flags, method, _time, _date, crc,
         compressed, size, name_len, extra_len, comment_len, _disk, _internal, external,
         offset) = _CENTRAL.unpack(fixed)
        if magic != _CENTRAL_MAGIC:
            raise ZipFormatError(Damage.UNREADABLE, "bad magic number in the central directory")
        raw_name = reader.take(name_len)
        extra = reader.take(extra_len)
        reader.take(comment_len)
        if version > _MAX_EXTRACT_VERSION:
            raise ZipFormatError(Damage.UNSUPPORTED, f"zip version {version / 10:.1f}")
        try:
            name = raw_name.decode("utf-8" if flags & _UTF8_NAME else "cp437")
        except UnicodeDecodeError:
            raise ZipFormatError(Damage.UNREADABLE, "a member name is not valid UTF-8") \
                from None
        size, compressed, offset = _zip64(extra, size, compressed, offset)
        if not 0 <= offset + where.shift <= where.start - _LOCAL.size:
            raise ZipFormatError(Damage.UNREADABLE, "a member's local header is not "
                                 "between the archive's start and its central directory")
        yield Entry(name=name, raw_name=raw_name, flags=flags, method=method, crc=crc,
                    compressed=compressed, size=size, offset=offset + where.shift,
                    mode=external >> 16)
    if reader.left:
        raise ZipFormatError(Damage.UNREADABLE, "the central directory holds more entries "
                             "than its end record declares")


def _zip64(extra: bytes, size: int, compressed: int, offset: int) -> tuple[int, int, int]:
    """Sizes and offset from the Zip64 extra field, for those the fixed fields mark."""
    view = memoryview(extra)
    while len(view) >= 4:
        kind, length = struct.unpack_from("<HH", view)
        if length + 4 > len(view):
            raise ZipFormatError(Damage.UNREADABLE, "a corrupt extra field")
        if kind == _ZIP64_EXTRA:
            data = view[4:4 + length]
            values = []
            for marked in (size == 0xFFFFFFFF, compressed == 0xFFFFFFFF, offset == 0xFFFFFFFF):
                if marked:
                    if len(data) < 8:
                        raise ZipFormatError(Damage.UNREADABLE, "a corrupt Zip64 extra field")
                    values.append(struct.unpack_from("<Q", data)[0])
                    data = data[8:]
                else:
                    values.append(None)
            size = size if values[0] is None else values[0]
            compressed = compressed if values[1] is None else values[1]
            offset = offset if values[2] is None else values[2]
        view = view[4 + length:]
    return size, compressed, offset


class Extents:
    """Where each member's data may run: up to the next local header or the central
    directory, whichever comes first. Overlapping members (several directory entries
    sharing compressed data, or one's range running over another's header) let a small
    archive cost many times its size to read; they are refused, as recent `zipfile`
    does. Holds 8 bytes per member."""

    def __init__(self, where: Directory) -> None:
        self._starts = array.array("Q")
        self._end = where.start
        self._sorted = True

    def add(self, entry: Entry) -> None:
        if self._starts and entry.offset < self._starts[-1]:
            self._sorted = False
        self._starts.append(entry.offset)

    def end_of(self, entry: Entry) -> int:
        """The first offset past `entry`'s local header where another part begins."""
        if not self._sorted:
            self._starts = array.array("Q", sorted(self._starts))
            self._sorted = True
        first = bisect.bisect_left(self._starts, entry.offset)
        at = bisect.bisect_right(self._starts, entry.offset)
        if at - first > 1:
            return entry.offset  # two entries share this header: nothing fits
        return self._starts[at] if at < len(self._starts) else self._end


def read(fileobj: IO[bytes], entry: Entry, end: int) -> bytes:
    """The member's bytes, decompressed, checked against its declared size and CRC-32;
    decompressing stops as soon as more than the declared size comes out. Its header
    and compressed data must end by `end` (`Extents.end_of`), and its compressed data
    with its stream: nothing after it, no padding that makes a ratio look smaller."""
    if entry.flags & _PATCHED:
        raise ZipFormatError(Damage.UNSUPPORTED, "it is compressed patched data")
    if entry.encrypted:
        raise ZipFormatError(Damage.UNSUPPORTED, "it is encrypted")
    fileobj.seek(entry.offset)
    head = fileobj.read(_LOCAL.size)
    if len(head) != _LOCAL.size or head[:4] != _LOCAL_MAGIC:
        raise ZipFormatError(Damage.DAMAGED, "bad local header")
    name_len, extra_len = _LOCAL.unpack(head)[-2:]
    if fileobj.read(name_len) != entry.raw_name:
        raise ZipFormatError(Damage.DAMAGED, "its local header names another file")
    if entry.offset + _LOCAL.size + name_len + extra_len + entry.compressed > end:
        raise ZipFormatError(Damage.DAMAGED, "it overlaps another member or the central "
                             "directory")
    fileobj.seek(extra_len, io.SEEK_CUR)
    inflate = _decompressor(entry.method)
    parts: list[bytes] = []
    produced = crc = 0
    left, cap = entry.compressed, entry.size
    while left:
        block = fileobj.read(min(_BLOCK, left))
        if not block:
            raise ZipFormatError(Damage.DAMAGED, "its data is cut short")
        left -= len(block)
        try:
            piece = block if inflate is None else inflate.decompress(block, cap + 1 - produced)
        except (zlib.error, OSError, EOFError, ValueError) as exc:
            raise ZipFormatError(Damage.DAMAGED, f"its data does not decompress ({exc})") \
                from None
        produced += len(piece)
        if produced > cap:
            raise ZipFormatError(Damage.DAMAGED, "it produces more bytes than its header "
                                 "says")
        crc = zlib.crc32(piece, crc)
        parts.append(piece)
        if inflate is not None and inflate.eof:
            if left or inflate.unused_data:
                raise ZipFormatError(Damage.DAMAGED, "its compressed data runs on past "
                                     "the end of its stream")
            break
    if inflate is not None and not inflate.eof:
        raise ZipFormatError(Damage.DAMAGED, "its compressed data ends early")
    if produced != entry.size or crc != entry.crc:
        raise ZipFormatError(Damage.DAMAGED, "its size or CRC-32 is not what its header says")
    return b"".join(parts)


def _decompressor(method: int) -> zlib._Decompress | bz2.BZ2Decompressor | None:
    if method == STORED:
        return None
    if method == DEFLATED:
        return zlib.decompressobj(-15)
    if method == BZIP2:
        return bz2.BZ2Decompressor()
    raise ZipFormatError(Damage.UNSUPPORTED, f"compression method {method}")


class _Window:
    """Sequential reads of the byte range [start, start + size) of a file, in blocks,
    seeking back to it on every refill (the caller may move the file in between)."""

    def __init__(self, fileobj: IO[bytes], start: int, size: int) -> None:
        self.fileobj = fileobj
        self.position = start  # where the next block is read from
        self.left = size  # bytes of the range not yet taken
        self.buffer = b""
        self.at = 0  # bytes of `buffer` already taken

    def take(self, count: int) -> bytes:
        if count > self.left:
            raise ZipFormatError(Damage.UNREADABLE, "the central directory is cut short")
        if self.at + count > len(self.buffer):
            held = self.buffer[self.at:]
            self.fileobj.seek(self.position)
            wanted = min(max(_BLOCK, count), self.left - len(held))
            block = self.fileobj.read(wanted)
            if len(block) != wanted:
                raise ZipFormatError(Damage.UNREADABLE, "the file ends inside its central "
                                     "directory")
            self.position += wanted
            self.buffer, self.at = held + block, 0
        data = self.buffer[self.at:self.at + count]
        self.at += count
        self.left -= count
        return data
