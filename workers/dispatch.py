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

`requeue_stale` is the safety net for lost messages (a broker that lost its data, a
task that ran out of retries): unfinished work untouched for a while is published
again, which the ledger makes harmless.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import select as sa_select
from sqlalchemy import update

from models import BatchStatus, JobStatus
from models.db import session_scope
from models.tables import BATCH, JOB
from models.types import utcnow
from pipelines import bulk
from pipelines.intake import submission_of
from pipelines.layout import Arrival
from pipelines.ledger import register
from pipelines.outage import Dependency, Outage, Unreachable
from pipelines.sources import make_source
from workers.celery_app import FINISH_BATCH, PROCESS_CHUNK, PROCESS_FILES
from workers.runtime import Runtime

log = logging.getLogger("airlock.dispatch")


FILES_PER_TASK = 100  # enough to make a message's overhead small, few enough to spread


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
        back). Every file is taken (a worker archives it later): none comes back."""
        self.submit_many([a for a in arrivals if not bulk.is_bulk(a)])
        for arrival in arrivals:
            if bulk.is_bulk(arrival):
                result = bulk.handle_archive(self.runtime, arrival, sink=self.sink)
                log.info("%s/%s: batch %s %s", arrival.area, arrival.name, result.batch_id,
                         result.status)
        return []

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


@dataclass
class SweepResult:
    jobs: int = 0
    chunks: int = 0
    batches: int = 0


def requeue_stale(runtime: Runtime, app: Celery, *, older_than: timedelta,
                  now: datetime | None = None, limit: int = 10_000) -> SweepResult:
    """Publish again the work nobody touched for `older_than`: unfinished jobs, open
    batches whose jobs are all finished, and complete batches still without a report."""
    now = now or utcnow()
    cutoff = now - older_than
    result = SweepResult()
    with session_scope(runtime.engine) as session:
        job = JOB.c
        stale = session.execute(sa_select(job.id, job.source, job.batch_id).where(
            job.status == JobStatus.PENDING, job.updated_at < cutoff)
            .order_by(job.batch_id, job.id).limit(limit)).all()
        if stale:
            session.execute(update(JOB).where(job.id.in_([row[0] for row in stale]))
                            .values(updated_at=now))
        batch = BATCH.c
        open_batches: list[int] = list(session.execute(sa_select(batch.id).where(
            batch.status == BatchStatus.OPEN, batch.created_at < cutoff)).scalars())
        unreported: list[int] = list(session.execute(sa_select(batch.id).where(
            batch.status == BatchStatus.COMPLETE, batch.finished_at < cutoff)).scalars())
    chunks: dict[int, list[int]] = {}
    singles: list[tuple[int, str | None]] = []
    for job_id, source, batch_id in stale:
        if batch_id is None:
            singles.append((job_id, source))
        else:
            chunks.setdefault(batch_id, []).append(job_id)
    enqueue_files(app, singles)
    result.jobs = len(singles)
    size = runtime.settings.chunk_size
    for batch_id, ids in chunks.items():
        for start in range(0, len(ids), size):
            enqueue_chunk(app, ids[start:start + size], batch_id)
            result.chunks += 1
    for batch_id in open_batches:
        flipped, _status = bulk.update_progress(runtime.engine, batch_id, now=now)
        if flipped:
            unreported.append(batch_id)
    for batch_id in unreported:
        enqueue_finish(app, batch_id)
        result.batches += 1
    if result.jobs or result.chunks or result.batches:
        log.warning("published again: %d jobs, %d chunks, %d batch reports", result.jobs,
                    result.chunks, result.batches)
    return result


def watch(runtime: Runtime, app: Celery, stop: threading.Event, *,
          requeue_after: float = 900.0, sweep_every: float = 60.0) -> None:
    """Feed the inbox to the broker until `stop`; sweep for lost work every `sweep_every`."""
    runtime.remove_stale_temp()
    watcher = Watcher(runtime, app, repeat_after=min(requeue_after, 300.0))
    source = make_source(runtime.settings, runtime.inbox, watcher.on_batch)
    outage = Outage(log)

    def sweeper() -> None:
        failures = 0
        while not stop.wait(sweep_every):
            try:
                requeue_stale(runtime, app, older_than=timedelta(seconds=requeue_after))
            except Exception as exc:  # noqa: BLE001 - the next sweep tries again
                failures += 1
                outage.failed(exc, "the sweep for stale work", first=failures == 1)
                continue
            failures = 0
            outage.recovered()

    thread = threading.Thread(target=sweeper, name="airlock-sweeper", daemon=True)
    thread.start()
    log.info("watching %s (distributed mode, broker %s)", runtime.settings.resolved_inbox,
             app.conf.broker_url.split("@")[-1])
    try:
        source.run(stop)
    finally:
        stop.set()
        thread.join(5)
