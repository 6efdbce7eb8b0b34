"""Where the pipeline stands, per customer: what waits, what is in hand, what ended how.

Read-only: the inbox is listed (a customer's folder or prefix, and its ``_processing/``
area), the ledger counted. `airlock status`, the metrics' backlog gauges and the
vendor console all read this one picture.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Engine, func, select

from models import BatchStatus, JobStatus
from models.db import reading
from models.tables import BATCH, CUSTOMER, JOB
from pipelines.layout import PROCESSING, parse_arrival_key
from pipelines.storage.base import Store

WINDOWS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}


@dataclass
class Finished:
    """Files that ended in a window: done, and refused or quarantined by reason."""

    done: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    quarantined: dict[str, int] = field(default_factory=dict)


@dataclass
class BatchProgress:
    batch_id: int
    archive: str
    status: str
    finished: int
    total: int


@dataclass
class CustomerStatus:
    code: str
    waiting: int = 0  # in the inbox, not claimed yet
    in_hand: int = 0  # claimed (``_processing/``), not archived yet
    oldest_waiting_seconds: float | None = None
    pending_jobs: int = 0
    finished: dict[str, Finished] = field(default_factory=dict)
    batches: list[BatchProgress] = field(default_factory=list)


def customer_status(engine: Engine, inbox: Store, *, now: datetime,
                    customers: Iterable[str] | None = None) -> list[CustomerStatus]:
    """The status of every customer (or of `customers`), in code order."""
    with reading(engine) as conn:
        codes = sorted(conn.execute(select(CUSTOMER.c.code)).scalars())
    wanted = set(customers) if customers is not None else None
    found = {code: CustomerStatus(code) for code in codes
             if wanted is None or code in wanted}
    for status in found.values():
        _inbox_counts(inbox, status, now)
    _ledger_counts(engine, found, now)
    return list(found.values())


def _inbox_counts(inbox: Store, status: CustomerStatus, now: datetime) -> None:
    oldest: datetime | None = None
    for info in inbox.list(f"{status.code}/"):
        if parse_arrival_key(info.key) is None:
            continue  # an upload still under a temporary name, a hidden file
        status.waiting += 1
        oldest = info.modified if oldest is None else min(oldest, info.modified)
    status.in_hand = sum(1 for _ in inbox.list(f"{PROCESSING}/{status.code}/"))
    if oldest is not None:
        status.oldest_waiting_seconds = max(0.0, (now - oldest).total_seconds())


def _ledger_counts(engine: Engine, found: dict[str, CustomerStatus], now: datetime) -> None:
    if not found:
        return
    job = JOB.c
    codes = list(found)
    with reading(engine) as conn:
        for tenant, n in conn.execute(
                select(job.tenant, func.count()).where(job.tenant.in_(codes),
                                                       job.status == JobStatus.PENDING)
                .group_by(job.tenant)):
            found[tenant].pending_jobs = int(n)
        for window, span in WINDOWS.items():
            for status in found.values():
                status.finished[window] = Finished()
            rows = conn.execute(
                select(job.tenant, job.status, job.public_reason, func.count())
                .where(job.tenant.in_(codes), job.finished_at >= now - span)
                .group_by(job.tenant, job.status, job.public_reason))
            for tenant, state, reason, n in rows:
                finished = found[tenant].finished[window]
                if state == JobStatus.DONE:
                    finished.done += int(n)
                else:
                    counts = (finished.rejected if state == JobStatus.REJECTED
                              else finished.quarantined)
                    key = reason or "unknown"
                    counts[key] = counts.get(key, 0) + int(n)
        batch = BATCH.c
        for row in conn.execute(
                select(batch.id, batch.tenant, batch.source, batch.status, batch.finished,
                       batch.total)
                .where(batch.tenant.in_(codes), batch.status.in_(
                    (BatchStatus.LOADING, BatchStatus.OPEN, BatchStatus.COMPLETE)))
                .order_by(batch.id)):
            found[row.tenant].batches.append(BatchProgress(
                batch_id=row.id, archive=row.source.rsplit("/", 1)[-1], status=row.status,
                finished=row.finished, total=row.total))


@dataclass
class HourCount:
    """Files that finished in one hour (its start, UTC), by status."""

    start: datetime
    counts: dict[str, int] = field(default_factory=dict)


def hourly_outcomes(engine: Engine, *, now: datetime, hours: int = 24) -> list[HourCount]:
    """Files finished per hour over the last `hours` hours, oldest first (empty hours
    included); counted here, so every database answers the same way."""
    end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = end - timedelta(hours=hours)
    slots = [HourCount(start + timedelta(hours=n)) for n in range(hours)]
    with reading(engine) as conn:
        rows = conn.execute(select(JOB.c.finished_at, JOB.c.status)
                            .where(JOB.c.finished_at >= start))
        for finished_at, state in rows:
            index = int((finished_at - start).total_seconds() // 3600)
            if 0 <= index < hours:
                slot = slots[index].counts
                slot[state] = slot.get(state, 0) + 1
    return slots
