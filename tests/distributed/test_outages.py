"""Outages ridden out while running: the database or the broker goes away and comes
back, and the files dropped meanwhile are done soon after, with no process restarted.

Real services the test starts itself: a PostgreSQL cluster of its own under a real
``airlock run``; a broker of the test's own (Redis, or a RabbitMQ node) restarted
under real ``airlock watch`` and ``airlock worker`` processes. The log says once that
the dependency went away and once that it is back, with no traceback per attempt.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from models.db import make_engine
from models.migrate import upgrade
from models.tables import JOB
from pipelines.keyring import VendorKeyring, init_keyring
from tests.distributed.cluster import ROOT, PostgresCluster, airlock_env, cli_command, wait_for
from tests.distributed.conftest import Deployment
from tests.factories import WireDevice, add_license, vendor

BACK_WITHIN = 60.0  # seconds after the service is back: the acceptance bound
WAIT = 60.0  # liveness bound for everything else


class Process:
    """A CLI subprocess in its own process group, its output in a log file."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def drop(inbox: Path, ring: VendorKeyring, key: str, names: range) -> None:
    """Activation requests arriving in ACME's inbox as finished files."""
    folder = inbox / "ACME"
    folder.mkdir(parents=True, exist_ok=True)
    for i in names:
        data = WireDevice(ring, f"HW-{i}").activation(license_key=key)
        staging = folder / f"a{i}.req.part"
        staging.write_bytes(data)
        staging.rename(folder / f"a{i}.req")


def names_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def licenses(outbox: Path) -> int:
    return len(list((outbox / "ACME").glob("*.lic"))) if (outbox / "ACME").exists() else 0


def job_statuses(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(str(s) for s in conn.execute(select(JOB.c.status)).scalars())


def assert_one_line_each_way(log: str, dependency: str, *, swept: bool = False) -> None:
    """One line when `dependency` went away, one when it was back, no tracebacks.
    `swept`: the sweep may have published every waiting file before the source's own
    next try (the worker then archived them, so the source had nothing left to hand
    over and no success to report): the line for "back" may then be missing."""
    down = [line for line in log.splitlines() if f"{dependency} unreachable:" in line]
    back = [line for line in log.splitlines() if f"{dependency} reachable again after" in line]
    assert len(down) == 1 and down[0].rstrip().endswith("; retrying"), log[-4000:]
    assert len(back) == 1 or (swept and not back and "published again" in log), log[-4000:]
    assert "Traceback" not in log, log[-4000:]


@pytest.fixture
def postgres() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster().init()
    try:
        yield cluster
    finally:
        cluster.close()


def test_airlock_run_rides_out_a_postgresql_restart(tmp_path: Path,
                                                    postgres: PostgresCluster) -> None:
    url = postgres.create_database("airlock")
    home = tmp_path / "var"
    upgrade(url)
    ring, _ = init_keyring(home / "keys")
    engine = make_engine(url)
    vendor(engine)
    key = add_license(engine, max_activations=20)
    inbox, outbox = home / "inbox", home / "outbox"
    run = Process([sys.executable, "-m", "cli", "run", "--log-level", "DEBUG"],
                  airlock_env(home=home, database_url=url, settle_seconds=0.05,
                              scan_interval_seconds=0.1), tmp_path / "run.log")
    try:
        drop(inbox, ring, key, range(2))
        wait_for(lambda: licenses(outbox) == 2, timeout=WAIT, what="the first two files")

        postgres.stop()
        drop(inbox, ring, key, range(2, 5))
        wait_for(lambda: run.log().count("database still unreachable") >= 2, timeout=WAIT,
                 what="the runner to try again while the database is gone")
        assert names_in(inbox / "_processed") == ["a0.req", "a1.req"]

        postgres.start()
        wait_for(lambda: names_in(inbox / "_processed") == [f"a{i}.req" for i in range(5)]
                 and licenses(outbox) == 5, timeout=BACK_WITHIN,
                 what="the files dropped during the outage")
        assert run.alive()  # the same process, never restarted
        assert names_in(inbox / "_processing") == []
        assert job_statuses(engine) == ["done"] * 5
        assert_one_line_each_way(run.log(), "database")
    finally:
        run.stop()
        engine.dispose()


@pytest.mark.restarts_broker
def test_watch_and_worker_ride_out_a_broker_restart(deployment: Deployment) -> None:
    dep = deployment
    key = add_license(dep.engine, max_activations=20)
    inbox, outbox = dep.root / "inbox", dep.root / "outbox"
    worker = dep.worker()
    watch = Process(cli_command("watch", "--log-level", "DEBUG"), dep.env(),
                    dep.root / "watch.log")
    try:
        drop(inbox, dep.keyring, key, range(2))
        wait_for(lambda: licenses(outbox) == 2, timeout=WAIT, what="the first two files")

        dep.broker.stop()
        drop(inbox, dep.keyring, key, range(2, 5))
        wait_for(lambda: watch.log().count("broker still unreachable") >= 2, timeout=WAIT,
                 what="the watcher to try again while the broker is gone")

        dep.broker.start()
        wait_for(lambda: names_in(inbox / "_processed") == [f"a{i}.req" for i in range(5)]
                 and licenses(outbox) == 5, timeout=BACK_WITHIN,
                 what="the files dropped during the outage")
        assert watch.alive() and worker.proc is not None and worker.proc.poll() is None
        assert job_statuses(dep.engine) == ["done"] * 5
        log = watch.log()
        assert_one_line_each_way(log, "broker", swept=True)
        # Queued once the broker was back, never during the outage (the first file
        # through may be logged just before the line saying the broker is back). A file
        # may instead be published by the sweep (its row owed, its queue empty) before
        # the watcher's next try: then there is no "queued" line for it.
        last_refusal = log.rindex("broker still unreachable")
        queued = [log.find(f"a{i}.req -> job") for i in range(2, 5)]
        assert all(at == -1 or at > last_refusal for at in queued)
        assert any(at != -1 for at in queued) or "published again" in log
    finally:
        watch.stop()


@pytest.mark.restarts_broker
def test_a_refused_publish_raises_and_is_not_logged_as_queued(
        deployment: Deployment, caplog: pytest.LogCaptureFixture) -> None:
    from pipelines.layout import make_arrival
    from pipelines.outage import Dependency, Unreachable
    from workers.broker import queue_depths
    from workers.dispatch import Watcher

    dep = deployment
    key = add_license(dep.engine)
    watcher = Watcher(dep.runtime, dep.app, repeat_after=300)
    arrival = make_arrival("ACME/a.req", WireDevice(dep.keyring, "HW").activation(
        license_key=key))
    dep.broker.stop()
    with caplog.at_level("INFO", logger="airlock.dispatch"), \
            pytest.raises(Unreachable) as refused:
        watcher.on_batch([arrival])
    assert refused.value.dependency is Dependency.BROKER
    assert "queued" not in caplog.text
    dep.broker.start()
    with caplog.at_level("INFO", logger="airlock.dispatch"):
        assert watcher.on_batch([arrival]) == []  # the retry publishes it after all
    assert "ACME/a.req -> job 1 queued" in caplog.text
    assert queue_depths(dep.app)["interactive"] == 1
