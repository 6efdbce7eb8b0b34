"""Smoke test of `airlock bench` at a small N: every scenario runs and reports figures.

No speed is asserted here; the figures are for people (see README, Performance)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.runner import run_bench
from bench.scenarios import RefusedDatabase, open_workspace
from tests.conftest import REDIS_URL


def test_every_scenario_reports_its_figures(tmp_path: Path, fresh_pg_url: str,
                                            redis_url: str) -> None:
    bench_redis = REDIS_URL.rsplit("/", 1)[0] + "/14"  # the smoke test's own database
    report = run_bench(files=30, workers=2,
                       chosen=["baseline", "embedded", "backlog", "latency", "activation",
                               "activation-postgres", "distributed", "bulk", "portal"],
                       database_url=None, postgres_url=fresh_pg_url, redis_url=bench_redis,
                       json_path=tmp_path / "out.json", timeout=180)
    figures = report["scenarios"]
    assert json.loads((tmp_path / "out.json").read_text())["files"] == 30
    assert figures["baseline"]["files"] == 30 and figures["baseline"]["files_per_s"] > 0
    assert figures["embedded"]["completed"] and figures["embedded"]["processed"] == 30
    assert figures["embedded"]["files_per_s"] > 0 and figures["embedded"]["processes"] == 2
    base = figures["baseline"]["files_per_s"]
    # at 30 files the ratio can round to 0.00 (the backlog's includes the start-up)
    assert figures["embedded"]["to_baseline"] == round(figures["embedded"]["files_per_s"] / base, 2)
    assert figures["backlog"]["completed"] and figures["backlog"]["processed"] == 30
    assert figures["backlog"]["files_per_s"] > 0
    assert figures["backlog"]["to_baseline"] == round(figures["backlog"]["files_per_s"] / base, 2)
    assert figures["latency"]["samples"] == 30
    assert figures["latency"]["p50_ms"] <= figures["latency"]["p99_ms"]
    assert figures["activation"]["accepted"] == 30 and figures["activation"]["processes"] == 2
    assert figures["activation-postgres"]["backend"] == "postgresql"
    assert figures["activation-postgres"]["accepted"] == 30
    assert figures["distributed"]["completed"]
    assert figures["distributed"]["celery_noop_tasks_per_s"] > 0
    # CPU is counted in clock ticks (10 ms): at 30 files the watcher's share may round
    # to none, the worker's (its pool applying, its consumer polling) hardly
    cpu = figures["distributed"]["cpu_ms_per_file"]
    assert set(cpu) == {"watch", "worker"} and min(cpu.values()) >= 0 < sum(cpu.values())
    assert figures["bulk"]["results"] == 30 and figures["bulk"]["report"]
    assert all(v > 0 for v in figures["bulk"]["peak_rss_mib"].values())
    assert set(figures["bulk"]["cpu_ms_per_file"]) == {"importer", "worker"}
    assert figures["bulk"]["cpu_ms_per_file"]["importer"] > 0  # its start-up, at least
    levels = figures["portal"]["by_clients"]
    assert set(levels) == {"1", "4", "8"}
    assert all(level["uploads"] == 30 and level["not_accepted"] == 0 for level in levels.values())
    assert all(0 < level["p50_ms"] <= level["p99_ms"] for level in levels.values())


def test_refuses_a_database_that_holds_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'prod.db'}"
    ws = open_workspace(tmp_path, "first", url)
    from models.db import session_scope
    from pipelines import catalog

    with session_scope(ws.engine) as session:
        catalog.add_customer(session=session, code="REAL", name="A real customer")
    ws.engine.dispose()
    with pytest.raises(RefusedDatabase):
        open_workspace(tmp_path, "second", url)


def test_the_files_of_a_run_are_made_once_and_hold_in_every_scenario(tmp_path: Path) -> None:
    from sqlmodel import select

    from bench.scenarios import Fleets
    from models import Device, DeviceStatus
    from models.db import session_scope
    from pipelines.ledger import Submission
    from pipelines.process import Processor, process_many

    fleets = Fleets(tmp_path / "keys")
    first = open_workspace(tmp_path, "first", None, fleets)
    second = open_workspace(tmp_path, "second", None, fleets)
    blobs = fleets.deactivations(first, 5)
    assert fleets.deactivations(second, 5) is blobs  # the same files, not made again
    assert (second.home / "keys").stat().st_mode & 0o077 == 0
    for ws in (first, second):  # each database has the devices: every file applies
        outcomes = process_many([Submission(tenant="BENCH", data=b) for b in blobs],
                                engine=ws.engine, processor=Processor(keyring=ws.keyring))
        assert [o.status for o in outcomes] == ["done"] * 5
        with session_scope(ws.engine) as session:
            statuses = session.exec(select(Device.status)).all()
        assert statuses == [DeviceStatus.DEACTIVATED] * 5
        ws.close()
