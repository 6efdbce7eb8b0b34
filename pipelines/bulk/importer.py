"""Importing a bulk archive: expand → job rows → chunks, the same code in both modes.

One `Batch` row per (tenant, archive sha256): importing the same archive again
applies nothing twice and only re-delivers the report. The stages (see
`models.BatchStatus`):

* ``loading``  the archive was checked as a whole (`pipelines.archives.iter_entries`,
  the member list written to a temp file as it goes) and its members are being
  registered, one commit per `chunk_size` members, each chunk handed to a `ChunkSink`
  right after its commit;
* ``open``     every member is registered; `total` = the jobs this batch created;
* ``complete`` every one of them is finished (`state.update_progress`);
* ``reported`` the report is in the outbox and the archive file is archived;
* ``rejected`` the archive was refused as a whole (unsafe, too large, unsupported).

A member whose content is already a job (another member, or an earlier file) reuses
that job; the member list (name, sha256) is kept beside the inbox under ``_batches/``
so the report has one row per member whatever the sharing.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from typing import IO, Any

from sqlalchemy import Engine, func
from sqlalchemy import select as sa_select
from sqlmodel import Session, select

from models import Batch, BatchStatus, Customer, Job
from models.db import session_scope
from models.tables import JOB
from pipelines.archives import (
    ArchiveError,
    ArchiveLimits,
    archive_format,
    iter_entries,
    read_members,
)
from pipelines.bulk.chunks import BulkEnv, ChunkSink, run_chunk
from pipelines.bulk.lease import LEASE, Lease, release_lease, renew_lease, take_lease
from pipelines.bulk.report import archive_source, finish_batch, redeliver_report, reject_batch
from pipelines.bulk.state import (
    FINAL,
    FINAL_BATCH,
    BatchResult,
    batch_result,
    get_batch,
    manifest_key,
    open_batch,
    set_status,
    update_progress,
)
from pipelines.errors import RejectReason
from pipelines.layout import OPERATOR, Arrival
from pipelines.ledger import Submission, register

log = logging.getLogger("airlock.bulk")

ProgressCallback = Callable[[int, int], None]


# --- entry points ------------------------------------------------------------------------


def is_bulk(arrival: Arrival) -> bool:
    """True for an archive (by name) that arrived in a customer's inbox; an archive
    refused unread (too large, say) is a single refusal, never opened."""
    return (arrival.refusal is None and arrival.area != OPERATOR
            and archive_format(arrival.name) is not None)


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
    with env.inbox.open(arrival.key) as fileobj:
        return import_archive(env, tenant=arrival.area, name=arrival.name,
                              source=arrival.key, fileobj=fileobj, sink=sink,
                              on_progress=on_progress)


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
        batch, created = open_batch(session, tenant=tenant, source=source, sha256=digest,
                                    now=now)
    assert batch.id is not None
    if batch.status in FINAL_BATCH:
        log.info("batch %s (%s) was imported before: re-delivering its report", batch.id,
                 name)
        redeliver_report(env, batch)
        archive_source(env, batch, source)
        return batch_result(env.engine, batch.id, duplicate=True)
    if batch.status != BatchStatus.LOADING:
        sink.resume(batch.id)
        return batch_result(env.engine, batch.id, duplicate=not created)
    lease = take_lease(env.engine, batch.id, now=now)
    if lease is None:
        result = batch_result(env.engine, batch.id, duplicate=not created)
        if result.status != BatchStatus.LOADING:  # its loader finished between our looks
            return import_archive(env, tenant=tenant, name=name, source=source,
                                  fileobj=fileobj, sha256=digest, sink=sink,
                                  on_progress=on_progress)
        log.info("batch %s (%s/%s) is being imported by another process: tried again later",
                 batch.id, tenant, name)
        result.busy = True
        return result
    try:
        return _load(env, batch, lease, name=name, source=source, fileobj=fileobj,
                     sink=sink, on_progress=on_progress, created=created, now=now)
    except BaseException:
        release_lease(env.engine, lease)  # the next try takes it at once
        raise


def _load(env: BulkEnv, batch: Batch, lease: Lease, *, name: str, source: str,
          fileobj: IO[bytes], sink: ChunkSink, on_progress: ProgressCallback | None,
          created: bool, now: datetime) -> BatchResult:
    """Check the archive and register its members, holding `lease` (see `state.LEASE`)."""
    assert batch.id is not None
    tenant = batch.tenant
    with tempfile.TemporaryFile(prefix="airlock-members-") as manifest:
        try:
            fmt = _check_tenant_and_format(env.engine, tenant, name)
            members = _write_manifest(manifest, fileobj, fmt,
                                      ArchiveLimits.from_settings(env.settings),
                                      _Renewal(env, lease))
        except ArchiveError as exc:
            log.warning("batch %s (%s/%s) refused: %s", batch.id, tenant, name, exc)
            return reject_batch(env, batch.id, exc.reason, exc.message, source=source,
                                lease=lease)
        env.inbox.put_file(manifest_key(batch), manifest)
        manifest.seek(0)
        _register_members(env, batch, lease, fmt, fileobj, manifest, members, sink,
                          on_progress, now)
    with session_scope(env.engine) as session:
        total = _count(session, Job.batch_id == batch.id)
    if not set_status(env.engine, batch.id, BatchStatus.LOADING, lease=lease, total=total,
                      status=BatchStatus.OPEN):
        log.warning("batch %s: another import took it over; its outcome stands", batch.id)
        return batch_result(env.engine, batch.id, duplicate=True)
    flipped, _status = update_progress(env.engine, batch.id, now=now)
    if flipped:
        sink.finish(batch.id)
    if source != batch.source:  # taken over from an import of another file
        reported = get_batch(env.engine, batch.id)
        if reported.status == BatchStatus.REPORTED:  # the report archived that one only
            archive_source(env, reported, source)
    result = batch_result(env.engine, batch.id, duplicate=not created)
    result.members = members
    return result


class _Renewal:
    """Renews the lease during the first pass, which registers nothing (a large
    archive's check can take a while): at most every tenth of `LEASE`."""

    def __init__(self, env: BulkEnv, lease: Lease) -> None:
        self.env, self.lease = env, lease
        self._every = LEASE.total_seconds() / 10
        self._last = time.monotonic()

    def __call__(self) -> None:
        if time.monotonic() - self._last < self._every:
            return
        with session_scope(self.env.engine) as session:
            renew_lease(session, self.lease, now=self.env.processor.clock())
        self._last = time.monotonic()


def _write_manifest(manifest: IO[bytes], fileobj: IO[bytes], fmt: str,
                    limits: ArchiveLimits, renew: Callable[[], None]) -> int:
    """First pass: check the whole archive, writing its member list (one JSON line per
    member) to `manifest`; how many members. Left positioned at its start."""
    members = 0
    for name, sha in iter_entries(fileobj, fmt, limits):
        manifest.write(_manifest_line(name, sha))
        members += 1
        renew()
    manifest.seek(0)
    return members


def _manifest_line(name: str, sha: str) -> bytes:
    return (json.dumps({"member": name, "sha256": sha}) + "\n").encode()


def _register_members(env: BulkEnv, batch: Batch, lease: Lease, fmt: str, fileobj: IO[bytes],
                      manifest: IO[bytes], members: int, sink: ChunkSink,
                      on_progress: ProgressCallback | None, now: datetime) -> None:
    """Second pass over the checked archive, matched line by line against the member
    list of the first: one commit per chunk, which renews the lease, then hand it over."""
    limits = ArchiveLimits.from_settings(env.settings)
    chunk: list[Submission] = []
    handed = 0

    def flush() -> None:
        nonlocal handed
        with session_scope(env.engine) as session:
            renew_lease(session, lease, now=env.processor.clock())
            jobs = register(session, chunk, now=now, count_attempt=False, reevaluate=False)
        sink.chunk(batch.id, sorted({job.id for job in jobs}))  # type: ignore[arg-type, misc]
        handed += len(chunk)
        chunk.clear()
        if on_progress is not None:
            on_progress(handed, members)

    for member in read_members(fileobj, fmt, limits):
        digest = member.sha256
        if manifest.readline() != _manifest_line(member.name, digest):
            raise RuntimeError(f"{batch.source} changed while it was being read")
        chunk.append(Submission(tenant=batch.tenant, data=member.data, digest=digest,
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


# --- embedded mode ---------------------------------------------------------------------


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
            pending: list[int] = list(session.execute(sa_select(JOB.c.id).where(
                JOB.c.batch_id == batch_id, JOB.c.status.not_in(FINAL))
                .order_by(JOB.c.id)).scalars())
        size = self.env.settings.chunk_size
        for start in range(0, len(pending), size):
            run_chunk(self.env, pending[start:start + size], batch_id)
        _flipped, status = update_progress(self.env.engine, batch_id,
                                           now=self.env.processor.clock())
        if status == BatchStatus.COMPLETE:
            finish_batch(self.env, batch_id)


# --- helpers ---------------------------------------------------------------------------


def _count(session: Session, *conditions: Any) -> int:
    return int(session.exec(select(func.count()).select_from(Job).where(*conditions)).one())


def _hash_file(fileobj: IO[bytes]) -> str:
    fileobj.seek(0)
    digest = hashlib.sha256()
    for block in iter(lambda: fileobj.read(1024 * 1024), b""):
        digest.update(block)
    fileobj.seek(0)
    return digest.hexdigest()
