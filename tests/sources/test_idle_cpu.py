"""An idle `airlock run` does not spin, however many empty folders the inbox holds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from config.settings import Settings
from models.migrate import upgrade
from pipelines.keyring import init_keyring

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
