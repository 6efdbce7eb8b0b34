"""With a broker, mailed files are queued to a real Celery worker; one reply comes back."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from config.broker import BrokerKind
from models.db import session_scope
from pipelines.sources.mail.senders import add_sender
from tests.distributed.conftest import Deployment, broker, deployment  # noqa: F401
from tests.factories import WireDevice, add_license, license_info
from tests.mail.conftest import Dovecot
from tests.mail.test_mail_intake import Sink, _message, smtp  # noqa: F401
from workers.mail import run_mail

pytestmark = pytest.mark.mail


@pytest.mark.parametrize("broker_kind", [BrokerKind.REDIS], ids=str)
def test_mailed_files_go_to_the_workers(deployment: Deployment,  # noqa: F811
                                        dovecot: Dovecot, smtp: tuple[Sink, int]) -> None:  # noqa: F811
    sink, port = smtp
    folder = f"D{uuid.uuid4().hex[:10]}"
    client = dovecot.connect()
    client.create(folder)
    client.logout()
    deployment.overrides.update(
        answer_wait_seconds=30, mail_from="licensing@vendor.example",
        imap_url=f"imap://{dovecot.user.replace('@', '%40')}:{dovecot.password}@127.0.0.1:"
                 f"{dovecot.port}/{folder}", smtp_url=f"smtp://127.0.0.1:{port}")
    key = add_license(deployment.engine, max_activations=2)
    with session_scope(deployment.engine) as session:
        add_sender(session=session, customer="ACME", domain="acme.example")
    deployment.worker()
    message = _message()
    message.set_content("one device")
    message.add_attachment(WireDevice(deployment.keyring, "HW-1").activation(license_key=key),
                           maintype="application", subtype="octet-stream", filename="a.req")
    dovecot.append(message.as_bytes(), folder)
    deadline = time.monotonic() + 120
    while not sink.messages:  # a pass that finds the answer not final yet leaves it
        assert time.monotonic() < deadline, deployment.logs()[-3000:]
        run_mail(deployment.settings, threading.Event(), once=True)
    (reply,) = sink.messages
    names: list[Any] = [part.get_filename() for part in reply.iter_attachments()]
    assert names == ["license.lic"]
    assert license_info(deployment.engine, key)["active_devices"] == 1
    # A worker handled it: its line about the file follows the commit the reply waited
    # for, so it may reach the log a moment after the reply went out.
    while "upload-" not in deployment.logs():
        assert time.monotonic() < deadline, deployment.logs()[-3000:]
        time.sleep(0.05)
