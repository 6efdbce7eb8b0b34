"""The end of a batch: its report (JSON + CSV) in the outbox, the archive file archived.

The report is written in one pass over the member list, a group at a time: each group
is settled first (jobs it shares with another, still unfinished, batch are applied;
results the outbox lacks are written), then its rows are read. Reading a finished
batch again (`member_rows`) only reads. A report is built from the rows, so writing
it again gives the same bytes.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import Engine
from sqlalchemy import select as sa_select

from models import Batch, BatchStatus
from models.db import reading, session_scope
from models.tables import JOB, OUTPUT
from pipelines.archiving import StoredFile, archive
from pipelines.batch_report import ReportWriter
from pipelines.bulk.chunks import BulkEnv, run_chunk
from pipelines.bulk.lease import Lease, LeaseLost, release_lease, renew_lease
from pipelines.bulk.state import (
    CLAIM_MARK,
    FINAL,
    FINAL_BATCH,
    BatchResult,
    archive_name,
    batch_result,
    get_batch,
    manifest_key,
    report_keys,
    set_status,
    update_progress,
)
from pipelines.errors import public_message, public_reason
from pipelines.layout import (
    Disposition,
    outbox_key,
    parse_arrival_key,
    parse_processing_key,
)
from pipelines.storage.base import Store

log = logging.getLogger("airlock.bulk")

_GROUP = 500  # members per lookup: ids per IN (...) list


def finish_batch(env: BulkEnv, batch_id: int) -> BatchResult:
    """Write the report (JSON + CSV), make sure every member's results are in the outbox,
    archive the archive file and mark the batch reported. Safe to run again."""
    batch = get_batch(env.engine, batch_id)
    if batch.status in FINAL_BATCH:
        return batch_result(env.engine, batch_id, duplicate=True)
    if batch.status != BatchStatus.COMPLETE:
        _flipped, status = update_progress(env.engine, batch_id,
                                           now=env.processor.clock())
        if status != BatchStatus.COMPLETE:
            log.info("batch %s is not finished yet (%s)", batch_id, status)
            return batch_result(env.engine, batch_id)
        batch = get_batch(env.engine, batch_id)
    keys, members = write_report(env.outbox, batch, settled_rows(env, batch))
    archive_source(env, batch, batch.source)
    set_status(env.engine, batch_id, BatchStatus.COMPLETE, status=BatchStatus.REPORTED,
               report_name=keys[0].split("/", 1)[1])
    log.info("batch %s reported: %s", batch_id, keys[0])
    result = batch_result(env.engine, batch_id)
    result.members = members
    return result


def reject_batch(env: BulkEnv, batch_id: int, reason: str, message: str, *,
                 source: str, lease: Lease) -> BatchResult:
    """Refuse a whole archive, holding its `lease`: record why, write the report,
    archive the file as rejected.

    The report is written before the batch turns final, and the status and the report's
    name are recorded in one commit: a reader that waits for a final batch (the mail
    reply, the portal) never finds it rejected without its report. A batch that has
    members already (registered by an import of the same bytes that could read them,
    then stopped) is not this refusal's to decide: only this file is refused."""
    batch = get_batch(env.engine, batch_id)
    if (batch.status == BatchStatus.LOADING and not _has_members(env.engine, batch_id)
            and _still_held(env, lease)):  # a stale refusal writes nothing
        rejected = _reject_whole(env, batch, reason, message, source=source, lease=lease)
        if rejected is not None:
            return rejected
    batch = get_batch(env.engine, batch_id)
    if batch.status in FINAL_BATCH:
        # Another import of the same bytes finished the batch: its outcome stands, and
        # a report this call may have written in the moment between is put right.
        log.warning("batch %s: a refusal (%s) came after the batch was %s; it stands as "
                    "that", batch_id, reason, batch.status)
        redeliver_report(env, batch)
        archive_source(env, batch, source)
        return batch_result(env.engine, batch_id)
    log.warning("batch %s is another import's to load: only %s is refused (%s)", batch_id,
                source, reason)
    release_lease(env.engine, lease)
    archive_source(env, batch, source, refused=(reason, message))
    result = batch_result(env.engine, batch_id)
    result.status, result.reason, result.message = BatchStatus.REJECTED, reason, message
    result.report_keys = []
    return result


def _still_held(env: BulkEnv, lease: Lease) -> bool:
    try:
        with session_scope(env.engine) as session:
            renew_lease(session, lease, now=env.processor.clock())
    except LeaseLost:
        return False
    return True


def _reject_whole(env: BulkEnv, batch: Batch, reason: str, message: str, *, source: str,
                  lease: Lease) -> BatchResult | None:
    """Report the batch rejected, then turn it final in one commit with the report's
    name; None (and no report left) if the lease was lost in between."""
    assert batch.id is not None
    batch.status, batch.reason, batch.message = BatchStatus.REJECTED, reason, message
    batch.finished_at = env.processor.clock()
    keys, _members = write_report(env.outbox, batch, [])
    if set_status(env.engine, batch.id, BatchStatus.LOADING, lease=lease,
                  status=BatchStatus.REJECTED, reason=reason, message=message,
                  finished_at=batch.finished_at, report_name=keys[0].split("/", 1)[1]):
        archive_source(env, batch, source)
        return batch_result(env.engine, batch.id)
    if get_batch(env.engine, batch.id).status not in FINAL_BATCH:
        for key in keys:  # no report stands for a batch that is not final
            env.outbox.delete(key)
    return None


def _has_members(engine: Engine, batch_id: int) -> bool:
    with reading(engine) as conn:
        return conn.execute(sa_select(JOB.c.id).where(JOB.c.batch_id == batch_id)
                            .limit(1)).first() is not None


def redeliver_report(env: BulkEnv, batch: Batch) -> list[str]:
    """Write a finished batch's report again (same bytes: it is built from the rows)."""
    if batch.status == BatchStatus.REJECTED:
        return write_report(env.outbox, batch, [])[0]
    if not env.inbox.exists(manifest_key(batch)):
        log.warning("batch %s has no member list any more; report not rewritten", batch.id)
        return []
    return write_report(env.outbox, batch, member_rows(env.engine, env.inbox, batch))[0]


def settled_rows(env: BulkEnv, batch: Batch) -> Iterator[dict[str, Any]]:
    """`member_rows` of a batch being finished, each group settled before its rows:
    members whose job is still unfinished (shared with another batch that has not got
    to it) are applied, and results missing from the outbox are written."""
    for group, jobs in _member_groups(env.engine, env.inbox, batch):
        unfinished = [job["id"] for job in jobs.values() if job["status"] not in FINAL]
        if unfinished:
            run_chunk(env, unfinished)
            jobs = _jobs_by_sha(env.engine, batch.tenant, {sha for _, sha in group})
        names = _output_names(env.engine, [job["id"] for job in jobs.values()])
        _fill_outbox(env, batch.tenant, names)
        yield from _rows(batch, group, jobs, names)


def member_rows(engine: Engine, inbox: Store, batch: Batch) -> Iterator[dict[str, Any]]:
    """One report row per member, in archive order, a group at a time (reads only)."""
    for group, jobs in _member_groups(engine, inbox, batch):
        yield from _rows(batch, group, jobs,
                         _output_names(engine, [job["id"] for job in jobs.values()]))


def _rows(batch: Batch, group: list[tuple[str, str]], jobs: dict[str, dict[str, Any]],
          names: dict[int, list[str]]) -> Iterator[dict[str, Any]]:
    for member, sha in group:
        job = jobs.get(sha)
        if job is None:
            yield {"member": member, "status": "missing", "reason": None,
                   "message": None, "request_id": None, "results": []}
            continue
        # The customer's report: public reasons only (the job keeps the precise one).
        reason = job["reason"]
        yield {"member": member, "status": job["status"],
               "reason": public_reason(reason) if reason else None,
               "message": public_message(reason, job["message"]) if reason
               else job["message"], "request_id": job["request_id"],
               "results": [outbox_key(batch.tenant, name)
                           for name in names.get(job["id"], [])]}


def write_report(outbox: Store, batch: Batch, rows: Iterable[dict[str, Any]]
                 ) -> tuple[list[str], int]:
    """Stream `rows` into the report; its keys and how many member rows it has."""
    json_key, csv_key = report_keys(batch)
    header = {
        "batch_id": batch.id, "tenant": batch.tenant, "archive": archive_name(batch.source),
        "source": batch.source, "sha256": batch.sha256,
        "status": BatchStatus.REJECTED if batch.status == BatchStatus.REJECTED
        else BatchStatus.COMPLETE,
        "reason": batch.reason, "message": batch.message,
        "finished_at": batch.finished_at.isoformat() if batch.finished_at else None,
    }
    with ReportWriter() as writer:
        for row in rows:
            writer.add(row)
        writer.publish(outbox, json_key, csv_key, header)
        return [json_key, csv_key], writer.count


def archive_source(env: BulkEnv, batch: Batch, key: str,
                   refused: tuple[str, str] | None = None) -> str | None:
    """Move the archive file out of the inbox (``_processed/`` or ``_rejected/`` with an
    ``.error.json``); nothing for sources that are not inbox keys or are gone.
    `refused`: (reason, message) that refuse this file alone, its batch left as it is."""
    parsed = parse_processing_key(key) or parse_arrival_key(key)
    if parsed is None or not env.inbox.exists(key):
        return None
    source = StoredFile(key=key, area=parsed[0], name=CLAIM_MARK.sub("", parsed[1]),
                        sha256=batch.sha256)
    if refused is None and batch.status != BatchStatus.REJECTED:
        return archive(env.inbox, source, Disposition.PROCESSED)
    reason, message = refused or (batch.reason, batch.message)
    report = {"status": BatchStatus.REJECTED, "reason": reason, "message": message,
              "batch_id": batch.id, "tenant": batch.tenant, "source": key,
              "sha256": batch.sha256,
              "results": [] if refused else list(report_keys(batch)),
              "at": env.processor.clock().isoformat()}
    return archive(env.inbox, source, Disposition.REJECTED, report)


# --- the member list and the jobs behind it -----------------------------------------------


_Group = tuple[list[tuple[str, str]], dict[str, dict[str, Any]]]


def _member_groups(engine: Engine, inbox: Store, batch: Batch) -> Iterator[_Group]:
    """The member list in groups of `_GROUP`, each with the jobs (by sha256) behind it."""
    entries = _manifest_entries(inbox, batch)
    if entries is None:
        log.warning("batch %s has no member list; reporting its own jobs", batch.id)
        entries = iter(_entries_from_jobs(engine, batch))
    while group := list(itertools.islice(entries, _GROUP)):
        yield group, _jobs_by_sha(engine, batch.tenant, {sha for _, sha in group})


def _manifest_entries(inbox: Store, batch: Batch) -> Iterator[tuple[str, str]] | None:
    """The member list, read a line at a time; None if there is none."""
    key = manifest_key(batch)
    if not inbox.exists(key):
        return None
    return _read_manifest(inbox, key)


def _read_manifest(inbox: Store, key: str) -> Iterator[tuple[str, str]]:
    with inbox.open(key) as lines:
        for line in lines:
            if line.strip():
                entry = json.loads(line)
                yield entry["member"], entry["sha256"]


def _entries_from_jobs(engine: Engine, batch: Batch) -> list[tuple[str, str]]:
    """Member list rebuilt from the jobs the batch created (shared members are missed)."""
    with reading(engine) as conn:
        rows = conn.execute(sa_select(JOB.c.source, JOB.c.sha256)
                            .where(JOB.c.batch_id == batch.id).order_by(JOB.c.id)).all()
    prefix = f"{batch.source}!"
    return [(source.removeprefix(prefix), sha) for source, sha in rows]


def _fill_outbox(env: BulkEnv, tenant: str, names: dict[int, list[str]]) -> None:
    """Write the results (`names`, by job id) that the outbox lacks."""
    wanted = {outbox_key(tenant, name) for group in names.values() for name in group}
    missing = wanted - env.outbox.which_exist(wanted)
    if not missing:
        return
    with reading(env.engine) as conn:
        outputs = conn.execute(sa_select(OUTPUT.c.name, OUTPUT.c.content)
                               .where(OUTPUT.c.job_id.in_(list(names)))).all()
    env.outbox.put_many((key, content) for name, content in outputs
                        if (key := outbox_key(tenant, name)) in missing)


# Reads only, without the write lock: the report's 2 queries per group of members
# would otherwise queue behind, and hold up, the workers' chunks.
def _jobs_by_sha(engine: Engine, tenant: str, shas: set[str]) -> dict[str, dict[str, Any]]:
    with reading(engine) as conn:
        rows = conn.execute(sa_select(*(JOB.c[name] for name in (
            "id", "sha256", "status", "reason", "message", "request_id")))
            .where(JOB.c.tenant == tenant, JOB.c.sha256.in_(shas))).all()
    return {row[1]: {"id": row[0], "status": row[2], "reason": row[3], "message": row[4],
                     "request_id": row[5]} for row in rows}


def _output_names(engine: Engine, job_ids: list[int]) -> dict[int, list[str]]:
    names: dict[int, list[str]] = {}
    if not job_ids:
        return names
    with reading(engine) as conn:
        for job_id, name in conn.execute(sa_select(OUTPUT.c.job_id, OUTPUT.c.name)
                                         .where(OUTPUT.c.job_id.in_(job_ids))
                                         .order_by(OUTPUT.c.id)):
            names.setdefault(job_id, []).append(name)
    return names
