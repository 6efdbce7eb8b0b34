"""The ledger: one Job per incoming file, its outputs, and the effects it applied.

Exactly-once rests on three unique keys: (tenant, sha256) on Job (the same content
is one job however often it arrives), (tenant, request_id) on AppliedRequest (one
request id applies once; other content under the same id is a replay) and
(tenant, sha256) on Batch (an archive imports once).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel

from models.types import UTCDateTime, utcnow


class JobStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"
    REJECTED = "rejected"
    QUARANTINED = "quarantined"


FINAL_STATUSES = frozenset({JobStatus.DONE, JobStatus.REJECTED, JobStatus.QUARANTINED})


class BatchStatus(StrEnum):
    """Where a bulk archive stands (see `pipelines.bulk`)."""

    LOADING = "loading"  # checked as a whole; members being registered
    OPEN = "open"  # every member registered; chunks being applied
    COMPLETE = "complete"  # every job finished; the report is due
    REPORTED = "reported"  # report written, archive file archived
    REJECTED = "rejected"  # refused as a whole


def _ts() -> Column:  # type: ignore[type-arg]
    return Column(UTCDateTime(), nullable=False, default=utcnow)


class Batch(SQLModel, table=True):
    """A bulk archive; progress lives here, not in a chord."""

    __tablename__ = "batch"
    __table_args__ = (UniqueConstraint("tenant", "sha256"),)
    id: int | None = Field(default=None, primary_key=True)
    tenant: str = Field(max_length=32, index=True)
    source: str = Field(max_length=1024)
    sha256: str = Field(max_length=64)
    total: int = 0
    finished: int = 0
    status: str = Field(default=BatchStatus.LOADING, max_length=16)  # a BatchStatus
    reason: str | None = Field(default=None, max_length=64)
    message: str | None = None
    report_name: str | None = Field(default=None, max_length=256)
    # The import loading it (`pipelines.bulk.state.Lease`): one at a time, while LOADING.
    loader: str | None = Field(default=None, max_length=128)
    lease_until: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    finished_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))


class Job(SQLModel, table=True):
    __tablename__ = "job"
    __table_args__ = (
        UniqueConstraint("tenant", "sha256"),
        Index("ix_job_status", "status"),
        Index("ix_job_batch", "batch_id", "status"),
        Index("ix_job_claim", "status", "claimed_by"),
    )
    id: int | None = Field(default=None, primary_key=True)
    tenant: str = Field(max_length=32)
    source: str = Field(max_length=1024)
    sha256: str = Field(max_length=64)
    size: int = 0
    kind: str | None = Field(default=None, max_length=32)
    request_id: str | None = Field(default=None, max_length=64, index=True)
    status: str = Field(default=JobStatus.PENDING, max_length=16)
    attempts: int = 0
    reason: str | None = Field(default=None, max_length=64)  # precise, for the vendor only
    public_reason: str | None = Field(default=None, max_length=64)  # what the sender is told
    message: str | None = None
    batch_id: int | None = Field(default=None, foreign_key="batch.id")
    payload: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    # The worker process (a `WorkerBeat` name) that last took the job in distributed
    # mode; the sweep publishes again a pending job whose claimant stopped beating.
    claimed_by: str | None = Field(default=None, max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    finished_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))


class WorkerBeat(SQLModel, table=True):
    """A worker process that runs tasks, and when it last said it is alive (every few
    seconds while it lives; removed when it stops cleanly)."""

    __tablename__ = "worker_beat"
    name: str = Field(primary_key=True, max_length=200)  # host/pid/random
    started_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    beat_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class JobEvaluation(SQLModel, table=True):
    """One evaluation of a job: a refusal the vendor can fix is evaluated again when the
    file is sent again, and each outcome is kept here."""

    __tablename__ = "job_evaluation"
    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id", index=True)
    at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    status: str = Field(max_length=16)
    reason: str | None = Field(default=None, max_length=64)
    public_reason: str | None = Field(default=None, max_length=64)


class LoginFailure(SQLModel, table=True):
    """A failed password attempt of a user as seen from one area (the lockout counts these)."""

    __tablename__ = "login_failure"
    __table_args__ = (Index("ix_login_failure_user", "tenant", "email", "at"),)
    id: int | None = Field(default=None, primary_key=True)
    tenant: str = Field(max_length=32)
    email: str = Field(max_length=254)
    at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    job_id: int | None = None


class JobOutput(SQLModel, table=True):
    """A rendered result; stored so a redelivery writes byte-identical outbox files."""

    __tablename__ = "job_output"
    __table_args__ = (UniqueConstraint("job_id", "name"),)
    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id", index=True)
    name: str = Field(max_length=256)
    content: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class AppliedRequest(SQLModel, table=True):
    __tablename__ = "applied_request"
    __table_args__ = (UniqueConstraint("tenant", "request_id"),)
    id: int | None = Field(default=None, primary_key=True)
    tenant: str = Field(max_length=32)
    request_id: str = Field(max_length=64)
    sha256: str = Field(max_length=64)
    job_id: int = Field(foreign_key="job.id")
    applied_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class ConsumptionEvent(SQLModel, table=True):
    """Usage reported by a device at deactivation; overage is kept, never dropped."""

    __tablename__ = "consumption_event"
    id: int | None = Field(default=None, primary_key=True)
    license_id: int = Field(foreign_key="license.id", index=True)
    device_id: int = Field(foreign_key="device.id")
    job_id: int = Field(foreign_key="job.id")
    feature_code: str | None = Field(default=None, max_length=64)
    amount: int = Field(sa_type=BigInteger)
    overage: int = Field(default=0, sa_type=BigInteger)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_event"
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    tenant: str | None = Field(default=None, max_length=32)
    actor: str = Field(max_length=64)
    action: str = Field(max_length=64)
    license_id: int | None = Field(default=None, index=True)
    device_id: int | None = None
    job_id: int | None = None
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
