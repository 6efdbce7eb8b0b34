"""A received mail, read strictly: who sent it, whether to answer it, and its files.

The files are the attachments (request files and bulk archives) and every armoured
block pasted into a plain-text part. Everything here is hostile until checked: the
size is checked before parsing, nesting and attachment counts are capped, names are
cut down to a safe base name, and any defect the parser reports (or any exception it
raises) refuses the whole message as malformed instead of guessing.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import parseaddr
from enum import StrEnum

from pipelines.archives import archive_format

_ARMOURED = re.compile(rb"-----BEGIN AIRLOCK ([A-Z ]{1,40})-----\r?\n.*?"
                       rb"-----END AIRLOCK \1-----", re.S)
_NO_REPLY_SENDERS = ("mailer-daemon", "postmaster", "noreply", "no-reply")


class MailRefusal(StrEnum):
    """Why a message's files are not taken; the reply tells the sender."""

    TOO_LARGE = "too_large"
    TOO_MANY_ATTACHMENTS = "too_many_attachments"
    TOO_DEEP = "too_deep"
    MALFORMED_MIME = "malformed_mime"
    NO_FILES = "no_files"
    ATTACHMENT_TOO_LARGE = "attachment_too_large"


SENTENCES = {
    MailRefusal.TOO_LARGE: "The message is larger than the accepted limit.",
    MailRefusal.TOO_MANY_ATTACHMENTS: "The message has more attachments than are accepted.",
    MailRefusal.TOO_DEEP: "The message nests attachments more deeply than is accepted.",
    MailRefusal.MALFORMED_MIME: "The message is not well-formed MIME and cannot be read.",
    MailRefusal.NO_FILES: "The message carries no request file: attach the file, or paste "
                          "its text (from -----BEGIN AIRLOCK to -----END AIRLOCK).",
    MailRefusal.ATTACHMENT_TOO_LARGE: "An attachment is larger than the accepted limit.",
}


@dataclass(frozen=True)
class MailLimits:
    max_message_bytes: int = 10 * 1024 * 1024
    max_attachments: int = 50
    max_depth: int = 3
    max_file_bytes: int = 256 * 1024
    max_archive_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class MailFile:
    name: str
    data: bytes = field(repr=False)


@dataclass
class MailItem:
    """What the intake needs of one message."""

    message_id: str | None
    sender: str | None  # lower-case address, None when unreadable
    subject: str
    no_reply: str | None = None  # why no reply may go back (auto-reply, list, bounce)
    files: list[MailFile] = field(default_factory=list)
    refusal: MailRefusal | None = None
    references: str | None = None

    @property
    def sender_domain(self) -> str | None:
        return self.sender.rsplit("@", 1)[1] if self.sender and "@" in self.sender else None


class _Refused(Exception):
    def __init__(self, refusal: MailRefusal) -> None:
        self.refusal = refusal


def parse_message(raw: bytes, limits: MailLimits = MailLimits(), *,
                  size: int | None = None) -> MailItem:
    """Read `raw` (a whole RFC 5322 message, or only its header when the server's
    `size` for it is over the limit); never raises on what a sender can send."""
    too_large = max(len(raw), size or 0) > limits.max_message_bytes
    try:
        if too_large:  # only its headers are read, to know whom to tell
            head = raw[:64 * 1024].split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
            item = _headers_of(_parse(head + b"\r\n\r\n"))
            item.refusal = MailRefusal.TOO_LARGE
            return item
        message = _parse(raw)
        item = _headers_of(message)
    except Exception:  # noqa: BLE001 - a header the parser cannot take at all
        return MailItem(message_id=None, sender=None, subject="",
                        refusal=MailRefusal.MALFORMED_MIME)
    try:
        item.files = _files(message, limits)
        if not item.files:
            item.refusal = MailRefusal.NO_FILES
    except _Refused as exc:
        item.refusal = exc.refusal
    except Exception:  # noqa: BLE001 - anything the parser chokes on is malformed
        item.refusal = MailRefusal.MALFORMED_MIME
    return item


def _parse(raw: bytes) -> EmailMessage:
    return BytesParser(policy=policy.default).parsebytes(raw)  # type: ignore[return-value]


def _headers_of(message: EmailMessage) -> MailItem:
    _name, address = parseaddr(str(message.get("From", "")))
    sender = address.strip().lower() if "@" in address and " " not in address else None
    message_id = str(message.get("Message-ID", "")).strip() or None
    refs = " ".join(x for x in (str(message.get("References", "")).strip(), message_id or "")
                    if x) or None
    return MailItem(message_id=message_id[:998] if message_id else None, sender=sender,
                    subject=str(message.get("Subject", ""))[:200], no_reply=_no_reply(message,
                                                                                     sender),
                    references=refs)


def _no_reply(message: Message, sender: str | None) -> str | None:
    """Why this message must not be answered (RFC 3834), or None."""
    auto = str(message.get("Auto-Submitted", "no")).strip().lower()
    if auto and auto != "no":
        return "auto-submitted"
    if str(message.get("Precedence", "")).strip().lower() in ("bulk", "list", "junk"):
        return "bulk or list mail"
    if message.get("List-Id") or message.get("List-Unsubscribe"):
        return "list mail"
    if str(message.get("Return-Path", "")).strip() == "<>":
        return "a bounce"
    if message.get_content_type() == "multipart/report":
        return "a delivery report"
    if sender is None:
        return "no readable sender"
    local = sender.split("@", 1)[0]
    if local.startswith(_NO_REPLY_SENDERS):
        return "a system sender"
    return None


def authenticated_domains(message: Message, authserv_id: str) -> set[str]:
    """The domains the receiving server (`authserv_id`) says passed DKIM or SPF, from
    its ``Authentication-Results`` headers only (a sender can add headers of its own
    with another id, which are ignored)."""
    passed: set[str] = set()
    for header in message.get_all("Authentication-Results", []) or []:
        text = str(header)
        server, _, results = text.partition(";")
        if server.strip().split()[0:1] != [authserv_id]:
            continue
        for result in results.split(";"):
            method = re.match(r"\s*(dkim|spf)\s*=\s*pass\b", result, re.I)
            if not method:
                continue
            prop = "header.d" if method[1].lower() == "dkim" else "smtp.mailfrom"
            found = re.search(rf"\b{re.escape(prop)}\s*=\s*([^\s;]+)", result, re.I)
            if found:
                passed.add(found[1].rsplit("@", 1)[-1].strip().lower())
    return passed


def _files(message: EmailMessage, limits: MailLimits) -> list[MailFile]:
    files: list[MailFile] = []
    names: set[str] = set()

    def walk(part: Message, depth: int) -> None:
        if depth > limits.max_depth:
            raise _Refused(MailRefusal.TOO_DEEP)
        if part.defects:
            raise _Refused(MailRefusal.MALFORMED_MIME)
        if part.is_multipart():
            payload = part.get_payload()
            if not isinstance(payload, list):
                raise _Refused(MailRefusal.MALFORMED_MIME)
            for child in payload:
                if not isinstance(child, Message):
                    raise _Refused(MailRefusal.MALFORMED_MIME)
                walk(child, depth + 1)
            return
        filename = part.get_filename()
        if filename is not None or part.get_content_disposition() == "attachment":
            data = part.get_payload(decode=True)
            if not isinstance(data, bytes) or part.defects:
                raise _Refused(MailRefusal.MALFORMED_MIME)
            _add(files, names, limits, _safe_name(filename or "", len(files) + 1), data)
        elif part.get_content_type() == "text/plain":
            data = part.get_payload(decode=True)
            if not isinstance(data, bytes) or part.defects:
                raise _Refused(MailRefusal.MALFORMED_MIME)
            for block in _ARMOURED.finditer(data):
                _add(files, names, limits, f"pasted-{len(files) + 1}.req",
                     block[0].replace(b"\r\n", b"\n") + b"\n")

    walk(message, 0)
    return files


def _add(files: list[MailFile], names: set[str], limits: MailLimits, name: str,
         data: bytes) -> None:
    if len(files) >= limits.max_attachments:
        raise _Refused(MailRefusal.TOO_MANY_ATTACHMENTS)
    limit = limits.max_archive_bytes if archive_format(name) else limits.max_file_bytes
    if len(data) > limit:
        raise _Refused(MailRefusal.ATTACHMENT_TOO_LARGE)
    base, dot, ext = name.rpartition(".")
    unique, n = name, 1
    while unique in names:
        n += 1
        unique = f"{base}-{n}.{ext}" if dot and base else f"{name}-{n}"
    names.add(unique)
    files.append(MailFile(unique, data))


def _safe_name(name: str, index: int) -> str:
    """A base name without folders, control characters or a leading dot, at most 100
    characters (its extension kept); ``attachment-<n>`` when nothing is left."""
    base = re.split(r"[\\/]", name)[-1]
    base = "".join(ch for ch in unicodedata.normalize("NFC", base)
                   if unicodedata.category(ch)[0] != "C" and ch not in '<>:"|?*')
    base = base.strip().lstrip(".").strip()
    if len(base) > 100:
        stem, dot, ext = base.rpartition(".")
        base = (stem[:100 - len(ext) - 1] + dot + ext) if dot and len(ext) <= 10 else base[:100]
    return base or f"attachment-{index}"
