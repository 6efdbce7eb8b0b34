"""Log formats: the text default and one JSON object per line, secrets never shown."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from config.logging import LogFormat, redact, setup_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_redact_hides_url_passwords_and_secret_parameters() -> None:
    text = ("connecting to postgresql+psycopg://airlock:s3cr%40t@db:5432/x, "
            "amqp://guest:guest@127.0.0.1:5672//, redis://:pw@h:6379/0 and "
            "https://h/cb?token=abc123&x=1")
    shown = redact(text)
    for secret in ("s3cr%40t", "guest@", ":pw@", "abc123"):
        assert secret not in shown
    assert "postgresql+psycopg://airlock:***@db:5432/x" in shown
    assert "redis://:***@h:6379/0" in shown and "token=***&x=1" in shown
    assert redact("ACME/device-1.req: job 3 done (applied)") == (
        "ACME/device-1.req: job 3 done (applied)")


def test_json_lines_carry_the_fields_of_a_file(restore_logging: None,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", LogFormat.JSON)
    log = logging.getLogger("airlock.intake")
    log.info("ACME/a.req: job %s rejected [%s]", 7, "no_seats",
             extra={"customer": "ACME", "job": 7, "request_id": "r-1", "reason": "no_seats"})
    log.warning("broker redis://:hunter2@h:6379/0 unreachable")
    try:
        raise ValueError("password=swordfish")
    except ValueError:
        log.exception("failed")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3
    first, second, third = (json.loads(line) for line in lines)
    assert first["event"] == "ACME/a.req: job 7 rejected [no_seats]"
    assert (first["level"], first["logger"]) == ("INFO", "airlock.intake")
    assert {k: first[k] for k in ("customer", "job", "request_id", "reason")} == {
        "customer": "ACME", "job": 7, "request_id": "r-1", "reason": "no_seats"}
    assert first["time"].endswith("+00:00")
    assert "hunter2" not in lines[1] and second["event"].startswith("broker redis://:***@")
    assert "customer" not in second
    assert "swordfish" not in lines[2] and "ValueError" in third["error"]


def test_text_format_is_the_default_and_redacts_too(restore_logging: None,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO")
    logging.getLogger("airlock.run").info("database postgresql://u:topsecret@h/db")
    err = capsys.readouterr().err
    assert "topsecret" not in err and "INFO airlock.run: database postgresql://u:***@h/db" in err
    with pytest.raises(ValueError):
        setup_logging("INFO", "xml")
