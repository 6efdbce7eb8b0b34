"""A throw-away deployment per test: its own broker, database, keys, inbox and outbox.

Every test that takes `deployment` runs once per broker (`broker_kind`: Redis and
RabbitMQ); a test that pins the parameter (``@pytest.mark.parametrize("broker_kind",
[BrokerKind.REDIS])``) runs on that one only. A test marked ``restarts_broker`` gets
a RabbitMQ node of its own instead of a vhost on the shared server.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import Engine
from sqlmodel import select

from config.broker import BrokerKind
from config.settings import Settings
from models import Batch, Job
from models.db import create_schema, make_engine, reading, session_scope
from pipelines.bulk import BatchResult, batch_result
from pipelines.keyring import VendorKeyring, init_keyring
from pipelines.layout import make_arrival
from pipelines.process import Processor, process
from tests.conftest import own_postgres_database
from tests.distributed.cluster import Broker, Worker, airlock_env, make_broker, wait_for
from tests.factories import WireDevice, vendor
from workers.celery_app import make_celery
from workers.dispatch import Sweeper, SweepPolicy, Watcher
from workers.runtime import Runtime, build_runtime


@dataclass
class Deployment:
    """Everything one distributed test runs against; `close` stops what it started."""

    root: Path
    broker: Broker
    database_url: str
    overrides: dict[str, Any] = field(default_factory=dict)
    workers: list[Worker] = field(default_factory=list)
    _stop_sweeping: threading.Event = field(default_factory=threading.Event)

    @property
    def values(self) -> dict[str, Any]:
        values: dict[str, Any] = {
            "home": self.root / "var", "database_url": self.database_url,
            "broker_url": self.broker.url(), "inbox": str(self.root / "inbox"),
            "outbox": str(self.root / "outbox"), "keys_dir": self.root / "keys",
            "task_time_limit": 8, "chunk_size": 4, "max_attempts": 3,
            "settle_seconds": 0.05, "scan_interval_seconds": 0.2,
        }
        values.update(self.overrides)
        return {k: v for k, v in values.items() if v is not None}  # None: the default

    @cached_property
    def settings(self) -> Settings:
        return Settings(**self.values)

    @cached_property
    def keyring(self) -> VendorKeyring:
        ring, _ = init_keyring(self.root / "keys")
        return ring

    @cached_property
    def engine(self) -> Engine:
        engine = make_engine(self.database_url)
        create_schema(engine)
        vendor(engine)
        return engine

    @cached_property
    def runtime(self) -> Runtime:
        _ = self.keyring, self.engine
        return build_runtime(self.settings)

    @cached_property
    def app(self) -> Celery:
        return make_celery(self.settings)

    @cached_property
    def watcher(self) -> Watcher:
        return Watcher(self.runtime, self.app, repeat_after=0)

    def env(self) -> dict[str, str]:
        return airlock_env(**self.values)

    def worker(self, name: str = "w1", *, concurrency: int = 1, pool: str = "prefork",
               start: bool = True, **faults: Any) -> Worker:
        _ = self.keyring, self.engine
        worker = Worker(env=self.env(), log_path=self.root / f"{name}.log", name=name,
                        concurrency=concurrency, pool=pool,
                        faults={f"FAULTS_{k.upper()}": str(v) for k, v in faults.items()})
        self.workers.append(worker)
        return worker.start() if start else worker

    def drop(self, key: str, data: bytes) -> None:
        """A file arrives in the inbox and the watcher hands it over."""
        self.runtime.inbox.put(key, data)
        self.watcher.on_batch([make_arrival(key, data)])

    def sweep_in_background(self, policy: SweepPolicy | None = None) -> None:
        """What ``airlock watch`` runs beside the source (its default policy unless
        told): publish again what the job rows say is owed."""
        sweeper = Sweeper(self.runtime, self.app, policy or SweepPolicy())
        threading.Thread(target=sweeper.run, args=(self._stop_sweeping,), daemon=True,
                         name="sweeper").start()

    def activated(self, key: str, count: int, prefix: str = "HW") -> list[WireDevice]:
        """Devices activated on license `key` directly (no outbox), ready to deactivate."""
        processor = Processor(keyring=self.keyring)
        devices = [WireDevice(self.keyring, f"{prefix}-{i}") for i in range(count)]
        for device in devices:
            outcome = process(device.activation(license_key=key), engine=self.engine,
                              tenant="ACME", processor=processor)
            assert outcome.accepted, outcome
        return devices

    def batch(self, batch_id: int | None = None) -> BatchResult:
        with session_scope(self.engine) as session:
            bid = batch_id or session.exec(select(Batch.id).order_by(Batch.id)).first()
        assert bid is not None
        return batch_result(self.engine, bid)

    def wait_reported(self, timeout: float = 120) -> BatchResult:
        def reported() -> BatchResult | None:
            batch = self.batch()
            return batch if batch.status in ("reported", "rejected") else None

        return wait_for(reported, timeout=timeout, what="the batch report")

    def jobs(self) -> list[Any]:
        """The job rows as committed (a read: never waits for a worker's transaction)."""
        with reading(self.engine) as conn:
            return list(conn.execute(select(Job.id, Job.status, Job.reason, Job.attempts,
                                            Job.batch_id, Job.source).order_by(Job.id)))

    def outbox(self, suffix: str = "") -> dict[str, bytes]:
        root = self.root / "outbox"
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
                if p.is_file() and p.name.endswith(suffix) and not p.name.startswith(".")}

    def logs(self) -> str:
        return "\n".join(f"--- {w.name} ---\n{w.log()[-6000:]}" for w in self.workers)

    def close(self) -> None:
        self._stop_sweeping.set()
        for worker in self.workers:
            worker.stop(timeout=10)
        if "runtime" in self.__dict__:
            self.runtime.close()
        if "app" in self.__dict__:
            self.app.close()
        if "engine" in self.__dict__:
            self.engine.dispose()


@pytest.fixture(params=list(BrokerKind), ids=str)
def broker_kind(request: pytest.FixtureRequest) -> BrokerKind:
    return BrokerKind(request.param)


@pytest.fixture
def broker(broker_kind: BrokerKind, tmp_path: Path,
           request: pytest.FixtureRequest) -> Iterator[Broker]:
    restarts = request.node.get_closest_marker("restarts_broker") is not None
    server = make_broker(broker_kind, tmp_path / "broker", restartable=restarts)
    server.start()
    try:
        yield server
    finally:
        server.close()


@contextmanager
def deployed(tmp_path: Path, broker: Broker, database_url: str,
             request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """A `Deployment`, closed in a finally, with the worker logs printed on failure."""
    dep = Deployment(root=tmp_path, broker=broker, database_url=database_url)
    try:
        yield dep
    finally:
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            print(dep.logs())
        dep.close()


@pytest.fixture
def deployment(tmp_path: Path, broker: Broker,
               request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """SQLite file + the test's own broker."""
    with deployed(tmp_path, broker, f"sqlite:///{tmp_path}/a.db", request) as dep:
        yield dep


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A PostgreSQL database of its own, dropped afterwards."""
    with own_postgres_database("airlock_d") as url:
        yield url


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
