"""The enqueue side of distributed mode: job rows are committed first, then published.

`Watcher.on_batch` is the callback the inbox sources (drop folder, S3 poller) call:
single files become job rows and ``process_files`` messages of up to
`FILES_PER_TASK` files each; a bulk archive becomes a batch, chunks of job rows and one
``process_chunk`` message per chunk. Publishing
happens only after the commit that created the rows, so no message names a row that
does not exist. A file the source hands over again (the S3 poller does so until the
worker archives it) finds its row and is not published twice within `repeat_after`.
A broker that cannot be reached raises `pipelines.outage.Unreachable`: the source
tries the files again with backoff, and the rows it finds then are published.

`requeue_stale` (run by `airlock watch` every ten seconds, `Sweeper`) publishes again
what the job rows say is still owed, whatever the broker holds: the jobs of a worker
that stopped beating (`workers.liveness`), jobs whose message is gone (unclaimed, their
queue empty: Redis can lose a message popped but not yet recorded), jobs a live worker
gave up on, and due batch reports. The ledger makes a second copy harmless.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import ColumnElement, and_, delete, update
from sqlalchemy import select as sa_select
from sqlmodel import Session

from models import BatchStatus, JobStatus
from models.db import session_scope
from models.ledger import FINAL_STATUSES
from models.tables import BATCH, JOB, WORKER_BEAT
from models.types import utcnow
from pipelines import bulk
from pipelines.intake import submission_of
from pipelines.layout import Arrival
from pipelines.ledger import register
from pipelines.outage import Dependency, Outage, Unreachable, dependency_of, first_line
from pipelines.sources import make_source
from workers.broker import queue_depths
from workers.celery_app import BULK, FINISH_BATCH, INTERACTIVE, PROCESS_CHUNK, PROCESS_FILES
from workers.liveness import DEAD_AFTER
from workers.runtime import Runtime

log = logging.getLogger("airlock.dispatch")


FILES_PER_TASK = 100  # enough to make a message's overhead small, few enough to spread
_FINAL = [str(status) for status in FINAL_STATUSES]


def _publish(app: Celery, task: str, args: list[Any],
             kwargs: dict[str, Any] | None = None) -> None:
    """Send one message; `Unreachable` when the broker cannot take it (after the
    publish retries Celery makes)."""
    try:
        app.send_task(task, args=args, kwargs=kwargs)
    except BrokerError as exc:
        raise Unreachable(Dependency.BROKER, exc) from exc


def enqueue_files(app: Celery, items: list[tuple[int, str | None]]) -> None:
    """Publish ``process_files`` for committed job rows, `FILES_PER_TASK` to a message
    (each item: job id, and the inbox key to archive or None)."""
    for start in range(0, len(items), FILES_PER_TASK):
        _publish(app, PROCESS_FILES, [items[start:start + FILES_PER_TASK]])


def enqueue_chunk(app: Celery, job_ids: list[int], batch_id: int | None) -> None:
    """Publish ``process_chunk`` for committed job rows of one batch."""
    _publish(app, PROCESS_CHUNK, [sorted(job_ids)], {"batch_id": batch_id})


def enqueue_finish(app: Celery, batch_id: int) -> None:
    """Publish ``finish_batch`` (idempotent: a reported batch ignores it)."""
    _publish(app, FINISH_BATCH, [batch_id])


class _Recently:
    """Remembers what was published, to skip repeats within `window` seconds."""

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._seen: dict[Hashable, float] = {}
        self._lock = threading.Lock()

    def claim(self, key: Hashable) -> bool:
        """True (and remembered) if `key` was not published within the window."""
        now = self._clock()
        with self._lock:
            if len(self._seen) > 50_000:
                self._seen = {k: t for k, t in self._seen.items() if now - t < self.window}
            last = self._seen.get(key)
            if last is not None and now - last < self.window:
                return False
            self._seen[key] = now
            return True

    def forget(self, keys: list[Hashable]) -> None:
        """`keys` were not published after all (the broker refused them)."""
        with self._lock:
            for key in keys:
                self._seen.pop(key, None)


class CelerySink:
    """A `pipelines.bulk.ChunkSink` that publishes chunks instead of applying them."""

    def __init__(self, app: Celery, runtime: Runtime, recently: _Recently | None = None) -> None:
        self.app = app
        self.runtime = runtime
        self._recently = recently or _Recently(0)

    def chunk(self, batch_id: int, job_ids: list[int]) -> None:
        enqueue_chunk(self.app, job_ids, batch_id)

    def finish(self, batch_id: int) -> None:
        enqueue_finish(self.app, batch_id)

    def resume(self, batch_id: int) -> None:
        """The batch was registered before; its chunks are (or were) in the queue. Only a
        batch already complete gets its report published again."""
        _flipped, status = bulk.update_progress(self.runtime.engine, batch_id,
                                                now=self.runtime.processor.clock())
        if status == BatchStatus.COMPLETE and self._recently.claim(("finish", batch_id)):
            enqueue_finish(self.app, batch_id)


class Watcher:
    """`on_batch` for distributed mode: register (commit), then publish."""

    def __init__(self, runtime: Runtime, app: Celery, *, repeat_after: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.runtime = runtime
        self.app = app
        self._recently = _Recently(repeat_after, clock)
        self.sink = CelerySink(app, runtime, self._recently)

    def on_batch(self, arrivals: list[Arrival]) -> list[Arrival]:
        """Files are registered in one commit, then published a few dozen to a message;
        archives become batches (after the files, so a large archive does not hold them
        back). Every file is taken (a worker archives it later) but a copy of an archive
        another file brought (the batch's report archives only that file): it comes back
        until its batch is final, and is archived then."""
        self.submit_many([a for a in arrivals if not bulk.is_bulk(a)])
        copies = []
        for arrival in arrivals:
            if bulk.is_bulk(arrival):
                result = bulk.handle_archive(self.runtime, arrival, sink=self.sink)
                log.info("%s/%s: batch %s %s", arrival.area, arrival.name, result.batch_id,
                         result.status)
                if result.busy or (arrival.key != result.source
                                   and result.status not in bulk.FINAL_BATCH):
                    copies.append(arrival)
        return copies

    def submit(self, arrival: Arrival) -> int:
        """Register one file as a job (no attempt counted: the worker counts) and publish."""
        return self.submit_many([arrival])[0]

    def submit_many(self, arrivals: list[Arrival]) -> list[int]:
        if not arrivals:
            return []
        now = self.runtime.processor.clock()
        with session_scope(self.runtime.engine) as session:
            jobs = register(session, [submission_of(a) for a in arrivals], now=now,
                            count_attempt=False)
        fresh: list[tuple[Arrival, int]] = []
        for arrival, job in zip(arrivals, jobs, strict=True):
            assert job.id is not None
            if self._recently.claim((job.id, arrival.key)):
                fresh.append((arrival, job.id))
        try:
            enqueue_files(self.app, [(job_id, arrival.key) for arrival, job_id in fresh])
        except Unreachable:
            self._recently.forget([(job_id, arrival.key) for arrival, job_id in fresh])
            raise
        for arrival, job_id in fresh:
            log.info("%s/%s -> job %s queued", arrival.area, arrival.name, job_id)
        return [job.id for job in jobs]  # type: ignore[misc]


@dataclass(frozen=True)
class SweepPolicy:
    """When unfinished work is owed again. The job rows decide, not the broker: a
    message may be gone (Redis loses one popped but not yet recorded as unacknowledged;
    a broker may lose its data) or held by a worker that died."""

    every: float = 10.0  # seconds between sweeps
    dead_after: timedelta = DEAD_AFTER  # a claimant silent this long is gone
    lost_after: timedelta = timedelta(seconds=20)  # unclaimed this long, its queue empty
    stuck_after: timedelta = timedelta(minutes=15)  # a live claimant stopped trying
    report_every: timedelta = timedelta(minutes=1)  # a due report, published again


@dataclass
class SweepResult:
    dead: int = 0  # jobs whose worker stopped beating
    lost: int = 0  # jobs whose message never reached a worker
    stuck: int = 0  # jobs a live worker gave up on (its retries used up)
    chunks: int = 0
    batches: int = 0

    @property
    def jobs(self) -> int:
        return self.dead + self.lost + self.stuck


QueueDepths = Callable[[], Mapping[str, int]]
_Owed = list[tuple[int, str | None, int | None]]  # (job id, source, batch id)


def _take(session: Session, where: ColumnElement[bool], now: datetime) -> _Owed:
    """Mark the jobs `where` selects as published now (no claimant) and return them.
    One UPDATE, its condition checked again on each row it locks: a job a worker claims
    meanwhile is left alone."""
    job = JOB.c
    rows = session.execute(update(JOB).where(where).values(claimed_by=None, updated_at=now)
                           .returning(job.id, job.source, job.batch_id)).all()
    return [(row[0], row[1], row[2]) for row in rows]


def _dead_claimants(session: Session, cutoff: datetime) -> list[str]:
    """Workers whose beat is older than `cutoff`, and claimants without a row (stopped)."""
    job, beat = JOB.c, WORKER_BEAT.c
    stale = set(session.execute(sa_select(beat.name).where(beat.beat_at < cutoff)).scalars())
    gone = session.execute(sa_select(job.claimed_by).distinct().where(
        job.status == JobStatus.PENDING, job.claimed_by.is_not(None),
        ~sa_select(beat.name).where(beat.name == job.claimed_by).exists())).scalars()
    return sorted(stale | {name for name in gone if name is not None})


def requeue_stale(runtime: Runtime, app: Celery, *, policy: SweepPolicy = SweepPolicy(),
                  depths: QueueDepths | None = None, now: datetime | None = None,
                  reports: _Recently | None = None) -> SweepResult:
    """Publish again what the job rows say is owed (see `SweepPolicy`): pending jobs
    claimed by a worker that stopped beating or that stopped trying, unclaimed ones
    whose queue is empty (so their message is gone), and the report of a batch whose
    jobs are all finished. A long backlog in a queue is never published twice."""
    now = now or utcnow()
    try:
        waiting = (depths or (lambda: queue_depths(app)))()  # before the transaction: I/O
    except BrokerError as exc:
        raise Unreachable(Dependency.BROKER, exc) from exc
    empty = {name for name in (INTERACTIVE, BULK) if not waiting.get(name, 0)}
    job, batch = JOB.c, BATCH.c
    result = SweepResult()
    owed: _Owed = []
    with session_scope(runtime.engine) as session:
        dead = _dead_claimants(session, now - policy.dead_after)
        pending = job.status == JobStatus.PENDING
        if dead:
            taken = _take(session, and_(pending, job.claimed_by.in_(dead)), now)
            session.execute(delete(WORKER_BEAT).where(WORKER_BEAT.c.name.in_(dead)))
            result.dead = len(taken)
            owed += taken
        taken = _take(session, and_(pending, job.claimed_by.is_not(None),
                                    job.updated_at < now - policy.stuck_after), now)
        result.stuck = len(taken)
        owed += taken
        for queue, of_queue in ((INTERACTIVE, job.batch_id.is_(None)),
                                (BULK, job.batch_id.is_not(None))):
            if queue in empty:
                taken = _take(session, and_(pending, job.claimed_by.is_(None), of_queue,
                                            job.updated_at < now - policy.lost_after), now)
                result.lost += len(taken)
                owed += taken
        settled = now - policy.lost_after
        unfinished = sa_select(job.id).where(job.batch_id == batch.id,
                                             job.status.not_in(_FINAL)).exists()
        open_batches = list(session.execute(sa_select(batch.id).where(
            batch.status == BatchStatus.OPEN, batch.created_at < settled, ~unfinished))
            .scalars())
        unreported = list(session.execute(sa_select(batch.id).where(
            batch.status == BatchStatus.COMPLETE, batch.finished_at < settled)).scalars())
    result.chunks = _publish_owed(app, owed, runtime.settings.chunk_size)
    for batch_id in open_batches:
        flipped, _status = bulk.update_progress(runtime.engine, batch_id, now=now)
        if flipped:
            unreported.append(batch_id)
    reports = reports or _Recently(0)
    for batch_id in unreported:
        if BULK in empty and reports.claim(batch_id):
            enqueue_finish(app, batch_id)
            result.batches += 1
    if result.jobs or result.batches:
        log.warning("published again: %d jobs of stopped workers, %d with no message left, "
                    "%d given up on (%d chunks), %d batch reports", result.dead, result.lost,
                    result.stuck, result.chunks, result.batches)
    return result


def _publish_owed(app: Celery, owed: _Owed, chunk_size: int) -> int:
    """Single files a hundred to a message, batch members in chunks; chunks published."""
    chunks: dict[int, list[int]] = {}
    singles: list[tuple[int, str | None]] = []
    for job_id, source, batch_id in sorted(owed, key=lambda row: (row[2] or 0, row[0])):
        if batch_id is None:
            singles.append((job_id, source))
        else:
            chunks.setdefault(batch_id, []).append(job_id)
    enqueue_files(app, singles)
    published = 0
    for batch_id, ids in chunks.items():
        for start in range(0, len(ids), chunk_size):
            enqueue_chunk(app, ids[start:start + chunk_size], batch_id)
            published += 1
    return published


class Sweeper:
    """`requeue_stale` every `policy.every` seconds until `stop`. A database or broker
    that is away skips the sweep quietly; any other failure is logged (its traceback
    once) and the next sweep tries again."""

    def __init__(self, runtime: Runtime, app: Celery, policy: SweepPolicy) -> None:
        self.runtime = runtime
        self.app = app
        self.policy = policy
        self._reports = _Recently(policy.report_every.total_seconds())
        self._outage = Outage(log)

    def run(self, stop: threading.Event) -> None:
        failures = 0
        while not stop.wait(self.policy.every):
            try:
                requeue_stale(self.runtime, self.app, policy=self.policy,
                              reports=self._reports)
            except Exception as exc:  # noqa: BLE001 - the next sweep tries again
                if dependency_of(exc) is not None:
                    # The source says once each way that a dependency is away; the
                    # sweep just finds the work still owed next time.
                    log.debug("sweep skipped: %s", first_line(exc))
                    continue
                failures += 1
                self._outage.failed(exc, "the sweep for owed work", first=failures == 1)
                continue
            failures = 0
            self._outage.recovered()


def watch(runtime: Runtime, app: Celery, stop: threading.Event, *,
          requeue_after: float = 900.0, sweep_every: float = 10.0) -> None:
    """Feed the inbox to the broker until `stop`; sweep for owed work every `sweep_every`
    seconds (`requeue_after`: when a live worker's untouched job is tried again)."""
    runtime.remove_stale_temp()
    watcher = Watcher(runtime, app, repeat_after=min(requeue_after, 300.0))
    source = make_source(runtime.settings, runtime.inbox, watcher.on_batch)
    policy = SweepPolicy(every=sweep_every, stuck_after=timedelta(seconds=requeue_after))
    thread = threading.Thread(target=Sweeper(runtime, app, policy).run, args=(stop,),
                              name="airlock-sweeper", daemon=True)
    thread.start()
    log.info("watching %s (distributed mode, broker %s)", runtime.settings.resolved_inbox,
             app.conf.broker_url.split("@")[-1])
    try:
        source.run(stop)
    finally:
        stop.set()
        thread.join(5)
