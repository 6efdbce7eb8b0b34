"""`airlock customer sender ...` and `airlock mail` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cli.main import app


def _cli(home: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={"AIRLOCK_HOME": str(home), **(env or {})})
    return result.exit_code, result.output


def test_senders_map_addresses_and_domains_to_customers(tmp_path: Path) -> None:
    home = tmp_path / "var"
    assert _cli(home, "init")[0] == 0
    assert _cli(home, "customer", "add", "ACME", "--name", "Acme")[0] == 0
    assert _cli(home, "customer", "sender", "add", "ACME", "--domain", "ACME.example")[0] == 0
    assert _cli(home, "customer", "sender", "add", "ACME", "--address",
                "ops@partner.example")[0] == 0
    code, out = _cli(home, "customer", "sender", "add", "ACME", "--domain", "acme.example")
    assert code == 1 and "already mapped" in out and "Traceback" not in out
    code, out = _cli(home, "customer", "sender", "add", "ACME", "--address", "not an address")
    assert code == 1 and "not a mail address" in out
    code, out = _cli(home, "customer", "sender", "list", "--json")
    assert [(r["address"], r["domain"]) for r in json.loads(out)] == [
        (None, "acme.example"), ("ops@partner.example", None)]
    assert _cli(home, "customer", "sender", "remove", "acme.example")[0] == 0
    assert _cli(home, "customer", "sender", "remove", "acme.example")[0] == 1


def test_mail_without_its_settings_says_which_in_one_line(tmp_path: Path) -> None:
    home = tmp_path / "var"
    _cli(home, "init")
    code, out = _cli(home, "mail", "--once")
    assert code == 2 and "AIRLOCK_IMAP_URL" in out and "Traceback" not in out
    code, out = _cli(home, "mail", "--once", env={
        "AIRLOCK_IMAP_URL": "pop3://u:hunter2@x", "AIRLOCK_SMTP_URL": "smtp://127.0.0.1",
        "AIRLOCK_MAIL_FROM": "l@vendor.example"})
    assert code == 2 and "imaps://" in out and "hunter2" not in out
