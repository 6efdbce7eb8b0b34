"""Reading archives safely: formats, hostile member names, links, bombs and limits."""

from __future__ import annotations

import gzip
import io
import json
import stat
import struct
import tarfile
import zipfile

import pytest

from pipelines import archives
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
                                  "x" * 600])
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
    """2,000 entries behind an end record that says 3: zipfile would build all 2,000
    ZipInfo objects (at scale: a 100 MB directory, a gigabyte of them) before any
    member count could be checked."""
    honest = make_zip([(f"d/{i:05d}.req", b"x") for i in range(2000)])
    lying = _with_entry_count(honest, 3)
    parsed: list[object] = []
    real_init = zipfile.ZipFile.__init__

    def spy(self: zipfile.ZipFile, *args: object, **kwargs: object) -> None:
        parsed.append(args)
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(zipfile.ZipFile, "__init__", spy)
    error = refused(lying, ZIP, ArchiveLimits(10_000, 10**7, 1000, 1e9))
    assert error.reason == "unsafe_archive" and "central directory" in error.message
    assert parsed == []  # refused from the end record: the directory was never parsed


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
