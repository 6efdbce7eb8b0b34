"""The operator's view of jobs: list them, show one whole, and retry what can be retried.

A retry goes through the normal path. A quarantined file, or one refused for a reason
the vendor can fix (`errors.FIXABLE_REASONS`), is opened again (pending, attempts from
zero, its earlier answer dropped: the evaluation stays in ``job_evaluation``) and its
source is moved from its archive back into the customer's inbox, where the runner or
watcher picks it up like any arrival. A bulk member has no file of its own: its job is
applied again from the stored bytes and its batch's report rewritten. An accepted file
is never applied again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update

from models import JobStatus
from models.db import reading, session_scope
from models.tables import AUDIT, BATCH, EVALUATION, JOB, OUTPUT
from pipelines.bulk.chunks import BulkEnv, run_chunk
from pipelines.bulk.report import redeliver_report
from pipelines.bulk.state import CLAIM_MARK, FINAL_BATCH, get_batch
from pipelines.errors import FIXABLE_REASONS
from pipelines.layout import (
    ERROR_SUFFIX,
    Disposition,
    archive_key,
    error_report_key,
    outbox_key,
    parse_arrival_key,
    parse_processing_key,
)
from pipelines.storage.base import InvalidKey, Store

_SUMMARY = ("id", "tenant", "source", "kind", "request_id", "status", "reason",
            "public_reason", "attempts", "batch_id", "created_at", "finished_at")
_RECORD = (*_SUMMARY, "sha256", "size", "message", "updated_at")


@dataclass(frozen=True)
class JobQuery:
    status: JobStatus | None = None
    customer: str | None = None
    reason: str | None = None  # matches the precise or the public reason
    since: datetime | None = None
    limit: int = 50


def list_jobs(engine: Engine, query: JobQuery) -> list[dict[str, Any]]:
    """The newest jobs first that match `query`: one summary dict each."""
    job = JOB.c
    statement = select(*(job[name] for name in _SUMMARY)).order_by(job.id.desc())
    if query.status is not None:
        statement = statement.where(job.status == query.status)
    if query.customer is not None:
        statement = statement.where(job.tenant == query.customer)
    if query.reason is not None:
        statement = statement.where((job.reason == query.reason)
                                    | (job.public_reason == query.reason))
    if query.since is not None:
        statement = statement.where(job.created_at >= query.since)
    with reading(engine) as conn:
        return [dict(row._mapping) for row in conn.execute(statement.limit(query.limit))]


def job_record(engine: Engine, inbox: Store, outbox: Store, job_id: int) -> dict[str, Any] | None:
    """Everything about one job: its row, every evaluation, its results and whether
    each is in the outbox, and where its source file is now (None: no such job)."""
    with reading(engine) as conn:
        row = conn.execute(select(*(JOB.c[name] for name in _RECORD))
                           .where(JOB.c.id == job_id)).first()
        if row is None:
            return None
        record = dict(row._mapping)
        record["evaluations"] = [dict(e._mapping) for e in conn.execute(
            select(EVALUATION.c.at, EVALUATION.c.status, EVALUATION.c.reason,
                   EVALUATION.c.public_reason)
            .where(EVALUATION.c.job_id == job_id).order_by(EVALUATION.c.id))]
        names = list(conn.execute(select(OUTPUT.c.name).where(OUTPUT.c.job_id == job_id)
                                  .order_by(OUTPUT.c.id)).scalars())
    keys = [outbox_key(record["tenant"], name) for name in names]
    there = outbox.which_exist(keys)
    record["results"] = [{"key": key, "in_outbox": key in there} for key in keys]
    record["source_now"] = locate_source(inbox, record,
                                         archive_sha256=_archive_sha256(engine, record))
    return record


def locate_source(inbox: Store, job: dict[str, Any], *,
                  archive_sha256: str | None = None) -> str | None:
    """The inbox key the job's file (for a bulk member: its archive, whose hash is
    `archive_sha256`) has now: still in hand, or archived under the disposition its
    status implies (the name may carry the content hash when the plain one was
    taken). None if it is not in the inbox store any more."""
    origin = _origin(job["source"])
    if origin is None:
        return None
    area, name, member = origin
    key = job["source"].split("!", 1)[0]
    if inbox.exists(key):
        return key
    if member:
        digest, dispositions = archive_sha256, [Disposition.PROCESSED, Disposition.REJECTED]
    else:
        final = job["status"] != JobStatus.PENDING
        digest = job["sha256"]
        dispositions = [Disposition.of(job["status"])] if final else list(Disposition)
    for disposition in dispositions:
        found = _archived(inbox, archive_key(disposition, area, name), digest)
        if found is not None:
            return found
    return None


def _origin(source: str) -> tuple[str, str, bool] | None:
    """(area, file name as it arrived, a bulk member?) for an inbox source key."""
    key, member, _ = source.partition("!")
    parsed = parse_processing_key(key) or parse_arrival_key(key)
    if parsed is None:
        return None
    return parsed[0], CLAIM_MARK.sub("", parsed[1]), bool(member)


def _archive_sha256(engine: Engine, job: dict[str, Any]) -> str | None:
    if job["batch_id"] is None:
        return None
    with reading(engine) as conn:
        return conn.execute(select(BATCH.c.sha256).where(
            BATCH.c.id == job["batch_id"])).scalar_one_or_none()


def _archived(inbox: Store, base: str, sha256: str | None) -> str | None:
    """The archive of that name holding the content `sha256`: ``base`` itself or
    ``base.<sha12>[.n]`` (`layout.archive_key_candidates`)."""
    try:
        stored = [info.key for info in inbox.list(base)
                  if not info.key.endswith(ERROR_SUFFIX)]
    except InvalidKey:
        return None
    for key in stored:
        if key != base and not key.startswith(f"{base}."):
            continue
        if sha256 is None or _holds(inbox, key, base, sha256):
            return key
    return None


def _holds(inbox: Store, key: str, base: str, sha256: str) -> bool:
    """Does the archived `key` hold `sha256`? Its name says so when it carries the
    hash; else the report beside it; else its bytes."""
    if key != base:
        return key.removeprefix(f"{base}.").split(".", 1)[0] == sha256[:12]
    try:
        report = json.loads(inbox.get(error_report_key(key)))
        return bool(report.get("sha256") == sha256)
    except (FileNotFoundError, ValueError):
        pass
    digest = hashlib.sha256()
    with inbox.open(key) as handle:
        for block in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest() == sha256


# --- retry ----------------------------------------------------------------------------------


class RetryResult(StrEnum):
    REQUEUED = "requeued"  # back in the inbox: processed when the runner picks it up
    APPLIED = "applied"  # a bulk member, applied again now
    NOT_RETRYABLE = "not_retryable"
    NOT_FOUND = "not_found"


@dataclass
class Retried:
    job_id: int
    result: RetryResult
    detail: str
    status: str | None = None  # the job's status after the retry, where known
    extra: dict[str, Any] = field(default_factory=dict)


def retryable(status: str, reason: str | None) -> bool:
    return status == JobStatus.QUARANTINED or (
        status == JobStatus.REJECTED and reason in FIXABLE_REASONS)


def select_retry(engine: Engine, *, status: JobStatus, reason: str | None = None,
                 customer: str | None = None, limit: int = 10_000) -> list[int]:
    """Ids of the jobs `retry --status … [--reason] [--customer]` names."""
    jobs = list_jobs(engine, JobQuery(status=status, reason=reason, customer=customer,
                                      limit=limit))
    return sorted(job["id"] for job in jobs)


def retry_jobs(env: BulkEnv, job_ids: Sequence[int], *, actor: str = "operator"
               ) -> list[Retried]:
    """Retry each job (see the module); what was done, per job, in the order given."""
    return [_retry_one(env, job_id, actor) for job_id in dict.fromkeys(job_ids)]


def _retry_one(env: BulkEnv, job_id: int, actor: str) -> Retried:
    with reading(env.engine) as conn:
        row = conn.execute(select(*(JOB.c[name] for name in _RECORD))
                           .where(JOB.c.id == job_id)).first()
    if row is None:
        return Retried(job_id, RetryResult.NOT_FOUND, "no such job")
    job = dict(row._mapping)
    if not retryable(job["status"], job["reason"]):
        why = ("it was accepted; an accepted file is never applied again"
               if job["status"] == JobStatus.DONE else
               "it is still pending" if job["status"] == JobStatus.PENDING else
               f"it was refused for {job['reason']}, which a retry cannot change")
        return Retried(job_id, RetryResult.NOT_RETRYABLE, why, job["status"])
    source = None if job["batch_id"] is not None else locate_source(env.inbox, job)
    now = env.processor.clock()
    unread = _unread(env.engine, job_id)
    if unread and source is not None and (origin := _origin(job["source"])) is not None:
        # Refused before it was read (not a regular file, unreadable): nothing of it is
        # stored to apply again. The entry goes back and arrives anew, as a new job.
        target = _back_to_inbox(env.inbox, source, origin[0], origin[1], job["sha256"])
        _audit_retry(env.engine, job, now, actor)
        return Retried(job_id, RetryResult.REQUEUED,
                       f"{source} is back in the inbox as {target}, a new arrival",
                       job["status"], {"from": source, "to": target})
    if unread or not _reopen(env.engine, job, now, actor):
        return Retried(job_id, RetryResult.NOT_RETRYABLE, "it changed meanwhile")
    if job["batch_id"] is not None:
        return _retry_member(env, job)
    origin = _origin(job["source"])
    if source is None or origin is None:
        return Retried(job_id, RetryResult.REQUEUED,
                       "opened again; its file was not found, so it is applied from the "
                       "stored bytes by the next sweep or delivery", JobStatus.PENDING)
    target = _back_to_inbox(env.inbox, source, origin[0], origin[1], job["sha256"])
    return Retried(job_id, RetryResult.REQUEUED, f"{source} is back in the inbox as {target}",
                   JobStatus.PENDING, {"from": source, "to": target})


def _reopen(engine: Engine, job: dict[str, Any], now: datetime, actor: str) -> bool:
    """Pending again, attempts from zero, the earlier answer dropped; audited."""
    with session_scope(engine) as session:
        reopened = session.execute(update(JOB).where(
            JOB.c.id == job["id"], JOB.c.status == job["status"]).values(
            status=JobStatus.PENDING, attempts=0, reason=None, public_reason=None,
            message=None, finished_at=None, updated_at=now)).rowcount == 1  # type: ignore[attr-defined]
        if reopened:
            session.execute(delete(OUTPUT).where(OUTPUT.c.job_id == job["id"]))
    if reopened:
        _audit_retry(engine, job, now, actor)
    return reopened


def _audit_retry(engine: Engine, job: dict[str, Any], now: datetime, actor: str) -> None:
    with session_scope(engine) as session:
        session.execute(insert(AUDIT).values(
            at=now, tenant=job["tenant"], actor=actor, action="job.retry", job_id=job["id"],
            detail={"status": job["status"], "reason": job["reason"]}))


def _unread(engine: Engine, job_id: int) -> bool:
    """True for a job registered without its content (refused before reading)."""
    with reading(engine) as conn:
        return bool(conn.execute(select(JOB.c.payload.is_(None)).where(
            JOB.c.id == job_id)).scalar_one())


def _retry_member(env: BulkEnv, job: dict[str, Any]) -> Retried:
    result = run_chunk(env, [job["id"]], job["batch_id"])
    [outcome] = result.outcomes
    batch = get_batch(env.engine, job["batch_id"])
    if batch.status in FINAL_BATCH:
        redeliver_report(env, batch)
    return Retried(job["id"], RetryResult.APPLIED,
                   f"applied again: {outcome.status}"
                   + (f" [{outcome.reason}]" if outcome.reason else "")
                   + "; the batch report is rewritten", outcome.status)


def _back_to_inbox(inbox: Store, source: str, area: str, name: str, sha256: str) -> str:
    """Move an archived file back to ``<area>/<name>`` (``<name>.<sha12>`` if a file of
    that name waits there already); its old report goes."""
    inbox.delete(error_report_key(source))
    for target in (f"{area}/{name}", f"{area}/{name}.{sha256[:12]}"):
        try:
            inbox.move(source, target, replace=False)
            return target
        except FileExistsError:
            continue
    target = f"{area}/{name}.{sha256[:12]}.retry"
    inbox.move(source, target, replace=False)
    return target
