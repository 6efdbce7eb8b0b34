"""An idle `airlock run` does not spin, however many empty folders the inbox holds: full
scans are rare while the file-system events work, and never take most of the time."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from config.settings import Settings
from models.migrate import upgrade
from pipelines.keyring import init_keyring
from pipelines.sources.dropfolder import DropFolderSource
from pipelines.sources.dropfolder.fs import Root
from pipelines.sources.dropfolder.loop import EVENTS_RESCAN, SCAN_SHARE
from pipelines.sources.dropfolder.observer import Signals, Watches
from pipelines.sources.dropfolder.tree import WarnOnce
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
    root = Root(str(tmp_path))
    signals = Signals(root, SettleTracker(0.1))
    watches = Watches(root, signals, WarnOnce())
    watches.start([], 1.0)
    try:
        logging.getLogger("watchdog.observers.inotify_c").warning(
            "Inotify queue overflowed; filesystem events were lost")
        assert signals.take_full_request()
    finally:
        watches.stop(5.0)
    logging.getLogger("watchdog.observers.inotify_c").warning(
        "Inotify queue overflowed; filesystem events were lost")
    assert not signals.take_full_request()  # stopped: the alarm is gone
