"""Scenarios that need the broker: the pipeline through Celery workers, Celery's own
no-op baseline on the same broker and worker settings, and a bulk zip import."""

from __future__ import annotations

import os
import resource
import time
import zipfile
from typing import Any

from celery import Celery

from bench.fleet import CUSTOMER
from bench.procs import spawn, tree_cpu_seconds, wait_for_log, wait_rss
from bench.scenarios import Workspace, _count, _wait_until, _write, deactivation_fleet
from config.settings import Settings
from workers.broker import purge, queue_depths, unacknowledged
from workers.celery_app import NOOP, make_celery


def _broker(url: str) -> None:
    """The benchmark's own broker (a Redis database, a RabbitMQ vhost), emptied first:
    never point it at a live one."""
    app = make_celery(Settings(broker_url=url))
    try:
        purge(app)
    finally:
        app.close()


def _queues_empty(app: Celery) -> bool:
    """Nothing waiting, and (where the broker says: Redis) nothing delivered but not
    yet acknowledged; on RabbitMQ the last few tasks in the workers' hands still run."""
    return not any(queue_depths(app).values()) and not unacknowledged(app)


def distributed(ws: Workspace, files: int, workers: int, redis_url: str,
                timeout: float) -> dict[str, Any]:
    _broker(redis_url)
    env = {**ws.env, "AIRLOCK_BROKER_URL": redis_url}
    blobs, setup = deactivation_fleet(ws, files)
    worker = spawn("worker", ["cli", "worker", "--concurrency", str(workers), "--loglevel",
                              "WARNING"], env, ws.home / "logs")
    watcher = spawn("watch", ["cli", "watch"], env, ws.home / "logs")
    try:
        wait_for_log(watcher, "watching")
        _wait_until(lambda: _ping(env), 60, poll=0.5)
        ws.inbox().mkdir(exist_ok=True)
        cpu_before = {c.name: tree_cpu_seconds(c.proc.pid) for c in (watcher, worker)}
        first = time.time()
        for i, blob in enumerate(blobs):
            _write(ws.inbox() / f"d{i:07d}.req", blob)
        done = _wait_until(lambda: _count(ws.outbox()) >= files, timeout, poll=1.0)
        last = max((e.stat().st_mtime for e in os.scandir(ws.outbox())), default=first)
        pipeline_rate = files / max(last - first, 1e-9)
        cpu = {c.name: tree_cpu_seconds(c.proc.pid) - cpu_before[c.name]
               for c in (watcher, worker)}

        # Baseline: one no-op task per file, same broker, same worker, same options.
        app = make_celery(Settings(home=ws.home, broker_url=redis_url))
        try:
            start = time.time()
            with app.producer_or_acquire() as producer:  # one connection, as the watcher
                for i in range(files):
                    app.send_task(NOOP, args=[i], producer=producer)
            sent = time.time()
            _wait_until(lambda: _queues_empty(app), timeout, poll=0.05)
            noop_rate = files / max(time.time() - start, 1e-9)
        finally:
            app.close()  # a pooled broker connection left open stalls later forks
    finally:
        stopping = time.perf_counter()
        watcher_rss = watcher.stop()
        worker_rss = worker.stop()
        stop = time.perf_counter() - stopping
    return {"files": files, "workers": workers, "completed": done,
            "setup_seconds": round(setup, 1), "stop_seconds": round(stop, 1),
            "files_per_s": round(pipeline_rate, 1),
            "celery_noop_tasks_per_s": round(noop_rate, 1),
            "noop_publish_seconds": round(sent - start, 2),
            "pipeline_to_noop_ratio": round(pipeline_rate / max(noop_rate, 1e-9), 2),
            "cpu_ms_per_file": _per_file(cpu, files),
            "peak_rss_mib": {"worker": worker_rss, "watcher": watcher_rss}}


def _per_file(cpu_seconds: dict[str, float], files: int) -> dict[str, float]:
    """Each process's CPU seconds as milliseconds per file."""
    return {name: round(1000 * seconds / files, 3) for name, seconds in cpu_seconds.items()}


def _ping(env: dict[str, str]) -> bool:
    app = make_celery(Settings(broker_url=env["AIRLOCK_BROKER_URL"]))
    try:
        return bool(app.control.ping(timeout=1.0))
    finally:
        app.close()


def bulk(ws: Workspace, files: int, timeout: float,
         redis_url: str = "redis://127.0.0.1:6379/15") -> dict[str, Any]:
    """One zip of `files` members through `airlock import` and the workers."""
    _broker(redis_url)
    env = {**ws.env, "AIRLOCK_BROKER_URL": redis_url}
    blobs, setup = deactivation_fleet(ws, files)
    began = time.perf_counter()
    archive = ws.home / "fleet.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, blob in enumerate(blobs):
            zf.writestr(f"deactivations/d{i:07d}.req", blob)
    setup += time.perf_counter() - began
    worker = spawn("worker", ["cli", "worker", "--concurrency", "2", "--loglevel", "WARNING"],
                   env, ws.home / "logs")
    try:
        _wait_until(lambda: _ping(env), 60, poll=0.5)
        worker_cpu = tree_cpu_seconds(worker.proc.pid)
        waited = resource.getrusage(resource.RUSAGE_CHILDREN)  # the importer's, once reaped
        start = time.time()
        importer = spawn("import", ["cli", "import", str(archive), "--customer", CUSTOMER,
                                    "--json", "--timeout", str(timeout)], env, ws.home / "logs")
        importer_rss = wait_rss(importer.proc, timeout + 60)
        seconds = time.time() - start
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = {"importer": reaped.ru_utime + reaped.ru_stime - waited.ru_utime - waited.ru_stime,
               "worker": tree_cpu_seconds(worker.proc.pid) - worker_cpu}
    finally:
        stopping = time.perf_counter()
        worker_rss = worker.stop()
        stop = time.perf_counter() - stopping
    results = _count(ws.outbox())
    report = list((ws.outbox() / "batches").glob("*.report.json")) \
        if (ws.outbox() / "batches").exists() else []
    return {"files": files, "archive_mib": round(archive.stat().st_size / 2**20, 1),
            "importer_exit": importer.proc.returncode, "results": results,
            "report": bool(report), "seconds": round(seconds, 2),
            "setup_seconds": round(setup, 1), "stop_seconds": round(stop, 1),
            "files_per_s": round(files / max(seconds, 1e-9), 1),
            "cpu_ms_per_file": _per_file(cpu, files),
            "peak_rss_mib": {"importer": importer_rss, "worker": worker_rss}}

