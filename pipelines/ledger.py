"""Job rows: registering arrivals exactly once."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session

from models import JobStatus
from models.db import pairs_in
from models.fastrows import RowWriter
from models.ledger import FINAL_STATUSES
from models.tables import JOB, OUTPUT
from pipelines.errors import FIXABLE_REASONS


@dataclass(frozen=True)
class Submission:
    """One incoming file: where it arrived (the tenant) and its bytes."""

    tenant: str
    data: bytes
    source: str = ""
    batch_id: int | None = None
    refusal: str | None = None  # refused before reading: no content, `digest` names it
    digest: str | None = None
    size: int | None = None

    @property
    def sha256(self) -> str:
        return self.digest or hashlib.sha256(self.data).hexdigest()


_JOB, _OUTPUT = JOB, OUTPUT
# executemany of one cached statement: a multi-row VALUES is compiled anew each time.
_INSERT_JOBS = RowWriter(
    lambda dialect: (pg_insert if dialect == "postgresql" else sqlite_insert)(_JOB)
    .on_conflict_do_nothing(index_elements=["tenant", "sha256"]),
    ["tenant", "sha256", "source", "size", "payload", "reason", "batch_id", "status",
     "attempts", "created_at", "updated_at"])
_REGISTERED = (_JOB.c.id, _JOB.c.tenant, _JOB.c.sha256, _JOB.c.status, _JOB.c.attempts)


def register(session: Session, submissions: Sequence[Submission], *, now: datetime,
             count_attempt: bool = True, reevaluate: bool = True) -> list[Row[Any]]:
    """Insert one job per distinct (tenant, content); existing rows are reused, not duplicated.
    Returns (id, tenant, sha256, status, attempts) rows in submission order.

    Counting the attempt here, in its own commit before any work, is what lets a file
    that kills its worker be quarantined after N tries. A file sent again whose job was
    refused for a reason the vendor can fix is opened for a new evaluation
    (`reevaluate`; off for bulk members, which keep their batch's answer).
    """
    if not submissions:
        return []
    conn = session.connection()
    # A file refused before it was read is registered with its refusal as the reason
    # and no payload: the core turns it into its rejection without opening anything.
    rows = [{"tenant": s.tenant, "sha256": s.sha256, "source": s.source[:1024],
             "size": s.size if s.size is not None else len(s.data),
             "payload": None if s.refusal else s.data, "reason": s.refusal,
             "batch_id": s.batch_id, "status": JobStatus.PENDING, "attempts": 0,
             "created_at": now, "updated_at": now}
            for s in submissions]
    _INSERT_JOBS.run(conn, rows)
    keys = list(dict.fromkeys((s.tenant, s.sha256) for s in submissions))
    if reevaluate:
        _reopen_fixable(conn, keys, now)
    if count_attempt:
        for start in range(0, len(keys), 500):
            conn.execute(update(_JOB).where(
                pairs_in(_JOB.c.tenant, _JOB.c.sha256, keys[start:start + 500]),
                _JOB.c.status.not_in([str(status) for status in FINAL_STATUSES]))
                .values(attempts=_JOB.c.attempts + 1, updated_at=now))
    jobs = {(job.tenant, job.sha256): job for job in _jobs_of(conn, keys)}
    return [jobs[(s.tenant, s.sha256)] for s in submissions]


def unregistered(conn: Any, submissions: Sequence[Submission]) -> set[tuple[str, str]]:
    """The (tenant, sha256) of `submissions` that no job row holds yet."""
    keys = list(dict.fromkeys((s.tenant, s.sha256) for s in submissions))
    return set(keys) - {(job.tenant, job.sha256) for job in _jobs_of(conn, keys)}


def _jobs_of(conn: Any, keys: list[tuple[str, str]]) -> Iterator[Row[Any]]:
    """The job rows (`_REGISTERED` columns) of (tenant, sha256) `keys`, 500 a query."""
    for start in range(0, len(keys), 500):
        yield from conn.execute(select(*_REGISTERED).where(
            pairs_in(_JOB.c.tenant, _JOB.c.sha256, keys[start:start + 500])))


def _reopen_fixable(conn: Any, keys: list[tuple[str, str]], now: datetime) -> None:
    """Refusals the vendor may have fixed since become pending again: attempts from zero,
    the earlier answer dropped (its evaluation stays in job_evaluation)."""
    for start in range(0, len(keys), 500):
        reopened = [row.id for row in conn.execute(select(_JOB.c.id).where(
            pairs_in(_JOB.c.tenant, _JOB.c.sha256, keys[start:start + 500]),
            _JOB.c.status == JobStatus.REJECTED, _JOB.c.reason.in_(sorted(FIXABLE_REASONS))))]
        if not reopened:
            continue
        conn.execute(delete(_OUTPUT).where(_OUTPUT.c.job_id.in_(reopened)))
        conn.execute(update(_JOB).where(_JOB.c.id.in_(reopened)).values(
            status=JobStatus.PENDING, attempts=0, reason=None, public_reason=None,
            message=None, finished_at=None, updated_at=now))
