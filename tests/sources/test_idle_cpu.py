"""An idle `airlock run` does not spin, however many empty folders the inbox holds: full
scans are rare while the file-system events work, and never take most of the time."""

from __future__ import annotations

import errno
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

from config.settings import Settings
from models.migrate import upgrade
from pipelines.keyring import init_keyring
from pipelines.sources.dropfolder import DropFolderSource, inotify
from pipelines.sources.dropfolder.fs import Root
from pipelines.sources.dropfolder.loop import EVENTS_RESCAN, SCAN_SHARE
from pipelines.sources.dropfolder.observer import Signals
from pipelines.sources.settle import SettleTracker

FOLDERS = 20_000
WINDOW = 15.0  # seconds of idle watching measured: fifteen scan intervals
STARTUP = 300.0  # liveness bound for the start-up (watches and first scan), not a speed goal


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of `pid` so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_idle_watcher_of_20000_empty_folders_uses_under_5_percent_of_a_core(tmp_path: Path):
    settings = Settings(home=tmp_path / "var")
    upgrade(settings.resolved_database_url)
    init_keyring(settings.resolved_keys_dir)
    area = Path(settings.resolved_inbox) / "ACME"
    for i in range(FOLDERS):
        (area / f"d{i:05d}").mkdir(parents=True)
    env = {**os.environ, "AIRLOCK_HOME": str(settings.home),
           "AIRLOCK_SCAN_INTERVAL_SECONDS": "1"}
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cli", "run"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + STARTUP
        while "dropfolder.loop: scanned" not in log.read_text():  # start-up is over
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        used, started = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(WINDOW)  # the measurement window: the process is left alone
        share = (cpu_seconds(proc.pid) - used) / (time.monotonic() - started)
        assert share < 0.05, f"idle watcher used {share:.1%} of a core\n{log.read_text()}"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0, log.read_text()
    assert "Traceback" not in log.read_text()


def test_full_scans_are_rare_while_every_area_is_watched_and_never_dominate(tmp_path: Path):
    (tmp_path / "inbox" / "ACME").mkdir(parents=True)
    source = DropFolderSource(tmp_path / "inbox", on_batch=lambda arrivals: [],
                              settle_seconds=0.1, scan_interval=0.5)
    assert source._full_scan_gap(took=0.0) == 0.5  # no events yet: the scan interval
    assert source._full_scan_gap(took=1.0) == 1.0 / SCAN_SHARE  # a slow scan: spaced out
    source._watches.start(source._tree.arrival_areas(), 0.5)
    try:
        assert source._watches.healthy()
        assert source._full_scan_gap(took=0.0) == EVENTS_RESCAN
    finally:
        source._watches.stop(5.0)


def test_an_inotify_overflow_asks_for_a_full_scan(tmp_path: Path):
    """A real overflow: more events than the kernel queues (max_queued_events) while
    the reader cannot read them, then one scan is asked for."""
    root = Root(str(tmp_path))
    signals = Signals(root, SettleTracker(0.1))
    reader = inotify.Inotify(signals.record, signals.request_full)
    area = tmp_path / "ACME"
    area.mkdir()
    reader.add(str(area), inotify.FOLDER_MASK, recursive=True)
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    # Not started yet: the queue only fills. Two files in turn, since the kernel merges
    # an event identical to the one queued last.
    with (area / "f.req").open("wb") as one, (area / "g.req").open("wb") as two:
        for _ in range(limit // 2 + 10):
            for handle in (one, two):
                handle.write(b"x")
                handle.flush()
    assert not signals.take_full_request()
    reader.start()
    try:
        deadline = time.monotonic() + 30.0
        while not signals.take_full_request():
            assert time.monotonic() < deadline, "no overflow reported"
            time.sleep(0.01)
    finally:
        reader.stop(5.0)
    assert not reader.is_alive()


def test_inotify_events_decode_to_the_changes_the_loop_uses():
    def event(wd: int, mask: int, name: bytes) -> bytes:
        padded = name + b"\0" * (16 - len(name) % 16)
        return struct.pack("iIII", wd, mask, 0, len(padded)) + padded

    buffer = (event(1, inotify.Mask.CREATE, b"a.req") + event(1, inotify.Mask.MODIFY, b"a.req")
              + event(1, inotify.Mask.CLOSE_WRITE, b"a.req")
              + event(2, inotify.Mask.MOVED_TO | inotify.Mask.ISDIR, b"sub")
              + struct.pack("iIII", -1, inotify.Mask.Q_OVERFLOW, 0, 0))
    decoded = inotify.decode(buffer)
    assert [(wd, name) for wd, _, name in decoded] == [(1, b"a.req")] * 3 + [(2, b"sub"), (-1, b"")]
    assert [inotify.change_of(mask) for _, mask, _ in decoded] == [
        inotify.Change.CREATED, inotify.Change.MODIFIED, inotify.Change.CLOSED,
        inotify.Change.MOVED_IN, None]
    assert inotify.decode(buffer[:10]) == []  # a torn header is not an event


def test_a_folder_that_cannot_be_watched_makes_the_watches_unhealthy(tmp_path: Path,
                                                                     monkeypatch):
    """Out of inotify watches (ENOSPC) for a folder below an area: the loop must not
    trust the events for that area and keeps scanning at its normal interval."""
    (tmp_path / "ACME" / "deep").mkdir(parents=True)
    real_add = inotify.Inotify._add_one

    def add_one(self: inotify.Inotify, watch: inotify.Watch, path: str) -> None:
        if path.endswith("deep"):
            raise OSError(errno.ENOSPC, "no watches left", path)
        real_add(self, watch, path)

    monkeypatch.setattr(inotify.Inotify, "_add_one", add_one)
    source = DropFolderSource(tmp_path, on_batch=lambda batch: [], settle_seconds=0.1,
                              scan_interval=0.5)
    source._watches.start(source._tree.arrival_areas(), 0.5)
    try:
        assert str(tmp_path / "ACME") in source._watches.watched
        assert not source._watches.healthy()
        assert source._full_scan_gap(took=0.0) == 0.5
    finally:
        source._watches.stop(5.0)
