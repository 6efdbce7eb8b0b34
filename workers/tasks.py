"""Thin Celery tasks that take ids: the work is the same stage code embedded mode runs.

`run_process_files` and `pipelines.bulk.run_chunk` / `finish_batch` are plain functions
over a `Runtime`, callable directly in tests; `register_tasks` wraps them as
``airlock.process_files`` (interactive queue: a few dozen inbox files per message, so
a file does not pay a whole task's overhead), ``airlock.process_chunk`` and
``airlock.finish_batch`` (bulk queue).

Transient failures (database or broker connection, storage throttling, the soft time
limit) are retried with jittered exponential backoff. Permanent problems with a file
are already rejections inside the processing core. A file that kills its worker is
bounded by the attempt counter on its job row: counted in its own commit before the
work, quarantined by the core after `max_attempts`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

import amqp.exceptions
import kombu.exceptions
import redis.exceptions
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, OperationalError

from models.db import ids_param, reading
from models.tables import JOB
from pipelines import bulk
from pipelines.handler import apply_jobs
from pipelines.intake import Intake
from pipelines.layout import Arrival, parse_arrival_key, parse_processing_key
from pipelines.process import Outcome
from pipelines.storage.base import TransientStorageError
from workers.runtime import Runtime
from workers.task_names import FINISH_BATCH, NOOP, PROCESS_CHUNK, PROCESS_FILES

log = logging.getLogger("airlock.tasks")

MAX_RETRIES = 10


class TransientError(Exception):
    """A failure worth trying again later; the original error is the ``__cause__``."""


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError, TransientStorageError, redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError, amqp.exceptions.RecoverableConnectionError,
    amqp.exceptions.RecoverableChannelError, kombu.exceptions.OperationalError,
    ConnectionError, TimeoutError, SoftTimeLimitExceeded,
)


@contextmanager
def transient_errors() -> Iterator[None]:
    """Turn errors that may go away on their own into `TransientError` (retried)."""
    try:
        yield
    except TRANSIENT_ERRORS as exc:
        raise TransientError(f"{type(exc).__name__}: {exc}") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise TransientError(f"database connection lost: {exc}") from exc
        raise


# --- the work, as plain functions -----------------------------------------------------------


_SOURCES = select(JOB.c.id, JOB.c.source, JOB.c.sha256, JOB.c.size).where(
    JOB.c.id.in_(ids_param()))


def run_process_files(runtime: Runtime, items: Sequence[tuple[int, str | None]], *,
                      attempt_counted: bool = False) -> list[Outcome]:
    """Apply registered jobs (`handler.apply_jobs`: a failing file never holds up the
    others), then deliver their results and archive the inbox files they came from
    (each item's source, else the job's own) as `Intake.finish` does in every mode;
    then raise the first failure, so that the message is retried for the files that
    failed. `attempt_counted`: the worker's claim counted this attempt already."""
    job_ids = [job_id for job_id, _ in items]
    applied = apply_jobs(runtime.engine, runtime.processor, job_ids,
                         attempt_counted=attempt_counted)
    intake = runtime.intake()
    with reading(runtime.engine) as conn:
        rows = {row.id: row for row in conn.execute(_SOURCES, {"ids": job_ids})}
    sources = dict(items)
    handled = []
    for outcome in applied.outcomes:
        row = rows[outcome.job_id]
        source = sources.get(outcome.job_id) or row.source
        handled.append((_inbox_arrival(intake, source, row.sha256, row.size), outcome))
    intake.finish(handled)
    applied.raise_first()
    return applied.outcomes


def _inbox_arrival(intake: Intake, key: str, sha256: str, size: int) -> Arrival | None:
    """The inbox file a job came from, if it is still to be archived."""
    parsed = parse_processing_key(key) or parse_arrival_key(key)
    if parsed is None or not intake.inbox.exists(key):
        return None  # not an inbox file (cli:..., an archive member) or archived already
    area, name = parsed
    return Arrival(area=area, name=bulk.CLAIM_MARK.sub("", name), key=key, data=b"",
                   sha256=sha256, size=size)


def run_chunk(runtime: Runtime, job_ids: list[int], batch_id: int | None,
              app: Celery, *, attempt_counted: bool = False) -> bulk.ChunkResult:
    """Apply a chunk; publish `finish_batch` for a batch this chunk saw complete."""
    result = bulk.run_chunk(runtime, job_ids, batch_id, attempt_counted=attempt_counted)
    for done in result.finish:
        app.send_task(FINISH_BATCH, args=[done])
    return result


# --- the Celery wrappers ---------------------------------------------------------------------


class RuntimeSource(Protocol):
    """Where a task gets the collaborators of its process (`celery_app.RuntimeHolder`)."""

    def get(self) -> Runtime: ...

    def claim(self, job_ids: Sequence[int]) -> bool:
        """This process takes the jobs and counts this attempt of each if all are
        pending and untried: True then (`workers.liveness.claim`)."""


def register_tasks(app: Celery, holder: RuntimeSource, *, retry_backoff_max: int) -> None:
    """Define the tasks on `app`; each gets its collaborators from `holder` and claims
    its jobs before the work, so the sweep knows whom they wait for (the claim's commit
    counts the attempt too, when it can)."""
    options = {
        "shared": False,  # this app's own: another app in the process has its own holder
        "acks_late": True,
        "reject_on_worker_lost": True,
        "ignore_result": True,
        "autoretry_for": (TransientError,),
        "retry_backoff": True,
        "retry_backoff_max": retry_backoff_max,
        "retry_jitter": True,
        "max_retries": MAX_RETRIES,
    }

    @app.task(name=PROCESS_FILES, **options)
    def process_files(items: list[tuple[int, str | None]]) -> None:
        """[job id, inbox key] pairs of files from the inbox (rows committed by the watcher)."""
        with transient_errors():
            counted = holder.claim([job_id for job_id, _ in items])
            run_process_files(holder.get(), [(job_id, source) for job_id, source in items],
                              attempt_counted=counted)

    @app.task(name=PROCESS_CHUNK, **options)
    def process_chunk(job_ids: list[int], batch_id: int | None = None) -> None:
        """One chunk of a bulk archive."""
        with transient_errors():
            counted = holder.claim(job_ids)
            run_chunk(holder.get(), job_ids, batch_id, app, attempt_counted=counted)

    @app.task(name=NOOP, **options)
    def noop(job_id: int) -> None:
        """Nothing at all, with the same delivery settings: `airlock bench` compares the
        pipeline's files/s with this task's rate through the same broker and workers."""

    @app.task(name=FINISH_BATCH, **options)
    def finish_batch(batch_id: int) -> None:
        """The report of a batch whose every job is finished."""
        with transient_errors():
            bulk.finish_batch(holder.get(), batch_id)
