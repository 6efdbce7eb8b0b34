"""Bulk archives: expand → job rows → chunks → report, the same code in both modes.

One `Batch` row per (tenant, archive sha256): importing the same archive again
applies nothing twice and only re-delivers the report. Progress lives on rows, not
in a chord, so a redelivered chunk cannot count twice:

* ``loading``  the archive was checked as a whole (`pipelines.archives.iter_entries`,
  the member list written to a temp file as it goes) and its members are being
  registered, one commit per `chunk_size` members, each chunk handed to a `ChunkSink`
  right after its commit;
* ``open``     every member is registered; `total` = the jobs this batch created;
* ``complete`` every one of them is finished. `finished` is derived from job statuses
  each time a chunk ends, and the caller that sees ``finished == total`` flips the
  status with a conditional UPDATE (``WHERE status = 'open'``) and triggers the report;
* ``reported`` the report is in the outbox and the archive file is archived;
* ``rejected`` the archive was refused as a whole (unsafe, too large, unsupported).

A member whose content is already a job (another member, or an earlier file) reuses
that job; the member list (name, sha256) is kept beside the inbox under ``_batches/``
so the report has one row per member whatever the sharing.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import Engine, func, update
from sqlalchemy import select as sa_select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, select

from config.settings import Settings
from models import Batch, Customer, Job, JobOutput
from models.db import is_postgres, session_scope
from models.ledger import FINAL_STATUSES
from models.tables import JOB
from models.types import utcnow
from pipelines.archives import (
    ArchiveError,
    ArchiveLimits,
    archive_format,
    iter_entries,
    read_members,
)
from pipelines.batch_report import ReportWriter
from pipelines.errors import RejectReason, public_message, public_reason
from pipelines.handler import apply_jobs
from pipelines.intake import deliver
from pipelines.layout import (
    OPERATOR,
    Arrival,
    error_report_key,
    outbox_key,
    parse_arrival_key,
    parse_processing_key,
    unique_archive_key,
)
from pipelines.ledger import Submission, register
from pipelines.process import Outcome, Processor
from pipelines.storage.base import Store, check_key
from pipelines.storage.local import LocalStore
from pipelines.storage.s3 import S3Store, translate

_JOB = JOB

log = logging.getLogger("airlock.bulk")

LOADING, OPEN, COMPLETE, REPORTED, REJECTED = "loading", "open", "complete", "reported", \
    "rejected"
MANIFEST_AREA = "_batches"
_FINAL = [str(status) for status in FINAL_STATUSES]
CLAIM_MARK = re.compile(r"\.claim-[0-9a-f]{12}$")
_UNSAFE_CHARS = re.compile(r"[^\w.+-]")
_GROUP = 500  # ids per IN (...) list


class BulkEnv(Protocol):
    """What the bulk stages need; `workers.runtime.Runtime` is one."""

    settings: Settings
    engine: Engine
    processor: Processor
    inbox: Store
    outbox: Store


@dataclass
class BulkParts:
    """A `BulkEnv` put together by hand (tests, callers without a Runtime)."""

    settings: Settings
    engine: Engine
    processor: Processor
    inbox: Store
    outbox: Store


class ChunkSink(Protocol):
    """Where registered chunks go: processed now (embedded) or enqueued (distributed)."""

    def chunk(self, batch_id: int, job_ids: list[int]) -> None: ...

    def finish(self, batch_id: int) -> None: ...

    def resume(self, batch_id: int) -> None: ...


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

    @property
    def accepted(self) -> bool:
        return self.status != REJECTED


@dataclass
class ChunkResult:
    outcomes: list[Outcome]
    finish: list[int]  # batches whose every job is finished: their report is due


ProgressCallback = Callable[[int, int], None]


# --- entry points ------------------------------------------------------------------------


def is_bulk(arrival: Arrival) -> bool:
    """True for an archive (by name) that arrived in a customer's inbox."""
    return arrival.area != OPERATOR and archive_format(arrival.name) is not None


def handle_archive(env: BulkEnv, arrival: Arrival, *, sink: ChunkSink | None = None,
                   on_progress: ProgressCallback | None = None) -> BatchResult:
    """Import an archive that arrived in the inbox; embedded mode runs every chunk here.

    The bytes the source already read are used as they are; an arrival handed over
    without its bytes is streamed from the inbox instead (S3 through a temp file).
    """
    if arrival.data:
        return import_archive(env, tenant=arrival.area, name=arrival.name,
                              source=arrival.key, fileobj=io.BytesIO(arrival.data),
                              sha256=arrival.sha256, sink=sink, on_progress=on_progress)
    with open_stored(env.inbox, arrival.key) as fileobj:
        return import_archive(env, tenant=arrival.area, name=arrival.name,
                              source=arrival.key, fileobj=fileobj, sink=sink,
                              on_progress=on_progress)


@contextmanager
def open_stored(store: Store, key: str) -> Iterator[IO[bytes]]:
    """A seekable file with the object's bytes, never the whole object in memory:
    a local file is opened in place, an S3 object is spooled to a temp file."""
    if isinstance(store, LocalStore):
        store.head(key)  # FileNotFoundError for anything but a regular file
        with store.path_for(key).open("rb") as handle:
            yield handle
        return
    if isinstance(store, S3Store):
        with tempfile.TemporaryFile(prefix="airlock-archive-") as spool:
            try:
                body = store.client.get_object(Bucket=store.bucket,
                                               Key=store.object_key(key))["Body"]
                for block in body.iter_chunks(1024 * 1024):
                    spool.write(block)
            except (ClientError, BotoCoreError) as exc:
                raise translate(exc, f"{store.location}/{key}") from exc
            spool.seek(0)
            yield spool
        return
    yield io.BytesIO(store.get(key))


def import_archive(env: BulkEnv, *, tenant: str, name: str, source: str, fileobj: IO[bytes],
                   sha256: str | None = None, sink: ChunkSink | None = None,
                   on_progress: ProgressCallback | None = None) -> BatchResult:
    """Check, register and hand over the members of the archive in `fileobj` (seekable).

    `source` is where the archive came from (an inbox key, or ``cli:<name>``); an inbox
    key is archived once the report is written. Returns the batch as it stands.
    """
    sink = sink or InlineSink(env)
    digest = sha256 or _hash_file(fileobj)
    now = env.processor.clock()
    with session_scope(env.engine) as session:
        batch, created = _open_batch(session, tenant=tenant, source=source, sha256=digest,
                                     now=now)
    assert batch.id is not None
    if batch.status in (REPORTED, REJECTED):
        log.info("batch %s (%s) was imported before: re-delivering its report", batch.id,
                 name)
        redeliver_report(env, batch)
        _archive_source(env, batch, source)
        return batch_result(env.engine, batch.id, duplicate=True)
    if batch.status != LOADING:
        sink.resume(batch.id)
        return batch_result(env.engine, batch.id, duplicate=not created)
    with tempfile.TemporaryFile(prefix="airlock-members-") as manifest:
        try:
            fmt = _check_tenant_and_format(env.engine, tenant, name)
            members = _write_manifest(manifest, fileobj, fmt,
                                      ArchiveLimits.from_settings(env.settings))
        except ArchiveError as exc:
            log.warning("batch %s (%s/%s) refused: %s", batch.id, tenant, name, exc)
            return reject_batch(env, batch.id, exc.reason, exc.message, source=source)
        env.inbox.put_file(manifest_key(batch), manifest)
        manifest.seek(0)
        _register_members(env, batch, fmt, fileobj, manifest, members, sink, on_progress,
                          now)
    with session_scope(env.engine) as session:
        total = _count(session, Job.batch_id == batch.id)
        session.execute(update(Batch).where(col(Batch.id) == batch.id,
                                            col(Batch.status) == LOADING)
                        .values(total=total, status=OPEN))
    flipped, _status = update_progress(env.engine, batch.id, now=now)
    if flipped:
        sink.finish(batch.id)
    result = batch_result(env.engine, batch.id, duplicate=not created)
    result.members = members
    return result


def _write_manifest(manifest: IO[bytes], fileobj: IO[bytes], fmt: str,
                    limits: ArchiveLimits) -> int:
    """First pass: check the whole archive, writing its member list (one JSON line per
    member) to `manifest`; how many members. Left positioned at its start."""
    members = 0
    for name, sha in iter_entries(fileobj, fmt, limits):
        manifest.write(_manifest_line(name, sha))
        members += 1
    manifest.seek(0)
    return members


def _manifest_line(name: str, sha: str) -> bytes:
    return (json.dumps({"member": name, "sha256": sha}) + "\n").encode()


def _register_members(env: BulkEnv, batch: Batch, fmt: str, fileobj: IO[bytes],
                      manifest: IO[bytes], members: int, sink: ChunkSink,
                      on_progress: ProgressCallback | None, now: datetime) -> None:
    """Second pass over the checked archive, matched line by line against the member
    list of the first: one commit per chunk, then hand it over."""
    limits = ArchiveLimits.from_settings(env.settings)
    chunk: list[Submission] = []
    handed = 0

    def flush() -> None:
        nonlocal handed
        with session_scope(env.engine) as session:
            jobs = register(session, chunk, now=now, count_attempt=False, reevaluate=False)
        sink.chunk(batch.id, sorted({job.id for job in jobs}))  # type: ignore[arg-type, misc]
        handed += len(chunk)
        chunk.clear()
        if on_progress is not None:
            on_progress(handed, members)

    for member in read_members(fileobj, fmt, limits):
        if manifest.readline() != _manifest_line(member.name, member.sha256):
            raise RuntimeError(f"{batch.source} changed while it was being read")
        chunk.append(Submission(tenant=batch.tenant, data=member.data,
                                source=f"{batch.source}!{member.name}", batch_id=batch.id))
        if len(chunk) >= env.settings.chunk_size:
            flush()
    if chunk:
        flush()


def _check_tenant_and_format(engine: Engine, tenant: str, name: str) -> str:
    fmt = archive_format(name)
    if fmt is None:
        raise ArchiveError(RejectReason.UNSUPPORTED_ARCHIVE,
                           "Use .zip, .tar, .tar.gz, .tgz or .ndjson.")
    with session_scope(engine) as session:
        if session.exec(select(Customer.id).where(Customer.code == tenant)).first() is None:
            raise ArchiveError(RejectReason.UNKNOWN_TENANT, "")
    return fmt


# --- chunks ------------------------------------------------------------------------------


def run_chunk(env: BulkEnv, job_ids: Sequence[int], batch_id: int | None = None) -> ChunkResult:
    """Apply a chunk (`handler.apply_jobs`: a failing file never holds up the others),
    deliver its results and update its batch's progress; then raise the first failure,
    so that the chunk's delivery is retried for the files that failed."""
    with session_scope(env.engine) as session:
        rows = session.execute(sa_select(_JOB.c.id, _JOB.c.batch_id)
                               .where(_JOB.c.id.in_(sorted(set(job_ids))))).all()
    ids = sorted(row.id for row in rows)
    applied = apply_jobs(env.engine, env.processor, ids)
    outcomes = applied.outcomes
    deliver(env.outbox, outcomes)
    batches = {batch_id} if batch_id is not None else {row[1] for row in rows if row[1]}
    finish = []
    for bid in sorted(batches):
        flipped, status = update_progress(env.engine, bid, now=env.processor.clock())
        if flipped or status == COMPLETE:
            finish.append(bid)
    applied.raise_first()
    return ChunkResult(outcomes, finish)


def update_progress(engine: Engine, batch_id: int, *, now: datetime | None = None
                    ) -> tuple[bool, str]:
    """Derive `finished` from job statuses; flip an all-done open batch to complete.

    Returns (this call flipped it, the status now). Only one caller can flip: the
    UPDATE is conditional on ``status = 'open'``.
    """
    done = (select(func.count()).select_from(Job)
            .where(col(Job.batch_id) == batch_id, col(Job.status).in_(_FINAL))
            .scalar_subquery())
    with session_scope(engine) as session:
        session.execute(update(Batch).where(col(Batch.id) == batch_id,
                                            col(Batch.status).in_((LOADING, OPEN)))
                        .values(finished=done))
        flipped = session.execute(
            update(Batch).where(col(Batch.id) == batch_id, col(Batch.status) == OPEN,
                                col(Batch.total) == done)
            .values(status=COMPLETE, finished=Batch.total, finished_at=now or utcnow())
        ).rowcount == 1  # type: ignore[attr-defined]
        status = session.exec(select(Batch.status).where(Batch.id == batch_id)).one()
    if flipped:
        log.info("batch %s complete", batch_id)
    return flipped, status


class InlineSink:
    """Embedded mode: each chunk is applied as soon as its rows are committed."""

    def __init__(self, env: BulkEnv) -> None:
        self.env = env

    def chunk(self, batch_id: int, job_ids: list[int]) -> None:
        run_chunk(self.env, job_ids, batch_id)

    def finish(self, batch_id: int) -> None:
        finish_batch(self.env, batch_id)

    def resume(self, batch_id: int) -> None:
        """An earlier run registered everything: apply what is left, then report."""
        with session_scope(self.env.engine) as session:
            pending: list[int] = list(session.execute(sa_select(_JOB.c.id).where(
                _JOB.c.batch_id == batch_id, _JOB.c.status.not_in(_FINAL))
                .order_by(_JOB.c.id)).scalars())
        size = self.env.settings.chunk_size
        for start in range(0, len(pending), size):
            run_chunk(self.env, pending[start:start + size], batch_id)
        _flipped, status = update_progress(self.env.engine, batch_id)
        if status == COMPLETE:
            finish_batch(self.env, batch_id)


# --- the report --------------------------------------------------------------------------


def finish_batch(env: BulkEnv, batch_id: int) -> BatchResult:
    """Write the report (JSON + CSV), make sure every member's results are in the outbox,
    archive the archive file and mark the batch reported. Safe to run again."""
    batch = _get_batch(env.engine, batch_id)
    if batch.status in (REPORTED, REJECTED):
        return batch_result(env.engine, batch_id, duplicate=True)
    if batch.status != COMPLETE:
        _flipped, status = update_progress(env.engine, batch_id)
        if status != COMPLETE:
            log.info("batch %s is not finished yet (%s)", batch_id, status)
            return batch_result(env.engine, batch_id)
        batch = _get_batch(env.engine, batch_id)
    keys, members = _write_report(env, batch, member_rows(env, batch, fill_outbox=True))
    _archive_source(env, batch, batch.source)
    with session_scope(env.engine) as session:
        session.execute(update(Batch).where(col(Batch.id) == batch_id,
                                            col(Batch.status) == COMPLETE)
                        .values(status=REPORTED, report_name=keys[0].split("/", 1)[1]))
    log.info("batch %s reported: %s", batch_id, keys[0])
    result = batch_result(env.engine, batch_id)
    result.members = members
    return result


def reject_batch(env: BulkEnv, batch_id: int, reason: str, message: str, *,
                 source: str) -> BatchResult:
    """Refuse a whole archive: record why, write the report, archive the file as rejected."""
    now = env.processor.clock()
    with session_scope(env.engine) as session:
        session.execute(update(Batch).where(col(Batch.id) == batch_id,
                                            col(Batch.status) == LOADING)
                        .values(status=REJECTED, reason=reason, message=message,
                                finished_at=now))
    batch = _get_batch(env.engine, batch_id)
    keys, _members = _write_report(env, batch, [])
    with session_scope(env.engine) as session:
        session.execute(update(Batch).where(col(Batch.id) == batch_id)
                        .values(report_name=keys[0].split("/", 1)[1]))
    _archive_source(env, batch, source)
    return batch_result(env.engine, batch_id)


def redeliver_report(env: BulkEnv, batch: Batch) -> list[str]:
    """Write a finished batch's report again (same bytes: it is built from the rows)."""
    if batch.status == REJECTED:
        return _write_report(env, batch, [])[0]
    if not env.inbox.exists(manifest_key(batch)):
        log.warning("batch %s has no member list any more; report not rewritten", batch.id)
        return []
    return _write_report(env, batch, member_rows(env, batch, fill_outbox=False))[0]


def member_rows(env: BulkEnv, batch: Batch, *, fill_outbox: bool) -> Iterator[dict[str, Any]]:
    """One report row per member, in archive order, a group at a time. Jobs still
    unfinished (shared with another batch) are applied now; with `fill_outbox`, results
    missing from the outbox are written."""
    entries = _manifest_entries(env.inbox, batch)
    if entries is None:
        log.warning("batch %s has no member list; reporting its own jobs", batch.id)
        entries = iter(_entries_from_jobs(env.engine, batch))
    while group := list(itertools.islice(entries, _GROUP)):
        jobs = _jobs_by_sha(env.engine, batch.tenant, {sha for _, sha in group})
        unfinished = [job["id"] for job in jobs.values() if job["status"] not in _FINAL]
        if unfinished:
            run_chunk(env, unfinished)
            jobs = _jobs_by_sha(env.engine, batch.tenant, {sha for _, sha in group})
        names = _output_names(env.engine, [job["id"] for job in jobs.values()])
        rows: list[dict[str, Any]] = []
        for member, sha in group:
            job = jobs.get(sha)
            if job is None:
                rows.append({"member": member, "status": "missing", "reason": None,
                             "message": None, "request_id": None, "results": []})
                continue
            # The customer's report: public reasons only (the job keeps the precise one).
            reason = job["reason"]
            rows.append({"member": member, "status": job["status"],
                         "reason": public_reason(reason) if reason else None,
                         "message": public_message(reason, job["message"]) if reason
                         else job["message"], "request_id": job["request_id"],
                         "results": [outbox_key(batch.tenant, name)
                                     for name in names.get(job["id"], [])],
                         "job_id": job["id"]})
        if fill_outbox:
            _fill_outbox(env, batch.tenant, rows)
        for row in rows:
            row.pop("job_id", None)
        yield from rows


def report_keys(batch: Batch) -> tuple[str, str]:
    """``<tenant>/batches/<archive name>.<sha12>.report.json`` and ``.csv``."""
    base = f"batches/{archive_name(batch.source)[:150]}.{batch.sha256[:12]}.report"
    return outbox_key(batch.tenant, base + ".json"), outbox_key(batch.tenant, base + ".csv")


def _write_report(env: BulkEnv, batch: Batch, rows: Iterable[dict[str, Any]]
                  ) -> tuple[list[str], int]:
    """Stream `rows` into the report; its keys and how many member rows it has."""
    json_key, csv_key = report_keys(batch)
    header = {
        "batch_id": batch.id, "tenant": batch.tenant, "archive": archive_name(batch.source),
        "source": batch.source, "sha256": batch.sha256,
        "status": REJECTED if batch.status == REJECTED else COMPLETE,
        "reason": batch.reason, "message": batch.message,
        "finished_at": batch.finished_at.isoformat() if batch.finished_at else None,
    }
    with ReportWriter() as writer:
        for row in rows:
            writer.add(row)
        writer.publish(env.outbox, json_key, csv_key, header)
        return [json_key, csv_key], writer.count


def _fill_outbox(env: BulkEnv, tenant: str, rows: list[dict[str, Any]]) -> None:
    """Write the results of `rows` (with their ``job_id``) that the outbox lacks."""
    wanted = {key for row in rows for key in row["results"]}
    missing = wanted - env.outbox.which_exist(wanted)
    if not missing:
        return
    job_ids = {row["job_id"] for row in rows if missing.intersection(row["results"])}
    with session_scope(env.engine) as session:
        outputs = session.exec(select(JobOutput).where(col(JobOutput.job_id).in_(job_ids))).all()
    for output in outputs:
        key = outbox_key(tenant, output.name)
        if key in missing:
            env.outbox.put(key, output.content)
            missing.discard(key)


# --- rows, manifest, archiving ----------------------------------------------------------


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


def _manifest_entries(inbox: Store, batch: Batch) -> Iterator[tuple[str, str]] | None:
    """The member list, read a line at a time; None if there is none."""
    key = manifest_key(batch)
    if not inbox.exists(key):
        return None
    return _read_manifest(inbox, key)


def _read_manifest(inbox: Store, key: str) -> Iterator[tuple[str, str]]:
    with open_stored(inbox, key) as lines:
        for line in lines:
            if line.strip():
                entry = json.loads(line)
                yield entry["member"], entry["sha256"]


def _entries_from_jobs(engine: Engine, batch: Batch) -> list[tuple[str, str]]:
    """Member list rebuilt from the jobs the batch created (shared members are missed)."""
    with session_scope(engine) as session:
        rows = session.exec(select(Job.source, Job.sha256).where(col(Job.batch_id) == batch.id)
                            .order_by(col(Job.id))).all()
    prefix = f"{batch.source}!"
    return [(source.removeprefix(prefix), sha) for source, sha in rows]


def archive_name(source: str) -> str:
    """A file-name-safe base name of the archive, from the batch source."""
    if source.startswith("cli:"):
        name = source[4:]
    else:
        parsed = parse_processing_key(source) or parse_arrival_key(source)
        name = CLAIM_MARK.sub("", parsed[1]) if parsed else source
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return _UNSAFE_CHARS.sub("_", base).lstrip(".") or "archive"


def _archive_source(env: BulkEnv, batch: Batch, key: str) -> str | None:
    """Move the archive file out of the inbox (``_processed/`` or ``_rejected/`` with an
    ``.error.json``); nothing for sources that are not inbox keys or are gone."""
    parsed = parse_processing_key(key) or parse_arrival_key(key)
    if parsed is None or not env.inbox.exists(key):
        return None
    area, name = parsed[0], CLAIM_MARK.sub("", parsed[1])
    rejected = batch.status == REJECTED
    target = unique_archive_key(env.inbox, "rejected" if rejected else "processed", area,
                                name, batch.sha256)
    if rejected:
        report = {"status": REJECTED, "reason": batch.reason, "message": batch.message,
                  "batch_id": batch.id, "tenant": batch.tenant, "source": key,
                  "sha256": batch.sha256, "results": list(report_keys(batch)),
                  "at": utcnow().isoformat()}
        env.inbox.put(error_report_key(target), (json.dumps(report, indent=2) + "\n").encode())
    try:
        env.inbox.move(key, target)
    except FileNotFoundError:
        return None  # archived by another worker already
    return target


def _open_batch(session: Session, *, tenant: str, source: str, sha256: str,
                now: datetime) -> tuple[Batch, bool]:
    """Insert-or-get the batch for (tenant, sha256); True if this call created it."""
    insert = pg_insert if is_postgres(session.get_bind()) else sqlite_insert  # type: ignore[arg-type]
    created = session.execute(insert(Batch).values(
        tenant=tenant, source=source[:1024], sha256=sha256, total=0, finished=0,
        status=LOADING, created_at=now).on_conflict_do_nothing(
        index_elements=["tenant", "sha256"])).rowcount == 1  # type: ignore[attr-defined]
    batch = session.exec(select(Batch).where(Batch.tenant == tenant,
                                             Batch.sha256 == sha256)).one()
    return batch, created


def _get_batch(engine: Engine, batch_id: int) -> Batch:
    with session_scope(engine) as session:
        return session.exec(select(Batch).where(Batch.id == batch_id)).one()


def _count(session: Session, *conditions: Any) -> int:
    return int(session.exec(select(func.count()).select_from(Job).where(*conditions)).one())


def _jobs_by_sha(engine: Engine, tenant: str, shas: set[str]) -> dict[str, dict[str, Any]]:
    with session_scope(engine) as session:
        rows = session.execute(sa_select(*(_JOB.c[name] for name in (
            "id", "sha256", "status", "reason", "message", "request_id")))
            .where(_JOB.c.tenant == tenant, _JOB.c.sha256.in_(shas))).all()
    return {row[1]: {"id": row[0], "status": row[2], "reason": row[3], "message": row[4],
                     "request_id": row[5]} for row in rows}


def _output_names(engine: Engine, job_ids: list[int]) -> dict[int, list[str]]:
    names: dict[int, list[str]] = {}
    if not job_ids:
        return names
    with session_scope(engine) as session:
        for job_id, name in session.exec(select(JobOutput.job_id, JobOutput.name)
                                         .where(col(JobOutput.job_id).in_(job_ids))
                                         .order_by(col(JobOutput.id))):
            names.setdefault(job_id, []).append(name)
    return names


def _hash_file(fileobj: IO[bytes]) -> str:
    fileobj.seek(0)
    digest = hashlib.sha256()
    for block in iter(lambda: fileobj.read(1024 * 1024), b""):
        digest.update(block)
    fileobj.seek(0)
    return digest.hexdigest()


__all__ = ["BatchResult", "BulkEnv", "BulkParts", "ChunkSink", "InlineSink",
           "batch_result", "finish_batch", "handle_archive", "import_archive", "is_bulk",
           "run_chunk", "update_progress"]
