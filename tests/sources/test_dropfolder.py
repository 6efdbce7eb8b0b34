"""The drop-folder source with real writers: threads and processes writing real files.

Every test drives what production runs: `run(stop)` (with the observer) in a thread,
or `drain` (scans only), with the clock and sleep injected where time must not pass.
"""

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
from sqlalchemy.exc import OperationalError

from pipelines.layout import Arrival
from pipelines.outage import Backoff
from pipelines.sources import dropfolder
from pipelines.sources.dropfolder import DropFolderSource, fs, inotify, loop
from pipelines.sources.settle import KERNEL_CLOSE_GRACE, SettleTracker

needs_inotify = pytest.mark.skipif(not inotify.available(),
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
    """on_batch for tests: archives each ``_processing/...`` file into ``_processed/...``
    and records (area, name, sha256); every file is taken."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.seen: list[tuple[str, str, str]] = []
        self._cond = threading.Condition()

    def __call__(self, arrivals: list[Arrival]) -> list[Arrival]:
        for arrival in arrivals:
            self.one(arrival)
        return []

    def one(self, arrival: Arrival) -> None:
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


class Running:
    """`source.run(stop)` in a thread, as `airlock run` and `airlock watch` run it."""

    def __init__(self, source: DropFolderSource) -> None:
        self.source = source
        self.event = threading.Event()
        self.thread = threading.Thread(target=source.run, args=(self.event,), daemon=True)
        self.thread.start()
        # Events count from when the area folders are watched (the writers below rely
        # on the observer seeing their open and close).
        stop_at = time.monotonic() + WAIT
        while not source._watches.watched and time.monotonic() < stop_at:
            time.sleep(0.005)

    def stop(self, timeout: float = WAIT) -> bool:
        """Set the stop event; True once the loop has returned."""
        self.event.set()
        self.thread.join(timeout)
        return not self.thread.is_alive()


@pytest.fixture
def make_source(root: Path) -> Iterator[Callable[..., DropFolderSource]]:
    """Builds sources on `root`."""

    def factory(on_batch: Callable[[list[Arrival]], list[Arrival]], **kwargs: object
                ) -> DropFolderSource:
        kwargs.setdefault("settle_seconds", 0.3)
        kwargs.setdefault("scan_interval", 0.1)
        return DropFolderSource(root, on_batch=on_batch, **kwargs)  # type: ignore[arg-type]

    yield factory


@pytest.fixture
def run() -> Iterator[Callable[[DropFolderSource], Running]]:
    """Runs sources in threads; every one is stopped (thread joined) at teardown."""
    started: list[Running] = []

    def start(source: DropFolderSource) -> Running:
        started.append(Running(source))
        return started[-1]

    yield start
    for running in started:
        assert running.stop(timeout=10)


def one_at_a_time(handle: Callable[[Arrival], object]) -> Callable[[list[Arrival]],
                                                                  list[Arrival]]:
    """An on_batch calling `handle` per file; those it returns True for are not finished."""
    def on_batch(arrivals: list[Arrival]) -> list[Arrival]:
        return [a for a in arrivals if handle(a) is True]

    return on_batch


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


@pytest.mark.parametrize("mode", ["run", "drain"])
def test_slow_chunked_writer_is_handed_over_only_when_complete(root, make_source, run, mode):
    recorder = Recorder(root)
    source = make_source(recorder, settle_seconds=0.4)
    chunks = [os.urandom(4096) for _ in range(12)]
    if mode == "run":
        run(source)
    writer = in_thread(write_slowly, root / "ACME" / "big.req", chunks, 0.05)
    if mode == "drain":  # scans alone: the file must stay unchanged for settle_seconds
        stop_at = time.monotonic() + WAIT
        while not (root / "ACME" / "big.req").exists() and time.monotonic() < stop_at:
            time.sleep(0.01)
        assert source.drain(timeout=WAIT)
    seen = recorder.wait_for(1)
    writer.join()
    assert source.drain(timeout=WAIT)
    assert recorder.seen == [("ACME", "big.req", sha(b"".join(chunks)))]
    assert seen == recorder.seen


@needs_inotify
def test_writer_pausing_longer_than_settle_with_the_file_open_is_waited_for(root, make_source,
                                                                           run):
    recorder = Recorder(root)
    run(make_source(recorder, settle_seconds=0.2))
    chunks = [b"head-" * 1000, b"tail-" * 1000]
    writer = in_thread(write_slowly, root / "ACME" / "paused.req", chunks, 1.0)
    writer.join()
    seen = recorder.wait_for(1)
    assert seen == [("ACME", "paused.req", sha(b"".join(chunks)))]


@needs_inotify
def test_close_after_write_completes_a_file_before_settle_seconds(root, make_source, run):
    recorder = Recorder(root)
    run(make_source(recorder, settle_seconds=3600, close_grace=0.05))
    write_slowly(root / "ACME" / "quick.req", [b"a" * 100, b"b" * 100], 0.02)
    assert recorder.wait_for(1) == [("ACME", "quick.req", sha(b"a" * 100 + b"b" * 100))]


def test_a_file_changed_while_being_claimed_is_put_back(root, make_source, monkeypatch,
                                                         caplog):
    clock = FakeClock()
    recorder = Recorder(root)
    source = make_source(recorder, clock=clock, sleep=clock.sleep)
    target = root / "ACME" / "late.req"
    target.write_bytes(b"first half ")
    real_rename = fs.rename_noreplace

    def writer_still_busy(src: str, dst: str) -> None:
        monkeypatch.setattr(fs, "rename_noreplace", real_rename)
        with open(src, "ab") as handle:  # the writer appends just as the claim happens
            handle.write(b"second half")
        real_rename(src, dst)

    monkeypatch.setattr(fs, "rename_noreplace", writer_still_busy)
    with caplog.at_level(logging.WARNING, logger=dropfolder.__name__):
        assert source.drain(timeout=5)
    assert [r.getMessage() for r in caplog.records] == [
        "ACME/late.req changed while being claimed; put back to settle again"]
    assert recorder.seen == [("ACME", "late.req", sha(b"first half second half"))]


# --- names, renames and moves --------------------------------------------------------------


def test_part_file_renamed_and_file_moved_in_are_each_handed_over_once(root, tmp_path,
                                                                       make_source, run):
    recorder = Recorder(root)
    source = make_source(recorder)
    running = run(source)
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
    assert running.stop(timeout=10)
    assert source.drain(timeout=5)
    assert sorted(recorder.seen) == [
        ("ACME", "moved.req", sha(b"moved in")),
        ("ACME", "upload.req", sha(b"p" * 5000 + b"q" * 5000)),
    ]
    assert files_under(root / "_processed") == ["ACME/moved.req", "ACME/upload.req"]


@needs_inotify
def test_customer_folders_created_or_replaced_after_start_are_watched(root, tmp_path,
                                                                     make_source, run):
    recorder = Recorder(root)
    # settle_seconds and scan_interval are an hour: only a close event brings a file in
    source = make_source(recorder, settle_seconds=3600, close_grace=0.05, scan_interval=3600)
    run(source)
    folder = root / "NEWCO"

    def wait_until_watched() -> None:
        stop_at = time.monotonic() + WAIT
        while time.monotonic() < stop_at:
            watched = source._watches.watched.get(str(folder))
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
    assert not any("_process" in path for path in source._watches.watched)


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
    assert source.drain(timeout=5)  # first sight, settled by the fake clock, handed over
    print(f"\n5000-file backlog: drained in {time.perf_counter() - started:.3f} s")

    assert {(a, n): s for a, n, s in recorder.seen} == expected
    for area in areas:
        names = [n for a, n, _ in recorder.seen if a == area]
        assert names == sorted(names)
    assert files_under(root / "_processing") == []
    assert len(files_under(root / "_processed")) == 5000


def test_drain_alone_processes_everything_without_the_observer(root, make_source):
    recorder = Recorder(root)
    source = make_source(recorder, settle_seconds=0.1)
    (root / "BETA").mkdir()
    writers = [in_thread(write_slowly, root / area / f"{i}.req", [b"x" * 100, b"y"], 0.02)
               for i in range(20) for area in ("ACME", "BETA")]
    for writer in writers:
        writer.join()
    assert source.drain(timeout=WAIT)
    assert source._watches.watched == {}
    assert len(recorder.seen) == 40
    assert {s for _, _, s in recorder.seen} == {sha(b"x" * 100 + b"y")}


def test_two_sources_on_one_folder_never_hand_over_the_same_file(root, make_source, run):
    recorder = Recorder(root)
    first, second = make_source(recorder, settle_seconds=0.1), make_source(recorder,
                                                                          settle_seconds=0.1)
    running = [run(first), run(second)]
    for i in range(300):
        (root / "ACME" / f"{i:03d}.req").write_bytes(b"%d" % i)
    recorder.wait_for(300)
    assert all(r.stop(timeout=10) for r in running)
    assert first.drain(timeout=5)
    assert sorted(n for _, n, _ in recorder.seen) == [f"{i:03d}.req" for i in range(300)]


def test_runner_slots_split_the_files_and_each_takes_the_rest_last(root, make_source):
    """Runner i of n takes the files whose name hashes to it first (name order), then
    the others' from the end: two runners start at different files. The others' files
    are not looked at (no stat, no question to the kernel) until its own are claimed."""
    names = [f"{i:03d}.req" for i in range(60)]
    for name in names:
        (root / "ACME" / name).write_bytes(b"x")
        os.utime(root / "ACME" / name, (time.time() - 60, time.time() - 60))
    orders = []
    for index in range(2):
        taken: list[str] = []
        looked: list[str] = []
        source = make_source(Recorder(root), slot=(index, 2), settle_seconds=0)
        real_due = source._tracker.due

        def due(key, *args, looked=looked, real_due=real_due):
            looked.append(key.partition("/")[2])
            return real_due(key, *args)

        # Nothing moves: the other runner sees the same folder.
        source._claims.claim = lambda area, name, key, st, taken=taken: taken.append(name)  # type: ignore
        source._tracker.due = due  # type: ignore[method-assign]
        source._pass(full=True, stopping=lambda: False)
        own = [source._is_mine(f"ACME/{name}") for name in looked]
        assert own == sorted(own, reverse=True), "an other's file looked at before its own"
        orders.append(taken)
    first, second = orders
    mine0 = [n for n in names if loop._share(n, 2) == 0]
    mine1 = [n for n in names if loop._share(n, 2) == 1]
    assert mine0 and mine1 and sorted(mine0 + mine1) == names
    assert first == mine0 + mine1[::-1]
    assert second == mine1 + mine0[::-1]
    alone: list[str] = []
    source = make_source(Recorder(root), slot=(0, 1), settle_seconds=0)
    source._claims.claim = lambda area, name, key, st: alone.append(name)  # type: ignore
    source._pass(full=True, stopping=lambda: False)
    assert alone == names
    with pytest.raises(ValueError):
        make_source(Recorder(root), slot=(2, 2))


def test_a_runner_alone_in_its_slot_still_takes_the_other_share(root, make_source):
    """The runner whose share a file is may be gone: another takes it in the same pass."""
    recorder = Recorder(root)
    for i in range(50):
        (root / "ACME" / f"{i:03d}.req").write_bytes(b"%d" % i)
    for i in range(50):  # settled: a backlog
        os.utime(root / "ACME" / f"{i:03d}.req", (time.time() - 60, time.time() - 60))
    assert make_source(recorder, slot=(1, 2)).drain(timeout=10)
    assert sorted(n for _, n, _ in recorder.seen) == [f"{i:03d}.req" for i in range(50)]


def test_two_slotted_runners_drain_a_backlog_once_each_file(root, make_source):
    recorder = Recorder(root)
    for i in range(400):
        (root / "ACME" / f"{i:03d}.req").write_bytes(b"%d" % i)
        os.utime(root / "ACME" / f"{i:03d}.req", (time.time() - 60, time.time() - 60))
    sources = [make_source(recorder, slot=(n, 2), batch_size=25) for n in range(2)]
    results: list[bool] = []
    threads = [threading.Thread(target=lambda s=s: results.append(s.drain(timeout=30)))
               for s in sources]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [True, True]
    assert sorted(n for _, n, _ in recorder.seen) == [f"{i:03d}.req" for i in range(400)]
    assert list((root / "ACME").iterdir()) == []
    assert list((root / "_processing" / "ACME").iterdir()) == []


# --- failures and crashes ----------------------------------------------------------------------


CRASHING_WORKER = textwrap.dedent("""
    import sys, threading, time
    from pathlib import Path
    from pipelines.sources.dropfolder import DropFolderSource

    root, flag = Path(sys.argv[1]), Path(sys.argv[2])

    def on_batch(arrivals):
        flag.write_text(arrivals[0].key)
        while True:  # stuck mid-file until killed
            time.sleep(1)

    DropFolderSource(root, on_batch=on_batch, settle_seconds=0.05,
                     scan_interval=0.05).run(threading.Event())
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


def database_down() -> OperationalError:
    return OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))


def test_a_failed_hand_over_is_retried_while_running_and_logged_once(root, make_source,
                                                                      run, caplog):
    recorder = Recorder(root)
    failures: list[str] = []
    late = root / "ACME" / "late.req"

    def database_comes_back(arrivals: list[Arrival]) -> list[Arrival]:
        if len(failures) < 3:
            failures.append(",".join(a.name for a in arrivals))
            if len(failures) == 1:
                late.write_bytes(b"dropped during the outage")
            raise database_down()
        return recorder(arrivals)

    source = make_source(database_comes_back, settle_seconds=0.05,
                         backoff=Backoff(first=0.2))
    (root / "ACME" / "x.req").write_bytes(b"payload")
    with caplog.at_level(logging.DEBUG, logger=dropfolder.__name__):
        run(source)
        recorder.wait_for(2)
    assert failures == ["x.req"] * 3  # while it was down, new files waited unclaimed
    assert recorder.seen == [("ACME", "x.req", sha(b"payload")),
                             ("ACME", "late.req", sha(b"dropped during the outage"))]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings[0] == "database unreachable: connection refused; retrying"
    assert len(warnings) == 2 and warnings[1].startswith("database reachable again after ")
    assert not any(r.exc_info for r in caplog.records)
    assert files_under(root / "_processing") == []


def test_a_file_returned_as_not_finished_is_tried_again(root, make_source, run):
    recorder = Recorder(root)
    tries: list[str] = []

    def fails_twice(arrival: Arrival) -> bool:
        tries.append(arrival.key)
        if len(tries) <= 2:
            return True  # left in _processing/ (its job failed and stays pending)
        recorder.one(arrival)
        return False

    source = make_source(one_at_a_time(fails_twice), settle_seconds=0.05,
                         backoff=Backoff(first=0.05))
    (root / "ACME" / "x.req").write_bytes(b"payload")
    run(source)
    assert recorder.wait_for(1) == [("ACME", "x.req", sha(b"payload"))]
    assert tries == ["_processing/ACME/x.req"] * 3


def test_drain_ends_promptly_when_only_failed_files_are_left(root, make_source):
    clock = FakeClock()
    recorder = Recorder(root)
    tries: list[str] = []

    def quarantined_on_the_third_try(arrival: Arrival) -> bool:
        tries.append(arrival.key)
        if len(tries) < 3:
            return True
        recorder.one(arrival)  # its attempts ran out: the core archived it
        return False

    source = make_source(one_at_a_time(quarantined_on_the_third_try), clock=clock,
                         sleep=clock.sleep)
    (root / "ACME" / "x.req").write_bytes(b"payload")
    started = clock()
    assert source.drain(timeout=3600) is False
    assert clock() - started < 3600  # it did not wait for the timeout
    assert files_under(root / "_processing") == ["ACME/x.req"]
    assert source.drain(timeout=3600) is False  # the next run takes it again
    assert source.drain(timeout=3600) is True
    assert tries == ["_processing/ACME/x.req"] * 3
    assert files_under(root / "_processing") == []


def test_only_a_file_claimed_from_its_arrival_folder_is_a_first_try(root, make_source):
    """The intake may open a first try before counting it: no earlier run can have. A
    file taken again from ``_processing/`` (a retry, or left by a dead run) is not."""
    clock = FakeClock()
    recorder = Recorder(root)
    tries: list[tuple[str, bool]] = []

    def fails_once(arrival: Arrival) -> bool:
        tries.append((arrival.name, arrival.first_try))
        if arrival.name == "x.req" and len(tries) < 3:
            return True
        recorder.one(arrival)
        return False

    left = root / "_processing" / "ACME" / "left.req"  # a dead run's
    left.parent.mkdir(parents=True)
    left.write_bytes(b"left")
    source = make_source(one_at_a_time(fails_once), clock=clock, sleep=clock.sleep)
    (root / "ACME" / "x.req").write_bytes(b"payload")
    assert source.drain(timeout=3600) is False
    assert source.drain(timeout=3600) is True
    assert tries == [("left.req", False), ("x.req", True), ("x.req", False)]


def test_drain_ends_when_a_dependency_is_down(root, make_source):
    clock = FakeClock()

    def down(arrivals: list[Arrival]) -> list[Arrival]:
        raise database_down()

    source = make_source(down, clock=clock, sleep=clock.sleep)
    for name in ("a.req", "b.req"):
        (root / "ACME" / name).write_bytes(name.encode())
    assert source.drain(timeout=3600) is False
    assert files_under(root / "_processing") == ["ACME/a.req", "ACME/b.req"]


def test_a_name_still_in_hand_is_claimed_under_a_unique_name(root, make_source):
    clock = FakeClock()
    recorder = Recorder(root)
    arrivals: list[Arrival] = []
    source = make_source(one_at_a_time(lambda a: (arrivals.append(a), recorder.one(a))),
                         clock=clock, sleep=clock.sleep)
    older = root / "_processing" / "ACME" / "x.req"
    older.parent.mkdir(parents=True)
    older.write_bytes(b"older")
    (root / "ACME" / "x.req").write_bytes(b"newer")
    in_hand = fs.hold(str(older))  # another source is processing the older file
    assert in_hand is not None
    try:
        assert source.drain(timeout=1) is False  # the older one is still in hand
    finally:
        os.close(in_hand)
    assert arrivals[0].name == "x.req" and arrivals[0].data == b"newer"
    assert arrivals[0].key.startswith("_processing/ACME/x.req.claim-")
    assert older.read_bytes() == b"older"
    assert source.recover() == 1
    assert [(a.name, a.data) for a in arrivals] == [("x.req", b"newer"), ("x.req", b"older")]


def test_stop_finishes_the_file_in_hand_and_takes_no_more(root, make_source, run):
    recorder = Recorder(root)
    entered, release = threading.Event(), threading.Event()

    def slow(arrival: Arrival) -> None:
        entered.set()
        release.wait(WAIT)
        recorder.one(arrival)

    for name in ("a.req", "b.req", "c.req"):
        (root / "ACME" / name).write_bytes(name.encode())
    running = run(make_source(one_at_a_time(slow), settle_seconds=0.05, batch_size=1))
    assert entered.wait(WAIT)
    running.event.set()
    release.set()
    assert running.stop()
    assert recorder.seen == [("ACME", "a.req", sha(b"a.req"))]
    assert files_under(root / "ACME") == ["b.req", "c.req"]


def test_run_returns_when_the_event_is_set(root, make_source, run):
    recorder = Recorder(root)
    running = run(make_source(recorder, settle_seconds=0.05))
    (root / "ACME" / "x.req").write_bytes(b"x")
    recorder.wait_for(1)
    assert running.stop()
    assert recorder.seen == [("ACME", "x.req", sha(b"x"))]


# --- the settle rule on its own ------------------------------------------------------------------


def test_settle_rule_signature_changes_and_write_events_postpone():
    clock = FakeClock()
    tracker = SettleTracker(2.0, clock=clock)
    no_writer = lambda: False  # noqa: E731
    assert tracker.due("A/x", (1, 1, 1), no_writer) == 1002.0
    clock.sleep(1.5)
    assert tracker.due("A/x", (2, 2, 1), no_writer) == 1003.5  # grew: starts over
    clock.sleep(1.0)
    tracker.note_write("A/x")  # written to, size not changed yet
    assert tracker.due("A/x", (2, 2, 1), no_writer) == 1004.5
    tracker.forget("A/x")
    assert tracker.pending() == []


def test_a_settling_file_is_looked_at_again_when_due_or_when_its_close_is_seen():
    """A quick pass looks again only at keys whose last decision has come due; a close
    makes its key due for a look at once (the kernel asked again)."""
    clock = FakeClock()
    tracker = SettleTracker(2.0, clock=clock)
    open_now = lambda: True  # noqa: E731
    assert tracker.due("A/x", (1, 1, 1), lambda: False) == 1002.0
    assert tracker.due("A/y", (1, 1, 2), lambda: False) == 1002.0
    clock.sleep(2.0)
    assert tracker.due("A/y", (1, 1, 2), open_now) == 1003.0  # its writer still has it
    assert tracker.come_due(clock()) == (["A/x"], 1003.0)
    clock.sleep(0.5)
    tracker.note_close("A/y")
    assert tracker.come_due(clock()) == (["A/x", "A/y"], float("inf"))
    tracker.forget("A/x")
    assert tracker.come_due(clock()) == (["A/y"], float("inf"))


def test_settle_rule_without_the_kernel_holds_an_unclosed_write_and_warns_when_it_runs_out(
        caplog):
    clock = FakeClock()
    tracker = SettleTracker(2.0, close_grace=0.5, open_hold=30.0, clock=clock)
    cannot_tell = lambda: None  # noqa: E731
    tracker.note_write("A/x")
    assert tracker.due("A/x", (5, 5, 1), cannot_tell) == 1002.0  # not quiet yet
    clock.sleep(2.0)  # quiet for settle_seconds, but written and never closed: held
    assert tracker.due("A/x", (5, 5, 1), cannot_tell) == 1030.0
    clock.sleep(0.2)
    tracker.note_close("A/x")
    assert tracker.due("A/x", (5, 5, 1), cannot_tell) == 1002.7  # closed: grace only
    tracker.note_write("A/y")  # its close event was lost: the hold runs out
    tracker.note_write("A/z", moved_in=True)  # renamed in: not open for writing
    assert tracker.due("A/z", (1, 1, 3), cannot_tell) == 1004.2
    clock.sleep(31)
    with caplog.at_level(logging.WARNING, logger=SettleTracker.__module__):
        assert tracker.due("A/y", (1, 1, 2), cannot_tell) == 1035.2  # first seen now
        clock.sleep(2)
        assert tracker.due("A/y", (1, 1, 2), cannot_tell) == 1035.2  # taken: one warning
        assert tracker.due("A/y", (1, 1, 2), cannot_tell) == 1035.2
    assert [r.getMessage()[:27] for r in caplog.records] == ["A/y was written to 33 s ago"]


def test_settle_rule_with_the_kernel_waits_for_the_writer_without_a_time_limit():
    clock = FakeClock()
    tracker = SettleTracker(2.0, close_grace=0.5, open_hold=30.0, clock=clock)
    answers = [True, True, False]
    asked: list[float] = []

    def kernel() -> bool:
        asked.append(clock())
        return answers.pop(0)

    tracker.note_write("A/x")
    assert tracker.due("A/x", (5, 5, 1), kernel) == 1002.0  # not settled: nobody asked
    assert asked == []
    clock.sleep(2.0)
    assert tracker.due("A/x", (5, 5, 1), kernel) == 1003.0  # open: asked again in 1 s
    assert tracker.due("A/x", (5, 5, 1), kernel) == 1003.0  # not before then
    clock.sleep(100)  # far beyond the open hold: still the kernel's call
    assert tracker.due("A/x", (5, 5, 1), kernel) == 1103.0
    clock.sleep(0.5)
    tracker.note_close("A/x")  # a close makes the next look ask at once
    assert tracker.due("A/x", (5, 5, 1), kernel) == 1102.5 + KERNEL_CLOSE_GRACE
    clock.sleep(KERNEL_CLOSE_GRACE)
    assert tracker.due("A/x", (5, 5, 1), kernel) <= clock()
    assert asked == [1002.0, 1102.0, clock()]


# --- the factory ----------------------------------------------------------------------------


def test_a_folder_inbox_gets_a_drop_folder_source_from_the_settings(tmp_path):
    from config.settings import Settings
    from pipelines.sources import make_source as source_for
    from pipelines.storage.local import LocalStore

    settings = Settings(home=tmp_path, settle_seconds=0.7, scan_interval_seconds=3)
    source = source_for(settings, LocalStore(tmp_path / "inbox"), Recorder(tmp_path))
    assert isinstance(source, DropFolderSource)
    assert (source.root, source.settle_seconds, source.scan_interval) == (
        tmp_path / "inbox", 0.7, 3)
