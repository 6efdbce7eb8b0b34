"""A batch's rows: opening it, its progress, where it stands, and its names.

Progress lives on rows, not in a chord, so a redelivered chunk cannot count twice:
`finished` is derived from job statuses as chunks end, and the caller that finds no
job of an open batch pending flips the status with a conditional UPDATE (``WHERE
status = 'open'``) and so is the only one to trigger the report.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, select

from models import Batch, BatchStatus, Job, JobStatus
from models.db import is_postgres, reading, session_scope
from models.ledger import FINAL_STATUSES
from pipelines.bulk.lease import Lease
from pipelines.layout import outbox_key, parse_arrival_key, parse_processing_key
from pipelines.storage.base import check_key

log = logging.getLogger("airlock.bulk")

MANIFEST_AREA = "_batches"
FINAL = [str(status) for status in FINAL_STATUSES]
FINAL_BATCH = (BatchStatus.REPORTED, BatchStatus.REJECTED)  # nothing more to come
CLAIM_MARK = re.compile(r"\.claim-[0-9a-f]{12}$")
_UNSAFE_CHARS = re.compile(r"[^\w.+-]")


@dataclass
class BatchResult:
    """Where a batch stands; `counts` are the statuses of the jobs the batch created."""

    batch_id: int
    tenant: str
    source: str
    sha256: str
    status: str
    reason: str | None = None
    message: str | None = None
    total: int = 0
    finished: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    members: int | None = None
    report_keys: list[str] = field(default_factory=list)
    duplicate: bool = False  # the archive was imported before; nothing applied again
    busy: bool = False  # another import is loading it: this file is tried again later

    @property
    def accepted(self) -> bool:
        return self.status != BatchStatus.REJECTED


def open_batch(session: Session, *, tenant: str, source: str, sha256: str,
               now: datetime) -> tuple[Batch, bool]:
    """Insert-or-get the batch for (tenant, sha256); True if this call created it."""
    insert = pg_insert if is_postgres(session.get_bind()) else sqlite_insert  # type: ignore[arg-type]
    created = session.execute(insert(Batch).values(
        tenant=tenant, source=source[:1024], sha256=sha256, total=0, finished=0,
        status=BatchStatus.LOADING, created_at=now).on_conflict_do_nothing(
        index_elements=["tenant", "sha256"])).rowcount == 1  # type: ignore[attr-defined]
    batch = session.exec(select(Batch).where(Batch.tenant == tenant,
                                             Batch.sha256 == sha256)).one()
    return batch, created


def get_batch(engine: Engine, batch_id: int) -> Batch:
    with session_scope(engine) as session:
        return session.exec(select(Batch).where(Batch.id == batch_id)).one()


# Counting a batch's finished jobs reads one index entry per job: at 100,000 members,
# recounting after each of its 500 chunks was seconds of write-locked time. The count
# is for progress displays, so each process recounts a batch at most this often; when
# the batch is done is decided apart, by whether any of its jobs is still pending.
RECOUNT_SECONDS = 1.0
_recounted: dict[tuple[str, int], float] = {}  # (database, batch id): last count here


def update_progress(engine: Engine, batch_id: int, *, now: datetime) -> tuple[bool, str]:
    """Refresh `finished` from job statuses (at most every `RECOUNT_SECONDS` here);
    flip an open batch none of whose jobs is pending to complete.

    Returns (this call flipped it, the status now). Only one caller can flip: the
    UPDATE is conditional on ``status = 'open'``.
    """
    clock, seen = time.monotonic(), (str(engine.url), batch_id)
    recount = clock - _recounted.get(seen, float("-inf")) >= RECOUNT_SECONDS
    pending = select(Job.id).where(col(Job.batch_id) == batch_id,
                                   col(Job.status) == JobStatus.PENDING).exists()
    if not recount:
        # Most chunks have nothing to write: jobs are still pending and the count is
        # fresh. Asked without the write lock; each chunk asks after its own commit, so
        # the last to finish sees none pending and flips the batch below.
        with reading(engine) as conn:
            status, waiting = conn.execute(select(Batch.status, pending.label("waiting"))
                                           .where(Batch.id == batch_id)).one()
        if waiting or status != BatchStatus.OPEN:
            if status not in (BatchStatus.LOADING, BatchStatus.OPEN):
                _recounted.pop(seen, None)
            return False, status
    with session_scope(engine) as session:
        if recount:
            done = (select(func.count()).select_from(Job)
                    .where(col(Job.batch_id) == batch_id, col(Job.status).in_(FINAL))
                    .scalar_subquery())
            session.execute(update(Batch).where(
                col(Batch.id) == batch_id,
                col(Batch.status).in_((BatchStatus.LOADING, BatchStatus.OPEN)))
                .values(finished=done))
        flipped = session.execute(
            update(Batch).where(col(Batch.id) == batch_id,
                                col(Batch.status) == BatchStatus.OPEN, ~pending)
            .values(status=BatchStatus.COMPLETE, finished=Batch.total,
                    finished_at=now)
        ).rowcount == 1  # type: ignore[attr-defined]
        status = session.exec(select(Batch.status).where(Batch.id == batch_id)).one()
    if status in (BatchStatus.LOADING, BatchStatus.OPEN):
        if recount:
            _recounted[seen] = clock
    else:
        _recounted.pop(seen, None)
    if flipped:
        log.info("batch %s complete", batch_id)
    return flipped, status


def set_status(engine: Engine, batch_id: int, expected: BatchStatus | tuple[BatchStatus, ...],
               *, lease: Lease | None = None, **values: Any) -> bool:
    """Move the batch on from `expected` (a conditional UPDATE); True if this call did.
    With `lease`: only while it is held, and the lease ends with it."""
    allowed = (expected,) if isinstance(expected, BatchStatus) else expected
    where = [col(Batch.id) == batch_id, col(Batch.status).in_(allowed)]
    if lease is not None:
        where.append(col(Batch.loader) == lease.holder)
        values.update(loader=None, lease_until=None)
    with session_scope(engine) as session:
        return session.execute(update(Batch).where(*where)
                               .values(**values)).rowcount == 1  # type: ignore[attr-defined]


def batch_result(engine: Engine, batch_id: int, *, duplicate: bool = False) -> BatchResult:
    with session_scope(engine) as session:
        batch = session.exec(select(Batch).where(Batch.id == batch_id)).one()
        counts = {str(status): int(n) for status, n in session.exec(
            select(Job.status, func.count()).where(col(Job.batch_id) == batch_id)
            .group_by(Job.status))}
    keys = list(report_keys(batch)) if batch.report_name else []
    return BatchResult(batch_id=batch_id, tenant=batch.tenant, source=batch.source,
                       sha256=batch.sha256, status=batch.status, reason=batch.reason,
                       message=batch.message, total=batch.total, finished=batch.finished,
                       counts=counts, report_keys=keys, duplicate=duplicate)


def manifest_key(batch: Batch) -> str:
    """``_batches/<tenant>/<batch id>.members.ndjson`` in the inbox store."""
    return check_key(f"{MANIFEST_AREA}/{batch.tenant}/{batch.id}.members.ndjson")


def report_keys(batch: Batch) -> tuple[str, str]:
    """``<tenant>/batches/<archive name>.<sha12>.report.json`` and ``.csv``."""
    base = f"batches/{archive_name(batch.source)[:150]}.{batch.sha256[:12]}.report"
    return outbox_key(batch.tenant, base + ".json"), outbox_key(batch.tenant, base + ".csv")


def archive_name(source: str) -> str:
    """A file-name-safe base name of the archive, from the batch source."""
    if source.startswith("cli:"):
        name = source[4:]
    else:
        parsed = parse_processing_key(source) or parse_arrival_key(source)
        name = CLAIM_MARK.sub("", parsed[1]) if parsed else source
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return _UNSAFE_CHARS.sub("_", base).lstrip(".") or "archive"
