"""The mail intake against a real Dovecot and an SMTP server run by the test (aiosmtpd)."""

from __future__ import annotations

import email
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import func, select

from airlock_sdk.device import Device
from config.settings import Settings
from models.db import make_engine, reading, session_scope
from models.migrate import upgrade
from models.tables import JOB, MAIL_MESSAGE
from pipelines.keyring import VendorKeyring, init_keyring
from pipelines.sources.mail.intake import MailIntake
from pipelines.sources.mail.reply import send
from pipelines.sources.mail.senders import add_sender
from tests.factories import add_license, license_info, vendor
from tests.mail.conftest import Dovecot, _free_port
from workers.mail import run_mail

pytestmark = pytest.mark.mail


@dataclass
class Sink:
    """What the SMTP server received."""

    messages: list[EmailMessage] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages.append(email.message_from_bytes(  # type: ignore[arg-type]
                envelope.original_content, policy=email.policy.default))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Sink, int]]:
    sink = Sink()
    port = _free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield sink, port
    finally:
        controller.stop()


@dataclass
class Workspace:
    settings: Settings
    keyring: VendorKeyring
    dovecot: Dovecot
    folder: str
    root: Path

    def run(self, **overrides: Any) -> None:
        settings = self.settings.model_copy(update=overrides) if overrides else self.settings
        run_mail(settings, threading.Event(), once=True)

    def folder_count(self, folder: str | None = None) -> int:
        client = self.dovecot.connect()
        try:
            client.select(f'"{folder or self.folder}"')
            found = client.uid("SEARCH", "ALL")[1][0] or b""
            return len(found.split())
        finally:
            client.logout()

    def device(self, hardware_id: str) -> Device:
        return Device.init(self.root / hardware_id, hardware_id, self.keyring.public_bundle())


@pytest.fixture
def mail(tmp_path: Path, dovecot: Dovecot, smtp: tuple[Sink, int]) -> Workspace:
    return _workspace(tmp_path, dovecot, smtp)


def _imap_url(dovecot: Dovecot, folder: str, *, scheme: str = "imap", port: int = 0) -> str:
    return (f"{scheme}://{dovecot.user.replace('@', '%40')}:{dovecot.password}@127.0.0.1:"
            f"{port or dovecot.port}/{folder}")


def _workspace(tmp_path: Path, dovecot: Dovecot, smtp: tuple[Sink, int]) -> Workspace:
    folder = f"T{uuid.uuid4().hex[:10]}"
    client = dovecot.connect()
    assert client.create(folder)[0] == "OK"
    client.logout()
    settings = Settings(
        home=tmp_path / "var", answer_wait_seconds=10, mail_from="licensing@vendor.example",
        imap_url=_imap_url(dovecot, folder),
        smtp_url=f"smtp://127.0.0.1:{smtp[1]}")
    settings.home.mkdir(parents=True)
    upgrade(settings.resolved_database_url)
    keyring, _ = init_keyring(settings.resolved_keys_dir)
    engine = make_engine(settings.resolved_database_url)
    vendor(engine)
    with session_scope(engine) as session:
        add_sender(session=session, customer="ACME", domain="acme.example")
    engine.dispose()
    return Workspace(settings, keyring, dovecot, folder, tmp_path)


def _engine(ws: Workspace) -> Any:
    return make_engine(ws.settings.resolved_database_url)


def _message(sender: str = "Ana <ana@acme.example>", **headers: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "licensing@vendor.example"
    message["Subject"] = "two devices"
    message["Message-ID"] = f"<{uuid.uuid4().hex}@acme.example>"
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    return message


def _with_requests(ws: Workspace, key: str, *hardware: str, **headers: str
                   ) -> tuple[EmailMessage, list[Device]]:
    message = _message(**headers)
    message.set_content("Please activate these.")
    devices = [ws.device(hw) for hw in hardware]
    for device in devices:
        message.add_attachment(device.request_activation(product="pro", license_key=key),
                               maintype="application", subtype="octet-stream",
                               filename=f"{device.hardware_id}.req")
    return message, devices


def test_two_files_one_reply_with_two_answers_and_nothing_twice(
        mail: Workspace, smtp: tuple[Sink, int]) -> None:
    sink, _ = smtp
    engine = _engine(mail)
    key = add_license(engine, max_activations=5)
    message, devices = _with_requests(mail, key, "HW-1", "HW-2")
    mail.dovecot.append(message.as_bytes(), mail.folder)
    mail.run()
    (reply,) = sink.messages
    assert reply["In-Reply-To"] == message["Message-ID"]
    assert message["Message-ID"] in reply["References"]
    assert reply["Auto-Submitted"] == "auto-replied"
    assert reply["To"] == "ana@acme.example"
    answers = [part for part in reply.iter_attachments()]
    assert sorted(part.get_filename() for part in answers) == ["license-2.lic", "license.lic"]
    loaded = set()
    for part in answers:
        content = part.get_content()
        data = content if isinstance(content, bytes) else content.encode()
        for device in devices:
            try:
                device.load(data)
                loaded.add(device.hardware_id)
            except Exception:  # noqa: BLE001 - the other device's license
                continue
    assert loaded == {"HW-1", "HW-2"}
    body = reply.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "HW-1.req" in body and "accepted" in body
    assert mail.folder_count() == 0
    assert license_info(engine, key)["active_devices"] == 2
    # the same message again (a reconnect, a copy put back): nothing applied, no reply
    mail.dovecot.append(message.as_bytes(), mail.folder)
    mail.run()
    assert len(sink.messages) == 1
    assert license_info(engine, key)["active_devices"] == 2
    assert mail.folder_count() == 0
    with reading(engine) as conn:
        assert conn.execute(select(func.count()).select_from(JOB)).scalar() == 2
        assert conn.execute(select(func.count()).select_from(MAIL_MESSAGE)).scalar() == 2
    engine.dispose()


def test_a_crash_before_the_reply_sends_exactly_one_after_restart(
        mail: Workspace, smtp: tuple[Sink, int]) -> None:
    sink, port = smtp
    engine = _engine(mail)
    key = add_license(engine, max_activations=5)
    message, _ = _with_requests(mail, key, "HW-1")
    mail.dovecot.append(message.as_bytes(), mail.folder)
    dead = f"smtp://127.0.0.1:{_free_port()}"  # nothing listens: the reply cannot go out
    with pytest.raises(OSError):
        mail.run(smtp_url=dead)
    assert sink.messages == [] and mail.folder_count() == 1  # applied, not answered, kept
    assert license_info(engine, key)["active_devices"] == 1
    mail.run()
    mail.run()
    assert len(sink.messages) == 1
    assert mail.folder_count() == 0
    assert license_info(engine, key)["active_devices"] == 1
    engine.dispose()


def test_a_crash_after_the_relay_took_the_reply_resends_the_same_message(
        mail: Workspace, smtp: tuple[Sink, int], monkeypatch: pytest.MonkeyPatch) -> None:
    # The relay took the reply but the ledger never heard (the connection dropped after
    # the relay's 250, or the process died): the reply goes again on the next run, as
    # the same message (one Message-ID), which many mail systems show once.
    sink, _port = smtp
    engine = _engine(mail)
    key = add_license(engine, max_activations=5)
    message, _ = _with_requests(mail, key, "HW-1")
    mail.dovecot.append(message.as_bytes(), mail.folder)

    def lost_after_sending(endpoint: Any, messages: Any) -> None:
        send(endpoint, messages)
        raise OSError("the connection dropped after the relay took the message")

    defaults = MailIntake.__init__.__kwdefaults__
    assert defaults is not None
    with monkeypatch.context() as crashing:
        crashing.setitem(defaults, "send_mail", lost_after_sending)
        with pytest.raises(OSError):
            mail.run()
    assert len(sink.messages) == 1 and mail.folder_count() == 1
    mail.run()
    mail.run()
    first, again = sink.messages
    assert first["Message-ID"] == again["Message-ID"]
    assert first["Message-ID"].endswith("@vendor.example>")
    assert [p.get_content() for p in first.iter_attachments()] == \
        [p.get_content() for p in again.iter_attachments()]
    assert mail.folder_count() == 0
    assert license_info(engine, key)["active_devices"] == 1
    with reading(engine) as conn:
        (replied,) = conn.execute(select(MAIL_MESSAGE.c.replied_at)).scalars()
        assert replied is not None
        assert conn.execute(select(func.count()).select_from(JOB)).scalar() == 1
    # Another message gets a Message-ID of its own.
    other, _ = _with_requests(mail, key, "HW-2")
    mail.dovecot.append(other.as_bytes(), mail.folder)
    mail.run()
    assert sink.messages[2]["Message-ID"] != first["Message-ID"]
    engine.dispose()


def test_unknown_senders_and_auto_replies_get_no_reply(
        mail: Workspace, smtp: tuple[Sink, int]) -> None:
    sink, _ = smtp
    engine = _engine(mail)
    key = add_license(engine, max_activations=5)
    stranger, _ = _with_requests(mail, key, "HW-1")
    stranger.replace_header("From", "eve@evil.example")
    auto, _ = _with_requests(mail, key, "HW-2", Auto_Submitted="auto-replied")
    for message in (stranger, auto):
        mail.dovecot.append(message.as_bytes(), mail.folder)
    mail.run()
    assert sink.messages == []
    assert mail.folder_count() == 0
    assert license_info(engine, key)["active_devices"] == 1  # the stranger's file: never
    with reading(engine) as conn:
        rows = {r.sender: (r.status, r.reason) for r in conn.execute(
            select(MAIL_MESSAGE.c.sender, MAIL_MESSAGE.c.status, MAIL_MESSAGE.c.reason))}
    assert rows["eve@evil.example"] == ("rejected", "unknown_sender")
    assert rows["ana@acme.example"] == ("done", None)
    engine.dispose()


def test_malformed_mime_gets_a_reply_with_the_reason(
        mail: Workspace, smtp: tuple[Sink, int]) -> None:
    sink, _ = smtp
    raw = (b"From: ana@acme.example\r\nTo: licensing@vendor.example\r\nSubject: files\r\n"
           b"Message-ID: <broken@acme.example>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=XYZ\r\n\r\n--XYZ\r\n"
           b"Content-Type: application/octet-stream\r\n"
           b"Content-Disposition: attachment; filename=a.req\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\nQUxL\r\n")
    mail.dovecot.append(raw, mail.folder)
    mail.run()
    (reply,) = sink.messages
    assert reply["In-Reply-To"] == "<broken@acme.example>"
    assert "not well-formed MIME" in reply.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert list(reply.iter_attachments()) == []
    assert mail.folder_count() == 0


def test_with_required_authentication_a_spoofed_sender_is_refused(
        mail: Workspace, smtp: tuple[Sink, int]) -> None:
    sink, _ = smtp
    engine = _engine(mail)
    key = add_license(engine, max_activations=5)
    spoofed, _ = _with_requests(mail, key, "HW-1")
    spoofed["Authentication-Results"] = "mx.evil.example; dkim=pass header.d=acme.example"
    genuine, _ = _with_requests(mail, key, "HW-2")
    genuine["Authentication-Results"] = "mx.vendor.example; dkim=pass header.d=acme.example"
    for message in (spoofed, genuine):
        mail.dovecot.append(message.as_bytes(), mail.folder)
    mail.run(mail_require_auth=True, mail_authserv_id="mx.vendor.example")
    assert license_info(engine, key)["active_devices"] == 1
    assert [m["In-Reply-To"] for m in sink.messages] == [genuine["Message-ID"]]
    with reading(engine) as conn:
        reasons = sorted(str(r) for r in conn.execute(select(MAIL_MESSAGE.c.reason)).scalars())
    assert reasons == ["None", "unauthenticated_sender"]
    engine.dispose()


def test_too_many_attachments_get_a_reply_and_nothing_is_applied(
        mail: Workspace, smtp: tuple[Sink, int]) -> None:
    sink, _ = smtp
    engine = _engine(mail)
    key = add_license(engine, max_activations=5)
    message, _ = _with_requests(mail, key, "HW-1", "HW-2", "HW-3")
    mail.dovecot.append(message.as_bytes(), mail.folder)
    mail.run(mail_max_attachments=2)
    (reply,) = sink.messages
    assert "more attachments than are accepted" in \
        reply.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert license_info(engine, key)["active_devices"] == 0
    assert mail.folder_count() == 0 and mail.folder_count("Airlock/Rejected") >= 1
    engine.dispose()


def test_idle_wakes_when_mail_arrives(mail: Workspace) -> None:
    from pipelines.sources.mail.endpoints import parse_endpoint
    from pipelines.sources.mail.imap import open_mailbox

    endpoint = parse_endpoint(mail.settings.imap_url or "", "imap")
    with open_mailbox(endpoint) as box:
        assert "IDLE" in box.client.capabilities
        timer = threading.Timer(0.3, mail.dovecot.append,
                                args=(_message().as_bytes(), mail.folder))
        timer.start()
        began = time.monotonic()
        box.wait(30)
        waited = time.monotonic() - began
        timer.join()
        assert waited < 25  # woken by the new message, not the timeout
        assert len(box.uids()) == 1


def test_an_archive_over_the_limits_gets_its_report_and_is_rejected(
        mail: Workspace, smtp: tuple[Sink, int]) -> None:
    import io
    import zipfile

    sink, _ = smtp
    engine = _engine(mail)
    key = add_license(engine, max_activations=5)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for hw in ("HW-1", "HW-2", "HW-3"):
            archive.writestr(f"{hw}.req", mail.device(hw).request_activation(
                product="pro", license_key=key))
    message = _message()
    message.set_content("our site's devices")
    message.add_attachment(buffer.getvalue(), maintype="application", subtype="zip",
                           filename="site.zip")
    mail.dovecot.append(message.as_bytes(), mail.folder)
    mail.run(max_archive_members=2)
    (reply,) = sink.messages
    body = reply.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "site.zip" in body and "refused" in body and "archive_too_large" in body
    assert any(str(part.get_filename()).endswith(".report.json")
               for part in reply.iter_attachments())
    assert license_info(engine, key)["active_devices"] == 0
    assert mail.folder_count() == 0
    with reading(engine) as conn:
        (status,) = conn.execute(select(MAIL_MESSAGE.c.status)).scalars()
    assert status == "rejected"
    engine.dispose()


def test_an_oversized_message_is_refused_from_its_header(
        mail: Workspace, smtp: tuple[Sink, int]) -> None:
    sink, _ = smtp
    message = _message()
    message.set_content("x" * 200_000)
    message.add_attachment(b"y" * 10, maintype="application", subtype="octet-stream",
                           filename="a.req")
    mail.dovecot.append(message.as_bytes(), mail.folder)
    mail.run(mail_max_message_bytes=100_000)
    (reply,) = sink.messages
    assert "larger than the accepted limit" in \
        reply.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert mail.folder_count() == 0 and mail.folder_count("Airlock/Rejected") >= 1


# --- over TLS ------------------------------------------------------------------------------


def _logins(dovecot: Dovecot) -> list[str]:
    return [line for line in dovecot.log().splitlines()
            if f"imap-login: Info: Login: user=<{dovecot.user}>" in line]


def _logins_after(dovecot: Dovecot, before: int, count: int) -> list[str]:
    """The logins after the first `before`, once there are `count` of them (Dovecot's
    log process writes them a moment after the fact)."""
    deadline = time.monotonic() + 10
    while len(lines := _logins(dovecot)[before:]) < count:
        assert time.monotonic() < deadline, f"{len(lines)} of {count} logins logged"
        time.sleep(0.02)
    return lines


def test_imaps_and_starttls_read_mail_over_tls(tmp_path: Path, dovecot_tls: Dovecot,
                                               smtp: tuple[Sink, int],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    assert dovecot_tls.ca_file is not None
    monkeypatch.setenv("SSL_CERT_FILE", str(dovecot_tls.ca_file))
    sink, _port = smtp
    ws = _workspace(tmp_path, dovecot_tls, smtp)
    engine = _engine(ws)
    key = add_license(engine, max_activations=5)
    before = len(_logins(dovecot_tls))
    urls = {"imaps": _imap_url(dovecot_tls, ws.folder, scheme="imaps",
                               port=dovecot_tls.tls_port),
            "starttls": _imap_url(dovecot_tls, ws.folder)}
    for n, url in enumerate(urls.values(), start=1):
        message, _ = _with_requests(ws, key, f"HW-{n}")
        ws.dovecot.append(message.as_bytes(), ws.folder)
        ws.run(imap_url=url)
        assert len(sink.messages) == n and ws.folder_count() == 0
    assert license_info(engine, key)["active_devices"] == 2
    # The fixture's own appends log in too (in the clear, on loopback): 2 + 2.
    logins = _logins_after(dovecot_tls, before, 4)
    assert sum(", TLS," in line for line in logins) == 2
    engine.dispose()


@pytest.mark.parametrize("scheme", ["imaps", "imap"])
def test_a_server_with_a_certificate_not_trusted_gets_no_password(
        tmp_path: Path, dovecot_tls: Dovecot, smtp: tuple[Sink, int], scheme: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A server in the middle with a certificate of its own: the connection stops at the
    # handshake, before the password is sent, and nothing is read or applied.
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    sink, _port = smtp
    ws = _workspace(tmp_path, dovecot_tls, smtp)
    engine = _engine(ws)
    key = add_license(engine, max_activations=5)
    message, _ = _with_requests(ws, key, "HW-1")
    ws.dovecot.append(message.as_bytes(), ws.folder)
    before = len(_logins(dovecot_tls))
    url = _imap_url(dovecot_tls, ws.folder, scheme=scheme,
                    port=dovecot_tls.tls_port if scheme == "imaps" else 0)
    with pytest.raises(ssl.SSLCertVerificationError):
        ws.run(imap_url=url)
    ws.folder_count()  # a login of the test's own, after the refused one: logged after it
    (control,) = _logins_after(dovecot_tls, before, 1)
    assert ", TLS," not in control
    assert sink.messages == [] and ws.folder_count() == 1
    assert license_info(engine, key)["active_devices"] == 0
    with reading(engine) as conn:
        assert conn.execute(select(func.count()).select_from(MAIL_MESSAGE)).scalar() == 0
    engine.dispose()


def test_replies_go_over_smtps_to_a_relay_whose_certificate_is_trusted_only(
        tmp_path: Path, dovecot_tls: Dovecot, monkeypatch: pytest.MonkeyPatch) -> None:
    assert dovecot_tls.ca_file is not None
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(dovecot_tls.root / "server.pem", dovecot_tls.root / "server.key")
    sink, port = Sink(), _free_port()
    relay = Controller(sink, hostname="127.0.0.1", port=port, ssl_context=server_side)
    relay.start()
    try:
        ws = _workspace(tmp_path, dovecot_tls, (sink, port))
        engine = _engine(ws)
        key = add_license(engine, max_activations=5)
        message, _ = _with_requests(ws, key, "HW-1")
        ws.dovecot.append(message.as_bytes(), ws.folder)
        smtps = f"smtps://127.0.0.1:{port}"
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        with pytest.raises(ssl.SSLCertVerificationError):
            ws.run(smtp_url=smtps)
        assert sink.messages == [] and ws.folder_count() == 1  # applied, kept, unanswered
        with reading(engine) as conn:
            assert conn.execute(select(MAIL_MESSAGE.c.replied_at)).scalar() is None
        monkeypatch.setenv("SSL_CERT_FILE", str(dovecot_tls.ca_file))
        ws.run(smtp_url=smtps)
        (reply,) = sink.messages
        assert reply["In-Reply-To"] == message["Message-ID"]
        assert ws.folder_count() == 0 and license_info(engine, key)["active_devices"] == 1
        engine.dispose()
    finally:
        relay.stop()
