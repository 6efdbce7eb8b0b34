"""The processing core: parse → verify → apply → render, recorded on a Job, exactly once.

`process()` is the single-file entry; `process_many()` runs a batch in two
transactions (register, then apply with one savepoint per file) so throughput does
not pay a commit per file. Celery tasks and the embedded runner both call these.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine, bindparam, insert, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from airlock_sdk.envelope import DEVICE_KID_PREFIX, ENC_SEALED, Envelope, FormatError, Kind
from airlock_sdk.envelope import open_envelope as _open_envelope
from airlock_sdk.payloads import validate
from models import AppliedRequest, Customer, Job, JobOutput, JobStatus
from models.db import is_postgres, session_scope
from models.ledger import FINAL_STATUSES
from models.types import utcnow
from pipelines.errors import Rejection
from pipelines.keyring import VendorKeyring
from pipelines.layout import OPERATOR
from pipelines.ledger import Submission, outputs_of, register
from pipelines.render import rejection_name, rejection_report
from pipelines.rules.activation import apply_activation
from pipelines.rules.common import Applied, RuleContext
from pipelines.rules.deactivation import apply_deactivation
from pipelines.rules.refresh import apply_refresh

log = logging.getLogger("airlock.process")

ACCEPTED_KINDS = frozenset({Kind.ACTIVATION_REQUEST, Kind.DEACTIVATION, Kind.REFRESH_REQUEST})
RULES: dict[Kind, Callable[[RuleContext], Applied]] = {
    Kind.ACTIVATION_REQUEST: apply_activation,
    Kind.DEACTIVATION: apply_deactivation,
    Kind.REFRESH_REQUEST: apply_refresh,
}


@dataclass(frozen=True)
class Processor:
    """The collaborators every stage needs, passed in once."""

    keyring: VendorKeyring
    clock: Callable[[], datetime] = utcnow
    max_bytes: int = 256 * 1024
    max_attempts: int = 5
    known_tenants: set[str] = field(default_factory=set, compare=False)  # positive cache


@dataclass
class Outcome:
    job_id: int
    tenant: str
    status: str  # done | rejected | quarantined
    reason: str | None = None
    message: str | None = None
    kind: str | None = None
    request_id: str | None = None
    outputs: list[tuple[str, bytes]] = field(default_factory=list)
    duplicate: bool = False  # the effects were applied by an earlier delivery

    @property
    def accepted(self) -> bool:
        return self.status == JobStatus.DONE


# --- stages ---------------------------------------------------------------------------------


def verify(data: bytes, *, processor: Processor, tenant: str) -> Envelope:
    """Size, armour, signature, decryption, payload schema, and who may send what where."""
    ring = processor.keyring
    envelope = _open_envelope(data, resolve_verify_key=ring.any_verify_key,
                              resolve_unseal_key=ring.unseal_key, kinds=ACCEPTED_KINDS,
                              max_bytes=processor.max_bytes)
    validate(envelope.kind, envelope.payload)
    from_device = envelope.kid.startswith(DEVICE_KID_PREFIX)
    if from_device and envelope.header["enc"] != ENC_SEALED:
        raise Rejection("not_sealed")
    if tenant == OPERATOR and from_device:
        raise Rejection("needs_tenant")
    if not from_device and envelope.kind is not Kind.REFRESH_REQUEST:
        raise Rejection("wrong_kind", "Only refresh requests may be signed by the vendor.")
    return envelope


def apply(session: Session, envelope: Envelope, *, processor: Processor, job: Job,
          now: datetime) -> Applied:
    """Run the rule for the file's kind inside the caller's transaction."""
    ctx = RuleContext(session=session, keyring=processor.keyring, now=now,
                      tenant=None if job.tenant == OPERATOR else job.tenant, job=job,
                      envelope=envelope)
    return RULES[envelope.kind](ctx)


# --- entry points ---------------------------------------------------------------------------


def process(data: bytes, *, engine: Engine, tenant: str, processor: Processor,
            source: str = "") -> Outcome:
    """Process one file that arrived for `tenant` (a customer code, or OPERATOR)."""
    return process_many([Submission(tenant=tenant, data=data, source=source)], engine=engine,
                        processor=processor)[0]


def process_many(submissions: Sequence[Submission], *, engine: Engine,
                 processor: Processor) -> list[Outcome]:
    now = processor.clock()
    with session_scope(engine) as session:
        jobs = register(session, submissions, now=now)
    return process_jobs([job.id for job in jobs], engine=engine, processor=processor)  # type: ignore[misc]


def process_jobs(job_ids: Sequence[int], *, engine: Engine, processor: Processor) -> list[Outcome]:
    """Apply registered jobs in one transaction, one savepoint each; finished jobs replay."""
    outcomes: dict[int, Outcome] = {}
    with session_scope(engine) as session, session.no_autoflush:
        jobs = _lock_jobs(session, list(dict.fromkeys(job_ids)))
        for job in jobs:
            outcomes[job.id] = _process_job(session, job, processor)  # type: ignore[index]
    return [outcomes[job_id] for job_id in job_ids]


def _lock_jobs(session: Session, job_ids: list[int]) -> list[Job]:
    """Load (and on PostgreSQL lock, in id order: no deadlocks) the jobs of a chunk."""
    query = select(Job).where(col(Job.id).in_(job_ids)).order_by(Job.id)
    if is_postgres(session.get_bind()):  # type: ignore[arg-type]
        query = query.with_for_update()
    jobs = {job.id: job for job in session.exec(query.execution_options(populate_existing=True))}
    # Detached: the job rows are written with plain UPDATEs in _finish_*, so the unit of
    # work never has to diff and flush them.
    for job in jobs.values():
        session.expunge(job)
    return [jobs[job_id] for job_id in job_ids if job_id in jobs]


def _process_job(session: Session, job: Job, processor: Processor) -> Outcome:
    if job.status in FINAL_STATUSES:
        return _stored_outcome(session, job, duplicate=True)
    now = processor.clock()
    if job.attempts > processor.max_attempts:
        return _finish_rejected(session, job, Rejection("poison"), None, now, processor,
                                status=JobStatus.QUARANTINED)
    envelope: Envelope | None = None
    for _ in range(3):
        savepoint = session.begin_nested()
        try:
            _check_tenant_exists(session, job.tenant, processor)
            envelope = verify(job.payload or b"", processor=processor, tenant=job.tenant)
            job.kind = envelope.kind
            job.request_id = envelope.request_id
            replayed = _claim_request(session, job, envelope, now)
            if replayed is not None:
                savepoint.commit()
                return _finish_done(session, job, replayed, now, duplicate=True)
            applied = apply(session, envelope, processor=processor, job=job, now=now)
            savepoint.commit()
            return _finish_done(session, job, applied.outputs, now)
        except (Rejection, FormatError) as exc:
            savepoint.rollback()
            rejection = exc if isinstance(exc, Rejection) else Rejection(exc.reason, exc.message)
            return _finish_rejected(session, job, rejection, envelope, now, processor)
        except IntegrityError:
            # A concurrent worker applied the same request id first (PostgreSQL): undo and
            # look again; the second pass finds its row and replays or refuses.
            savepoint.rollback()
    raise RuntimeError(f"job {job.id}: the request id claim did not settle")


def _check_tenant_exists(session: Session, tenant: str, processor: Processor) -> None:
    if tenant == OPERATOR or tenant in processor.known_tenants:
        return
    if session.exec(select(Customer.id).where(Customer.code == tenant)).first() is None:
        raise Rejection("unknown_tenant")
    processor.known_tenants.add(tenant)


def _claim_request(session: Session, job: Job, envelope: Envelope,
                   now: datetime) -> list[tuple[str, bytes]] | None:
    """Reserve (tenant, request id). Returns the earlier outputs if this request already ran
    from an equivalent file; raises `replay` if it ran with different content."""
    # One round trip in the common case: the unique key decides now, before any effect
    # is applied; no row back means the id was taken (by an earlier or concurrent job).
    claimed = session.execute(_dialect_insert(session)(AppliedRequest.__table__).values(
        tenant=job.tenant, request_id=envelope.request_id, sha256=envelope.digest,
        job_id=job.id, applied_at=now).on_conflict_do_nothing(
        index_elements=["tenant", "request_id"]).returning(AppliedRequest.__table__.c.id)
    ).first()
    if claimed is not None:
        return None
    existing = session.execute(select(AppliedRequest.sha256, AppliedRequest.job_id).where(
        AppliedRequest.tenant == job.tenant,
        AppliedRequest.request_id == envelope.request_id)).first()
    if existing is None:
        # PostgreSQL: the other claim rolled back after we waited for it; look again.
        raise IntegrityError("applied_request claim", None, Exception("claim lost"))
    if existing.sha256 != envelope.digest:
        raise Rejection("replay")
    return outputs_of(session, existing.job_id)


def _dialect_insert(session: Session):  # type: ignore[no-untyped-def]
    return pg_insert if is_postgres(session.get_bind()) else sqlite_insert  # type: ignore[arg-type]


_JOB = Job.__table__
_FINISH_JOB = update(_JOB).where(_JOB.c.id == bindparam("row")).values(
    {name: bindparam(name) for name in ("status", "reason", "message", "kind", "request_id",
                                        "finished_at", "updated_at")})
_INSERT_OUTPUT = insert(JobOutput.__table__)


def _finish(session: Session, job: Job, outputs: Sequence[tuple[str, bytes]]) -> None:
    """Write the job's final state and its outputs with two plain, prebuilt statements."""
    session.execute(_FINISH_JOB, {
        "row": job.id, "status": job.status, "reason": job.reason, "message": job.message,
        "kind": job.kind, "request_id": job.request_id, "finished_at": job.finished_at,
        "updated_at": job.updated_at})
    if outputs:
        session.execute(_INSERT_OUTPUT, [
            {"job_id": job.id, "name": name, "content": content} for name, content in outputs])


def _finish_done(session: Session, job: Job, outputs: list[tuple[str, bytes]], now: datetime,
                 *, duplicate: bool = False) -> Outcome:
    job.status = JobStatus.DONE
    job.reason = None
    job.message = None
    job.finished_at = now
    job.updated_at = now
    _finish(session, job, outputs)
    log.info("job %s %s %s done", job.id, job.tenant, job.kind)
    return Outcome(job_id=job.id, tenant=job.tenant, status=job.status, kind=job.kind,  # type: ignore[arg-type]
                   request_id=job.request_id, outputs=list(outputs), duplicate=duplicate)


def _finish_rejected(session: Session, job: Job, rejection: Rejection,
                     envelope: Envelope | None, now: datetime, processor: Processor,
                     status: JobStatus = JobStatus.REJECTED) -> Outcome:
    request_id = envelope.request_id if envelope is not None else None
    if envelope is not None:
        job.kind = envelope.kind
    report = rejection_report(processor.keyring, request_id=request_id,
                              request_sha256=envelope.digest if envelope else job.sha256,
                              issued_at=now, reason=rejection.reason, message=rejection.message)
    outputs = [(rejection_name(request_id, job.sha256), report), *rejection.attachments]
    job.status = status
    job.reason = rejection.reason
    job.message = rejection.message
    job.request_id = request_id
    job.finished_at = now
    job.updated_at = now
    _finish(session, job, outputs)
    log.info("job %s %s rejected: %s", job.id, job.tenant, rejection.reason)
    return Outcome(job_id=job.id, tenant=job.tenant, status=status, reason=rejection.reason,  # type: ignore[arg-type]
                   message=rejection.message, kind=job.kind, request_id=request_id,
                   outputs=outputs)


def _stored_outcome(session: Session, job: Job, *, duplicate: bool) -> Outcome:
    return Outcome(job_id=job.id, tenant=job.tenant, status=job.status, reason=job.reason,  # type: ignore[arg-type]
                   message=job.message, kind=job.kind, request_id=job.request_id,
                   outputs=outputs_of(session, job.id), duplicate=duplicate)  # type: ignore[arg-type]

