"""Mail server URLs: schemes, encoded credentials, and the rule for the clear."""

from __future__ import annotations

import pytest

from pipelines.sources.mail.endpoints import MailUrlError, Security, parse_endpoint


def test_imap_and_smtp_urls() -> None:
    imaps = parse_endpoint("imaps://intake%40vendor.example:p%40ss%2Fw@mail.example/Req", "imap")
    assert (imaps.host, imaps.port, imaps.security) == ("mail.example", 993, Security.TLS)
    assert (imaps.user, imaps.password, imaps.folder) == ("intake@vendor.example", "p@ss/w",
                                                          "Req")
    assert "p@ss" not in repr(imaps) and "p@ss" not in imaps.label
    plain = parse_endpoint("imap://u:p@127.0.0.1:1143", "imap")
    assert plain.security is Security.STARTTLS and plain.loopback and plain.folder == "INBOX"
    assert not parse_endpoint("imap://u:p@mail.example", "imap").loopback
    assert parse_endpoint("smtps://relay.example", "smtp").port == 465
    assert parse_endpoint("smtp://[::1]:2525", "smtp").loopback


@pytest.mark.parametrize("url", ["http://x", "smtp://x", "imap://", "imap://h:notaport/x",
                                 "imaps://u:secret@"])
def test_bad_urls_are_refused_without_echoing_secrets(url: str) -> None:
    with pytest.raises(MailUrlError) as error:
        parse_endpoint(url, "imap")
    assert "secret" not in str(error.value)
