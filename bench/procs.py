"""Child processes for the benchmark: start `airlock` commands, stop them, read peak RSS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self, timeout: float = 60.0) -> int:
        """SIGINT (a clean stop), wait, and return the peak RSS in MiB."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return wait_rss(self.proc, timeout)


def spawn(name: str, args: list[str], env: dict[str, str], logs: Path) -> Child:
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    handle = log.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", *args], env={**os.environ, **env},
                            stdout=handle, stderr=subprocess.STDOUT)
    return Child(name, proc, log)


def wait_rss(proc: subprocess.Popen[bytes], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_maxrss // 1024
        time.sleep(0.05)
    proc.kill()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss // 1024


def wait_for_log(child: Child, needle: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in child.log.read_text(errors="replace"):
            return
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited: {child.log.read_text()[-2000:]}")
        time.sleep(0.05)
    raise TimeoutError(f"{child.name} did not log {needle!r}")
