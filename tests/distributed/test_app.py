"""The Celery app factory, per-process runtimes, error mapping and the enqueue side,
without a broker: publishing is captured by a stand-in app."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError, OperationalError

from config.broker import BrokerKind, broker_kind
from config.settings import Settings, SettingsError, load_settings
from models.db import reading
from models.tables import JOB
from models.types import utcnow
from pipelines.keyring import init_keyring
from pipelines.layout import Arrival, make_arrival, processing_key
from pipelines.storage.base import TransientStorageError
from tests.distributed.cluster import ROOT, airlock_env
from tests.factories import WireDevice, add_license, vendor
from tests.test_archives import make_zip
from workers import celery_app
from workers.celery_app import (
    BULK,
    FINISH_BATCH,
    HEARTBEAT,
    INTERACTIVE,
    PROCESS_CHUNK,
    PROCESS_FILES,
    RuntimeHolder,
    celery_config,
    make_celery,
)
from workers.dispatch import SweepPolicy, Watcher, requeue_stale
from workers.liveness import beat, claim
from workers.runtime import build_runtime
from workers.tasks import TransientError, run_process_files, transient_errors


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"home": tmp_path, "broker_url": "redis://127.0.0.1:1/5",
                              "task_time_limit": 120, "chunk_size": 3}
    values.update(overrides)
    return Settings(**values)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/5", "amqp://guest:guest@127.0.0.1:1//"])
def test_celery_configuration(tmp_path: Path, url: str) -> None:
    app = make_celery(settings(tmp_path, broker_url=url))
    conf = app.conf
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.task_ignore_result and conf.result_backend is None
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_time_limit == 120 and 0 < conf.task_soft_time_limit < 120
    assert conf.broker_connection_retry_on_startup
    assert {q.name for q in conf.task_queues} == {INTERACTIVE, BULK}
    assert all(q.durable for q in conf.task_queues)
    assert app.amqp.router.route({}, PROCESS_FILES)["queue"].name == INTERACTIVE
    assert app.amqp.router.route({}, PROCESS_CHUNK)["queue"].name == BULK
    assert app.amqp.router.route({}, FINISH_BATCH)["queue"].name == BULK
    for name in (PROCESS_FILES, PROCESS_CHUNK, FINISH_BATCH):
        task = app.tasks[name]
        assert task.acks_late and task.reject_on_worker_lost and task.ignore_result
        assert task.autoretry_for == (TransientError,) and task.retry_backoff
        assert task.retry_jitter and task.max_retries
        assert task.retry_backoff_max == 120


def test_broker_settings_follow_the_url_scheme(tmp_path: Path) -> None:
    redis_conf = celery_config(settings(tmp_path, broker_url="rediss://h:6380/0"))
    options = redis_conf["broker_transport_options"]
    assert options["visibility_timeout"] == 240 and "broker_heartbeat" not in redis_conf
    amqp_conf = celery_config(settings(tmp_path, broker_url="amqps://u:p@h:5671/airlock"))
    assert amqp_conf["broker_heartbeat"] == HEARTBEAT
    assert amqp_conf["broker_transport_options"]["confirm_publish"] is True
    assert "visibility_timeout" not in amqp_conf["broker_transport_options"]
    assert {broker_kind(u) for u in ("redis://h", "amqp://h", "pyamqp://h")} == set(BrokerKind)
    with pytest.raises(SettingsError, match="AIRLOCK_BROKER_URL: .*redis:// or amqp://"):
        load_settings(home=tmp_path, broker_url="sqs://queue")


def test_a_time_limit_over_rabbitmqs_consumer_timeout_is_warned_about(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="airlock.celery"):
        celery_config(settings(tmp_path, broker_url="amqp://h//", task_time_limit=120))
        assert not caplog.records
        celery_config(settings(tmp_path, broker_url="amqp://h//", task_time_limit=1700))
    assert "consumer_timeout" in caplog.text


def test_no_broker_means_no_celery(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="embedded"):
        make_celery(Settings(home=tmp_path))


def test_module_app_reads_settings_only_when_asked(tmp_path: Path) -> None:
    code = ("import workers.celery_app as m; assert m._lazy_app is None; "
            "print(m.app.conf.broker_url, m.app.conf.task_time_limit)")
    env = airlock_env(home=tmp_path, broker_url="redis://127.0.0.1:1/7", task_time_limit=42)
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["redis://127.0.0.1:1/7", "42"]


@pytest.mark.parametrize("modules", [("workers.tasks", "workers.celery_app"),
                                     ("workers.celery_app", "workers.tasks")])
def test_tasks_and_app_import_in_either_order(modules: tuple[str, str]) -> None:
    """No import cycle: each imports in a fresh interpreter, and the tasks never pull in
    the app (both take the task names from `workers.task_names`)."""
    first, second = modules
    code = (f"import sys, {first}; loaded = 'workers.celery_app' in sys.modules; "
            f"import {second}; print(loaded, {second}.__name__)")
    done = subprocess.run([sys.executable, "-c", code], env=airlock_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(first == "workers.celery_app"), second]


def test_runtime_is_built_per_process(tmp_path: Path, monkeypatch) -> None:
    built: list[int] = []

    def factory(s: Settings) -> Any:
        built.append(1)
        return build_runtime(s)

    init_keyring(tmp_path / "keys")
    holder = RuntimeHolder(settings(tmp_path), factory=factory)
    first = holder.get()
    assert holder.get() is first and len(built) == 1
    monkeypatch.setattr(celery_app.os, "getpid", lambda: -1)  # as if after a fork
    second = holder.get()
    assert second is not first and second.engine is not first.engine and len(built) == 2
    holder.after_fork()  # same "process": keeps what it has
    assert holder.get() is second
    holder.close()


@pytest.mark.parametrize("error,transient", [
    (OperationalError("SELECT 1", {}, Exception("database is locked")), True),
    (TransientStorageError("SlowDown"), True),
    (redis.exceptions.ConnectionError("gone"), True),
    (ConnectionResetError("reset"), True),
    (SoftTimeLimitExceeded(), True),
    (IntegrityError("INSERT", {}, Exception("unique")), False),
    (ValueError("a bug"), False),
])
def test_transient_errors_are_retried_others_are_not(error: Exception, transient: bool) -> None:
    expected = TransientError if transient else type(error)
    with pytest.raises(expected):
        with transient_errors():
            raise error


class Publisher:
    """Stands in for a Celery app: records what would be published."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any], dict[str, Any]]] = []
        self.conf = type("Conf", (), {"broker_url": "redis://x"})()

    def send_task(self, name: str, args: list[Any] | None = None,
                  kwargs: dict[str, Any] | None = None, **_: Any) -> None:
        self.sent.append((name, list(args or []), dict(kwargs or {})))


@pytest.fixture
def publishing(tmp_path: Path, sqlite_engine: Engine) -> tuple[Any, Publisher, Any]:
    ring, _ = init_keyring(tmp_path / "keys")
    vendor(sqlite_engine)
    runtime = build_runtime(settings(tmp_path, database_url=str(sqlite_engine.url)))
    return runtime, Publisher(), ring


def test_watcher_commits_rows_then_publishes_once(publishing: Any) -> None:
    runtime, app, ring = publishing
    clock = [0.0]
    watcher = Watcher(runtime, app, repeat_after=60, clock=lambda: clock[0])  # type: ignore[arg-type]
    key = add_license(runtime.engine, max_activations=10)
    data = WireDevice(ring, "HW").activation(license_key=key)
    arrival = make_arrival("ACME/a.req", data)
    job_id = watcher.submit(arrival)
    watcher.on_batch([arrival])  # the S3 poller hands it over again: not published again
    assert app.sent == [(PROCESS_FILES, [[(job_id, "ACME/a.req")]], {})]
    clock[0] = 61
    watcher.on_batch([arrival])
    assert len(app.sent) == 2

    files = [(f"m{i}.req", WireDevice(ring, f"M{i}").activation(license_key=key))
             for i in range(7)]
    watcher.on_batch([make_arrival("ACME/b.zip", make_zip(files))])
    chunks = [s for s in app.sent if s[0] == PROCESS_CHUNK]
    assert [len(args[0]) for _, args, _ in chunks] == [3, 3, 1]
    assert all(kwargs["batch_id"] == 1 for _, _, kwargs in chunks)
    runtime.close()


def test_sweep_publishes_what_the_job_rows_say_is_owed(publishing: Any) -> None:
    """Unclaimed work only once its queue is empty; a dead worker's claims at once; a
    live worker's claims only when it left them untouched for `stuck_after`."""
    runtime, app, ring = publishing
    watcher = Watcher(runtime, app)  # type: ignore[arg-type]
    key = add_license(runtime.engine, max_activations=10)
    [single] = watcher.submit_many([make_arrival("ACME/a.req", WireDevice(ring, "HW")
                                                 .activation(license_key=key))])
    watcher.on_batch([make_arrival("ACME/b.zip", make_zip([
        (f"m{i}.req", WireDevice(ring, f"M{i}").activation(license_key=key))
        for i in range(4)]))])
    app.sent.clear()
    policy = SweepPolicy()
    later = utcnow() + timedelta(minutes=1)

    def sweep(at: Any, **waiting: int) -> Any:
        return requeue_stale(runtime, app, policy=policy, now=at,  # type: ignore[arg-type]
                             depths=lambda: waiting)

    assert sweep(utcnow()).jobs == 0  # just published
    assert sweep(later, interactive=1, bulk=2).jobs == 0  # a backlog: still queued
    swept = sweep(later, bulk=2)
    assert (swept.lost, swept.chunks) == (1, 0)
    assert app.sent == [(PROCESS_FILES, [[(single, "ACME/a.req")]], {})]
    app.sent.clear()
    assert sweep(later + timedelta(seconds=5), bulk=2).jobs == 0  # published just now

    chunk = [job for job in _pending(runtime.engine) if job != single]
    claim(runtime.engine, "w-alive", chunk[:2], later)
    claim(runtime.engine, "w-dead", chunk[2:], later)
    beat(runtime.engine, "w-alive", later + timedelta(seconds=30))
    swept = sweep(later + timedelta(seconds=35), interactive=1, bulk=5)
    assert (swept.dead, swept.lost, swept.stuck, swept.chunks) == (2, 0, 0, 1)
    assert app.sent == [(PROCESS_CHUNK, [chunk[2:]], {"batch_id": 1})]
    app.sent.clear()
    much_later = later + policy.stuck_after + timedelta(seconds=1)
    beat(runtime.engine, "w-alive", much_later)  # alive, but never came back to them
    swept = sweep(much_later, interactive=1, bulk=5)
    assert (swept.dead, swept.stuck) == (0, 2)
    assert app.sent == [(PROCESS_CHUNK, [chunk[:2]], {"batch_id": 1})]
    runtime.close()


def _pending(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return sorted(conn.execute(select(JOB.c.id).where(JOB.c.status == "pending")).scalars())


def test_watcher_takes_a_pass_of_files_in_one_commit(publishing: Any) -> None:
    runtime, app, ring = publishing
    watcher = Watcher(runtime, app)  # type: ignore[arg-type]
    key = add_license(runtime.engine, max_activations=10)
    singles = [make_arrival(f"ACME/{i}.req", WireDevice(ring, f"S{i}").activation(
        license_key=key)) for i in range(3)]
    archive = make_arrival("ACME/b.zip", make_zip([("m.req", WireDevice(ring, "M").activation(
        license_key=key))]))
    watcher.on_batch([singles[0], archive, singles[1], singles[2]])
    assert [name for name, _, _ in app.sent] == [PROCESS_FILES, PROCESS_CHUNK]
    [items] = app.sent[0][1]
    assert [source for _, source in items] == [a.key for a in singles]
    runtime.close()


def test_an_entry_refused_unread_is_registered_without_content_and_archived(
        publishing: Any) -> None:
    """Distributed mode keeps a source's refusal: no payload, its size and identity;
    a too-large archive is a single refusal (no batch), and the worker archives it."""
    runtime, app, _ring = publishing
    key = processing_key("ACME", "huge.zip")
    runtime.inbox.put(key, b"stands for what was only seen through stat")
    arrival = Arrival.refused(area="ACME", name="huge.zip", key=key, reason="too_large",
                              size=5 * 1024**3, identity="inode 7 mtime 1")
    assert Watcher(runtime, app).on_batch([arrival]) == []  # type: ignore[arg-type]
    [(task, [items], _)] = app.sent
    assert task == PROCESS_FILES
    with reading(runtime.engine) as conn:
        [row] = conn.execute(select(JOB.c.payload, JOB.c.size, JOB.c.sha256, JOB.c.reason))
    assert (row.payload, row.size, row.sha256) == (None, 5 * 1024**3, arrival.sha256)
    [outcome] = run_process_files(runtime, [tuple(item) for item in items])
    assert (outcome.status, outcome.reason) == ("rejected", "too_large")
    assert runtime.inbox.exists("_rejected/ACME/huge.zip.error.json")
    runtime.close()


def test_a_heartbeat_beats_until_stopped_and_then_leaves(sqlite_engine: Engine) -> None:
    from models.tables import WORKER_BEAT
    from tests.distributed.cluster import wait_for
    from workers.liveness import Heartbeat

    def beats() -> list[Any]:
        with sqlite_engine.connect() as conn:
            return list(conn.execute(select(WORKER_BEAT.c.beat_at)).scalars())

    heartbeat = Heartbeat(sqlite_engine, "host/1/ab", every=0.05)
    heartbeat.start()
    first = wait_for(beats, timeout=10, what="the first beat")[0]
    wait_for(lambda: beats() and beats()[0] > first, timeout=10, what="a later beat")
    heartbeat.stop()
    assert beats() == []  # a clean stop: its claims are owed at the next sweep


def _attempts_and_claimant(engine: Engine, job_ids: list[int]) -> list[tuple[int, str | None]]:
    with engine.connect() as conn:
        return [(row.attempts, row.claimed_by) for row in conn.execute(
            select(JOB.c.attempts, JOB.c.claimed_by).where(JOB.c.id.in_(job_ids))
            .order_by(JOB.c.id))]


def test_a_claim_counts_the_first_attempt_in_its_commit_and_only_then(
        publishing: Any) -> None:
    """A worker's claim counts the attempt of a message none of whose files was tried
    (the write lock once, not twice); a message redelivered after a crash is not counted
    there but file by file by `apply_jobs`, and every file is counted exactly once per
    delivery either way."""
    runtime, app, ring = publishing
    key = add_license(runtime.engine, max_activations=10)
    watcher = Watcher(runtime, app)  # type: ignore[arg-type]
    ids = watcher.submit_many([make_arrival(f"ACME/{i}.req", WireDevice(ring, f"C{i}")
                                            .activation(license_key=key)) for i in range(3)])
    assert claim(runtime.engine, "w1", ids, utcnow(), count_attempt=True)
    assert _attempts_and_claimant(runtime.engine, ids) == [(1, "w1")] * 3
    # the worker died before applying: the copy of the message is counted file by file
    assert not claim(runtime.engine, "w2", ids, utcnow(), count_attempt=True)
    assert _attempts_and_claimant(runtime.engine, ids) == [(1, "w2")] * 3
    outcomes = run_process_files(runtime, [(job_id, None) for job_id in ids])
    assert [o.status for o in outcomes] == ["done"] * 3
    assert [a for a, _ in _attempts_and_claimant(runtime.engine, ids)] == [2, 2, 2]
    # a claim of finished jobs counts nothing
    assert not claim(runtime.engine, "w3", ids, utcnow(), count_attempt=True)
    assert [a for a, _ in _attempts_and_claimant(runtime.engine, ids)] == [2, 2, 2]

    fresh = watcher.submit_many([make_arrival("ACME/n.req", WireDevice(ring, "N")
                                              .activation(license_key=key))])
    counted = claim(runtime.engine, "w4", fresh, utcnow(), count_attempt=True)
    [outcome] = run_process_files(runtime, [(fresh[0], None)], attempt_counted=counted)
    assert outcome.status == "done"
    assert _attempts_and_claimant(runtime.engine, fresh) == [(1, "w4")]  # once, not twice

    # a finished job beside a new one (it could be reopened before it is applied): the
    # claim counts nothing, and the new file is counted once, before it is opened
    mixed = [ids[0], *watcher.submit_many([make_arrival("ACME/m.req", WireDevice(
        ring, "M").activation(license_key=key))])]
    counted = claim(runtime.engine, "w5", mixed, utcnow(), count_attempt=True)
    assert not counted
    assert [a for a, _ in _attempts_and_claimant(runtime.engine, mixed)] == [2, 0]
    outcomes = run_process_files(runtime, [(job_id, None) for job_id in mixed],
                                 attempt_counted=counted)
    assert [o.status for o in outcomes] == ["done", "done"]
    assert [a for a, _ in _attempts_and_claimant(runtime.engine, mixed)] == [2, 1]
    runtime.close()


def test_an_archive_another_import_is_loading_comes_back_to_the_watcher(
        publishing: Any) -> None:
    """Held by a live import elsewhere, the batch is not touched: nothing is registered
    or published, and the archive is handed back to its source to be tried again."""
    from models import Batch
    from models.db import session_scope
    from pipelines.bulk.lease import LEASE
    from pipelines.bulk.state import open_batch

    runtime, app, ring = publishing
    key = add_license(runtime.engine, max_activations=10)
    data = make_zip([("m.req", WireDevice(ring, "M").activation(license_key=key))])
    now = runtime.processor.clock()
    with session_scope(runtime.engine) as session:
        batch, _ = open_batch(session, tenant="ACME", source="ACME/first.zip",
                              sha256=make_arrival("ACME/b.zip", data).sha256, now=now)
        batch.loader, batch.lease_until = "other-host/pid:[1]:7:x", now + LEASE
        session.add(batch)
    single = make_arrival("ACME/s.req", WireDevice(ring, "S").activation(license_key=key))
    archive = make_arrival("ACME/b.zip", data)
    assert Watcher(runtime, app).on_batch([single, archive]) == [archive]  # type: ignore[arg-type]
    assert [name for name, _, _ in app.sent] == [PROCESS_FILES]  # the single file only
    with reading(runtime.engine) as conn:
        assert conn.execute(select(JOB.c.batch_id)).scalars().all() == [None]
        assert conn.execute(select(Batch.status)).scalar_one() == "loading"
    runtime.close()


def test_a_copy_of_an_archive_comes_back_until_its_batch_is_final(publishing: Any) -> None:
    """The report archives the file that brought the batch; a copy under another name
    is handed back while the batch runs, and archived by the try after it is final."""
    from pipelines import bulk
    from pipelines.bulk.state import get_batch

    runtime, app, ring = publishing
    key = add_license(runtime.engine, max_activations=10)
    data = make_zip([("m.req", WireDevice(ring, "M").activation(license_key=key))])
    watcher = Watcher(runtime, app)  # type: ignore[arg-type]
    first = make_arrival("ACME/first.zip", data)
    copy = make_arrival("ACME/copy.zip", data)
    for arrival in (first, copy):
        runtime.inbox.put(arrival.key, data)
    assert watcher.on_batch([first]) == []
    assert watcher.on_batch([copy]) == [copy]  # batch open: still owed
    [(_, [job_ids], kwargs)] = [m for m in app.sent if m[0] == PROCESS_CHUNK]
    bulk.run_chunk(runtime, job_ids, kwargs["batch_id"])
    bulk.finish_batch(runtime, kwargs["batch_id"])
    assert get_batch(runtime.engine, kwargs["batch_id"]).status == "reported"
    assert not runtime.inbox.exists(first.key) and runtime.inbox.exists(copy.key)
    assert watcher.on_batch([copy]) == []
    assert runtime.inbox.exists("_processed/ACME/copy.zip")
    runtime.close()
