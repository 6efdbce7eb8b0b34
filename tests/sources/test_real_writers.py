"""Real clients writing into a watched drop folder, slowly, with the file held open: each
file is processed exactly once, after it is complete, and never claimed or parsed early.

The watcher is a real `EmbeddedRunner` (as `airlock run` runs it) on a real database;
the writers are separate processes: Python, ``rsync --inplace --bwlimit``, and a shell
running as another user. Whether a file is still open for writing is the kernel's
answer (`pipelines.sources.dropfolder.writers`), not a timer: where a test shortens the
open hold, a timer alone would take the file at the writer's first pause.
"""

from __future__ import annotations

import io
import logging
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlmodel import Session, select

from config.settings import Settings
from models.db import make_engine
from models.ledger import Batch, BatchStatus, Job, JobStatus
from models.migrate import upgrade
from pipelines.keyring import init_keyring
from pipelines.sources.dropfolder import writers
from tests.conftest import service_unavailable
from tests.factories import WireDevice, add_license, vendor
from workers.embedded import EmbeddedRunner
from workers.runtime import Runtime, build_runtime

WAIT = 120.0  # liveness bound for background work, never a speed requirement
SETTLE_LOGGER = "pipelines.sources.settle"


def need_tool(name: str) -> str:
    """The path of a command-line tool; missing, the test fails in CI (skips elsewhere)."""
    found = shutil.which(name)
    if found is None:
        service_unavailable(name, FileNotFoundError(f"{name} is not installed"))
    assert found is not None
    return found


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def jobs(runtime: Runtime) -> list[Job]:
    with Session(runtime.engine) as session:
        return list(session.exec(select(Job)))


def entries(inbox: Path, folder: str) -> list[str]:
    """Everything but folders under ``inbox/folder``."""
    base = inbox / folder
    return sorted(str(p.relative_to(base)) for p in base.rglob("*")
                  if not p.is_dir()) if base.exists() else []


def still_there(inbox: Path, name: str) -> bool:
    """True while `name` waits unclaimed in ACME's arrival folder."""
    return (inbox / "ACME" / name).is_file() and not entries(inbox, "_processing")


def open_for_writing_logged(caplog: pytest.LogCaptureFixture, name: str) -> int:
    """How often the watcher found `name` open for writing and let it wait."""
    return sum(1 for r in list(caplog.records)
               if r.getMessage() == f"ACME/{name} is open for writing; it waits for its writer")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder other users can reach (pytest's tmp_path is private to its owner)."""
    path = Path(tempfile.mkdtemp(prefix="airlock-writers-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_home(base: Path, **settings: object) -> tuple[Settings, str]:
    """A home with a database, a keyring, ACME and a license with room for a fleet."""
    # The inbox outside the home, which is private to the watcher.
    config = Settings(home=base / "var", inbox=str(base / "inbox"),
                      **settings)  # type: ignore[arg-type]
    upgrade(config.resolved_database_url)
    init_keyring(config.resolved_keys_dir)
    engine = make_engine(config.resolved_database_url)
    vendor(engine)
    key = add_license(engine, max_activations=5000)
    engine.dispose()
    inbox = Path(config.resolved_inbox) / "ACME"
    inbox.mkdir(parents=True)
    inbox.chmod(0o777)  # writers of any user may drop files here
    return config, key


@contextmanager
def watcher(settings: Settings) -> Iterator[Runtime]:
    """`airlock run` in a thread of this process; stopped and joined on exit."""
    runtime = build_runtime(settings)
    runner = EmbeddedRunner(runtime)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield runtime
    finally:
        stop.set()
        thread.join(WAIT)
        runtime.close()
    assert not thread.is_alive()


def assert_processed_once(runtime: Runtime, inbox: Path, name: str) -> None:
    """Exactly one job, done; the file archived once; nothing rejected or left over."""
    wait_until(lambda: any(j.status == JobStatus.DONE for j in jobs(runtime)),
               f"{name} to be processed")
    wait_until(lambda: entries(inbox, "_processing") == [], "the claim to be archived")
    found = jobs(runtime)
    assert [(j.source, j.status, j.reason) for j in found] == [
        (f"_processing/ACME/{name}", JobStatus.DONE, None)]
    assert entries(inbox, "_rejected") == [] and entries(inbox, "_quarantine") == []
    assert entries(inbox, "_processed") == [f"ACME/{name}"]


# --- a Python writer pausing 75 s with the file open -------------------------------------

PAUSING_WRITER = textwrap.dedent("""
    import os, sys, time
    path, pause = sys.argv[1], float(sys.argv[2])
    data = sys.stdin.buffer.read()
    with open(path, "wb", buffering=0) as handle:
        handle.write(data[: len(data) // 2])
        time.sleep(pause)  # a slow link: nothing for a while, the file still open
        try:  # has the watcher moved it away meanwhile?
            mine = os.path.samestat(os.stat(path), os.fstat(handle.fileno()))
        except FileNotFoundError:
            mine = False
        print("still there" if mine else "claimed early", flush=True)
        handle.write(data[len(data) // 2:])
""")


@pytest.mark.slow  # ~80 s: the pause must outlast the 60 s a timer would have waited
def test_writer_pausing_75_s_with_the_file_open_is_processed_once_complete(tmp_path: Path):
    settings, key = make_home(tmp_path)  # the defaults: settle 0.5 s, open hold 60 s
    inbox = Path(settings.resolved_inbox)
    with watcher(settings) as runtime:
        request = WireDevice(runtime.keyring, "HW-SLOW").activation(license_key=key)
        writer = subprocess.run(
            [sys.executable, "-c", PAUSING_WRITER, str(inbox / "ACME" / "slow.req"), "75"],
            input=request, capture_output=True, timeout=WAIT + 75)
        assert writer.returncode == 0, writer.stderr
        assert writer.stdout.decode().strip() == "still there"
        assert_processed_once(runtime, inbox, "slow.req")


# --- rsync --inplace over a slow link ------------------------------------------------------


def test_rsync_inplace_of_a_600_kb_archive_is_imported_once_never_parsed_early(
        tmp_path: Path, caplog: pytest.LogCaptureFixture):
    rsync = need_tool("rsync")
    # A timer alone would take the file at rsync's first pause longer than 0.2 s.
    settings, key = make_home(tmp_path, settle_seconds=0.05, scan_interval_seconds=0.5,
                              open_hold_seconds=0.2)
    inbox = Path(settings.resolved_inbox)
    with watcher(settings) as runtime:
        buffer, members = io.BytesIO(), 0
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            while buffer.tell() < 600 * 1024:
                archive.writestr(f"fleet/hw{members:04d}.req", WireDevice(
                    runtime.keyring, f"HW-{members}").activation(license_key=key))
                members += 1
        source = tmp_path / "fleet.zip"
        source.write_bytes(buffer.getvalue())
        with caplog.at_level(logging.DEBUG, logger=SETTLE_LOGGER):
            copy = subprocess.run([rsync, "--inplace", "--bwlimit=100", str(source),
                                   str(inbox / "ACME" / "fleet.zip")],
                                  capture_output=True, text=True, timeout=WAIT)
            assert copy.returncode == 0, copy.stderr  # nothing moved it away mid-transfer
            wait_until(lambda: entries(inbox, "_processed") == ["ACME/fleet.zip"],
                       "the archive to be imported")
        assert open_for_writing_logged(caplog, "fleet.zip") >= 1  # seen mid-transfer

        def batches() -> list[tuple[str, str, int | None]]:
            with Session(runtime.engine) as session:
                return [(b.source, b.status, b.total) for b in session.exec(select(Batch))]

        # The archive is moved, then its batch marked reported (`finish_batch`)
        wait_until(lambda: [b[1] for b in batches()] == [BatchStatus.REPORTED],
                   "the batch to be reported")
        assert batches() == [("_processing/ACME/fleet.zip", BatchStatus.REPORTED, members)]
        found = jobs(runtime)
        assert len(found) == members
        assert {j.status for j in found} == {JobStatus.DONE}
        assert entries(inbox, "_rejected") == [] and entries(inbox, "_quarantine") == []


# --- a writer running as another user --------------------------------------------------------


@pytest.fixture
def other_user() -> Iterator[pwd.struct_passwd]:
    """A throwaway unprivileged user, removed afterwards (needs root and useradd)."""
    if os.geteuid() != 0:
        service_unavailable("root", PermissionError("running a writer as another user "
                                                    "needs root"))
    useradd, userdel = need_tool("useradd"), need_tool("userdel")
    need_tool("setpriv")
    name = f"aw{uuid.uuid4().hex[:8]}"
    subprocess.run([useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    name], check=True, capture_output=True, timeout=60)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run([userdel, name], capture_output=True, timeout=60)


def as_user(user: pwd.struct_passwd, *argv: str) -> list[str]:
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
            "--", *argv]


def test_another_users_open_file_is_waited_for_by_a_root_watcher(
        shared_dir: Path, other_user: pwd.struct_passwd, caplog: pytest.LogCaptureFixture):
    settings, key = make_home(shared_dir, settle_seconds=0.05, scan_interval_seconds=0.5,
                              open_hold_seconds=0.2)
    inbox = Path(settings.resolved_inbox)
    staging = shared_dir / "staging"
    staging.mkdir(mode=0o755)
    with watcher(settings) as runtime, caplog.at_level(logging.DEBUG, logger=SETTLE_LOGGER):
        request = WireDevice(runtime.keyring, "HW-OTHER").activation(license_key=key)
        for part, data in (("head", request[:400]), ("tail", request[400:])):
            (staging / part).write_bytes(data)
            (staging / part).chmod(0o644)
        target = inbox / "ACME" / "other.req"
        script = 'exec 3>"$1" && cat "$2" >&3 && echo half && read go && cat "$3" >&3'
        writer = subprocess.Popen(
            as_user(other_user, "sh", "-c", script, "sh", str(target), str(staging / "head"),
                    str(staging / "tail")),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert writer.stdout is not None and writer.stdout.readline() == "half\n"
            assert target.stat().st_uid == other_user.pw_uid
            # The watcher looks at it, finds it open, and looks again a second later.
            wait_until(lambda: open_for_writing_logged(caplog, "other.req") >= 2
                       or not still_there(inbox, "other.req"),
                       "the watcher to find the file open twice")
            assert still_there(inbox, "other.req") and jobs(runtime) == []
        finally:
            writer.communicate("go\n", timeout=WAIT)
        assert writer.returncode == 0
        assert_processed_once(runtime, inbox, "other.req")


def _interpreter_for(user: pwd.struct_passwd) -> str:
    """A Python the unprivileged `user` can run (this one may sit in a private folder)."""
    for candidate in (sys.executable, shutil.which("python3"), "/usr/bin/python3"):
        if candidate and subprocess.run(as_user(user, candidate, "-c", "pass"),
                                        capture_output=True, timeout=60).returncode == 0:
            return candidate
    service_unavailable("python3 for an unprivileged user",
                        FileNotFoundError("no interpreter it may run"))
    raise AssertionError("unreachable")


def test_an_unprivileged_watcher_can_tell_for_its_own_files_only(
        shared_dir: Path, other_user: pwd.struct_passwd):
    """Without CAP_LEASE the kernel answers only for files the watcher owns: for one of
    another user it cannot tell (None), and the settle rule's open hold decides."""
    python = _interpreter_for(other_user)
    folder = shared_dir / "drop"
    folder.mkdir()
    folder.chmod(0o777)
    probe = textwrap.dedent(f"""
        import runpy, sys
        check = runpy.run_path({writers.__file__!r})["open_for_writing"]
        print(*(check(path) for path in sys.argv[1:]))
    """)
    theirs = folder / "theirs.req"
    subprocess.run(as_user(other_user, "sh", "-c", 'echo x > "$1"', "sh", str(theirs)),
                   check=True, timeout=60)
    ours = folder / "ours.req"  # root's, root writing
    with open(theirs, "ab") as _writing_theirs, open(ours, "wb") as _writing_ours:
        held = subprocess.run(as_user(other_user, python, "-c", probe, str(theirs), str(ours)),
                              capture_output=True, text=True, timeout=60)
    closed = subprocess.run(as_user(other_user, python, "-c", probe, str(theirs), str(ours)),
                            capture_output=True, text=True, timeout=60)
    assert (held.stdout.split(), closed.stdout.split()) == (
        ["True", "None"], ["False", "None"]), held.stderr + closed.stderr


def test_a_root_watcher_tells_for_every_writer(shared_dir: Path):
    path = shared_dir / "x.req"
    path.write_bytes(b"x")
    assert writers.open_for_writing(str(path)) is False
    with open(path, "ab"):
        assert writers.open_for_writing(str(path)) is True
    with open(path, "rb"):  # readers do not count
        assert writers.open_for_writing(str(path)) is False
    os.mkfifo(shared_dir / "fifo")
    assert writers.open_for_writing(str(shared_dir / "fifo")) is None  # not opened, blocking
    assert writers.open_for_writing(str(shared_dir / "gone.req")) is None
