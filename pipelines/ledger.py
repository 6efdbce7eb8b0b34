"""Job rows: registering arrivals exactly once and reading back what a job produced."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, select

from models import Job, JobOutput
from models.db import is_postgres
from models.ledger import FINAL_STATUSES


@dataclass(frozen=True)
class Submission:
    """One incoming file: where it arrived (the tenant) and its bytes."""

    tenant: str
    data: bytes
    source: str = ""
    batch_id: int | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def register(session: Session, submissions: Sequence[Submission], *, now: datetime,
             count_attempt: bool = True) -> list[Job]:
    """Insert one job per distinct (tenant, content); existing rows are reused, not duplicated.

    Counting the attempt here, in its own commit before any work, is what lets a file
    that kills its worker be quarantined after N tries.
    """
    if not submissions:
        return []
    rows = [{"tenant": s.tenant, "sha256": s.sha256, "source": s.source[:1024],
             "size": len(s.data), "payload": s.data, "batch_id": s.batch_id,
             "status": "pending", "attempts": 0, "created_at": now, "updated_at": now}
            for s in submissions]
    dialect_insert = pg_insert if is_postgres(session.get_bind()) else sqlite_insert  # type: ignore[arg-type]
    for start in range(0, len(rows), 500):
        stmt = dialect_insert(Job).values(rows[start:start + 500])
        session.execute(stmt.on_conflict_do_nothing(index_elements=["tenant", "sha256"]))
    keys = list(dict.fromkeys((s.tenant, s.sha256) for s in submissions))
    jobs: dict[tuple[str, str], Job] = {}
    for start in range(0, len(keys), 500):
        chunk = keys[start:start + 500]
        for job in session.exec(select(Job).where(tuple_(Job.tenant, Job.sha256).in_(chunk))):
            jobs[(job.tenant, job.sha256)] = job
    if count_attempt:
        open_ids = [j.id for j in jobs.values() if j.status not in FINAL_STATUSES]
        if open_ids:
            session.execute(update(Job).where(col(Job.id).in_(open_ids))
                            .values(attempts=Job.attempts + 1, updated_at=now))
            for job in jobs.values():
                if job.id in open_ids:
                    job.attempts += 1
    return [jobs[(s.tenant, s.sha256)] for s in submissions]


def outputs_of(session: Session, job_id: int) -> list[tuple[str, bytes]]:
    return [(o.name, o.content) for o in session.exec(
        select(JobOutput).where(JobOutput.job_id == job_id).order_by(JobOutput.id))]


def store_outputs(session: Session, job_id: int, outputs: Sequence[tuple[str, bytes]]) -> None:
    for name, content in outputs:
        session.add(JobOutput(job_id=job_id, name=name, content=content))
