"""Thin Celery tasks that take ids: the work is the same stage code embedded mode runs.

`run_process_job` and `pipelines.bulk.run_chunk` / `finish_batch` are plain functions
over a `Runtime`, callable directly in tests; `register_tasks` wraps them as
``airlock.process_job`` (interactive queue), ``airlock.process_chunk`` and
``airlock.finish_batch`` (bulk queue).

Transient failures (database or broker connection, storage throttling, the soft time
limit) are retried with jittered exponential backoff. Permanent problems with a file
are already rejections inside the processing core. A file that kills its worker is
bounded by the attempt counter on its job row: counted in its own commit before the
work, quarantined by the core after `max_attempts`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import kombu.exceptions
import redis.exceptions
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlmodel import select

from models import Job
from models.db import session_scope
from pipelines import bulk
from pipelines.intake import Intake
from pipelines.layout import Arrival, parse_arrival_key, parse_processing_key
from pipelines.process import Outcome
from pipelines.storage.base import TransientStorageError
from workers.celery_app import FINISH_BATCH, NOOP, PROCESS_CHUNK, PROCESS_JOB, RuntimeHolder
from workers.runtime import Runtime

log = logging.getLogger("airlock.tasks")

MAX_RETRIES = 10


class TransientError(Exception):
    """A failure worth trying again later; the original error is the ``__cause__``."""


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError, TransientStorageError, redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError, kombu.exceptions.OperationalError, ConnectionError,
    TimeoutError, SoftTimeLimitExceeded,
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


def run_process_job(runtime: Runtime, job_id: int, source: str | None = None) -> Outcome:
    """Count the attempt, apply one registered job, deliver its results and archive the
    inbox file it came from (`source`, else the job's own source)."""
    outcome = bulk.process_counted(runtime, [job_id])[0]
    intake = runtime.intake()
    intake.deliver(outcome.tenant, outcome)
    with session_scope(runtime.engine) as session:
        job = session.exec(select(Job.source, Job.sha256, Job.size)
                           .where(Job.id == job_id)).one()
    _archive_inbox_file(intake, source or job[0], job[1], job[2], outcome)
    log.info("job %s %s%s%s", job_id, outcome.status,
             f" [{outcome.reason}]" if outcome.reason else "",
             " (duplicate)" if outcome.duplicate else " (applied)")
    return outcome


def _archive_inbox_file(intake: Intake, key: str, sha256: str, size: int,
                        outcome: Outcome) -> None:
    """Move a single file out of the inbox once its results are delivered."""
    parsed = parse_processing_key(key) or parse_arrival_key(key)
    if parsed is None or not intake.inbox.exists(key):
        return  # not an inbox file (cli:..., an archive member) or archived already
    area, name = parsed
    arrival = Arrival(area=area, name=bulk.CLAIM_MARK.sub("", name), key=key, data=b"",
                      sha256=sha256, size=size)
    intake.archive(arrival, outcome)


def run_chunk(runtime: Runtime, job_ids: list[int], batch_id: int | None,
              app: Celery) -> bulk.ChunkResult:
    """Apply a chunk; publish `finish_batch` for a batch this chunk saw complete."""
    result = bulk.run_chunk(runtime, job_ids, batch_id)
    for done in result.finish:
        app.send_task(FINISH_BATCH, args=[done])
    log.info("chunk of %d jobs (batch %s): %s", len(job_ids), batch_id,
             _summary(result.outcomes))
    return result


def _summary(outcomes: list[Outcome]) -> str:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        label = outcome.status + (" duplicate" if outcome.duplicate else "")
        counts[label] = counts.get(label, 0) + 1
    return ", ".join(f"{n} {label}" for label, n in sorted(counts.items())) or "nothing"


# --- the Celery wrappers ---------------------------------------------------------------------


def register_tasks(app: Celery, holder: RuntimeHolder) -> None:
    """Define the three tasks on `app`; each gets its collaborators from `holder`."""
    backoff_max = max(5, min(300, app.conf.broker_transport_options["visibility_timeout"] // 2))
    options = {
        "acks_late": True,
        "reject_on_worker_lost": True,
        "ignore_result": True,
        "autoretry_for": (TransientError,),
        "retry_backoff": True,
        "retry_backoff_max": backoff_max,
        "retry_jitter": True,
        "max_retries": MAX_RETRIES,
    }

    @app.task(name=PROCESS_JOB, **options)
    def process_job(job_id: int, source: str | None = None) -> None:
        """One file from the inbox (its job row is committed by the watcher)."""
        with transient_errors():
            run_process_job(holder.get(), job_id, source)

    @app.task(name=PROCESS_CHUNK, **options)
    def process_chunk(job_ids: list[int], batch_id: int | None = None) -> None:
        """One chunk of a bulk archive."""
        with transient_errors():
            run_chunk(holder.get(), job_ids, batch_id, app)

    @app.task(name=NOOP, **options)
    def noop(job_id: int) -> None:
        """Nothing at all, with the same delivery settings: `airlock bench` compares the
        pipeline's files/s with this task's rate through the same broker and workers."""

    @app.task(name=FINISH_BATCH, **options)
    def finish_batch(batch_id: int) -> None:
        """The report of a batch whose every job is finished."""
        with transient_errors():
            bulk.finish_batch(holder.get(), batch_id)
