"""Mail into the one job handler, answers out by reply, each message exactly once.

Every message in the mailbox folder goes through a ledger row (`models.MailMessage`,
keyed by the folder, UIDVALIDITY and UID; a copy with a Message-ID seen before is
recognised too):

    new ─┬─ unknown sender ───────────────────────────────► REJECTED (no reply)
         ├─ bad mail (too large, malformed, no file …) ─► ANSWERED ─► reply ─► REJECTED
         └─ files handed over as uploads ─► TAKEN ─► all final ─► ANSWERED ─► reply ─► DONE

The files become arrivals of the customer the sender maps to, through `Uploads` (the
same path as the portal and the API), so the ledger of jobs makes a second look at a
message apply nothing. The reply is recorded once it went out; a crash before that
sends it on the next pass; a crash after it leaves a recorded reply that is never sent
again. The message is moved out of the folder last.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email import message_from_bytes
from email import policy as email_policy
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from models import BatchStatus, MailStatus
from models.db import is_postgres, reading, session_scope
from models.tables import MAIL_MESSAGE
from models.types import utcnow
from pipelines import metrics
from pipelines.render import device_file_name
from pipelines.sources.mail.endpoints import Endpoint
from pipelines.sources.mail.imap import PROCESSED, REJECTED, Mailbox
from pipelines.sources.mail.message import (
    SENTENCES,
    MailItem,
    MailLimits,
    authenticated_domains,
    parse_message,
)
from pipelines.sources.mail.reply import Line, Reply, compose, send
from pipelines.sources.mail.senders import customer_of
from pipelines.uploads import Answer, NotYetRegistered, Ticket, TicketKind, Uploads

log = logging.getLogger("airlock.mail")

UNKNOWN_SENDER = "unknown_sender"
UNAUTHENTICATED = "unauthenticated_sender"


@dataclass
class MailPolicy:
    limits: MailLimits
    mail_from: str
    require_auth: bool = False
    authserv_id: str | None = None
    answer_wait: float = 30.0  # a pass waits this long for answers, then moves on


Sender = Callable[[Endpoint, list[Any]], None]


class MailIntake:
    def __init__(self, engine: Engine, uploads: Uploads, smtp: Endpoint, policy: MailPolicy,
                 *, send_mail: Sender = send, clock: Callable[[], datetime] = utcnow) -> None:
        self.engine = engine
        self.uploads = uploads
        self.smtp = smtp
        self.policy = policy
        self.send_mail = send_mail
        self.clock = clock

    def run_once(self, box: Mailbox) -> int:
        """Handle every message now in the folder; how many were moved out."""
        moved = 0
        for uid in box.uids():
            try:
                moved += self.handle(box, uid)
            except NotYetRegistered:
                log.info("message %s: its files are stored; answered on a later pass", uid)
        return moved

    # --- one message -----------------------------------------------------------------

    def handle(self, box: Mailbox, uid: int) -> bool:
        """Take one message as far as it can go now; True once it left the folder."""
        size = box.size(uid)
        # an oversized message is not downloaded: its header says whom to tell
        raw = box.fetch(uid, header_only=size is not None
                        and size > self.policy.limits.max_message_bytes)
        if raw is None:
            return False
        item = parse_message(raw, self.policy.limits, size=size)
        row = self._row(box, uid) or self._first_sight(box, uid, raw, item)
        status = MailStatus(row["status"])
        if status is MailStatus.TAKEN:
            if not self._all_final(row):
                return False
            status = self._set(row, status=MailStatus.ANSWERED)
        if status is MailStatus.ANSWERED:
            if self._wants_reply(row, item) and row["replied_at"] is None:
                self._reply(row, item)
            bad = row["reason"] or self._archive_refused(row)
            status = self._set(row, status=MailStatus.REJECTED if bad else MailStatus.DONE)
        box.move(uid, REJECTED if status is MailStatus.REJECTED else PROCESSED)
        return True

    def _first_sight(self, box: Mailbox, uid: int, raw: bytes, item: MailItem
                     ) -> dict[str, Any]:
        seen = self._by_message_id(box, item.message_id)
        if seen is not None:  # a copy of a message handled before: counted once
            log.info("message %s is %s again: nothing to apply, no second reply", uid,
                     item.message_id)
            return self._insert(box, uid, item, tenant=seen["tenant"],
                                status=MailStatus(seen["status"]) if seen["status"] in
                                (MailStatus.DONE, MailStatus.REJECTED) else MailStatus.DONE,
                                reason=seen["reason"], tickets=[], replied=True)
        tenant = self._tenant(item, raw)
        if tenant is None:
            reason = UNKNOWN_SENDER if item.sender is None or customer_of(
                self.engine, item.sender) is None else UNAUTHENTICATED
            metrics.record_mail("rejected", reason)
            log.warning("message %s from %s: %s; moved to %s without a reply", uid,
                        item.sender or "?", reason, REJECTED)
            return self._insert(box, uid, item, tenant=None, status=MailStatus.REJECTED,
                                reason=reason, tickets=[], replied=True)
        if item.refusal is not None:
            metrics.record_mail("rejected", str(item.refusal))
            return self._insert(box, uid, item, tenant=tenant, status=MailStatus.ANSWERED,
                                reason=str(item.refusal), tickets=[], replied=False)
        tickets = []
        for mail_file in item.files:
            data = mail_file.data
            ticket = self.uploads.receive(tenant, mail_file.name, io.BytesIO(data),
                                          sha256=hashlib.sha256(data).hexdigest(),
                                          size=len(data))
            tickets.append({"name": mail_file.name, ticket.kind.value: ticket.id})
        metrics.record_mail("taken")
        log.info("message %s from %s: %d file(s) for %s", uid, item.sender, len(tickets),
                 tenant)
        row = self._insert(box, uid, item, tenant=tenant, status=MailStatus.TAKEN,
                           reason=None, tickets=tickets, replied=False)
        return row

    def _tenant(self, item: MailItem, raw: bytes) -> str | None:
        if item.sender is None:
            return None
        tenant = customer_of(self.engine, item.sender)
        if tenant is None or not self.policy.require_auth:
            return tenant
        message = message_from_bytes(raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
                                     + b"\r\n\r\n", policy=email_policy.default)
        passed = authenticated_domains(message, self.policy.authserv_id or "")
        return tenant if item.sender_domain in passed else None

    def _wants_reply(self, row: dict[str, Any], item: MailItem) -> bool:
        return item.no_reply is None and item.sender is not None and row["tenant"] is not None

    # --- answers and the reply -------------------------------------------------------

    def _tickets(self, row: dict[str, Any]) -> list[tuple[str, Ticket]]:
        found = []
        for entry in row["tickets"] or []:
            kind = TicketKind.JOB if "job" in entry else TicketKind.BATCH
            found.append((entry["name"], Ticket(kind, int(entry[kind.value]), row["tenant"])))
        return found

    def _all_final(self, row: dict[str, Any]) -> bool:
        return all(self.uploads.wait(ticket, self.policy.answer_wait).final
                   for _, ticket in self._tickets(row))

    def _archive_refused(self, row: dict[str, Any]) -> bool:
        """An archive refused as a whole (over the limits, unsafe) is bad mail too."""
        return any(ticket.kind is TicketKind.BATCH
                   and self.uploads.answer(ticket).status == BatchStatus.REJECTED
                   for _, ticket in self._tickets(row))

    def _reply(self, row: dict[str, Any], item: MailItem) -> None:
        assert item.sender is not None
        reply = Reply(to=item.sender, subject=item.subject, in_reply_to=item.message_id,
                      references=item.references, key=reply_key(row))
        if row["reason"]:
            reply.note = SENTENCES.get(row["reason"], "The message could not be taken.")  # type: ignore[call-overload]
        taken: set[str] = set()
        for name, ticket in self._tickets(row):
            answer = self.uploads.answer(ticket)
            reply.lines.append(_line(name, answer))
            for result in answer.results:
                content = self.uploads.result(ticket, result)
                if content is not None:
                    reply.attachments.append((_unique(device_file_name(result), taken),
                                              content))
        self.send_mail(self.smtp, [compose(reply, sender=self.policy.mail_from)])
        now = self.clock()
        with session_scope(self.engine) as session:
            session.connection().execute(update(MAIL_MESSAGE).where(
                MAIL_MESSAGE.c.id == row["id"]).values(replied_at=now, updated_at=now))
        row["replied_at"] = now
        log.info("replied to %s (%s) with %d answer(s)", item.sender, item.message_id,
                 len(reply.attachments))

    # --- the ledger ------------------------------------------------------------------

    def _row(self, box: Mailbox, uid: int) -> dict[str, Any] | None:
        with reading(self.engine) as conn:
            row = conn.execute(select(MAIL_MESSAGE).where(
                MAIL_MESSAGE.c.mailbox == box.endpoint.label,
                MAIL_MESSAGE.c.uidvalidity == box.uidvalidity,
                MAIL_MESSAGE.c.uid == uid)).first()
        return dict(row._mapping) if row is not None else None

    def _by_message_id(self, box: Mailbox, message_id: str | None) -> dict[str, Any] | None:
        if not message_id:
            return None
        with reading(self.engine) as conn:
            row = conn.execute(select(MAIL_MESSAGE).where(
                MAIL_MESSAGE.c.mailbox == box.endpoint.label,
                MAIL_MESSAGE.c.message_id == message_id).order_by(MAIL_MESSAGE.c.id)).first()
        return dict(row._mapping) if row is not None else None

    def _insert(self, box: Mailbox, uid: int, item: MailItem, *, tenant: str | None,
                status: MailStatus, reason: str | None, tickets: list[dict[str, Any]],
                replied: bool) -> dict[str, Any]:
        now = self.clock()
        insert = pg_insert if is_postgres(self.engine) else sqlite_insert
        with session_scope(self.engine) as session:
            session.connection().execute(insert(MAIL_MESSAGE).values(
                mailbox=box.endpoint.label, uidvalidity=box.uidvalidity, uid=uid,
                message_id=item.message_id, sender=item.sender, tenant=tenant,
                status=status, reason=reason, tickets=tickets,
                replied_at=now if replied else None, created_at=now, updated_at=now,
            ).on_conflict_do_nothing(index_elements=["mailbox", "uidvalidity", "uid"]))
        row = self._row(box, uid)
        assert row is not None
        return row

    def _set(self, row: dict[str, Any], *, status: MailStatus) -> MailStatus:
        with session_scope(self.engine) as session:
            session.connection().execute(update(MAIL_MESSAGE).where(
                MAIL_MESSAGE.c.id == row["id"]).values(status=status, updated_at=self.clock()))
        row["status"] = status
        return status


def _line(name: str, answer: Answer) -> Line:
    if not answer.final:
        return Line(name, "pending", "", "Still being processed.")
    if answer.accepted:
        return Line(name, "accepted")
    return Line(name, "refused", answer.reason or "", answer.message or "")


def _unique(name: str, taken: set[str]) -> str:
    base, dot, ext = name.rpartition(".")
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}.{ext}" if dot and base else f"{name}-{n}"
    taken.add(candidate)
    return candidate


def reply_key(row: dict[str, Any]) -> str:
    """A ledger row's stable identity for its reply's Message-ID: the same row always
    gives the same key, and a database started again (ids reused) gives other keys."""
    text = "\0".join(str(part) for part in (
        row["mailbox"], row["uidvalidity"], row["uid"], row["id"],
        row["created_at"].isoformat()))
    return hashlib.sha256(text.encode()).hexdigest()[:32]
