"""The processing core: parse → verify → apply → render, recorded on a Job, exactly once.

`process()` is the single-file entry; `process_many()` registers a batch in one
transaction and `process_jobs()` applies registered jobs as one chunk in one more:
the files are verified first, the rows they name are loaded in sets (a WorkSet),
the rules run in memory in file order, and the changes are written with a few
executemany statements. Celery tasks, bulk imports and the embedded runner all
call these.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from airlock_sdk.envelope import DEVICE_KID_PREFIX, ENC_SEALED, Envelope, FormatError, Kind
from airlock_sdk.envelope import open_envelope as _open_envelope
from airlock_sdk.payloads import parse_time, validate
from models import AuthMethod, JobStatus
from models.db import ids_param, is_postgres, reading, session_scope
from models.fastrows import RowWriter
from models.ledger import FINAL_STATUSES
from models.tables import EVALUATION, JOB
from models.types import utcnow
from pipelines.errors import QUARANTINE_REASONS, Rejection, RejectReason
from pipelines.keyring import VendorKeyring
from pipelines.layout import OPERATOR
from pipelines.ledger import Submission, register, unregistered
from pipelines.passwords import check_password
from pipelines.render import rejection_name, rejection_report
from pipelines.rules import ACCEPTED_KINDS, RULES
from pipelines.rules.common import (
    Applied,
    Credentials,
    Lockout,
    PasswordMatch,
    RuleContext,
)
from pipelines.workset import CUSTOMER, LICENSE, OUTPUT, PRODUCT, USER, WorkSet

log = logging.getLogger("airlock.process")



@dataclass(frozen=True)
class Processor:
    """The collaborators every stage needs, passed in once."""

    keyring: VendorKeyring
    clock: Callable[[], datetime] = utcnow
    max_bytes: int = 256 * 1024
    max_attempts: int = 5
    lockout: Lockout = field(default_factory=Lockout)


@dataclass
class Outcome:
    job_id: int
    tenant: str
    status: str  # done | rejected | quarantined
    reason: str | None = None  # precise: for the vendor
    message: str | None = None
    public_reason: str | None = None  # what the sender is told
    kind: str | None = None
    request_id: str | None = None
    outputs: list[tuple[str, bytes]] = field(default_factory=list)
    duplicate: bool = False  # the effects were applied by an earlier delivery
    registered_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def accepted(self) -> bool:
        return self.status == JobStatus.DONE


# --- stages ---------------------------------------------------------------------------------


# Request ids of vendor-signed files are claimed once for every area together.
VENDOR_SCOPE = "*"


def verify(data: bytes, *, processor: Processor, tenant: str, now: datetime) -> Envelope:
    """Size, armour, signature, decryption, payload schema, and who may send what where."""
    ring = processor.keyring
    envelope = _open_envelope(data, resolve_verify_key=ring.any_verify_key,
                              resolve_unseal_key=ring.unseal_key, kinds=ACCEPTED_KINDS,
                              max_bytes=processor.max_bytes)
    validate(envelope.kind, envelope.payload)
    from_device = envelope.kid.startswith(DEVICE_KID_PREFIX)
    if from_device and envelope.header["enc"] != ENC_SEALED:
        raise Rejection(RejectReason.NOT_SEALED)
    if tenant == OPERATOR and from_device:
        raise Rejection(RejectReason.NEEDS_TENANT)
    if not from_device and envelope.kind is not Kind.REFRESH_REQUEST:
        raise Rejection(RejectReason.WRONG_KIND,
                        "Only refresh requests may be signed by the vendor.")
    if not from_device:
        expires_at = parse_time(envelope.payload.get("expires_at"))
        if expires_at is None:
            raise Rejection(RejectReason.MALFORMED,
                            "A vendor-signed request must say when it expires.")
        if expires_at <= now:
            raise Rejection(RejectReason.EXPIRED_REQUEST)
    return envelope


def apply(state: WorkSet, envelope: Envelope, *, processor: Processor, job: Any,
          now: datetime, credentials: Credentials | None = None) -> Applied:
    """Run the rule for the file's kind against the chunk's rows (`job`: its job row)."""
    ctx = RuleContext(state=state, keyring=processor.keyring, now=now,
                      tenant=None if job.tenant == OPERATOR else job.tenant, job_id=job.id,
                      envelope=envelope, credentials=credentials, lockout=processor.lockout)
    return RULES[envelope.kind].apply(ctx)


def check_credentials(conn: Connection, envelope: Envelope, tenant: str) -> Credentials | None:
    """Verify a user activation's password against the arriving tenant's users of the
    product (a dummy verification when there are none), outside any write transaction:
    argon2 is slow on purpose, and another tenant's user is no user at all here."""
    payload = envelope.payload
    if envelope.kind is not Kind.ACTIVATION_REQUEST or payload["auth"]["method"] != "user":
        return None
    email = payload["auth"]["email"].strip().lower()
    password = payload["auth"]["password"]
    rows = conn.execute(
        select(USER.c.id, USER.c.password_hash, LICENSE.c.id.label("license_id"))
        .join(LICENSE, LICENSE.c.id == USER.c.license_id)
        .join(CUSTOMER, CUSTOMER.c.id == LICENSE.c.customer_id)
        .join(PRODUCT, PRODUCT.c.id == LICENSE.c.product_id)
        .where(USER.c.email == email, PRODUCT.c.code == payload["product"],
               LICENSE.c.auth_method == AuthMethod.USER, CUSTOMER.c.code == tenant)
        .order_by(LICENSE.c.id)).all()
    matches = []
    for row in rows:
        check = check_password(password, row.password_hash)
        if check.ok:
            matches.append(PasswordMatch(license_id=row.license_id, user_id=row.id,
                                         rehash=check.rehash))
    if not rows:
        check_password(password, None)
    return Credentials(email=email, matches=tuple(matches))


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


_RETRIES = 3


def process_jobs(job_ids: Sequence[int], *, engine: Engine, processor: Processor,
                 verified: Mapping[int, Verified] | None = None,
                 now: datetime | None = None) -> list[Outcome]:
    """Apply registered jobs as one chunk in one transaction; finished jobs replay.

    `verified`: files of the chunk the caller verified already (`verify_first`), at
    `now`, then the chunk's instant. A chunk that lost a race on PostgreSQL (a request
    id claimed by another worker in the meantime, or a deadlock) is rolled back whole
    and run again: the second run sees the other worker's claim and replays or refuses
    accordingly.
    """
    order = list(dict.fromkeys(job_ids))
    if now is None:
        now = processor.clock()  # one instant for the chunk: verified, applied, recorded
    verified = dict(verified or {})  # kept across a retry
    rest = [job_id for job_id in order if job_id not in verified]
    if rest:
        verified.update(_verify_open_jobs(engine, rest, processor, now))
    for attempt in range(1, _RETRIES + 1):
        try:
            with engine.begin() as conn:
                outcomes = _run_chunk(conn, order, processor, verified, now)
            break
        except DBAPIError as exc:
            if attempt == _RETRIES or not _lost_race(exc):
                raise
            log.info("chunk of %d jobs lost a race (%s); running it again", len(order),
                     type(exc.orig).__name__)
    return [outcomes[job_id] for job_id in job_ids]


Verified = tuple[Envelope, Credentials | None] | Rejection


def verify_first(engine: Engine, processor: Processor, submissions: Sequence[Submission],
                 now: datetime) -> dict[int, Verified]:
    """Verify `submissions` before they are registered (by position), so that the write
    transactions that register and apply them follow each other: on SQLite another
    process then writes during the verification, not between them.

    Only for files the caller knows no earlier run has opened (claimed just now): one
    that kills this process was not counted, and is counted from the run that takes it
    again. Content a job row holds already is left to `process_jobs`, which counts the
    attempt first and never opens a file past its attempts, so each runner opens a
    content uncounted at most once: `max_attempts` + 1 tries with one runner. So is a
    file whose verification raised; a database error ends the early verification."""
    results: dict[int, Verified] = {}
    with reading(engine) as conn:
        new = unregistered(conn, [s for s in submissions if s.refusal is None])
        seen: dict[tuple[str, str], Verified] = {}
        for index, submission in enumerate(submissions):
            key = (submission.tenant, submission.sha256)
            if key not in new:  # registered already, or refused unread
                continue
            if key not in seen:
                try:
                    seen[key] = _verify(conn, submission.data, processor, submission.tenant,
                                        now)
                except DBAPIError as exc:  # the read transaction may be gone with it
                    log.debug("verifying early stopped: %s", exc)
                    break
                except Exception as exc:  # noqa: BLE001 - raised again once its attempt counts
                    log.debug("verifying %s early failed: %s", submission.source, exc)
                    new.discard(key)
                    continue
            results[index] = seen[key]
    return results


_OPEN_PAYLOADS = select(JOB.c.id, JOB.c.tenant, JOB.c.payload, JOB.c.reason).where(
    JOB.c.id.in_(ids_param()), JOB.c.status == JobStatus.PENDING,
    JOB.c.attempts <= bindparam("max_attempts"))


def _verify_open_jobs(engine: Engine, job_ids: list[int], processor: Processor,
                      now: datetime) -> dict[int, Verified]:
    """Verify the chunk's unfinished files before its write transaction opens: the
    signatures and password hashes are the slow part, and on SQLite another process
    writes meanwhile. Files past `max_attempts` are not opened at all (one may be what
    crashed us)."""
    with reading(engine) as conn:
        payloads = conn.execute(_OPEN_PAYLOADS, {"ids": job_ids,
                                                 "max_attempts": processor.max_attempts}).all()
        return {row.id: _verify(conn, row.payload, processor, row.tenant, now, row.reason)
                for row in payloads}


def _lost_race(exc: DBAPIError) -> bool:
    return isinstance(exc, IntegrityError) or getattr(exc.orig, "sqlstate", None) in {
        "40P01", "40001"}  # deadlock detected, serialization failure


def _run_chunk(conn: Connection, job_ids: list[int], processor: Processor,
               verified: dict[int, Verified], now: datetime) -> dict[int, Outcome]:
    jobs = _lock_jobs(conn, job_ids)
    state = WorkSet(conn)
    outcomes: dict[int, Outcome] = {}
    finished: list[dict[str, Any]] = []
    stored = _stored_outputs(conn, [j.id for j in jobs if j.status in FINAL_STATUSES])
    todo: list[tuple[Any, Verified]] = []
    known_tenants: set[str] = set()
    for job in jobs:
        if job.status in FINAL_STATUSES:
            outcomes[job.id] = Outcome(
                job_id=job.id, tenant=job.tenant, status=job.status, reason=job.reason,
                message=job.message, public_reason=job.public_reason, kind=job.kind,
                request_id=job.request_id, outputs=stored.get(job.id, []), duplicate=True)
        elif job.attempts > processor.max_attempts:
            outcomes[job.id] = _rejected(job, Rejection(RejectReason.POISON), None, processor,
                                         finished, now, status=JobStatus.QUARANTINED)
        elif not _tenant_exists(conn, job.tenant, known_tenants):
            todo.append((job, Rejection(RejectReason.UNKNOWN_TENANT)))
        else:
            if job.id not in verified:  # pending again since the verification pass
                payload = conn.execute(select(_JOB.c.payload).where(_JOB.c.id == job.id))
                verified[job.id] = _verify(conn, payload.scalar_one(), processor, job.tenant,
                                           now, job.reason)
            todo.append((job, verified[job.id]))
    envelopes = [(job.tenant, v[0]) for job, v in todo if not isinstance(v, Rejection)]
    rules = [(RULES[e.kind], e.payload) for _, e in envelopes]
    state.prefetch(license_keys=[k for rule, p in rules for k in rule.license_keys(p)],
                   devices=[d for rule, p in rules if (d := rule.device(p)) is not None],
                   claims=[(_claim_scope(tenant, e), e.request_id) for tenant, e in envelopes
                           if e.request_id is not None])
    for job, result in todo:
        if isinstance(result, Rejection):
            status = (JobStatus.QUARANTINED if result.reason in QUARANTINE_REASONS
                      else JobStatus.REJECTED)
            outcomes[job.id] = _rejected(job, result, None, processor, finished, now,
                                         status=status)
            continue
        envelope, credentials = result
        state.begin_job()
        try:
            outputs, duplicate = _apply_once(state, job, envelope, credentials, processor,
                                             now)
        except Rejection as rejection:
            state.rollback_job()
            outcomes[job.id] = _rejected(job, rejection, envelope, processor, finished, now)
            continue
        state.commit_job(job.id, outputs)
        outcomes[job.id] = _done(job, envelope, outputs, finished, now, duplicate=duplicate)
    state.flush()
    _write_finished(conn, finished)
    return outcomes


def _verify(conn: Connection, payload: bytes | None, processor: Processor,
            tenant: str, now: datetime, refusal: str | None = None) -> Verified:
    """The verified envelope and credentials, or the rejection; a file registered
    with a refusal and no payload (refused before it was read) is just that."""
    if payload is None and refusal:
        return Rejection(refusal)
    try:
        envelope = verify(payload or b"", processor=processor, tenant=tenant, now=now)
        return envelope, check_credentials(conn, envelope, tenant)
    except Rejection as rejection:
        return rejection
    except FormatError as exc:
        return Rejection(exc.reason, exc.message)


def _claim_scope(tenant: str, envelope: Envelope) -> str:
    """Device request ids are claimed per tenant; the vendor's once for all areas."""
    return tenant if envelope.kid.startswith(DEVICE_KID_PREFIX) else VENDOR_SCOPE


def _apply_once(state: WorkSet, job: Any, envelope: Envelope, credentials: Credentials | None,
                processor: Processor, now: datetime) -> tuple[list[tuple[str, bytes]], bool]:
    """Claim the request id and apply. The same file again gives back its outputs;
    other content under the id, or a vendor request again in another area, is a replay."""
    scope = _claim_scope(job.tenant, envelope)
    request_id = envelope.payload["request_id"]
    earlier = state.claim_of(scope, request_id)
    if earlier is not None:
        sha256, earlier_job = earlier
        if sha256 != envelope.digest or (scope == VENDOR_SCOPE and earlier_job != job.id):
            raise Rejection(RejectReason.REPLAY)
        return state.outputs_of(earlier_job), True
    state.claim(scope, request_id, envelope.digest, job.id, now)
    applied = apply(state, envelope, processor=processor, job=job, now=now,
                    credentials=credentials)
    return applied.outputs, False


_JOB = JOB
# No payload: the verification pass before the transaction has read it already.
_JOB_COLUMNS = [_JOB.c[name] for name in ("id", "tenant", "source", "sha256", "status",
                                          "attempts", "kind", "request_id", "reason",
                                          "public_reason", "message", "created_at")]


_JOBS = select(*_JOB_COLUMNS).where(_JOB.c.id.in_(ids_param())).order_by(_JOB.c.id)
_JOBS_FOR_UPDATE = _JOBS.with_for_update()


def _lock_jobs(conn: Connection, job_ids: list[int]) -> list[Any]:
    """Load (and on PostgreSQL lock, in id order: no deadlocks) the jobs of a chunk."""
    query = _JOBS_FOR_UPDATE if is_postgres(conn.engine) else _JOBS
    rows = {row.id: row for row in conn.execute(query, {"ids": job_ids})}
    return [rows[job_id] for job_id in job_ids if job_id in rows]


_OUTPUTS = select(OUTPUT.c.job_id, OUTPUT.c.name, OUTPUT.c.content).where(
    OUTPUT.c.job_id.in_(ids_param())).order_by(OUTPUT.c.id)


def _stored_outputs(conn: Connection, job_ids: list[int]) -> dict[int, list[tuple[str, bytes]]]:
    outputs: dict[int, list[tuple[str, bytes]]] = {}
    if job_ids:
        for row in conn.execute(_OUTPUTS, {"ids": job_ids}):
            outputs.setdefault(row.job_id, []).append((row.name, row.content))
    return outputs


def _tenant_exists(conn: Connection, tenant: str, known: set[str]) -> bool:
    """One query per tenant per chunk (`known`: the tenants this chunk found)."""
    if tenant == OPERATOR or tenant in known:
        return True
    if conn.execute(select(CUSTOMER.c.id).where(CUSTOMER.c.code == tenant)).first() is None:
        return False
    known.add(tenant)
    return True


_FINISHED = ("status", "reason", "public_reason", "message", "kind", "request_id",
             "finished_at", "updated_at")
_FINISH_JOB = RowWriter(update(_JOB).where(_JOB.c.id == bindparam("row")).values(
    {name: bindparam(name) for name in _FINISHED}), ["row", *_FINISHED])
_INSERT_OUTPUT = RowWriter(insert(OUTPUT), ["job_id", "name", "content"])
_INSERT_EVALUATION = RowWriter(insert(EVALUATION),
                               ["job_id", "at", "status", "reason", "public_reason"])


def _write_finished(conn: Connection, finished: list[dict[str, Any]]) -> None:
    """Every job's final state, outputs and evaluation, with prebuilt executemany
    statements."""
    if not finished:
        return
    outputs = [{"job_id": f["row"], "name": name, "content": content}
               for f in finished for name, content in f.pop("outputs")]
    _FINISH_JOB.run(conn, finished)
    _INSERT_EVALUATION.run(conn, [
        {"job_id": f["row"], "at": f["finished_at"], "status": f["status"],
         "reason": f["reason"], "public_reason": f["public_reason"]} for f in finished])
    _INSERT_OUTPUT.run(conn, outputs)


def _done(job: Any, envelope: Envelope, outputs: list[tuple[str, bytes]],
          finished: list[dict[str, Any]], now: datetime, *, duplicate: bool = False) -> Outcome:
    finished.append({"row": job.id, "status": JobStatus.DONE, "reason": None,
                     "public_reason": None, "message": None, "kind": envelope.kind,
                     "request_id": envelope.request_id,
                     "finished_at": now, "updated_at": now, "outputs": outputs})
    log.debug("job %s %s %s done", job.id, job.tenant, envelope.kind)
    return Outcome(job_id=job.id, tenant=job.tenant, status=JobStatus.DONE,
                   kind=envelope.kind, request_id=envelope.request_id, outputs=list(outputs),
                   duplicate=duplicate, registered_at=job.created_at, finished_at=now)


def _rejected(job: Any, rejection: Rejection, envelope: Envelope | None,
              processor: Processor, finished: list[dict[str, Any]], now: datetime,
              status: JobStatus = JobStatus.REJECTED) -> Outcome:
    request_id = envelope.request_id if envelope is not None else None
    kind = envelope.kind if envelope is not None else job.kind
    # The sender's report carries the public reason; the job keeps the precise one.
    report = rejection_report(processor.keyring, request_id=request_id,
                              request_sha256=envelope.digest if envelope else job.sha256,
                              issued_at=now, reason=rejection.public_reason,
                              message=rejection.public_message)
    outputs = [(rejection_name(request_id, job.sha256), report), *rejection.attachments]
    finished.append({"row": job.id, "status": status, "reason": rejection.reason,
                     "public_reason": rejection.public_reason, "message": rejection.message,
                     "kind": kind, "request_id": request_id, "finished_at": now,
                     "updated_at": now, "outputs": outputs})
    log.debug("job %s %s rejected: %s", job.id, job.tenant, rejection.reason)
    return Outcome(job_id=job.id, tenant=job.tenant, status=status, reason=rejection.reason,
                   message=rejection.message, public_reason=rejection.public_reason,
                   kind=kind, request_id=request_id, outputs=outputs,
                   registered_at=job.created_at, finished_at=now)
