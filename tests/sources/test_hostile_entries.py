"""Hostile entries in a drop folder: each ends in rejected or quarantine with a report,
is never opened when it is not a regular file, and never stops a pass.

The source hands its arrivals to the real intake (as `airlock run` does), so what is
checked is where each entry ends and what its ``.error.json`` says.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from models.db import reading
from models.tables import JOB
from pipelines.intake import Intake
from pipelines.keyring import VendorKeyring
from pipelines.layout import Arrival
from pipelines.outage import Backoff
from pipelines.process import Processor
from pipelines.sources import refusals
from pipelines.sources.dropfolder import DropFolderSource, claims, fs
from pipelines.sources.refusals import SizeLimits
from pipelines.storage.local import LocalStore
from tests.factories import NOW, vendor
from tests.sources.test_dropfolder import FakeClock

WAIT = 30.0  # liveness bound for a drain that must not hang, never a speed requirement


@pytest.fixture
def intake(sqlite_engine: Engine, keyring: VendorKeyring, tmp_path: Path) -> Intake:
    vendor(sqlite_engine)
    (tmp_path / "inbox" / "ACME").mkdir(parents=True)
    return Intake(engine=sqlite_engine, processor=Processor(keyring=keyring, clock=lambda: NOW),
                  inbox=LocalStore(tmp_path / "inbox"), outbox=LocalStore(tmp_path / "outbox"))


@pytest.fixture
def root(intake: Intake, tmp_path: Path) -> Path:
    return tmp_path / "inbox"


class Handed:
    """on_batch: the intake, as embedded mode calls it; remembers every arrival."""

    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self.arrivals: list[Arrival] = []

    def __call__(self, arrivals: list[Arrival]) -> list[Arrival]:
        self.arrivals.extend(arrivals)
        self.intake.handle_many(arrivals)
        left = self.intake.inbox.which_exist([a.key for a in arrivals])
        return [a for a in arrivals if a.key in left]


@pytest.fixture
def make_source(root: Path, intake: Intake) -> Iterator[Callable[..., tuple[DropFolderSource,
                                                                             Handed]]]:
    def factory(**kwargs: Any) -> tuple[DropFolderSource, Handed]:
        handed = Handed(intake)
        clock = FakeClock()
        kwargs.setdefault("limits", SizeLimits(file=64 * 1024, archive=128 * 1024))
        source = DropFolderSource(root, on_batch=handed, settle_seconds=0.3, scan_interval=0.1,
                                  clock=clock, sleep=clock.sleep,
                                  backoff=Backoff(first=0.1, cap=0.5), **kwargs)
        return source, handed

    yield factory


def entries(folder: Path) -> list[str]:
    """Every entry that is not a folder (symlinks and FIFOs too), relative, sorted."""
    return sorted(os.path.relpath(os.path.join(d, n), folder)
                  for d, dirs, names in os.walk(folder) for n in names + [
                      x for x in dirs if os.path.islink(os.path.join(d, x))])


def report(root: Path, folder: str, name: str) -> dict[str, Any]:
    return json.loads((root / folder / "ACME" / f"{name}.error.json").read_text())


def drained(source: DropFolderSource) -> bool:
    """`drain` in a thread: a drain that blocked (on a FIFO, say) fails the test."""
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(source.drain(timeout=60)),
                              daemon=True)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive(), "the drain hung"
    return result[0]


# --- entries that are not regular files ----------------------------------------------------


def test_symlinks_fifos_sockets_and_devices_are_quarantined_unopened(root, make_source,
                                                                     tmp_path):
    source, handed = make_source()
    outside = tmp_path / "secret.txt"
    outside.write_bytes(b"vendor secret")
    area = root / "ACME"
    os.symlink(outside, area / "link.req")
    os.symlink(tmp_path, area / "folder-link")
    os.mkfifo(area / "pipe.req")  # no writer: a blocking open would hang for good
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(area / "s.sock"))
    os.mknod(area / "null.dev", 0o600 | 0o020000, os.makedev(1, 3))  # /dev/null's numbers
    (area / "ok.req").write_bytes(b"a regular file, refused as malformed")
    assert drained(source)
    quarantined = ["folder-link", "link.req", "null.dev", "pipe.req", "s.sock"]
    assert entries(root / "_quarantine" / "ACME") == sorted(
        quarantined + [f"{n}.error.json" for n in quarantined])
    assert entries(root / "_rejected" / "ACME") == ["ok.req", "ok.req.error.json"]
    assert entries(area) == [] and entries(root / "_processing") == []
    assert os.readlink(root / "_quarantine/ACME/link.req") == str(outside)  # the link moved
    assert outside.read_bytes() == b"vendor secret"  # its target never touched
    assert report(root, "_quarantine", "pipe.req")["reason"] == "not_a_file"
    assert "a FIFO" in report(root, "_quarantine", "pipe.req")["detail"]
    assert str(outside) in report(root, "_quarantine", "link.req")["detail"]
    assert all(a.data == b"" for a in handed.arrivals if a.name != "ok.req")


def test_a_fifo_swapped_in_between_scan_and_claim_is_caught(root, make_source, monkeypatch):
    """The scan saw a regular file; the claim renames what is there now: a FIFO."""
    source, handed = make_source()
    (root / "ACME" / "a.req").write_bytes(b"looks fine")
    original = claims.Claims.claim

    def swap_then_claim(self: claims.Claims, area: str, name: str, key: str,
                        st: os.stat_result) -> claims.Held | None:
        path = root / key
        path.unlink()
        os.mkfifo(path)
        return original(self, area, name, key, st)

    monkeypatch.setattr(claims.Claims, "claim", swap_then_claim)
    assert drained(source)
    assert entries(root / "_quarantine" / "ACME") == ["a.req", "a.req.error.json"]
    assert report(root, "_quarantine", "a.req")["reason"] == "not_a_file"
    assert [a.refusal for a in handed.arrivals] == ["not_a_file"]


def test_a_fifo_swapped_in_after_the_claim_is_never_read(root, make_source, monkeypatch):
    """Even when the swap comes after the last look (just before the open), the open
    neither blocks nor reads: O_NONBLOCK | O_NOFOLLOW, then fstat."""
    source, handed = make_source()
    (root / "ACME" / "a.req").write_bytes(b"looks fine")
    real_hold = fs.hold

    def swap_then_hold(path: str) -> int | None:
        os.unlink(path)
        os.mkfifo(path)
        return real_hold(path)

    monkeypatch.setattr(fs, "hold", swap_then_hold)
    assert drained(source)
    assert entries(root / "_quarantine" / "ACME") == ["a.req", "a.req.error.json"]
    assert "never read" in report(root, "_quarantine", "a.req")["detail"]


def test_a_symlink_swapped_in_is_not_followed(tmp_path):
    (tmp_path / "target").write_bytes(b"x")
    os.symlink(tmp_path / "target", tmp_path / "link")
    with pytest.raises(fs.NotAFile):
        fs.hold(str(tmp_path / "link"))


# --- sizes ---------------------------------------------------------------------------------


def test_a_file_over_the_limit_is_refused_from_its_stat_never_read(root, make_source,
                                                                    intake, monkeypatch):
    source, handed = make_source()
    with open(root / "ACME" / "huge.req", "wb") as handle:  # sparse: 300 MB on paper
        handle.truncate(300 * 1024 * 1024)
    (root / "ACME" / "big.zip").write_bytes(b"z" * (128 * 1024 + 1))  # archive limit
    (root / "ACME" / "fits.zip").write_bytes(b"z" * (100 * 1024))  # over the file limit only
    real_read = claims.fs.read_up_to
    opened: list[int] = []

    def counting_read(fd: int, limit: int) -> bytes:
        opened.append(fd)
        return real_read(fd, limit)

    monkeypatch.setattr(claims.fs, "read_up_to", counting_read)
    assert drained(source)
    assert entries(root / "_rejected" / "ACME") == [
        "big.zip", "big.zip.error.json", "fits.zip", "fits.zip.error.json", "huge.req",
        "huge.req.error.json"]
    assert len(opened) == 1  # only fits.zip was read (a zip it is not: unsupported)
    huge = report(root, "_rejected", "huge.req")
    assert huge["reason"] == "too_large" and huge["size"] == 300 * 1024 * 1024
    assert report(root, "_rejected", "big.zip")["reason"] == "too_large"
    assert report(root, "_rejected", "fits.zip")["reason"] != "too_large"
    with reading(intake.engine) as conn:
        rows = conn.execute(select(JOB.c.source, JOB.c.payload, JOB.c.size)).all()
    assert {(r.source.rsplit("/", 1)[-1], r.payload, r.size) for r in rows} >= {
        ("huge.req", None, 300 * 1024 * 1024), ("big.zip", None, 128 * 1024 + 1)}


# --- names ---------------------------------------------------------------------------------


def long_name(total_key_bytes: int) -> str:
    """A name under ACME/ whose arrival key is `total_key_bytes` long (folders of 200)."""
    left = total_key_bytes - len("ACME/")
    parts = []
    while left > 211:
        parts.append("d" * 200)
        left -= 201
    parts.append("f" * (left - 4) + ".req")
    return "/".join(parts)


@pytest.mark.parametrize("total", [985, 1001, 1012, 1013, 1024])
def test_a_key_too_long_for_its_archive_keys_is_rejected_under_a_stand_in(root, make_source,
                                                                          total):
    source, _ = make_source()
    name = long_name(total)
    path = root / "ACME" / name
    path.parent.mkdir(parents=True)
    path.write_bytes(b"long")
    assert len(f"ACME/{name}".encode()) == total
    assert drained(source)
    [archived, error] = entries(root / "_rejected" / "ACME")
    assert refusals.is_stand_in(archived) and error == f"{archived}.error.json"
    body = report(root, "_rejected", archived)
    assert body["reason"] == "bad_name" and name in body["detail"]
    assert "bytes long" in body["detail"]
    assert entries(root / "_processing") == [] and not path.exists()


def test_names_that_are_not_utf8_or_hold_control_characters(root, make_source):
    source, handed = make_source()
    area = os.fsencode(root / "ACME")
    with open(area + b"/caf\xff.req", "wb") as handle:
        handle.write(b"one")
    with open(area + b"/bell\x07.req", "wb") as handle:
        handle.write(b"two")
    os.mkdir(area + b"/sub\xfe")
    with open(area + b"/sub\xfe/x.req", "wb") as handle:
        handle.write(b"three")
    (root / "ACME" / "fine.req").write_bytes(b"four")
    assert drained(source)
    rejected = [n for n in entries(root / "_rejected" / "ACME") if not n.endswith(".json")]
    assert len(rejected) == 4 and "fine.req" in rejected
    details = sorted(report(root, "_rejected", n)["detail"] for n in rejected
                     if n != "fine.req")
    assert details == ["original name 'bell\\x07.req': holds a control character",
                       "original name 'caf\\xff.req': not UTF-8",
                       "original name 'sub\\xfe/x.req': not UTF-8"]
    assert all(refusals.is_stand_in(n) for n in rejected if n != "fine.req")
    assert os.listdir(area) == [b"sub\xfe"]  # only the emptied folder is left


def test_bad_entries_leak_no_descriptor_and_never_stop_a_pass(root, make_source,
                                                              monkeypatch):
    source, handed = make_source()
    area = os.fsencode(root / "ACME")
    for i in range(5):
        with open(area + b"/bad\xff%d.req" % i, "wb") as handle:
            handle.write(b"x")
        os.mkfifo(area + b"/pipe%d" % i)
        (root / "ACME" / f"ok{i}.req").write_bytes(b"y%d" % i)
    name = long_name(1020)
    (root / "ACME" / name).parent.mkdir(parents=True)
    (root / "ACME" / name).write_bytes(b"long")
    (root / "ACME" / "boom.req").write_bytes(b"z")
    real = claims.Claims._claim

    def failing(self: claims.Claims, area: str, name: str, key: str,
                st: os.stat_result) -> claims.Held | None:
        if name == "boom.req":
            raise RuntimeError("a bug in one entry")
        return real(self, area, name, key, st)

    monkeypatch.setattr(claims.Claims, "_claim", failing)
    before = sorted(os.listdir("/proc/self/fd"))
    source.drain(timeout=5)  # boom.req stays: drain reports it as left
    assert sorted(os.listdir("/proc/self/fd")) == before
    assert entries(root / "ACME") == ["boom.req"]
    assert len(handed.arrivals) == 16
    assert entries(root / "_processing") == []


# --- unreadable ----------------------------------------------------------------------------


@pytest.mark.parametrize("error", [errno.EACCES, errno.EIO])
def test_an_unreadable_file_is_tried_again_then_quarantined(root, make_source, monkeypatch,
                                                            error):
    source, handed = make_source()
    (root / "ACME" / "locked.req").write_bytes(b"cannot be read")
    (root / "ACME" / "ok.req").write_bytes(b"can")
    real_hold = fs.hold
    tries: list[str] = []

    def refusing(path: str) -> int | None:
        if path.endswith("locked.req"):
            tries.append(path)
            raise OSError(error, os.strerror(error), path)
        return real_hold(path)

    monkeypatch.setattr(fs, "hold", refusing)
    assert drained(source)
    assert len(tries) == claims.UNREADABLE_TRIES
    assert entries(root / "_quarantine" / "ACME") == ["locked.req", "locked.req.error.json"]
    body = report(root, "_quarantine", "locked.req")
    assert body["reason"] == "unreadable" and os.strerror(error) in body["detail"]
    assert entries(root / "_processing") == []


def test_a_read_failing_with_eio_after_the_open_is_tried_again(root, make_source,
                                                               monkeypatch):
    source, handed = make_source()
    (root / "ACME" / "flaky.req").write_bytes(b"bad sector")
    failures = iter([True, True])

    def flaky_open(fd: Any, *args: Any, **kwargs: Any) -> Any:
        if next(failures, False):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return open(fd, *args, **kwargs)

    monkeypatch.setattr(claims, "open", flaky_open, raising=False)
    assert drained(source)
    assert [a.refusal for a in handed.arrivals] == [None]  # the third read worked
    assert entries(root / "_rejected" / "ACME") == ["flaky.req", "flaky.req.error.json"]


def test_entries_a_dead_run_left_claimed_are_refused_on_recovery(root, make_source):
    """A crash between the claim and the archive: recovery ends them the same way."""
    source, handed = make_source()
    processing = root / "_processing" / "ACME"
    processing.mkdir(parents=True)
    stand_in = refusals.stand_in(os.fsdecode(b"caf\xff.req"))
    (processing / stand_in).write_bytes(b"renamed before the crash")
    os.mkfifo(processing / "pipe.req")
    with open(os.fsencode(processing) + b"/odd\xff.req", "wb") as handle:
        handle.write(b"put there by hand")
    assert drained(source)
    assert entries(root / "_processing") == []
    assert report(root, "_rejected", stand_in)["detail"] == refusals.RENAMED
    assert report(root, "_quarantine", "pipe.req")["reason"] == "not_a_file"
    assert sorted(a.refusal or "" for a in handed.arrivals) == [
        "bad_name", "bad_name", "not_a_file"]
