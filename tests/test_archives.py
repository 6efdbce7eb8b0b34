"""Reading archives safely: formats, hostile member names, links, bombs and limits."""

from __future__ import annotations

import gzip
import io
import json
import stat
import struct
import tarfile
import zipfile
import zlib

import pytest

from pipelines import archives, zipformat
from pipelines.archives import (
    NDJSON,
    TAR,
    ZIP,
    ArchiveError,
    ArchiveLimits,
    archive_format,
    read_members,
    safe_member_name,
    scan,
)

LIMITS = ArchiveLimits(max_members=100, max_total_bytes=10 * 1024 * 1024,
                       max_member_bytes=256 * 1024, max_ratio=200)


def make_zip(entries: list[tuple[str | zipfile.ZipInfo, bytes]],
             method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def make_tar(entries: list[tuple[str | tarfile.TarInfo, bytes]], *, gz: bool = False) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as archive:
        for entry, data in entries:
            info = entry if isinstance(entry, tarfile.TarInfo) else tarfile.TarInfo(entry)
            if info.isreg():
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def make_ndjson(entries: list[tuple[str, str]]) -> bytes:
    return b"".join(json.dumps({"name": n, "data": d}).encode() + b"\n" for n, d in entries)


def members(data: bytes, fmt: str, limits: ArchiveLimits = LIMITS) -> list[tuple[str, bytes]]:
    return [(m.name, m.data) for m in read_members(io.BytesIO(data), fmt, limits)]


def refused(data: bytes, fmt: str, limits: ArchiveLimits = LIMITS) -> ArchiveError:
    with pytest.raises(ArchiveError) as caught:
        scan(io.BytesIO(data), fmt, limits)
    return caught.value


# --- formats -----------------------------------------------------------------------------


@pytest.mark.parametrize("name,fmt", [
    ("a.zip", ZIP), ("A.ZIP", ZIP), ("a.tar", TAR), ("a.tar.gz", TAR), ("a.tgz", TAR),
    ("a.ndjson", NDJSON), ("a.jsonl", NDJSON), ("a.req", None), ("a.tar.bz2", None),
    ("zip", None),
])
def test_format_is_judged_by_suffix(name: str, fmt: str | None) -> None:
    assert archive_format(name) == fmt


def test_every_format_yields_the_same_members_in_order() -> None:
    files = [("one.req", b"first"), ("dir/two.req", b"second" * 100)]
    expected = files
    assert members(make_zip(files), ZIP) == expected
    assert members(make_zip(files, zipfile.ZIP_STORED), ZIP) == expected
    assert members(make_tar(files), TAR) == expected
    assert members(make_tar(files, gz=True), TAR) == expected
    assert members(make_ndjson([(n, d.decode()) for n, d in files]), NDJSON) == expected


def test_folders_are_skipped_and_dot_segments_dropped() -> None:
    folder = tarfile.TarInfo("./")
    folder.type = tarfile.DIRTYPE
    sub = tarfile.TarInfo("./sub")
    sub.type = tarfile.DIRTYPE
    tar = make_tar([(folder, b""), (sub, b""), ("./sub/a.req", b"x")])
    assert members(tar, TAR) == [("sub/a.req", b"x")]
    assert members(make_zip([("sub/", b""), ("sub//a.req", b"x")]), ZIP) == [("sub/a.req", b"x")]


def test_ndjson_skips_blank_lines_and_a_byte_order_mark() -> None:
    data = b"\xef\xbb\xbf" + make_ndjson([("a", "1")]) + b"\n  \n" + make_ndjson([("b", "2")])
    assert members(data, NDJSON) == [("a", b"1"), ("b", b"2")]


def test_scan_gives_names_and_hashes() -> None:
    entries = scan(io.BytesIO(make_zip([("a.req", b"abc")])), ZIP, LIMITS)
    assert entries == [("a.req",
                        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")]


# --- hostile names and entry types -------------------------------------------------------


@pytest.mark.parametrize("name", ["../evil.req", "a/../../evil.req", "/etc/passwd",
                                  "C:/windows/evil", "a\\..\\evil", "bad\x00name", "a\nb",
                                  "x" * 600, "invoice\u202eqer.exe", "a\u2066b.req",
                                  "\u200fname.req", "a\u200b.req", "\ufeffa.req",
                                  "a\u00adb.req", "a.req\u2028evil.req", "a\U000e0041.req"])
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(ArchiveError) as caught:
        safe_member_name(name)
    assert caught.value.reason == "unsafe_archive"


@pytest.mark.parametrize("name", ["../../escape.req", "/abs/escape.req", "a\\b.req"])
@pytest.mark.parametrize("fmt", [ZIP, TAR, NDJSON])
def test_traversal_in_any_format_refuses_the_archive(name: str, fmt: str) -> None:
    files = [("fine.req", b"ok"), (name, b"evil")]
    data = {ZIP: lambda: make_zip(files), TAR: lambda: make_tar(files),  # type: ignore[arg-type]
            NDJSON: lambda: make_ndjson([(n, d.decode()) for n, d in files])}[fmt]()
    assert refused(data, fmt).reason == "unsafe_archive"


def test_zip_symlink_entry_is_refused() -> None:
    link = zipfile.ZipInfo("link.req")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    error = refused(make_zip([("fine.req", b"ok"), (link, b"/etc/passwd")]), ZIP)
    assert error.reason == "unsafe_archive" and "symlink" in error.detail


def test_zip_device_entry_is_refused() -> None:
    device = zipfile.ZipInfo("dev")
    device.create_system = 3
    device.external_attr = (stat.S_IFCHR | 0o666) << 16
    assert refused(make_zip([(device, b"")]), ZIP).reason == "unsafe_archive"


@pytest.mark.parametrize("kind,word", [(tarfile.SYMTYPE, "symbolic"), (tarfile.LNKTYPE, "hard"),
                                       (tarfile.CHRTYPE, "regular"), (tarfile.FIFOTYPE,
                                                                      "regular")])
def test_tar_links_and_devices_are_refused(kind: bytes, word: str) -> None:
    entry = tarfile.TarInfo("entry.req")
    entry.type = kind
    entry.linkname = "/etc/passwd"
    error = refused(make_tar([("fine.req", b"ok"), (entry, b"")], gz=True), TAR)
    assert error.reason == "unsafe_archive" and word in error.detail


def test_duplicate_member_names_are_refused() -> None:
    data = make_tar([("a.req", b"one"), ("./a.req", b"two")])
    assert refused(data, TAR).reason == "unsafe_archive"


@pytest.mark.parametrize("one,other", [("caf\u00e9.req", "cafe\u0301.req"),
                                       ("\ufb01le.req", "file.req"),
                                       ("\uff41.req", "a.req")])
def test_names_that_differ_only_in_unicode_normal_form_are_one_name(one: str,
                                                                     other: str) -> None:
    assert one != other
    error = refused(make_zip([(one, b"one"), (other, b"two")]), ZIP)
    assert error.reason == "unsafe_archive" and "more than once" in error.detail


def test_names_that_differ_in_case_are_two_names() -> None:
    data = make_zip([("HW-abc.req", b"1"), ("HW-ABC.req", b"2")])
    assert [name for name, _data in members(data, ZIP)] == ["HW-abc.req", "HW-ABC.req"]


def test_joiners_used_by_scripts_stay_allowed() -> None:
    name = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645.req"  # Persian, with a ZWNJ
    assert safe_member_name(name) == name


# --- bombs and limits -------------------------------------------------------------------------


def test_zip_member_with_a_high_ratio_is_refused_before_reading() -> None:
    error = refused(make_zip([("bomb.req", b"\0" * 250_000)]), ZIP)
    assert error.reason == "archive_too_large" and "times" in error.detail


def _lie_about_size(data: bytes, declared: int) -> bytes:
    """Patch the uncompressed size in the local header and the central directory."""
    patched = bytearray(data)
    local = patched.find(b"PK\x03\x04")
    central = patched.find(b"PK\x01\x02")
    struct.pack_into("<I", patched, local + 22, declared)
    struct.pack_into("<I", patched, central + 24, declared)
    return bytes(patched)


def test_zip_that_lies_about_its_size_cannot_inflate_past_it() -> None:
    honest = make_zip([("bomb.req", b"\0" * 5_000_000)])
    lying = _lie_about_size(honest, 100)  # small declared size: passes the declared checks
    error = refused(lying, ZIP, ArchiveLimits(100, 10 * 1024 * 1024, 256 * 1024, 10_000_000))
    assert error.reason in ("unsafe_archive", "archive_too_large")


def test_zip_bomb_over_the_member_limit_by_declaration() -> None:
    error = refused(make_zip([("big.req", b"\0" * 300_000)]), ZIP,
                    ArchiveLimits(100, 10 * 1024 * 1024, 256 * 1024, 1e9))
    assert error.reason == "archive_too_large"


def test_gzip_bomb_in_a_tar_is_refused_by_the_stream_ratio() -> None:
    files = [(f"z{i}.req", b"\0" * 200_000) for i in range(10)]
    error = refused(make_tar(files, gz=True), TAR)
    assert error.reason == "archive_too_large"


def test_gzip_stream_is_cut_off_at_the_total_limit() -> None:
    files = [(f"z{i}.req", bytes(range(256)) * 400) for i in range(10)]
    limits = ArchiveLimits(100, 500_000, 256 * 1024, 1e9)
    assert refused(make_tar(files, gz=True), TAR, limits).reason == "archive_too_large"


def test_member_count_limit() -> None:
    files = [(f"f{i}.req", b"x") for i in range(6)]
    limits = ArchiveLimits(5, 10**6, 1000, 200)
    for data, fmt in ((make_zip(files), ZIP), (make_tar(files), TAR),
                      (make_ndjson([(n, "x") for n, _ in files]), NDJSON)):
        assert refused(data, fmt, limits).reason == "archive_too_large"


def test_member_size_limit() -> None:
    limits = ArchiveLimits(10, 10**6, 1000, 1e9)
    data = bytes(range(256)) * 5
    assert refused(make_tar([("a.req", data)]), TAR, limits).reason == "archive_too_large"
    assert refused(make_zip([("a.req", data)]), ZIP, limits).reason == "archive_too_large"
    assert refused(make_ndjson([("a.req", "x" * 1001)]), NDJSON, limits).reason \
        == "archive_too_large"


def test_total_size_limit() -> None:
    limits = ArchiveLimits(10, 2500, 1000, 1e9)
    files = [(f"f{i}.req", bytes(range(250)) * 4) for i in range(3)]
    assert refused(make_zip(files), ZIP, limits).reason == "archive_too_large"
    assert refused(make_tar(files), TAR, limits).reason == "archive_too_large"


# --- unsupported or damaged ---------------------------------------------------------------


@pytest.mark.parametrize("data,fmt", [
    (b"not a zip at all", ZIP),
    (b"not a tar at all" * 100, TAR),
    (b"BZh91AY&SY" + b"\0" * 100, TAR),
    (gzip.compress(b"plain text, not a tar" * 50), TAR),
    (b'{"name": "a"}\n', NDJSON),
    (b"[1, 2]\n", NDJSON),
    (b"not json\n", NDJSON),
])
def test_unreadable_archives_are_unsupported(data: bytes, fmt: str) -> None:
    assert refused(data, fmt).reason == "unsupported_archive"


def test_encrypted_zip_member_is_unsupported() -> None:
    data = bytearray(make_zip([("a.req", b"x")], zipfile.ZIP_STORED))
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature)
        struct.pack_into("<H", data, at + offset, 0x1)
    assert refused(bytes(data), ZIP).reason == "unsupported_archive"


def test_error_message_is_a_sentence_with_the_detail() -> None:
    error = refused(make_zip([("../x", b"1")]), ZIP)
    assert error.message.startswith("The archive has unsafe members")
    assert "'..'" in error.message


def _with_entry_count(data: bytes, entries: int) -> bytes:
    """The zip with its end-of-central-directory record claiming `entries` entries."""
    patched = bytearray(data)
    end = patched.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", patched, end + 8, entries, entries)
    return bytes(patched)


def _central_directory_size(data: bytes) -> int:
    end = data.rfind(b"PK\x05\x06")
    return int(struct.unpack_from("<I", data, end + 12)[0])


def test_zip_whose_end_record_understates_its_entries_is_refused_before_parsing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """2,000 entries behind an end record that says 3: the directory's size gives the
    lie away before a single entry is read."""
    honest = make_zip([(f"d/{i:05d}.req", b"x") for i in range(2000)])
    lying = _with_entry_count(honest, 3)
    parsed: list[object] = []
    real_entries = zipformat.entries

    def spy(*args: object) -> object:
        parsed.append(args)
        return real_entries(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(zipformat, "entries", spy)
    error = refused(lying, ZIP, ArchiveLimits(10_000, 10**7, 1000, 1e9))
    assert error.reason == "unsafe_archive" and "central directory" in error.message
    assert parsed == []  # refused from the end record: the directory was never read


def test_zip_directory_with_more_entries_than_declared_is_refused() -> None:
    """An end record that understates its entries by a little (its size still fits)."""
    honest = make_zip([(f"{i}.req", b"x") for i in range(3)])
    error = refused(_with_entry_count(honest, 2), ZIP)
    assert error.reason == "unsupported_archive" and "more entries" in error.message


def test_zip_whose_end_record_overstates_its_entries_is_refused() -> None:
    honest = make_zip([(f"{i}.req", b"x") for i in range(3)])
    assert refused(_with_entry_count(honest, 50), ZIP).reason == "unsafe_archive"
    assert refused(_with_entry_count(honest, 101), ZIP).reason == "archive_too_large"


def test_zip_central_directory_over_its_cap_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_zip([(f"{i:03d}-{'n' * 100}.req", b"x") for i in range(50)])
    size = _central_directory_size(data)
    monkeypatch.setattr(archives, "MAX_CENTRAL_DIRECTORY_BYTES", size - 1)
    error = refused(data, ZIP)
    assert error.reason == "archive_too_large" and str(size) in error.message
    monkeypatch.setattr(archives, "MAX_CENTRAL_DIRECTORY_BYTES", size)
    assert len(members(data, ZIP)) == 50


@pytest.mark.parametrize("fmt", [ZIP, TAR, NDJSON])
def test_an_archive_file_over_its_own_limit_is_refused_from_its_size(fmt: str) -> None:
    files = [(f"{i}.req", "x" * 100) for i in range(20)]
    data = (make_zip([(n, d.encode()) for n, d in files]) if fmt == ZIP else
            make_tar([(n, d.encode()) for n, d in files]) if fmt == TAR else
            make_ndjson(files))
    limits = ArchiveLimits(100, 10**7, 1000, 1e9, max_archive_bytes=len(data) - 1)
    error = refused(data, fmt, limits)
    assert error.reason == "archive_too_large" and str(len(data)) in error.message
    ok = ArchiveLimits(100, 10**7, 1000, 1e9, max_archive_bytes=len(data))
    assert len(members(data, fmt, ok)) == 20


# --- the zip reader: one central-directory entry at a time --------------------------------


def test_zip_reading_never_builds_the_whole_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    """zipfile would hold one ZipInfo per entry; the reader holds none, so memory stays
    flat in the member count (the set of names for duplicate checks aside)."""
    import tracemalloc

    limits = ArchiveLimits(100_000, 10**9, 1000, 1e9)
    archives_of = {count: make_zip([(f"{i:06d}.req", b"x") for i in range(count)],
                                   zipfile.ZIP_STORED) for count in (2_000, 20_000)}
    monkeypatch.setattr(zipfile.ZipFile, "__init__", _never)

    def peak(count: int) -> int:
        data = archives_of[count]
        tracemalloc.start()
        for _ in read_members(io.BytesIO(data), ZIP, limits):
            pass
        size = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return size

    small, large = peak(2_000), peak(20_000)
    # Measured: ~190 bytes an entry (the names); zipfile's ZipInfo objects and name index
    # took ~730 bytes an entry, 13 MB more at 20,000.
    assert large - small < 18_000 * 400, (small, large)


def _never(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("zipfile.ZipFile was used")


def test_zip64_directory_and_a_prepended_stub_are_read() -> None:
    """More than 65,535 entries need the Zip64 end record; a self-extractor's stub in
    front moves every offset."""
    count = 65_600
    data = make_zip([(f"{i:05d}", b"") for i in range(count)] + [("last.req", b"payload")],
                    zipfile.ZIP_STORED)
    assert b"PK\x06\x06" in data[-200:]  # the Zip64 end record
    limits = ArchiveLimits(count + 1, 10**9, 1000, 1e9)
    got = members(b"#!/bin/sh\nexit 0\n" + data, ZIP, limits)
    assert len(got) == count + 1 and got[-1] == ("last.req", b"payload")


def test_zip64_sizes_in_the_extra_field_are_used() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive, \
            archive.open("big.req", "w", force_zip64=True) as handle:
        handle.write(b"abc" * 1000)
    data = _with_zip64_sizes(buffer.getvalue())
    assert members(data, ZIP) == [("big.req", b"abc" * 1000)]


def _with_zip64_sizes(data: bytes) -> bytes:
    """The archive with the central entry's sizes moved into a Zip64 extra field."""
    central = data.find(b"PK\x01\x02")
    (compressed, size) = struct.unpack_from("<II", data, central + 20)
    name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, central + 28)
    extra = struct.pack("<HHQQ", 0x0001, 16, size, compressed)
    fixed = bytearray(data[central:central + 46])
    struct.pack_into("<II", fixed, 20, 0xFFFFFFFF, 0xFFFFFFFF)
    struct.pack_into("<H", fixed, 30, len(extra))
    name = data[central + 46:central + 46 + name_len]
    end = data.find(b"PK\x05\x06")
    directory = bytes(fixed) + name + extra
    record = bytearray(data[end:])
    struct.pack_into("<I", record, 12, len(directory))
    assert extra_len == 0 and comment_len == 0 and data[central + 46 + name_len:end] == b""
    return data[:central] + directory + bytes(record)


def test_bzip2_members_are_read_and_other_methods_refused() -> None:
    assert members(make_zip([("a.req", b"x" * 50)], zipfile.ZIP_BZIP2), ZIP) == [
        ("a.req", b"x" * 50)]
    error = refused(make_zip([("a.req", b"x" * 50)], zipfile.ZIP_LZMA), ZIP)
    assert error.reason == "unsupported_archive" and "method 14" in error.message


def test_zip_member_with_a_wrong_crc_is_refused() -> None:
    data = bytearray(make_zip([("a.req", b"the real content")]))
    central = data.find(b"PK\x01\x02")
    data[central + 16] ^= 0xFF
    error = refused(bytes(data), ZIP)
    assert error.reason == "unsafe_archive" and "CRC-32" in error.message


def test_zip_whose_local_header_names_another_file_is_refused() -> None:
    """Tools that trust the local header would write a different file than the one the
    directory listed (and checked)."""
    data = bytearray(make_zip([("a.req", b"content")]))
    local = data.find(b"PK\x03\x04")
    data[local + 30:local + 35] = b"b.req"
    error = refused(bytes(data), ZIP)
    assert error.reason == "unsafe_archive" and "local header" in error.message


def test_zip_member_cut_short_or_overlapping_the_directory_is_refused() -> None:
    data = bytearray(make_zip([("a.req", bytes(range(256)) * 20)]))
    central = data.find(b"PK\x01\x02")
    (compressed,) = struct.unpack_from("<I", data, central + 20)
    struct.pack_into("<I", data, central + 20, compressed + 10**6)  # reads past the end
    assert refused(bytes(data), ZIP).reason == "unsafe_archive"


def test_zip_directory_cut_short_is_unsupported() -> None:
    data = make_zip([("a.req", b"x"), ("b.req", b"y")])
    central = data.find(b"PK\x01\x02")
    end = data.find(b"PK\x05\x06")
    cut = data[:central + 50] + data[end:]  # the end record still declares both entries
    assert refused(cut, ZIP).reason in ("unsupported_archive", "unsafe_archive")


def test_nul_in_a_zip_member_name_is_refused_not_truncated() -> None:
    """zipfile cuts a name at its first NUL ("a.req\\0../x" becomes "a.req")."""
    data = bytearray(make_zip([("a.req/../x", b"1")]))
    for start in (data.find(b"PK\x03\x04") + 30, data.find(b"PK\x01\x02") + 46):
        data[start + 5] = 0
    error = refused(bytes(data), ZIP)
    assert error.reason == "unsafe_archive" and "control character" in error.message


# --- hand-built zips: what a writer would never make ------------------------------------


def _local(name: bytes, method: int, crc: int, csize: int, size: int) -> bytes:
    return struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 20, 0, 0, method, 0, 0, crc, csize,
                       size, len(name), 0) + name


def _central(name: bytes, offset: int, method: int, crc: int, csize: int, size: int,
             extra: bytes = b"", flags: int = 0) -> bytes:
    return struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, 20, 0, flags, method, 0, 0, crc,
                       csize, size, len(name), len(extra), 0, 0, 0, 0o100644 << 16,
                       offset) + name + extra


def _end(entries: int, size: int, offset: int) -> bytes:
    return struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, entries, entries, size, offset, 0)


def _deflated(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


def other_disks_zip() -> bytes:
    """An archive whose Zip64 locator says it is disk 1 of 2."""
    honest = make_zip([("a.req", b"hello")])
    end = honest.rfind(b"PK\x05\x06")
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 1, 0, 2)
    return honest[:end] + locator + honest[end:]


def far_offset_zip(offset: int) -> bytes:
    """A member whose Zip64 extra field puts its local header at `offset`."""
    crc = zlib.crc32(b"hi")
    body = _local(b"a.req", 0, crc, 2, 2) + b"hi"
    directory = _central(b"a.req", 0xFFFFFFFF, 0, crc, 2, 2,
                         extra=struct.pack("<HHQ", 1, 8, offset))
    return body + directory + _end(1, len(directory), len(body))


def padded_stream_zip() -> bytes:
    """200,000 zero bytes deflated, declared with zero padding to a ratio of 150."""
    payload = bytes(200_000)
    stream = _deflated(payload)
    padded = stream + bytes(len(payload) // 150 - len(stream))
    crc = zlib.crc32(payload)
    body = _local(b"a.req", 8, crc, len(padded), len(payload)) + padded
    directory = _central(b"a.req", 0, 8, crc, len(padded), len(payload))
    return body + directory + _end(1, len(directory), len(body))


def overlapping_zip() -> bytes:
    """Two members whose data runs into one shared tail: the first's deflate stream
    quotes the second's local header in a stored block, then both read the tail."""
    tail = b"\x00\x00\x00\xff\xff" * 2000 + b"\x03\x00"  # empty stored blocks, an end
    second = _local(b"b.req", 8, zlib.crc32(b""), len(tail), 0)
    quote = struct.pack("<BHH", 0, len(second), len(second) ^ 0xFFFF)
    first_data = len(quote) + len(second) + len(tail)
    first = _local(b"a.req", 8, zlib.crc32(second), first_data, len(second))
    body = first + quote + second + tail
    directory = (_central(b"a.req", 0, 8, zlib.crc32(second), first_data, len(second))
                 + _central(b"b.req", len(first) + len(quote), 8, zlib.crc32(b""),
                            len(tail), 0))
    return body + directory + _end(2, len(directory), len(body))


def test_zip64_locator_naming_other_disks_is_unsupported() -> None:
    assert refused(other_disks_zip(), ZIP).reason == "unsupported_archive"


@pytest.mark.parametrize("offset", [2**64 - 1, 2**63, 2**40])
def test_a_member_offset_outside_the_archive_is_refused(offset: int) -> None:
    assert refused(far_offset_zip(offset), ZIP).reason == "unsupported_archive"


def test_compressed_data_running_on_past_its_stream_is_refused() -> None:
    """Declared compressed bytes beyond the deflate stream: read they cost quadratic
    time in zlib's unused data, and as padding they make a ratio look smaller."""
    error = refused(padded_stream_zip(), ZIP, ArchiveLimits(100, 10**7, 256 * 1024, 200))
    assert error.reason == "unsafe_archive" and "past the end of its stream" in error.message


def test_members_sharing_compressed_data_are_refused() -> None:
    """Overlapping entries: each directory entry's data runs over the next local header
    to one shared tail, so reading costs members × tail (CVE-2024-0450's bomb)."""
    error = refused(overlapping_zip(), ZIP)
    assert error.reason == "unsafe_archive" and "overlaps" in error.message


def test_two_directory_entries_for_one_local_header_are_refused() -> None:
    """The same name bytes read as UTF-8 by one entry and as cp437 by the other: two
    different names, one file's data twice."""
    crc, name = zlib.crc32(b"hi"), "é.req".encode()
    body = _local(name, 0, crc, 2, 2) + b"hi"
    directory = (_central(name, 0, 0, crc, 2, 2, flags=0x800)
                 + _central(name, 0, 0, crc, 2, 2))
    data = body + directory + _end(2, len(directory), len(body))
    error = refused(data, ZIP)
    assert error.reason == "unsafe_archive" and "overlaps" in error.message


def test_hand_built_zips_of_honest_shape_are_read() -> None:
    """The helpers above build what they claim: an honest two-member archive reads."""
    crc_a, crc_b = zlib.crc32(b"first"), zlib.crc32(b"second" * 50)
    b_data = _deflated(b"second" * 50)
    a = _local(b"a.req", 0, crc_a, 5, 5) + b"first"
    b = _local(b"b.req", 8, crc_b, len(b_data), 300) + b_data
    directory = (_central(b"b.req", len(a), 8, crc_b, len(b_data), 300)  # listed out of order
                 + _central(b"a.req", 0, 0, crc_a, 5, 5))
    data = a + b + directory + _end(2, len(directory), len(a + b))
    assert members(data, ZIP) == [("b.req", b"second" * 50), ("a.req", b"first")]
