"""Child processes for the benchmark: start `airlock` commands, stop them, read peak RSS.

Peak RSS is each process's own high-water mark (``VmHWM`` in /proc, which an exec
resets), the largest over the command and its descendants (a Celery worker's pool
processes). `getrusage`'s ``ru_maxrss`` would not do: a forked child starts with its
parent's mark, so every child would report at least the benchmark's own size.
"""

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
        peak = tree_peak_rss(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return max(peak, wait_rss(self.proc, timeout))


def spawn(name: str, args: list[str], env: dict[str, str], logs: Path) -> Child:
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    handle = log.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", *args], env={**os.environ, **env},
                            stdout=handle, stderr=subprocess.STDOUT)
    return Child(name, proc, log)


def wait_rss(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Wait for `proc` to exit, sampling its tree's peak RSS; the peak in MiB."""
    deadline = time.monotonic() + timeout
    peak = 0
    while time.monotonic() < deadline:
        peak = max(peak, tree_peak_rss(proc.pid))
        if proc.poll() is not None:
            return peak
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    return peak


def tree_peak_rss(pid: int) -> int:
    """The largest VmHWM (MiB) of `pid` and its descendants still running."""
    return max((_vm_hwm_mib(one) for one in _tree(pid)), default=0)


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by `pid` and its descendants still
    running (with what their exited children used)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for one in _tree(pid):
        fields = _stat_fields(one)
        if fields is not None:  # utime stime cutime cstime: fields 14-17 of /proc/pid/stat
            total += sum(int(value) for value in fields[11:15])
    return total / ticks


def _stat_fields(pid: int | str) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after the command name (from the state on)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants still running."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat_fields(entry)) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _vm_hwm_mib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def wait_for_log(child: Child, needle: str, timeout: float = 60.0, *, times: int = 1) -> None:
    """Wait until `child` has logged `needle` `times` times (once per runner process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.log.read_text(errors="replace").count(needle) >= times:
            return
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited: {child.log.read_text()[-2000:]}")
        time.sleep(0.05)
    raise TimeoutError(f"{child.name} did not log {needle!r}")
