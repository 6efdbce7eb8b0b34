"""The one reply to a message: every answer attached, a table of outcomes, threading
headers, and `Auto-Submitted: auto-replied` so that auto-responders stay quiet."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from models.types import utcnow
from pipelines.sources.mail.endpoints import Endpoint, Security

TIMEOUT = 60.0


@dataclass(frozen=True)
class Line:
    """One attachment's outcome in the reply's table."""

    name: str
    outcome: str  # accepted / refused / pending
    reason: str = ""
    sentence: str = ""


@dataclass
class Reply:
    to: str
    subject: str
    in_reply_to: str | None
    references: str | None
    lines: list[Line] = field(default_factory=list)
    attachments: list[tuple[str, bytes]] = field(default_factory=list)
    note: str | None = None  # a sentence about the whole message (why nothing was taken)
    # The answered message's identity in the ledger: the reply's Message-ID is made from
    # it, so a reply sent again (a crash between the relay taking it and the ledger
    # recording it) is the same message, which many mail systems and clients show once.
    key: str | None = None


def compose(reply: Reply, *, sender: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = reply.to
    subject = reply.subject.strip() or "your request files"
    message["Subject"] = subject if subject.lower().startswith("re:") else f"Re: {subject}"
    message["Date"] = format_datetime(utcnow())
    domain = sender.rpartition("@")[2] or None
    message["Message-ID"] = (f"<airlock-reply.{reply.key}@{domain or 'localhost'}>"
                             if reply.key else make_msgid(domain=domain))
    if reply.in_reply_to:
        message["In-Reply-To"] = reply.in_reply_to
    if reply.references:
        message["References"] = reply.references
    message["Auto-Submitted"] = "auto-replied"
    message["X-Auto-Response-Suppress"] = "All"
    message.set_content(_body(reply))
    for name, content in reply.attachments:
        message.add_attachment(content, maintype="application", subtype="octet-stream",
                               filename=name)
    return message


def _body(reply: Reply) -> str:
    parts = []
    if reply.note:
        parts.append(reply.note)
    if reply.lines:
        width = max(len(line.name) for line in reply.lines)
        parts.append("\n".join(
            f"{line.name.ljust(width)}  {line.outcome:<8}  {line.reason}".rstrip()
            + (f"\n{' ' * width}  {line.sentence}" if line.sentence else "")
            for line in reply.lines))
    if reply.attachments:
        parts.append("Load the attached files on the devices they are for.")
    parts.append("This message was sent automatically.")
    return "\n\n".join(parts) + "\n"


def send(endpoint: Endpoint, messages: Sequence[EmailMessage]) -> None:
    """Send over TLS (smtps://, or STARTTLS when offered); in the clear only to a
    loopback relay."""
    context = ssl.create_default_context()
    if endpoint.security is Security.TLS:
        server: smtplib.SMTP = smtplib.SMTP_SSL(endpoint.host, endpoint.port, timeout=TIMEOUT,
                                                context=context)
    else:
        server = smtplib.SMTP(endpoint.host, endpoint.port, timeout=TIMEOUT)
    try:
        server.ehlo()
        if endpoint.security is Security.STARTTLS:
            if server.has_extn("starttls"):
                server.starttls(context=context)
                server.ehlo()
            elif not endpoint.loopback:
                raise smtplib.SMTPException(f"{endpoint.host} offers no STARTTLS: use smtps://")
        if endpoint.user:
            server.login(endpoint.user, endpoint.password or "")
        for message in messages:
            server.send_message(message)
    finally:
        try:
            server.quit()
        except smtplib.SMTPException:
            server.close()
