"""The IMAP server the mail intake is tested against does what the intake relies on."""

from __future__ import annotations

import re

import pytest

from tests.mail.conftest import Dovecot

pytestmark = pytest.mark.mail


def _message(subject: str) -> bytes:
    return (f"From: ana@acme.example\r\nTo: intake@vendor.example\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject}@acme.example>\r\n\r\nbody\r\n").encode()


def test_uidvalidity_uids_idle_and_moving_between_folders(dovecot: Dovecot) -> None:
    dovecot.append(_message("first"))
    dovecot.append(_message("second"))
    client = dovecot.connect()
    try:
        assert "IDLE" in client.capabilities
        status, _ = client.select("INBOX")
        assert status == "OK"
        (validity,) = client.response("UIDVALIDITY")[1]
        assert validity is not None and int(validity) > 0
        status, found = client.uid("SEARCH", None, "ALL")
        uids = found[0].split()
        assert status == "OK" and len(uids) >= 2
        status, data = client.uid("FETCH", uids[-1], "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        assert b"second@acme.example" in data[0][1]  # type: ignore[index]
        assert client.create("Airlock/Processed")[0] == "OK"
        moved = client.uid("MOVE", uids[-1], "Airlock/Processed") \
            if "MOVE" in client.capabilities else client.uid("COPY", uids[-1],
                                                              "Airlock/Processed")
        assert moved[0] == "OK"
        client.select("Airlock/Processed")
        status, data = client.uid("SEARCH", None, "ALL")
        assert status == "OK" and len(data[0].split()) == 1
    finally:
        client.logout()
    assert re.search(r"Dovecot v2\.\d", dovecot.log())
