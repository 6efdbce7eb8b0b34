"""`airlock run` on an inbox full of hostile entries: every entry ends in processed,
rejected or quarantine, each refusal with its report; nothing hangs, nothing big is
read, and the run still stops on SIGTERM — counted, with the real CLI in a subprocess.

When the tests run as root the runner runs as ``nobody`` (``setpriv``), so a file
it may not read is really unreadable to it (root reads a mode-000 file).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from models.db import reading
from models.tables import JOB
from tests.factories import WireDevice
from tests.sources.test_hostile_entries import long_name
from tests.test_run_accounting import _home, _run_setup

WAIT = 120.0  # liveness bound for the subprocess, never a speed requirement
NOBODY = 65534


@pytest.fixture
def base() -> Iterator[Path]:
    """A home the runner's user can reach (pytest's own tmp folders are root-only)."""
    path = Path(tempfile.mkdtemp(prefix="airlock-hostile-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _runner(home: Path) -> list[str]:
    """The command prefix that runs `airlock` as an unprivileged user when we are root."""
    if os.geteuid() != 0:
        return [sys.executable, "-m", "cli"]
    for folder, _dirs, files in os.walk(home):
        os.chown(folder, NOBODY, NOBODY)
        for name in files:
            os.chown(os.path.join(folder, name), NOBODY, NOBODY, follow_symlinks=False)
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            sys.executable, "-m", "cli"]


def _entries(folder: Path) -> list[str]:
    """Every entry but folders (symlinks, FIFOs and sockets too), relative to `folder`."""
    found = []
    for dirpath, dirs, names in os.walk(os.fsencode(folder)):
        for name in names + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            found.append(os.fsdecode(os.path.relpath(os.path.join(dirpath, name),
                                                     os.fsencode(folder))))
    return sorted(found)


def _write(path: bytes | str | Path, data: bytes) -> None:
    os.makedirs(os.path.dirname(os.fsencode(path)), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


def test_every_hostile_entry_ends_somewhere_with_a_report(base: Path) -> None:
    """The counting test: N entries of every hostile kind and N valid files; a real
    ``airlock run --drain`` ends every one in exactly one archive folder."""
    settings, key = _home(base)
    env, runtime, inbox = _run_setup(settings)
    n = 3
    area = os.fsencode(inbox)
    for i in range(n):
        _write(inbox / f"valid{i}.req", WireDevice(runtime.keyring, f"HW-{i}").activation(
            license_key=key))
        _write(inbox / f"junk{i}.req", os.urandom(100))  # read, then rejected malformed
        os.mkfifo(inbox / f"pipe{i}.req")
        os.symlink(settings.resolved_keys_dir, inbox / f"link{i}")  # the vendor's keys!
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(inbox / f"s{i}.sock"))
        _write(area + b"/caf\xff%d.req" % i, b"not utf-8")
        _write(area + b"/bell\x07%d.req" % i, b"control")
        _write(inbox / long_name((1005, 1013, 1024)[i]), b"long")
        with open(inbox / f"huge{i}.req", "wb") as handle:  # over max_file_bytes, sparse
            handle.truncate(settings.max_file_bytes * 4)
        _write(inbox / f"locked{i}.req", b"no reading")
        os.chmod(inbox / f"locked{i}.req", 0)
    kinds = {"processed": n, "rejected": 5 * n, "quarantine": 4 * n}
    dropped = len(_entries(inbox))
    assert dropped == sum(kinds.values())
    command = _runner(base)
    if os.geteuid() == 0:  # the unreadable files stay root's: nobody may move, not read
        for i in range(n):
            os.chown(inbox / f"locked{i}.req", 0, 0)
    proc = subprocess.run([*command, "run", "--drain", "--timeout", "100"], env=env,
                          capture_output=True, text=True, timeout=WAIT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    root = Path(settings.resolved_inbox)
    ended = {}
    for folder in kinds:
        names = _entries(root / f"_{folder}")
        files = [name for name in names if not name.endswith(".error.json")]
        ended[folder] = len(files)
        if folder != "processed":
            assert sorted(f"{name}.error.json" for name in files) == sorted(
                set(names) - set(files)), folder
    assert ended == kinds
    assert _entries(inbox) == [] and _entries(root / "_processing") == []
    reasons: dict[str, int] = {}
    for path in (root / "_rejected").rglob("*.error.json"):
        reason = json.loads(path.read_text())["reason"]
        reasons[reason] = reasons.get(reason, 0) + 1
    for path in (root / "_quarantine").rglob("*.error.json"):
        reason = json.loads(path.read_text())["reason"]
        reasons[reason] = reasons.get(reason, 0) + 1
    assert reasons == {"malformed": n, "bad_name": 3 * n, "too_large": n,
                       "not_a_file": 3 * n, "unreadable": n}
    assert Path(settings.resolved_keys_dir).is_dir()  # a link's target is never moved
    runtime.close()


def _rss_peak_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def test_a_300_mb_file_and_a_fifo_are_refused_unread_and_sigterm_still_stops(base: Path
                                                                             ) -> None:
    """A real ``airlock run``: the 300 MB file is rejected too_large from its stat (no
    payload stored, the runner's peak RSS stays small), the FIFO is quarantined, and
    SIGTERM ends the run."""
    settings, _key = _home(base)
    env, runtime, inbox = _run_setup(settings)
    with open(inbox / "huge.req", "wb") as handle:
        handle.seek(300 * 1024 * 1024 - 1)
        handle.write(b"\n")
    os.mkfifo(inbox / "pipe.req")
    proc = subprocess.Popen([*_runner(base), "run"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    root = Path(settings.resolved_inbox)
    reports = [root / "_rejected/ACME/huge.req.error.json",
               root / "_quarantine/ACME/pipe.req.error.json"]
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and proc.poll() is None and not all(
            p.exists() for p in reports):
        time.sleep(0.05)
    assert all(p.exists() for p in reports), proc.communicate(timeout=5)[0]
    peak_kb = _rss_peak_kb(proc.pid)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, output
    assert peak_kb < 200 * 1024, f"peak RSS {peak_kb} kB"
    assert json.loads(reports[0].read_text())["reason"] == "too_large"
    assert json.loads(reports[1].read_text())["reason"] == "not_a_file"
    with reading(runtime.engine) as conn:
        rows = conn.execute(select(JOB.c.payload, JOB.c.size)).all()
    assert sorted((r.payload, r.size) for r in rows) == [(None, 0), (None, 300 * 1024 * 1024)]
    runtime.close()


def test_temp_files_a_killed_process_left_are_removed_at_start(base: Path) -> None:
    """A SIGKILL between writing a temp file and renaming it leaves ``.<name>.airlock-
    <hex>.tmp``: the next run removes the old ones (outbox and inbox), not fresh ones."""
    settings, _key = _home(base)
    env, runtime, inbox = _run_setup(settings)
    outbox, root = Path(settings.resolved_outbox), Path(settings.resolved_inbox)
    old = [outbox / "ACME" / ".r.lic.airlock-0123456789abcdef.tmp",
           root / "_processing" / "ACME" / ".a.req.airlock-0123456789abcdef.tmp",
           root / "_rejected" / "ACME" / ".b.req.error.json.airlock-0123456789abcdef.tmp"]
    fresh = outbox / "ACME" / ".s.lic.airlock-fedcba9876543210.tmp"
    for path in [*old, fresh]:
        _write(path, b"half written")
    an_hour_ago = time.time() - 3600
    for path in old:
        os.utime(path, (an_hour_ago, an_hour_ago))
    proc = subprocess.run([*_runner(base), "run", "--drain"], env=env, capture_output=True,
                          text=True, timeout=WAIT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p for p in old if p.exists()] == []
    assert fresh.exists()
    runtime.close()
