"""One IMAP mailbox folder: its messages by UID, moving them out, waiting for more.

Python 3.11's imaplib has no IDLE; `Mailbox.wait` speaks it (RFC 2177) where the
server offers it and sleeps otherwise.
"""

from __future__ import annotations

import imaplib
import re
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pipelines.sources.mail.endpoints import Endpoint, Security

PROCESSED = "Airlock/Processed"
REJECTED = "Airlock/Rejected"
IDLE_SECONDS = 25 * 60  # below the 29 minutes after which a server may drop an idler
TIMEOUT = 60.0


class MailboxError(Exception):
    """The mailbox cannot be used (login refused, no encryption offered, a command failed)."""


class Mailbox:
    def __init__(self, endpoint: Endpoint, client: imaplib.IMAP4) -> None:
        self.endpoint = endpoint
        self.client = client
        self.uidvalidity = 0
        self.select()
        for folder in (PROCESSED, REJECTED):
            self.client.create(folder)  # NO when it exists: fine

    def select(self) -> None:
        status, detail = self.client.select(_quote(self.endpoint.folder))
        if status != "OK":
            raise MailboxError(f"cannot open {self.endpoint.folder}: {_text(detail)}")
        validity = self.client.response("UIDVALIDITY")[1]
        if not validity or validity[0] is None:
            raise MailboxError("the server gave no UIDVALIDITY")
        self.uidvalidity = int(validity[0])

    def uids(self) -> list[int]:
        status, found = self.client.uid("SEARCH", "ALL")
        if status != "OK":
            raise MailboxError(f"search failed: {_text(found)}")
        return sorted(int(u) for u in (found[0] or b"").split())

    def size(self, uid: int) -> int | None:
        status, data = self.client.uid("FETCH", str(uid), "(RFC822.SIZE)")
        for item in data if status == "OK" else []:
            raw = item[0] if isinstance(item, tuple) else item
            match = re.search(rb"RFC822\.SIZE (\d+)", raw or b"")
            if match:
                return int(match[1])
        return None

    def fetch(self, uid: int, *, header_only: bool = False) -> bytes | None:
        """The whole message (or its header), without marking it seen; None if gone."""
        part = "BODY.PEEK[HEADER]" if header_only else "BODY.PEEK[]"
        status, data = self.client.uid("FETCH", str(uid), f"({part})")
        if status != "OK":
            raise MailboxError(f"fetch failed: {_text(data)}")
        for item in data:
            if isinstance(item, tuple) and len(item) == 2:
                return bytes(item[1])
        return None

    def move(self, uid: int, folder: str) -> None:
        if "MOVE" in self.client.capabilities:
            status, detail = self.client.uid("MOVE", str(uid), _quote(folder))
        else:
            status, detail = self.client.uid("COPY", str(uid), _quote(folder))
            if status == "OK":
                self.client.uid("STORE", str(uid), "+FLAGS.SILENT", r"(\Deleted)")
                status, detail = self.client.expunge()
        if status != "OK":
            raise MailboxError(f"cannot move message {uid} to {folder}: {_text(detail)}")

    def wait(self, seconds: float) -> None:
        """Until the server says something changed, or `seconds` pass."""
        if "IDLE" not in self.client.capabilities:
            time.sleep(seconds)
            return
        client = self.client
        tag = client._new_tag()  # type: ignore[attr-defined]
        client.send(tag + b" IDLE\r\n")
        line = client.readline()
        if not line.startswith(b"+"):
            raise MailboxError(f"IDLE refused: {line[:200]!r}")
        sock = client.socket()
        sock.settimeout(min(seconds, IDLE_SECONDS))
        try:
            while True:
                line = client.readline()
                if not line:
                    raise MailboxError("the server closed the connection while idle")
                if re.match(rb"\* \d+ (EXISTS|RECENT)", line):
                    break
        except TimeoutError:
            pass
        finally:
            sock.settimeout(TIMEOUT)
        client.send(b"DONE\r\n")
        while True:  # the tagged answer to IDLE, after any untagged lines
            line = client.readline()
            if not line or line.startswith(tag):
                return

    def close(self) -> None:
        try:
            self.client.logout()
        except (imaplib.IMAP4.error, OSError):
            pass


@contextmanager
def open_mailbox(endpoint: Endpoint) -> Iterator[Mailbox]:
    """Connect, secure and log in; refuses to send a password in the clear except to a
    loopback address."""
    try:
        if endpoint.security is Security.TLS:
            client: imaplib.IMAP4 = imaplib.IMAP4_SSL(endpoint.host, endpoint.port,
                                                      ssl_context=ssl.create_default_context(),
                                                      timeout=TIMEOUT)
        else:
            client = imaplib.IMAP4(endpoint.host, endpoint.port, timeout=TIMEOUT)
            if "STARTTLS" in client.capabilities:
                client.starttls(ssl.create_default_context())
            elif not endpoint.loopback:
                client.logout()
                raise MailboxError(f"{endpoint.host} offers no STARTTLS: use imaps://")
        client.login(endpoint.user or "", endpoint.password or "")
    except imaplib.IMAP4.error as exc:
        raise MailboxError(f"{endpoint.label}: {exc}") from None
    box = Mailbox(endpoint, client)
    try:
        yield box
    finally:
        box.close()


def _quote(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text(detail: object) -> str:
    if isinstance(detail, list) and detail:
        first = detail[0]
        return first.decode(errors="replace") if isinstance(first, bytes) else str(first)
    return str(detail)
