"""Real processes for distributed tests: a private Redis server, a throwaway PostgreSQL
cluster and Celery workers.

Every test gets its own Redis server on a free port (so stopping or restarting it
touches nobody else), its own database and its own inbox/outbox folders. Workers
are started in their own process group so a test can SIGKILL a worker with all its
pool processes, and they receive their settings only through ``AIRLOCK_*`` variables.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import service_unavailable

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], *, timeout: float, what: str,
             interval: float = 0.2) -> Any:
    """Poll until `predicate()` is truthy; fail the test with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}", pytrace=False)
        time.sleep(interval)


class RedisServer:
    """A private ``redis-server`` with an append-only file, restartable on the same port."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            service_unavailable("redis-server", FileNotFoundError("not on PATH"))
        log = (self.folder / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.folder), "--appendonly", "yes", "--appendfsync", "always",
             "--save", "", "--protected-mode", "no"],
            stdout=log, stderr=subprocess.STDOUT)
        wait_for(self.ping, timeout=20, what=f"redis-server on port {self.port}")

    def ping(self) -> bool:
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.exceptions.ConnectionError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        """Shut down cleanly (the append-only file keeps every queued message)."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def queue_lengths(self, db: int = 0) -> dict[str, int]:
        import redis

        client = redis.Redis(port=self.port, db=db)
        try:
            return {q: int(client.llen(q)) for q in ("interactive", "bulk")} | {
                "unacked": int(client.hlen("unacked"))}
        finally:
            client.close()


def postgres_binary(name: str) -> str | None:
    """A PostgreSQL server program: on PATH, or where Debian installs it."""
    found = shutil.which(name)
    if found is not None:
        return found
    installed = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return installed[-1] if installed else None


class PostgresCluster:
    """A PostgreSQL cluster of the test's own (``initdb`` + ``pg_ctl``) on a free port,
    which the test stops and starts again; trust authentication on loopback only.

    The folder is made outside pytest's tmp folder: the server runs as ``postgres``
    (it refuses root), which must be able to reach it.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="airlock-pg-"))
        self.data = self.folder / "data"
        self.running = False

    def _run(self, *argv: str) -> None:
        if os.geteuid() == 0:  # the server refuses to run as root
            argv = ("runuser", "-u", "postgres", "--", *argv)
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{result.stdout}{result.stderr}")

    def _binary(self, name: str) -> str:
        binary = postgres_binary(name)
        if binary is None:
            service_unavailable(f"PostgreSQL server ({name})", FileNotFoundError(
                "not on PATH nor in /usr/lib/postgresql/*/bin"))
        assert binary is not None
        return binary

    def init(self) -> PostgresCluster:
        initdb = self._binary("initdb")
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run(initdb, "-A", "trust", "-U", "postgres", "-D", str(self.data))
        self.start()
        return self

    def start(self) -> None:
        self._run(self._binary("pg_ctl"), "-D", str(self.data), "-l",
                  str(self.folder / "server.log"), "-w", "-o",
                  f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1", "start")
        self.running = True

    def stop(self) -> None:
        """A fast shutdown: open connections are cut, as when a server goes away."""
        self._run(self._binary("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        self.running = False

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """An empty database; its URL."""
        from sqlalchemy import create_engine, text

        admin = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
        return self.url(name)

    def close(self) -> None:
        if self.running:
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def airlock_env(**settings: Any) -> dict[str, str]:
    """The process environment with ``AIRLOCK_<NAME>`` for each setting given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRLOCK_", "FAULTS_"))}
    env.update({f"AIRLOCK_{k.upper()}": str(v) for k, v in settings.items() if v is not None})
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Worker:
    """A Celery worker subprocess in its own process group."""

    env: dict[str, str]
    log_path: Path
    name: str = "w1"
    concurrency: int = 1
    pool: str = "prefork"
    queues: str = "interactive,bulk"
    include: str | None = "tests.distributed.faults"
    faults: dict[str, str] = field(default_factory=dict)
    command: list[str] | None = None  # default: the celery command line
    proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        if self.command is not None:
            return self.command
        argv = [sys.executable, "-m", "celery", "-A", "workers.celery_app:app", "worker",
                f"--hostname={self.name}@%h", f"--concurrency={self.concurrency}",
                f"--pool={self.pool}", f"--queues={self.queues}", "--loglevel=INFO",
                "--without-gossip", "--without-mingle", "--without-heartbeat"]
        if self.include:
            argv.append(f"--include={self.include}")
        return argv

    def start(self, *, wait_ready: bool = True) -> Worker:
        env = dict(self.env) | self.faults
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.argv(), env=env, cwd=ROOT, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        if wait_ready:
            wait_for(lambda: "ready." in self.log_since_start() or self._exited(),
                     timeout=60, what=f"worker {self.name} to start")
            if self._exited():
                pytest.fail(f"worker {self.name} exited:\n{self.log()[-4000:]}")
        return self

    def _exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_since_start(self) -> str:
        return self.log()[getattr(self, "_offset", 0):]

    def kill(self) -> None:
        """SIGKILL the whole process group: the main process and every pool process."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self.proc = None

    def stop(self, timeout: float = 20) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL the group if it does not exit in time."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self.proc = None


def write_like_an_upload(path: os.PathLike[str], data: bytes) -> None:
    """Write under a temporary name, then rename (as SFTP and mail integrations do)."""
    target = os.fspath(path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target + ".part", "wb") as handle:
        handle.write(data)
    os.rename(target + ".part", target)


def cli_command(*args: str) -> list[str]:
    """The ``airlock`` command line (with this module's commands registered) as argv."""
    return [sys.executable, "-m", "tests.distributed.cli_entry", *args]
