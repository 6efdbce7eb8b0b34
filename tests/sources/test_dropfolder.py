"""The drop-folder source with real writers: threads and processes writing real files."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from watchdog.observers import Observer

from pipelines.layout import Arrival
from pipelines.sources import dropfolder
from pipelines.sources.dropfolder import DropFolderSource
from pipelines.sources.settle import SettleTracker

try:
    from watchdog.observers.inotify import InotifyObserver
except ImportError:  # pragma: no cover - not Linux
    InotifyObserver = None  # type: ignore[assignment,misc]

needs_inotify = pytest.mark.skipif(Observer is not InotifyObserver,
                                   reason="needs inotify open/close events")
WAIT = 30.0  # liveness bound for background work, never a speed requirement


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeClock:
    """A clock that only moves when told to; its `sleep` moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Recorder:
    """on_arrival for tests: archives ``_processing/...`` into ``_processed/...`` and
    records (area, name, sha256)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.seen: list[tuple[str, str, str]] = []
        self._cond = threading.Condition()

    def __call__(self, arrival: Arrival) -> None:
        assert arrival.key.startswith(f"_processing/{arrival.area}/")
        assert arrival.sha256 == sha(arrival.data) and arrival.size == len(arrival.data)
        target = self.root / "_processed" / arrival.area / arrival.name
        if target.exists():
            target = target.with_name(f"{target.name}.{arrival.sha256[:12]}")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(self.root / arrival.key, target)
        with self._cond:
            self.seen.append((arrival.area, arrival.name, arrival.sha256))
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = WAIT) -> list[tuple[str, str, str]]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.seen) >= count, timeout)
            return list(self.seen)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    inbox = tmp_path / "inbox"
    (inbox / "ACME").mkdir(parents=True)
    return inbox


@pytest.fixture
def make_source(root: Path) -> Iterator[Callable[..., DropFolderSource]]:
    """Builds sources on `root`; every one is stopped (threads joined) at teardown."""
    made: list[DropFolderSource] = []

    def factory(on_arrival: Callable[[Arrival], None], **kwargs: object) -> DropFolderSource:
        kwargs.setdefault("settle_seconds", 0.3)
        kwargs.setdefault("scan_interval", 0.1)
        source = DropFolderSource(root, on_arrival=on_arrival, **kwargs)  # type: ignore[arg-type]
        made.append(source)
        return source

    yield factory
    for source in made:
        assert source.stop(timeout=10)


def write_slowly(path: Path, chunks: list[bytes], pause: float) -> None:
    with open(path, "wb", buffering=0) as handle:
        for i, chunk in enumerate(chunks):
            if i:
                time.sleep(pause)
            handle.write(chunk)


def in_thread(target: Callable[..., None], *args: object) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# --- completeness ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["observer", "scan_once"])
def test_slow_chunked_writer_is_handed_over_only_when_complete(root, make_source, mode):
    recorder = Recorder(root)
    source = make_source(recorder, settle_seconds=0.4)
    chunks = [os.urandom(4096) for _ in range(12)]
    if mode == "observer":
        source.start()
    writer = in_thread(write_slowly, root / "ACME" / "big.req", chunks, 0.05)
    if mode == "scan_once":
        stop_at = time.monotonic() + WAIT
        while not recorder.seen and time.monotonic() < stop_at:
            source.scan_once()
            time.sleep(0.02)
    seen = recorder.wait_for(1)
    writer.join()
    assert source.drain(timeout=WAIT)
    assert recorder.seen == [("ACME", "big.req", sha(b"".join(chunks)))]
    assert seen == recorder.seen


@needs_inotify
def test_writer_pausing_longer_than_settle_with_the_file_open_is_waited_for(root, make_source):
    recorder = Recorder(root)
    source = make_source(recorder, settle_seconds=0.2)
    source.start()
    chunks = [b"head-" * 1000, b"tail-" * 1000]
    writer = in_thread(write_slowly, root / "ACME" / "paused.req", chunks, 1.0)
    writer.join()
    seen = recorder.wait_for(1)
    assert seen == [("ACME", "paused.req", sha(b"".join(chunks)))]


@needs_inotify
def test_close_after_write_completes_a_file_before_settle_seconds(root, make_source):
    recorder = Recorder(root)
    source = make_source(recorder, settle_seconds=3600, close_grace=0.05)
    source.start()
    write_slowly(root / "ACME" / "quick.req", [b"a" * 100, b"b" * 100], 0.02)
    assert recorder.wait_for(1) == [("ACME", "quick.req", sha(b"a" * 100 + b"b" * 100))]


def test_a_file_changed_while_being_claimed_is_put_back(root, make_source, monkeypatch):
    clock = FakeClock()
    recorder = Recorder(root)
    source = make_source(recorder, clock=clock, sleep=clock.sleep)
    target = root / "ACME" / "late.req"
    target.write_bytes(b"first half ")
    assert source.scan_once() == 0
    clock.sleep(1)
    real_rename = dropfolder.rename_noreplace

    def writer_still_busy(src: str, dst: str) -> None:
        monkeypatch.setattr(dropfolder, "rename_noreplace", real_rename)
        with open(src, "ab") as handle:  # the writer appends just as the claim happens
            handle.write(b"second half")
        real_rename(src, dst)

    monkeypatch.setattr(dropfolder, "rename_noreplace", writer_still_busy)
    assert source.scan_once() == 0
    assert target.read_bytes() == b"first half second half"
    assert source.drain(timeout=5)
    assert recorder.seen == [("ACME", "late.req", sha(b"first half second half"))]


# --- names, renames and moves --------------------------------------------------------------


def test_part_file_renamed_and_file_moved_in_are_each_handed_over_once(root, tmp_path,
                                                                       make_source):
    recorder = Recorder(root)
    source = make_source(recorder)
    source.start()
    part = root / "ACME" / "upload.req.part"
    write_slowly(part, [b"p" * 5000, b"q" * 5000], 0.05)
    time.sleep(0.5)  # longer than settle: a .part name is never taken, however quiet
    assert recorder.seen == []
    part.rename(root / "ACME" / "upload.req")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "moved.req").write_bytes(b"moved in")
    os.rename(outside / "moved.req", root / "ACME" / "moved.req")
    recorder.wait_for(2)
    assert source.stop(timeout=10)
    assert source.drain(timeout=5)
    assert sorted(recorder.seen) == [
        ("ACME", "moved.req", sha(b"moved in")),
        ("ACME", "upload.req", sha(b"p" * 5000 + b"q" * 5000)),
    ]
    assert files_under(root / "_processed") == ["ACME/moved.req", "ACME/upload.req"]


@needs_inotify
def test_customer_folders_created_or_replaced_after_start_are_watched(root, tmp_path,
                                                                     make_source):
    recorder = Recorder(root)
    # settle_seconds and scan_interval are an hour: only a close event brings a file in
    source = make_source(recorder, settle_seconds=3600, close_grace=0.05, scan_interval=3600)
    source.start()
    folder = root / "NEWCO"

    def wait_until_watched() -> None:
        stop_at = time.monotonic() + WAIT
        while time.monotonic() < stop_at:
            watched = source._watches.get(str(folder))
            if watched and folder.exists() and watched[1] == folder.stat().st_ino:
                return
            time.sleep(0.01)
        raise AssertionError(f"{folder} is not watched")

    (tmp_path / "staging" / "NEWCO" / "deep").mkdir(parents=True)
    (tmp_path / "staging" / "NEWCO").rename(folder)  # a whole folder tree moved in
    wait_until_watched()
    (folder / "deep" / "first.req").write_bytes(b"new customer")
    assert recorder.wait_for(1) == [("NEWCO", "deep/first.req", sha(b"new customer"))]

    folder.rename(root / "OLDCO")  # the old folder lives on: a new inode for the new one
    folder.mkdir()
    wait_until_watched()
    (folder / "second.req").write_bytes(b"folder replaced")
    assert recorder.wait_for(2)[1] == ("NEWCO", "second.req", sha(b"folder replaced"))
    assert not any("_process" in path for path in source._watches)


def test_same_content_under_two_names_gives_two_arrivals(root, make_source, caplog):
    clock = FakeClock()
    recorder = Recorder(root)
    source = make_source(recorder, clock=clock, sleep=clock.sleep)
    for name in ("first.req", "second.req"):
        (root / "ACME" / name).write_bytes(b"identical bytes")
    with caplog.at_level(logging.DEBUG, logger=dropfolder.__name__):
        assert source.drain(timeout=10)
    assert sorted(recorder.seen) == [("ACME", "first.req", sha(b"identical bytes")),
                                     ("ACME", "second.req", sha(b"identical bytes"))]
    claimed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("claimed")]
    assert len(claimed) == 2 and not any("identical" in line for line in claimed)


def test_temporary_hidden_reserved_and_root_files_are_ignored(root, make_source, caplog):
    clock = FakeClock()
    recorder = Recorder(root)
    source = make_source(recorder, clock=clock, sleep=clock.sleep)
    ignored = ["ACME/a.part", "ACME/b.tmp", "ACME/c.filepart", "ACME/d.crdownload",
               "ACME/.e.req.Xy12Ab", "ACME/.hidden/f.req", "ACME/g.req~", "_processed/ACME/h.req",
               "_rejected/ACME/i.req", "_quarantine/ACME/j.req", "_custom/k.req", "root.req",
               "not a code!/l.req", ".git/m"]
    for key in ignored + ["ACME/sub/ok.req", "_operator/op.req"]:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(key.encode())
    os.symlink(root / "root.req", root / "ACME" / "link.req")
    with caplog.at_level(logging.WARNING, logger=dropfolder.__name__):
        assert source.drain(timeout=10)
        assert source.drain(timeout=10)
    assert sorted(recorder.seen) == [("ACME", "sub/ok.req", sha(b"ACME/sub/ok.req")),
                                     ("_operator", "op.req", sha(b"_operator/op.req"))]
    assert all((root / key).read_bytes() == key.encode() for key in ignored)
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("root.req" in w for w in warnings) == 1  # reported once, not on every scan
    assert any("not a code!" in w for w in warnings)


# --- scale, order and scanning without events -------------------------------------------------


def test_backlog_of_5000_files_is_handed_over_after_start(root, make_source):
    clock = FakeClock()
    recorder = Recorder(root)
    source = make_source(recorder, clock=clock, sleep=clock.sleep)
    areas = ["ACME", "BETA", "GAMMA", "DELTA", "_operator"]
    expected = {}
    for i in range(5000):
        area = areas[i % len(areas)]
        name = f"req-{4999 - i:05d}.req"
        data = f"{area}/{name}".encode()
        (root / area).mkdir(exist_ok=True)
        (root / area / name).write_bytes(data)
        expected[(area, name)] = sha(data)

    started = time.perf_counter()
    assert source.scan_once() == 0  # first sight: not settled yet
    observed = time.perf_counter() - started
    clock.sleep(source.settle_seconds)
    started = time.perf_counter()
    assert source.scan_once() == 5000
    claimed = time.perf_counter() - started
    print(f"\n5000-file backlog: observe scan {observed:.3f} s, "
          f"claim + hand-over scan {claimed:.3f} s")

    assert {(a, n): s for a, n, s in recorder.seen} == expected
    for area in areas:
        names = [n for a, n, _ in recorder.seen if a == area]
        assert names == sorted(names)
    assert source.drain(timeout=5)
    assert files_under(root / "_processing") == []
    assert len(files_under(root / "_processed")) == 5000


def test_scan_once_alone_processes_everything_without_the_observer(root, make_source):
    recorder = Recorder(root)
    source = make_source(recorder, settle_seconds=0.1)
    (root / "BETA").mkdir()
    writers = [in_thread(write_slowly, root / area / f"{i}.req", [b"x" * 100, b"y"], 0.02)
               for i in range(20) for area in ("ACME", "BETA")]
    for writer in writers:
        writer.join()
    stop_at = time.monotonic() + WAIT
    while len(recorder.seen) < 40 and time.monotonic() < stop_at:
        source.scan_once()
        time.sleep(0.02)
    assert source._observer is None
    assert len(recorder.seen) == 40
    assert {s for _, _, s in recorder.seen} == {sha(b"x" * 100 + b"y")}


def test_two_sources_on_one_folder_never_hand_over_the_same_file(root, make_source):
    recorder = Recorder(root)
    first, second = make_source(recorder, settle_seconds=0.1), make_source(recorder,
                                                                          settle_seconds=0.1)
    first.start()
    second.start(watch=False)
    for i in range(300):
        (root / "ACME" / f"{i:03d}.req").write_bytes(b"%d" % i)
    recorder.wait_for(300)
    assert first.stop(timeout=10) and second.stop(timeout=10)
    assert first.drain(timeout=5)
    assert sorted(n for _, n, _ in recorder.seen) == [f"{i:03d}.req" for i in range(300)]


# --- failures and crashes ----------------------------------------------------------------------


CRASHING_WORKER = textwrap.dedent("""
    import sys, threading, time
    from pathlib import Path
    from pipelines.sources.dropfolder import DropFolderSource

    root, flag = Path(sys.argv[1]), Path(sys.argv[2])

    def on_arrival(arrival):
        flag.write_text(arrival.key)
        while True:  # stuck mid-file until killed
            time.sleep(1)

    DropFolderSource(root, on_arrival=on_arrival, settle_seconds=0.05,
                     scan_interval=0.05).run_until(threading.Event(), watch=False)
""")


def test_a_process_killed_mid_file_loses_nothing(root, tmp_path, make_source):
    data = os.urandom(20_000)
    (root / "ACME" / "device.req").write_bytes(data)
    flag = tmp_path / "in-hand"
    worker = subprocess.Popen([sys.executable, "-c", CRASHING_WORKER, str(root), str(flag)])
    try:
        stop_at = time.monotonic() + WAIT
        while not flag.exists() and time.monotonic() < stop_at and worker.poll() is None:
            time.sleep(0.05)
        assert flag.read_text() == "_processing/ACME/device.req"
        recorder = Recorder(root)
        survivor = make_source(recorder)
        assert survivor.recover() == 0  # still held by the live process: not taken twice
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=WAIT)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert files_under(root / "_processing") == ["ACME/device.req"]
    assert survivor.recover() == 1
    assert recorder.seen == [("ACME", "device.req", sha(data))]
    assert (root / "_processed" / "ACME" / "device.req").read_bytes() == data
    assert files_under(root / "_processing") == []


def test_a_failing_callback_leaves_the_file_for_recovery(root, make_source, caplog):
    clock = FakeClock()
    recorder = Recorder(root)
    calls: list[str] = []

    def flaky(arrival: Arrival) -> None:
        calls.append(arrival.key)
        if len(calls) == 1:
            raise RuntimeError("database is down")
        recorder(arrival)

    source = make_source(flaky, clock=clock, sleep=clock.sleep)
    (root / "ACME" / "x.req").write_bytes(b"payload")
    with caplog.at_level(logging.ERROR, logger=dropfolder.__name__):
        assert source.scan_once() == 0
        clock.sleep(1)
        assert source.scan_once() == 1
    assert any("x.req" in r.getMessage() for r in caplog.records)
    assert files_under(root / "_processing") == ["ACME/x.req"]
    assert source.recover() == 1
    assert recorder.seen == [("ACME", "x.req", sha(b"payload"))]
    assert files_under(root / "_processing") == []


def test_the_loop_retries_failed_files_every_retry_interval(root, make_source):
    recorder = Recorder(root)
    failures = [RuntimeError("database is down")] * 2

    def flaky(arrival: Arrival) -> None:
        if failures:
            raise failures.pop()
        recorder(arrival)

    source = make_source(flaky, settle_seconds=0.05, retry_interval=0.1)
    (root / "ACME" / "x.req").write_bytes(b"payload")
    source.start(watch=False)
    assert recorder.wait_for(1) == [("ACME", "x.req", sha(b"payload"))]


def test_drain_reports_a_timeout_when_the_inbox_cannot_empty(root, make_source):
    clock = FakeClock()

    def always_fails(arrival: Arrival) -> None:
        raise RuntimeError("no")

    source = make_source(always_fails, clock=clock, sleep=clock.sleep)
    (root / "ACME" / "x.req").write_bytes(b"payload")
    assert source.drain(timeout=5) is False
    assert files_under(root / "_processing") == ["ACME/x.req"]


def test_a_name_still_in_hand_is_claimed_under_a_unique_name(root, make_source):
    clock = FakeClock()
    recorder = Recorder(root)
    source = make_source(recorder, clock=clock, sleep=clock.sleep)
    (root / "_processing" / "ACME").mkdir(parents=True)
    (root / "_processing" / "ACME" / "x.req").write_bytes(b"older")
    (root / "ACME" / "x.req").write_bytes(b"newer")
    arrivals: list[Arrival] = []
    source._on_arrival = lambda a: (arrivals.append(a), recorder(a))  # type: ignore[assignment]
    assert source.scan_once() == 0
    clock.sleep(1)
    assert source.scan_once() == 1
    assert arrivals[0].name == "x.req" and arrivals[0].data == b"newer"
    assert arrivals[0].key.startswith("_processing/ACME/x.req.claim-")
    assert (root / "_processing" / "ACME" / "x.req").read_bytes() == b"older"
    assert source.recover() == 1
    assert [(a.name, a.data) for a in arrivals] == [("x.req", b"newer"), ("x.req", b"older")]


def test_stop_finishes_the_file_in_hand_and_takes_no_more(root, make_source):
    recorder = Recorder(root)
    entered, release = threading.Event(), threading.Event()

    def slow(arrival: Arrival) -> None:
        entered.set()
        release.wait(WAIT)
        recorder(arrival)

    for name in ("a.req", "b.req", "c.req"):
        (root / "ACME" / name).write_bytes(name.encode())
    source = make_source(slow, settle_seconds=0.05)
    source.start(watch=False)
    assert entered.wait(WAIT)
    stopping = in_thread(lambda: source.stop(timeout=WAIT))
    time.sleep(0.1)
    release.set()
    stopping.join()
    assert source._thread is None
    assert recorder.seen == [("ACME", "a.req", sha(b"a.req"))]
    assert files_under(root / "ACME") == ["b.req", "c.req"]


def test_run_until_returns_when_the_event_is_set(root, make_source):
    recorder = Recorder(root)
    source = make_source(recorder, settle_seconds=0.05)
    stop = threading.Event()
    runner = in_thread(source.run_until, stop)
    (root / "ACME" / "x.req").write_bytes(b"x")
    recorder.wait_for(1)
    stop.set()
    runner.join(WAIT)
    assert not runner.is_alive()
    assert recorder.seen == [("ACME", "x.req", sha(b"x"))]


# --- the settle rule on its own ------------------------------------------------------------------


def test_settle_rule_signature_changes_and_write_events_postpone():
    clock = FakeClock()
    tracker = SettleTracker(2.0, clock=clock)
    assert tracker.due("A/x", (1, 1, 1)) == 1002.0
    clock.sleep(1.5)
    assert tracker.due("A/x", (2, 2, 1)) == 1003.5  # grew: starts over
    clock.sleep(1.0)
    tracker.note_write("A/x")  # written to, size not changed yet
    assert tracker.due("A/x", (2, 2, 1)) == 1004.5
    tracker.forget("A/x")
    assert tracker.pending() == []


def test_settle_rule_open_holds_and_close_completes_early():
    clock = FakeClock()
    tracker = SettleTracker(2.0, close_grace=0.5, open_hold=30.0, clock=clock)
    tracker.note_open("A/x")
    tracker.note_write("A/x")
    assert tracker.due("A/x", (5, 5, 1)) == 1030.0  # open: held
    clock.sleep(0.2)
    tracker.note_close("A/x", wrote=True)
    assert tracker.due("A/x", (5, 5, 1)) == 1000.7  # closed after writing: grace only
    tracker.note_open("A/y")  # its close event was lost: the hold runs out
    clock.sleep(31)
    assert tracker.due("A/y", (1, 1, 2)) == 1033.2
