"""Applying registered jobs so that one file's failure never changes another's outcome.

Every mode comes here once its files are job rows: the embedded runner, the Celery
task for inbox files and the one for bulk chunks. The attempt is counted in its own
commit before the work (the intake's first attempt: in the commit that registers the
files, `count_first_attempt`), so a file that kills its process is still counted; the chunk
is applied in one transaction; a chunk that raised, or that holds a file tried before,
is applied one file at a time, least-tried first, each try counted on its own (after
a chunk that raised, whose count stands: one attempt per file per call). A file that
keeps failing is left pending (the core quarantines it after `max_attempts` without
opening it) while the others of its chunk are applied.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, select, update

from models.db import ids_param, reading, session_scope
from models.ledger import FINAL_STATUSES
from models.tables import JOB
from pipelines.process import Outcome, Processor, Verified, process_jobs

log = logging.getLogger("airlock.handler")

_FINAL = [str(status) for status in FINAL_STATUSES]


@dataclass
class Applied:
    """What became of a set of jobs: outcomes of those that finished, in job order,
    and the error of each job that could not be applied (it stays pending)."""

    outcomes: list[Outcome] = field(default_factory=list)
    failed: list[tuple[int, Exception]] = field(default_factory=list)

    def raise_first(self) -> None:
        """Raise the first failure, if any (for callers whose delivery retries)."""
        if self.failed:
            raise self.failed[0][1]


def count_attempts(engine: Engine, job_ids: Sequence[int], now: datetime) -> None:
    """One more attempt on each unfinished job, committed before the work."""
    if job_ids:
        with session_scope(engine) as session:
            _count(session.connection(), job_ids, now)


def count_first_attempt(conn: Connection, jobs: Sequence[Any], now: datetime) -> bool:
    """In the caller's transaction (the one registering `jobs`, rows with id, status and
    attempts), count this attempt of each unfinished job if none was tried before: True
    (then `apply_jobs(..., attempt_counted=True)`). Otherwise nothing is counted here:
    `apply_jobs` counts file by file, so that files a crash kept from being reached are
    not counted with the one that crashed."""
    unfinished = [job for job in jobs if job.status not in FINAL_STATUSES]
    if any(job.attempts for job in unfinished):
        return False
    _count(conn, [job.id for job in unfinished], now)
    return True


_COUNT = (update(JOB).where(JOB.c.id.in_(ids_param()), JOB.c.status.not_in(_FINAL))
          .values(attempts=JOB.c.attempts + 1, updated_at=bindparam("now")))
_ATTEMPTS = select(JOB.c.id, JOB.c.attempts).where(JOB.c.id.in_(ids_param()),
                                                   JOB.c.status.not_in(_FINAL))


def _count(conn: Connection, job_ids: Sequence[int], now: datetime) -> None:
    if job_ids:
        conn.execute(_COUNT, {"ids": list(dict.fromkeys(job_ids)), "now": now})


def apply_jobs(engine: Engine, processor: Processor, job_ids: Sequence[int], *,
               attempt_counted: bool = False, verified: Mapping[int, Verified] | None = None,
               now: datetime | None = None) -> Applied:
    """Count the attempt and apply `job_ids`, isolating failures (see the module).

    `attempt_counted`: the caller committed this attempt of every job already (when it
    registered them). `verified` and `now` go to the chunk (`process_jobs`); a file
    applied on its own is verified again, after its own count."""
    order = list(dict.fromkeys(job_ids))
    if not order:
        return Applied()
    tries = _attempts(engine, order)
    counted: set[int] = set(order) if attempt_counted else set()  # once per file a call
    if not any(attempts - (job_id in counted) for job_id, attempts in tries.items()):
        if not attempt_counted:
            count_attempts(engine, order, processor.clock())
            counted.update(order)
        try:
            return Applied(outcomes=process_jobs(order, engine=engine, processor=processor,
                                                 verified=verified, now=now))
        except Exception as exc:  # noqa: BLE001 - isolated below, one file at a time
            log.warning("a chunk of %d jobs failed (%s: %s); applying them one at a time",
                        len(order), type(exc).__name__, exc)
            tries = _attempts(engine, order)
    applied = Applied()
    by_job: dict[int, Outcome] = {}
    for job_id in sorted(order, key=lambda j: (tries.get(j, 0), j)):
        if job_id in tries and job_id not in counted:  # counted on its own, before it
            count_attempts(engine, [job_id], processor.clock())
        try:
            (by_job[job_id],) = process_jobs([job_id], engine=engine, processor=processor)
        except Exception as exc:  # noqa: BLE001 - reported to the caller, the rest go on
            log.warning("job %s failed (%s: %s); it stays pending", job_id,
                        type(exc).__name__, exc)
            applied.failed.append((job_id, exc))
    applied.outcomes = [by_job[j] for j in order if j in by_job]
    return applied


def _attempts(engine: Engine, job_ids: list[int]) -> dict[int, int]:
    """Attempts so far of the unfinished jobs among `job_ids`."""
    with reading(engine) as conn:
        return {row.id: row.attempts for row in conn.execute(_ATTEMPTS, {"ids": job_ids})}
