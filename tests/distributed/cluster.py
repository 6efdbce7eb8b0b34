"""Real processes for distributed tests: a broker of the test's own (Redis or RabbitMQ),
a throwaway PostgreSQL cluster and Celery workers.

Every test gets its own broker (so stopping or restarting it touches nobody else): a
Redis server on a free port; on RabbitMQ a throwaway vhost on the shared server, or,
for a test that restarts the broker, a private ``rabbitmq-server`` node on free ports
(about 8 s to boot on this machine, so only those tests pay for one). Its own
database and its own inbox/outbox folders too. Workers
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
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest
from celery import Celery

from config.broker import BrokerKind
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


class Broker(Protocol):
    """A broker of one test's own."""

    kind: BrokerKind

    def url(self) -> str: ...

    def start(self) -> None: ...

    def stop(self) -> None:
        """Go away (a restartable broker comes back with `start`, keeping its messages)."""

    def close(self) -> None: ...


class RedisServer:
    """A private ``redis-server`` with an append-only file, restartable on the same port."""

    kind = BrokerKind.REDIS

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

    def close(self) -> None:
        self.stop()


RABBITMQ_PORT = 5672  # the shared server (SERVICES.md), user guest


def amqp_answers(url: str) -> bool:
    from kombu import Connection

    conn = Connection(url, connect_timeout=1)
    try:
        conn.ensure_connection(max_retries=1)
        return True
    except Exception:  # noqa: BLE001 - not (yet) answering
        return False
    finally:
        conn.release()


def rabbitmqctl(*args: str) -> None:
    binary = shutil.which("rabbitmqctl")
    if binary is None:
        service_unavailable("RabbitMQ (rabbitmqctl)", FileNotFoundError("not on PATH"))
    assert binary is not None
    done = subprocess.run([binary, "-q", *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        service_unavailable(f"rabbitmqctl {' '.join(args)}",
                            RuntimeError(done.stderr.strip() or done.stdout.strip()))


class RabbitVhost:
    """A throwaway vhost on the shared RabbitMQ server, deleted afterwards (which also
    closes every connection to it). It cannot be restarted: see `RabbitNode`."""

    kind = BrokerKind.RABBITMQ

    def __init__(self, folder: Path) -> None:
        self.vhost = f"airlock_test_{uuid.uuid4().hex[:10]}"
        self.created = False

    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{RABBITMQ_PORT}/{self.vhost}"

    def start(self) -> None:
        if not self.created:
            base = f"amqp://guest:guest@127.0.0.1:{RABBITMQ_PORT}//"
            if not amqp_answers(base):
                service_unavailable("RabbitMQ", ConnectionRefusedError(base))
            rabbitmqctl("add_vhost", self.vhost)
            self.created = True
            rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")

    def stop(self) -> None:
        raise NotImplementedError("a shared server is not restarted: mark the test "
                                  "restarts_broker to get a node of its own")

    def close(self) -> None:
        if self.created:
            rabbitmqctl("delete_vhost", self.vhost)
            self.created = False


def rabbitmq_server_binary() -> str | None:
    """The server script itself (Debian's /usr/sbin wrapper switches user and folder)."""
    debian = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
    return str(debian) if debian.exists() else shutil.which("rabbitmq-server")


class RabbitNode:
    """A private RabbitMQ node: its own node name, ports, database and logs under
    `folder`; restartable, keeping its durable queues and persistent messages."""

    kind = BrokerKind.RABBITMQ

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"airlock{uuid.uuid4().hex[:8]}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None
        (folder / "home").mkdir(parents=True, exist_ok=True)
        (folder / "rabbitmq.conf").write_text(f"listeners.tcp.1 = 127.0.0.1:{self.port}\n")
        (folder / "enabled_plugins").write_text("[].\n")

    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        return env | {
            "HOME": str(self.folder / "home"),  # its own Erlang cookie
            "RABBITMQ_NODENAME": self.node, "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port), "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.folder / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.folder / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(self.folder / "rabbitmq-env.conf"),  # none
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def start(self) -> None:
        binary = rabbitmq_server_binary()
        if binary is None:
            service_unavailable("rabbitmq-server", FileNotFoundError("not installed"))
        assert binary is not None
        log = (self.folder / "server.log").open("ab")
        self.proc = subprocess.Popen([binary], env=self._env(), cwd=self.folder, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: amqp_answers(self.url()) or self.proc is None
                 or self.proc.poll() is not None, timeout=90,
                 what=f"rabbitmq-server node {self.node}", interval=0.3)
        if self.proc.poll() is not None:
            tail = (self.folder / "server.log").read_text(errors="replace")[-3000:]
            pytest.fail(f"rabbitmq-server exited:\n{tail}", pytrace=False)

    def stop(self) -> None:
        """A clean shutdown (SIGTERM): open connections are cut, durable data is kept."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        except ProcessLookupError:
            pass
        self.proc = None

    def close(self) -> None:
        self.stop()


def make_broker(kind: BrokerKind, folder: Path, *, restartable: bool) -> Broker:
    """A broker of `kind` for one test; a RabbitMQ one that must restart is a node."""
    if kind is BrokerKind.REDIS:
        return RedisServer(folder)
    return RabbitNode(folder) if restartable else RabbitVhost(folder)


def take_messages(app: Celery) -> int:
    """Take every waiting message off Airlock's queues and drop it, as a worker that
    popped it and died before recording it would (kombu's Redis transport), or as a
    broker that lost it: how many were taken."""
    from workers.broker import QUEUES, broker_channel

    taken = 0
    with broker_channel(app) as channel:
        for queue in QUEUES:
            while channel.basic_get(queue=queue, no_ack=True) is not None:
                taken += 1
    return taken


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
