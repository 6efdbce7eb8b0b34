"""Reading a received mail: its files, its sender, whether to answer, hostile MIME."""

from __future__ import annotations

from email.message import EmailMessage

from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.sources.mail.message import (
    MailLimits,
    MailRefusal,
    authenticated_domains,
    parse_message,
)

ARMOURED = (b"-----BEGIN AIRLOCK ACTIVATION REQUEST-----\nQUxLMQ==\n"
            b"-----END AIRLOCK ACTIVATION REQUEST-----\n")


def _mail(**headers: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = headers.pop("From", "Ana <Ana@ACME.example>")
    message["To"] = "intake@vendor.example"
    message["Subject"] = "requests"
    message["Message-ID"] = "<m1@acme.example>"
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    return message


def test_two_attachments_and_a_pasted_block_become_three_files() -> None:
    message = _mail()
    message.set_content("Here they are.\n\n" + ARMOURED.decode() + "\nThanks")
    message.add_attachment(b"first", maintype="application", subtype="octet-stream",
                           filename="hw1.req")
    message.add_attachment(b"second", maintype="application", subtype="octet-stream",
                           filename="hw1.req")
    item = parse_message(message.as_bytes())
    assert item.refusal is None
    assert item.sender == "ana@acme.example" and item.sender_domain == "acme.example"
    assert item.message_id == "<m1@acme.example>" and item.no_reply is None
    assert [(f.name, f.data) for f in item.files] == [
        ("pasted-1.req", ARMOURED), ("hw1.req", b"first"), ("hw1-2.req", b"second")]


def test_hostile_file_names_are_cut_to_a_safe_base_name() -> None:
    message = _mail()
    message.set_content("see attached")
    for name in ("../../etc/passwd", "C:\\x\\y.req", ".hidden", "a\x00b\x1f.req", "", "..",
                 "x" * 300 + ".req"):
        message.add_attachment(b"data", maintype="application", subtype="octet-stream",
                               filename=name)
    names = [f.name for f in parse_message(message.as_bytes()).files]
    assert names[:5] == ["passwd", "y.req", "hidden", "ab.req", "attachment-5"]
    assert names[5] == "attachment-6" and len(names[6]) == 100 and names[6].endswith(".req")
    assert all("/" not in n and "\\" not in n and not n.startswith(".") for n in names)


def test_limits_refuse_the_whole_message() -> None:
    small = MailLimits(max_message_bytes=5000, max_attachments=3, max_depth=2,
                       max_file_bytes=100)
    many = _mail()
    many.set_content("x")
    for n in range(4):
        many.add_attachment(b"d", maintype="application", subtype="octet-stream",
                            filename=f"{n}.req")
    assert parse_message(many.as_bytes(), small).refusal is MailRefusal.TOO_MANY_ATTACHMENTS
    big = _mail()
    big.set_content("x")
    big.add_attachment(b"d" * 101, maintype="application", subtype="octet-stream",
                       filename="big.req")
    assert parse_message(big.as_bytes(), small).refusal is MailRefusal.ATTACHMENT_TOO_LARGE
    huge = parse_message(_mail().as_bytes() + b"x" * 6000, small)
    assert huge.refusal is MailRefusal.TOO_LARGE and huge.sender == "ana@acme.example"
    deep = _mail()
    deep.set_content("x")
    inner: EmailMessage = deep
    for _ in range(4):
        child = EmailMessage()
        child.set_content("nested")
        inner.add_attachment(child)
        inner = child
    assert parse_message(deep.as_bytes(), small).refusal is MailRefusal.TOO_DEEP


def test_html_only_and_malformed_mime() -> None:
    html = _mail()
    html.set_content("<p>please activate</p>", subtype="html")
    assert parse_message(html.as_bytes()).refusal is MailRefusal.NO_FILES
    unterminated = (b"From: a@acme.example\r\nMessage-ID: <x@y>\r\nMIME-Version: 1.0\r\n"
                    b"Content-Type: multipart/mixed; boundary=XYZ\r\n\r\n--XYZ\r\n"
                    b"Content-Type: application/octet-stream\r\n"
                    b"Content-Disposition: attachment; filename=a.req\r\n"
                    b"Content-Transfer-Encoding: base64\r\n\r\nQUxL\r\n")
    assert parse_message(unterminated).refusal is MailRefusal.MALFORMED_MIME
    garbage = unterminated.replace(b"QUxL\r\n", b"!!!!not base64 at all***\r\n--XYZ--\r\n")
    assert parse_message(garbage).refusal is MailRefusal.MALFORMED_MIME


def test_mail_that_must_not_be_answered() -> None:
    cases = {
        "auto-submitted": _mail(Auto_Submitted="auto-replied"),
        "bulk or list mail": _mail(Precedence="bulk"),
        "list mail": _mail(List_Id="<requests.acme.example>"),
        "a bounce": _mail(Return_Path="<>"),
        "a system sender": _mail(From="MAILER-DAEMON@acme.example"),
    }
    for reason, message in cases.items():
        message.set_content(ARMOURED.decode())
        assert parse_message(message.as_bytes()).no_reply == reason
    human = _mail(Auto_Submitted="no")
    human.set_content(ARMOURED.decode())
    assert parse_message(human.as_bytes()).no_reply is None


def test_authentication_results_only_from_the_receiving_server() -> None:
    message = _mail()
    message["Authentication-Results"] = ("mx.vendor.example; dkim=pass header.d=acme.example; "
                                         "spf=fail smtp.mailfrom=other.example")
    message["Authentication-Results"] = "mx.attacker.example; dkim=pass header.d=beta.example"
    message["Authentication-Results"] = "mx.vendor.example; spf=pass smtp.mailfrom=a@gamma.example"
    assert authenticated_domains(message, "mx.vendor.example") == {"acme.example",
                                                                    "gamma.example"}
    assert authenticated_domains(message, "mx.other.example") == set()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    item = parse_message(b"From: a@acme.example\r\nContent-Type: multipart/mixed; "
                         b"boundary=B\r\n\r\n--B\r\n" + raw)
    assert (item.refusal is None) == bool(item.files)  # files, or a reason why none
