"""A password never crosses the network in the clear: a server that offers no STARTTLS
on a non-loopback address is refused before LOGIN (a downgrade on a bad link)."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from pipelines.sources.mail.endpoints import parse_endpoint
from pipelines.sources.mail.imap import MailboxError, open_mailbox


def _outside_address() -> str | None:
    """An address of this host that is not loopback (None: there is none)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent for a UDP connect
            address = str(probe.getsockname()[0])
    except OSError:
        return None
    return None if address.startswith("127.") else address


class _NoTls(socketserver.StreamRequestHandler):
    """An IMAP server that would take a password in the clear."""

    received: list[bytes] = []

    def handle(self) -> None:
        self.wfile.write(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n")
        for line in self.rfile:
            self.received.append(line)
            tag = line.split(b" ", 1)[0]
            if b"CAPABILITY" in line.upper():
                self.wfile.write(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n" + tag + b" OK done\r\n")
            elif b"LOGOUT" in line.upper():
                self.wfile.write(b"* BYE\r\n" + tag + b" OK done\r\n")
                return
            else:
                self.wfile.write(tag + b" OK done\r\n")


@pytest.fixture
def server() -> Iterator[tuple[str, int]]:
    address = _outside_address()
    if address is None:
        pytest.skip("this host has no address but loopback")
    _NoTls.received = []
    with socketserver.ThreadingTCPServer((address, 0), _NoTls) as running:
        thread = threading.Thread(target=running.serve_forever, daemon=True)
        thread.start()
        yield address, running.server_address[1]
        running.shutdown()


def test_imap_without_starttls_off_loopback_is_refused_before_login(
        server: tuple[str, int]) -> None:
    host, port = server
    endpoint = parse_endpoint(f"imap://u:clear-secret@{host}:{port}/INBOX", "imap")
    with pytest.raises(MailboxError, match="STARTTLS"), open_mailbox(endpoint):
        pass
    sent = b"".join(_NoTls.received)
    assert b"clear-secret" not in sent and b"LOGIN" not in sent.upper()


def test_smtp_without_starttls_off_loopback_sends_nothing() -> None:
    import smtplib
    from email.message import EmailMessage

    from aiosmtpd.controller import Controller

    address = _outside_address()
    if address is None:
        pytest.skip("this host has no address but loopback")
    received: list[bytes] = []

    class Handler:
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            received.append(envelope.original_content)  # type: ignore[attr-defined]
            return "250 OK"

    with socket.socket() as probe:
        probe.bind((address, 0))
        port = probe.getsockname()[1]
    controller = Controller(Handler(), hostname=address, port=port)
    controller.start()
    try:
        endpoint = parse_endpoint(f"smtp://u:clear-secret@{address}:{port}", "smtp")
        message = EmailMessage()
        message["From"], message["To"] = "l@vendor.example", "a@acme.example"
        message.set_content("answer")
        from pipelines.sources.mail.reply import send

        with pytest.raises(smtplib.SMTPException, match="STARTTLS"):
            send(endpoint, [message])
    finally:
        controller.stop()
    assert received == []
