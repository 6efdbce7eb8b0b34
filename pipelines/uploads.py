"""Uploads (portal, API): an uploaded file becomes an arrival like any other.

The bytes are stored in the inbox as already claimed (``_processing/<tenant>/...``)
and handed to the mode's hand-over: the embedded runner's (processed in this process)
or the distributed watcher's (registered and queued for the workers). What follows
is the one job handler; the upload is archived like a file from the drop folder. The
answer is read from the job (or batch) row, so it is the same whoever processed it.

Hand-overs run on one thread, a few uploads at a time: the embedded core is made
for batches, and one writer at a time is what SQLite wants anyway. Archives get a
thread of their own, so a large import does not hold back single files.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import IO, Any

from sqlalchemy import Engine, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from models import BatchStatus, JobStatus
from models.db import is_postgres, reading, session_scope
from models.ledger import FINAL_STATUSES
from models.tables import BATCH, IDEMPOTENT, JOB, OUTPUT
from pipelines.bulk import is_bulk
from pipelines.bulk.state import FINAL_BATCH, report_keys
from pipelines.errors import MESSAGES, RejectReason
from pipelines.layout import Arrival, processing_key
from pipelines.storage.base import Store

log = logging.getLogger("airlock.uploads")

Handover = Callable[[list[Arrival]], list[Arrival]]
"""The mode's hand-over of claimed arrivals; returns those not finished (still in hand)."""

HANDOVER_BATCH = 64  # uploads handed over together at most
HANDOVER_TIMEOUT = 60.0  # an upload waits this long for its hand-over, then: try again
GATHER_SECONDS = 0.004  # how long a hand-over waits for more uploads to join it
RETRY_AFTER = 5.0  # seconds before a file whose hand-over failed is handed over again
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+")


class TicketKind(StrEnum):
    JOB = "job"
    BATCH = "batch"


@dataclass(frozen=True)
class Ticket:
    """What an upload became: a job (a single file) or a batch (an archive)."""

    kind: TicketKind
    id: int
    tenant: str


@dataclass
class Answer:
    """Where an upload stands, in the words its sender may read."""

    ticket: Ticket
    status: str
    final: bool
    kind: str | None = None
    reason: str | None = None  # the public reason
    message: str | None = None
    results: list[str] = field(default_factory=list)
    total: int | None = None  # batches: members and how many are finished
    finished: int | None = None
    finished_at: datetime | None = None

    @property
    def accepted(self) -> bool:
        return self.status in (JobStatus.DONE, BatchStatus.REPORTED) and not self.reason


class NotYetRegistered(Exception):
    """The upload is stored and will be handed over again, but has no job yet: the same
    bytes sent again a little later get its answer."""


class IdempotencyConflict(Exception):
    """The key was used before for other bytes."""


def safe_name(name: str) -> str:
    """What is left of the sender's name once folders and unsafe characters go: the
    name an upload is judged by (an archive or not) and stored under."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(ch if ch in _NAME_CHARS else "_" for ch in base).lstrip(".")[-100:]
    return cleaned or "file"


def upload_name(name: str) -> str:
    """A safe inbox name for an uploaded file: a random tag (two uploads never share a
    name) and its `safe_name`."""
    return f"upload-{secrets.token_hex(6)}-{safe_name(name)}"


@dataclass
class _Pending:
    arrival: Arrival
    done: Future[None] = field(default_factory=Future)


class Uploads:
    """Store, hand over and answer uploads; `start` before use, `close` at the end."""

    def __init__(self, engine: Engine, inbox: Store, outbox: Store, handover: Handover, *,
                 archive_handover: Handover | None = None, retry_after: float = RETRY_AFTER,
                 handover_timeout: float = HANDOVER_TIMEOUT) -> None:
        self.engine = engine
        self.retry_after = retry_after
        self.handover_timeout = handover_timeout
        # archives on a hand-over of their own: a long import holds back no single file
        self.archive_handover = archive_handover or handover
        self.inbox = inbox
        self.outbox = outbox
        self.handover = handover
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._left: list[tuple[float, Arrival]] = []  # handed back: (when to retry, file)
        self._left_lock = threading.Lock()  # the archive hand-overs add to it too
        self._thread = threading.Thread(target=self._run, name="airlock-uploads", daemon=True)
        self._archives = ThreadPoolExecutor(1, thread_name_prefix="airlock-archive")

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._archives.shutdown(wait=True)

    # --- receiving ---------------------------------------------------------------------

    def receive(self, tenant: str, name: str, fileobj: IO[bytes], *, sha256: str, size: int,
                archive_wait: float = 5.0) -> Ticket:
        """Store the upload (`fileobj`, already read to its end within the limits, with
        its hash and size) in `tenant`'s claimed area, hand it over, and say what it
        became."""
        stored = upload_name(name)
        key = processing_key(tenant, stored)
        fileobj.seek(0)
        arrival = Arrival(tenant, stored, key, b"", sha256, size)
        if is_bulk(arrival):  # streamed from the inbox by the importer, not held in memory
            self.inbox.put_file(key, fileobj)
            done = self._archives.submit(self._hand_over_archive, arrival)
            return self._batch_ticket(tenant, sha256, done, archive_wait)
        data = fileobj.read()
        # Not synced on its own: the registration commits these bytes with the job row
        # before any answer, and archiving syncs the inbox once for the whole batch.
        if not self.inbox.put_if_absent(key, data, durable=False):
            raise RuntimeError(f"upload name {key} taken")  # a random tag: not expected
        pending = _Pending(Arrival(tenant, stored, key, data, sha256, size))
        self._queue.put(pending)
        try:
            pending.done.result(timeout=self.handover_timeout)
        except FutureTimeout:  # stored and in the queue: answered when it is done
            raise NotYetRegistered(sha256) from None
        return self._job_ticket(tenant, sha256)

    def _hand_over_archive(self, arrival: Arrival) -> None:
        if self.archive_handover([arrival]):  # another import is loading these bytes
            log.info("%s/%s: archive not taken yet; tried again in %.0f s", arrival.area,
                     arrival.name, self.retry_after)
            with self._left_lock:
                self._left.append((time.monotonic() + self.retry_after, arrival))
            self._queue.put(_RETRY)  # the hand-over thread keeps the time for it

    def _run(self) -> None:
        """The hand-over thread: whatever is waiting, together (up to a batch)."""
        while True:
            timeout = self.retry_after if self._left else None
            try:
                first = self._queue.get(timeout=timeout)
            except queue.Empty:
                first = None if not self._left else _RETRY
            if first is None:
                return
            batch = [] if first is _RETRY else [first]
            # Wait a moment for uploads close behind: a batch costs little more than
            # one file, so a few milliseconds here save many in the queue.
            until = time.monotonic() + GATHER_SECONDS
            while len(batch) < HANDOVER_BATCH:
                try:
                    more = self._queue.get(timeout=max(0.0, until - time.monotonic()))
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop once this batch is done
                    break
                if more is not _RETRY:
                    batch.append(more)
            self._hand_over(batch)

    def _hand_over(self, batch: list[_Pending]) -> None:
        now = time.monotonic()
        with self._left_lock:
            due = [arrival for at, arrival in self._left if at <= now]
            self._left = [(at, arrival) for at, arrival in self._left if at > now]
        arrivals = [p.arrival for p in batch] + due
        try:
            left = self.handover(arrivals) if arrivals else []
        except Exception as exc:  # the files stay in hand; told as pending, tried again
            log.warning("upload hand-over failed (tried again in %.0f s): %s",
                        self.retry_after, exc)
            left = arrivals
        with self._left_lock:
            self._left.extend((now + self.retry_after, arrival) for arrival in left)
        for pending in batch:
            pending.done.set_result(None)

    # --- answering ---------------------------------------------------------------------

    def _job_ticket(self, tenant: str, sha256: str) -> Ticket:
        with reading(self.engine) as conn:
            job_id = conn.execute(select(JOB.c.id).where(JOB.c.tenant == tenant,
                                                         JOB.c.sha256 == sha256)).scalar()
        if job_id is None:  # the hand-over failed before registering: registered later
            raise NotYetRegistered(sha256)
        return Ticket(TicketKind.JOB, int(job_id), tenant)

    def _batch_ticket(self, tenant: str, sha256: str, done: Future[None], wait: float) -> Ticket:
        deadline = time.monotonic() + wait
        while True:
            with reading(self.engine) as conn:
                batch_id = conn.execute(select(BATCH.c.id).where(
                    BATCH.c.tenant == tenant, BATCH.c.sha256 == sha256)).scalar()
            if batch_id is not None:
                return Ticket(TicketKind.BATCH, int(batch_id), tenant)
            if done.done():
                done.result()  # raises what the import raised
                raise NotYetRegistered(sha256)
            if time.monotonic() > deadline:  # still being read: answered when asked again
                raise NotYetRegistered(sha256)
            time.sleep(0.05)

    def answer(self, ticket: Ticket) -> Answer:
        return self._job_answer(ticket) if ticket.kind is TicketKind.JOB \
            else self._batch_answer(ticket)

    def wait(self, ticket: Ticket, timeout: float, poll: float = 0.02) -> Answer:
        """The answer once final, or as it stands after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            answer = self.answer(ticket)
            if answer.final or time.monotonic() >= deadline:
                return answer
            time.sleep(poll)

    def _job_answer(self, ticket: Ticket) -> Answer:
        with reading(self.engine) as conn:
            row = conn.execute(select(JOB.c.status, JOB.c.kind, JOB.c.public_reason,
                                      JOB.c.finished_at)
                               .where(JOB.c.id == ticket.id)).one()
            names = list(conn.execute(select(OUTPUT.c.name).where(OUTPUT.c.job_id == ticket.id)
                                      .order_by(OUTPUT.c.id)).scalars())
        final = JobStatus(row.status) in FINAL_STATUSES
        reason = row.public_reason if final else None
        return Answer(ticket=ticket, status=row.status, final=final, kind=row.kind,
                      reason=reason, message=_sentence(reason),
                      results=names if final else [], finished_at=row.finished_at)

    def _batch_answer(self, ticket: Ticket) -> Answer:
        with reading(self.engine) as conn:
            row = conn.execute(select(BATCH).where(BATCH.c.id == ticket.id)).one()
        final = row.status in FINAL_BATCH
        names = [key.split("/", 1)[1] for key in report_keys(row)] if row.report_name else []  # type: ignore[arg-type]
        return Answer(ticket=ticket, status=row.status, final=final, reason=row.reason,
                      message=_sentence(row.reason) if row.reason else None, results=names,
                      total=row.total, finished=row.finished, finished_at=row.finished_at)

    # --- looking up (always within one tenant) -------------------------------------------

    def find(self, tenant: str, kind: TicketKind, ident: int) -> Ticket | None:
        """The ticket if `tenant` owns that job or batch; None otherwise (another
        tenant's is as unknown as a missing one)."""
        table = JOB if kind is TicketKind.JOB else BATCH
        with reading(self.engine) as conn:
            owner = conn.execute(select(table.c.tenant).where(table.c.id == ident)).scalar()
        return Ticket(kind, ident, tenant) if owner == tenant else None

    def ticket_of(self, job_id: int) -> Ticket:
        """A job's ticket whoever owns it (for a caller that proved its right otherwise)."""
        with reading(self.engine) as conn:
            tenant = conn.execute(select(JOB.c.tenant).where(JOB.c.id == job_id)).scalar()
        return Ticket(TicketKind.JOB, job_id, tenant or "")

    def result(self, ticket: Ticket, name: str) -> bytes | None:
        """One result of a finished job, or one file of a batch's report; None if none."""
        if ticket.kind is TicketKind.JOB:
            with reading(self.engine) as conn:
                content = conn.execute(select(OUTPUT.c.content).where(
                    OUTPUT.c.job_id == ticket.id, OUTPUT.c.name == name)).scalar()
            return bytes(content) if content is not None else None
        answer = self._batch_answer(ticket)
        if name not in answer.results:
            return None
        try:
            return self.outbox.get(f"{ticket.tenant}/{name}")
        except FileNotFoundError:
            return None

    def since(self, tenant: str, since: datetime, limit: int = 500) -> list[dict[str, Any]]:
        """The tenant's results of jobs finished at or after `since`, oldest first."""
        with reading(self.engine) as conn:
            rows = conn.execute(
                select(JOB.c.id, JOB.c.status, JOB.c.public_reason, JOB.c.finished_at,
                       OUTPUT.c.name)
                .join(OUTPUT, OUTPUT.c.job_id == JOB.c.id)
                .where(JOB.c.tenant == tenant, JOB.c.finished_at >= since)
                .order_by(JOB.c.finished_at, JOB.c.id, OUTPUT.c.id).limit(limit)).all()
        return [{"job_id": r.id, "status": r.status, "reason": r.public_reason,
                 "finished_at": r.finished_at, "name": r.name} for r in rows]

    # --- idempotency ---------------------------------------------------------------------

    def claim_key(self, tenant: str, key: str, sha256: str, now: datetime) -> Ticket | None:
        """Claim `key` for these bytes before they are handed over: the ticket an earlier
        upload with the key got (None: this is the first, or the first is still in
        flight: the same bytes find the same job either way); `IdempotencyConflict` if
        the key was claimed for other bytes, which are then never processed."""
        insert = pg_insert if is_postgres(self.engine) else sqlite_insert
        with session_scope(self.engine) as session:
            conn = session.connection()
            conn.execute(insert(IDEMPOTENT).values(tenant=tenant, key=key, sha256=sha256,
                                                   created_at=now)
                         .on_conflict_do_nothing(index_elements=["tenant", "key"]))
            row = conn.execute(select(IDEMPOTENT.c.sha256, IDEMPOTENT.c.job_id,
                                      IDEMPOTENT.c.batch_id)
                               .where(IDEMPOTENT.c.tenant == tenant, IDEMPOTENT.c.key == key)
                               ).one()
        if row.sha256 != sha256:
            raise IdempotencyConflict(key)
        if row.job_id is not None:
            return Ticket(TicketKind.JOB, row.job_id, tenant)
        if row.batch_id is not None:
            return Ticket(TicketKind.BATCH, row.batch_id, tenant)
        return None

    def remember(self, key: str, ticket: Ticket) -> None:
        """Record what the claimed key's upload became."""
        kind = IDEMPOTENT.c.job_id if ticket.kind is TicketKind.JOB else IDEMPOTENT.c.batch_id
        with session_scope(self.engine) as session:
            session.connection().execute(
                update(IDEMPOTENT).where(IDEMPOTENT.c.tenant == ticket.tenant,
                                         IDEMPOTENT.c.key == key)
                .values({kind.name: ticket.id}))


_RETRY = _Pending(Arrival("_", "_", "_", b"", "", 0))  # wakes the thread for the retries


def _sentence(reason: str | None) -> str | None:
    if reason is None:
        return None
    try:
        return MESSAGES[RejectReason(reason)]
    except ValueError:
        return None
