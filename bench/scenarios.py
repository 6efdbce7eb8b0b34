"""The benchmark scenarios. Each returns a dict of figures; nothing here asserts speed."""

from __future__ import annotations

import functools
import os
import shutil
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, inspect, text
from sqlmodel import SQLModel

from bench.files import clean_context
from bench.fleet import (
    CUSTOMER,
    BenchDevice,
    activation_files,
    active_fleet,
    create_catalogue,
    deactivation_file,
    deactivation_files,
)
from bench.procs import spawn, tree_cpu_seconds, wait_for_log
from models.db import make_engine
from models.migrate import upgrade
from models.types import utcnow
from pipelines.keyring import VendorKeyring, init_keyring, load_keyring
from pipelines.ledger import Submission
from pipelines.process import Processor, process_many


class RefusedDatabase(Exception):
    """The database given holds data: the benchmark never runs against it."""


class Fleets:
    """The vendor keyring and the deactivation files of one benchmark run, made once:
    sealing and signing 20,000 files takes seconds that every scenario would spend
    again. Each scenario's workspace gets a copy of the keyring, and its own database
    the devices' rows."""

    def __init__(self, keys_dir: Path) -> None:
        init_keyring(keys_dir)
        self.keys_dir = keys_dir
        self._made: dict[int, tuple[list[BenchDevice], list[bytes]]] = {}

    def deactivations(self, ws: Workspace, files: int) -> list[bytes]:
        """`files` active devices in `ws`'s database and their deactivation files (each
        file once per scenario: every scenario has its own database)."""
        now = utcnow()
        made = self._made.get(files)
        if made is not None:
            active_fleet(ws.engine, files, now=now, like=made[0])
            return made[1]
        fleet = active_fleet(ws.engine, files, now=now)
        blobs = list(deactivation_files(fleet, ws.keyring.public_bundle(), now=now))
        self._made[files] = (fleet, blobs)
        return blobs


@dataclass
class Workspace:
    """A scenario's own home folder and database, removed again afterwards."""

    home: Path
    database_url: str
    engine: Engine
    keyring: VendorKeyring
    fleets: Fleets

    @property
    def env(self) -> dict[str, str]:
        return {"AIRLOCK_HOME": str(self.home), "AIRLOCK_DATABASE_URL": self.database_url,
                "AIRLOCK_BROKER_URL": ""}

    def inbox(self, area: str = CUSTOMER) -> Path:
        return self.home / "inbox" / area

    def outbox(self, area: str = CUSTOMER) -> Path:
        return self.home / "outbox" / area

    def close(self) -> None:
        if not self.database_url.startswith("sqlite"):
            drop_all(self.engine)
        self.engine.dispose()


def open_workspace(root: Path, name: str, database_url: str | None,
                   fleets: Fleets | None = None) -> Workspace:
    home = root / name
    home.mkdir(parents=True)
    url = database_url or f"sqlite:///{home / 'airlock.db'}"
    engine = make_engine(url)
    refuse_if_in_use(engine)
    upgrade(url)
    fleets = fleets or Fleets(root / f"{name}-keys")
    shutil.copytree(fleets.keys_dir, home / "keys")  # modes kept: the keys stay 0600
    ring = load_keyring(home / "keys")
    for folder in ("inbox", "outbox"):
        (home / folder).mkdir()
    return Workspace(home, url, engine, ring, fleets)


def refuse_if_in_use(engine: Engine) -> None:
    tables = set(inspect(engine).get_table_names())
    if not tables:
        return
    with engine.connect() as conn:
        used = "customer" in tables and conn.execute(
            text("SELECT count(*) FROM customer")).scalar_one() > 0
    if used or "alembic_version" in tables and "customer" not in tables:
        raise RefusedDatabase("the database already holds Airlock data; the benchmark only "
                              "runs against an empty database")
    drop_all(engine)


def drop_all(engine: Engine) -> None:
    import models  # noqa: F401

    SQLModel.metadata.drop_all(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))


def _more_than(folder: Path, before: int) -> bool:
    return _count(folder) > before


def _count(folder: Path) -> int:
    # Called while the pipeline runs: poll it seldom (a second), since listing 20,000
    # files takes CPU from what is being measured; the end time comes from mtimes.
    try:
        return sum(1 for entry in os.scandir(folder) if entry.is_file())
    except FileNotFoundError:
        return 0


def _wait_until(predicate: Callable[[], bool], timeout: float, poll: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return predicate()


def _write(path: Path, data: bytes) -> float:
    """Write like an SFTP server does; return the moment the file was closed."""
    with open(path, "wb") as handle:
        handle.write(data)
    return time.time()


# --- 1. embedded drop-folder throughput -------------------------------------------------


def deactivation_fleet(ws: Workspace, files: int) -> tuple[list[bytes], float]:
    """`files` active devices in the workspace's database and their deactivation files;
    also the seconds this setup took."""
    began = time.perf_counter()
    blobs = ws.fleets.deactivations(ws, files)
    return blobs, time.perf_counter() - began


def embedded(ws: Workspace, files: int, timeout: float, processes: int = 1) -> dict[str, Any]:
    blobs, setup = deactivation_fleet(ws, files)
    runner = spawn("run", ["cli", "run", "--processes", str(processes)], ws.env,
                   ws.home / "logs")
    try:
        wait_for_log(runner, "watching", times=processes)  # every runner is ready
        cpu_before = tree_cpu_seconds(runner.proc.pid)
        inbox = ws.inbox()
        inbox.mkdir(exist_ok=True)
        first = time.time()
        for i, blob in enumerate(blobs):
            _write(inbox / f"d{i:07d}.req", blob)
        dropped = time.time()
        done = _wait_until(lambda: _count(ws.outbox()) >= files, timeout, poll=1.0)
        cpu = tree_cpu_seconds(runner.proc.pid) - cpu_before
    finally:
        rss = runner.stop()
    return _drained(ws, files, processes, done, first, rss, cpu,
                    drop_seconds=round(dropped - first, 3), setup_seconds=round(setup, 1))


def _drained(ws: Workspace, files: int, processes: int, done: bool, first: float, rss: int,
             cpu: float, **extra: Any) -> dict[str, Any]:
    """The figures of a run that processed `files` from `first` to the last result,
    using `cpu` seconds of the runner processes' CPU (up to a second after the last)."""
    last = max((e.stat().st_mtime for e in os.scandir(ws.outbox())), default=first)
    processed = _count(ws.home / "inbox" / "_processed" / CUSTOMER)
    seconds = max(last - first, 1e-9)
    return {"files": files, "processes": processes, "completed": done, "processed": processed,
            "seconds": round(seconds, 3), "files_per_s": round(files / seconds, 1),
            "cpu_ms_per_file": round(1000 * cpu / files, 3),
            "cpu_share": round(cpu / (seconds * (os.cpu_count() or 1)), 2), **extra,
            "peak_rss_mib": {"runner": rss}}


def backlog(ws: Workspace, files: int, timeout: float, processes: int = 1) -> dict[str, Any]:
    """N files already waiting when `airlock run` starts (a watcher restarted after an
    outage): files/s from the runner's start to the last result."""
    blobs, setup = deactivation_fleet(ws, files)
    inbox = ws.inbox()
    inbox.mkdir(exist_ok=True)
    for i, blob in enumerate(blobs):
        _write(inbox / f"d{i:07d}.req", blob)
    first = time.time()
    runner = spawn("run", ["cli", "run", "--processes", str(processes)], ws.env,
                   ws.home / "logs")
    try:
        wait_for_log(runner, "watching")
        started = time.time() - first
        done = _wait_until(lambda: _count(ws.outbox()) >= files, timeout, poll=1.0)
        cpu = tree_cpu_seconds(runner.proc.pid)  # the start-up's imports included
    finally:
        rss = runner.stop()
    return _drained(ws, files, processes, done, first, rss, cpu,
                    start_seconds=round(started, 2),
                    setup_seconds=round(setup, 1))


# --- 4. latency: one file at a time into a watched folder ----------------------------------


def latency(ws: Workspace, samples: int, gap: float = 0.02,
            timeout: float = 30.0) -> dict[str, Any]:
    now = utcnow()
    fleet = active_fleet(ws.engine, samples, now=now)
    bundle = ws.keyring.public_bundle()
    ws.inbox().mkdir(exist_ok=True)
    runner = spawn("run", ["cli", "run"], ws.env, ws.home / "logs")
    delays: list[float] = []
    try:
        # The area exists before the runner starts: a steady state, not a new customer
        # (whose first file waits for the full scan that finds its folder).
        wait_for_log(runner, "watching")
        for i, device in enumerate(fleet):
            blob = deactivation_file(device, bundle, now=now)
            before = _count(ws.outbox())
            closed = _write(ws.inbox() / f"l{i:05d}.req", blob)
            if not _wait_until(functools.partial(_more_than, ws.outbox(), before), timeout,
                               poll=0.001):
                raise TimeoutError("a single file was not answered in time")
            delays.append(time.time() - closed)
            time.sleep(gap)
    finally:
        rss = runner.stop()
    ms = sorted(d * 1000 for d in delays)
    return {"samples": len(ms), "p50_ms": round(percentile(ms, 50), 1),
            "p95_ms": round(percentile(ms, 95), 1), "p99_ms": round(percentile(ms, 99), 1),
            "max_ms": round(ms[-1], 1), "mean_ms": round(statistics.fmean(ms), 1),
            "peak_rss_mib": {"runner": rss}}


def percentile(sorted_values: list[float], pct: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


# --- 5. activation mix through the core, SQLite and PostgreSQL ----------------------------


def activation(ws: Workspace, files: int, processes: int = 1,
               chunk: int = 200) -> dict[str, Any]:
    """Key-based activations straight through the core (`process_many`, `chunk` files a
    call) in `processes` processes, each on its own contiguous share of the files."""
    now = utcnow()
    keys = create_catalogue(ws.engine, -(-files // 50), now=now)
    bundle = ws.keyring.public_bundle()
    blobs = activation_files(keys, files, bundle, now=now)
    share = -(-files // processes)
    parts = [blobs[start:start + share] for start in range(0, files, share)]
    run = partial(_activate, ws.database_url, str(ws.home / "keys"), chunk)
    with ProcessPoolExecutor(max_workers=len(parts), mp_context=clean_context()) as pool:
        results = list(pool.map(run, parts))
    seconds = max(end for _, _, end in results) - min(start for _, start, _ in results)
    backend = "postgresql" if ws.database_url.startswith("postgresql") else "sqlite"
    return {"files": files, "processes": len(parts),
            "accepted": sum(accepted for accepted, _, _ in results), "backend": backend,
            "seconds": round(seconds, 3), "files_per_s": round(files / seconds, 1)}


def _activate(database_url: str, keys_dir: str, chunk: int,
              blobs: list[bytes]) -> tuple[int, float, float]:
    """One process's share: (accepted, start, end), timed after its start-up."""
    engine = make_engine(database_url)
    processor = Processor(keyring=load_keyring(Path(keys_dir)))
    accepted = 0
    start = time.time()
    for first in range(0, len(blobs), chunk):
        outcomes = process_many([Submission(CUSTOMER, b) for b in blobs[first:first + chunk]],
                                engine=engine, processor=processor)
        accepted += sum(o.accepted for o in outcomes)
    end = time.time()
    engine.dispose()
    return accepted, start, end
