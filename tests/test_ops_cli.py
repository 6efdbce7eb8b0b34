"""`airlock status`, `airlock jobs` and `airlock audit` through the real CLI, on a real
inbox with files in every state."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.main import app
from pipelines.keyring import load_keyring
from tests.factories import WireDevice


class Airlock:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.runner = CliRunner()

    def __call__(self, *args: str, code: int = 0, stdin: str | None = None) -> str:
        result = self.runner.invoke(app, list(args), input=stdin,
                                    env={"AIRLOCK_HOME": str(self.home),
                                         "AIRLOCK_BROKER_URL": None})
        assert result.exit_code == code, (args, result.output, result.exception)
        return result.output

    def json(self, *args: str, code: int = 0) -> Any:
        return json.loads(self(*args, "--json", code=code))


@pytest.fixture
def airlock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Airlock]:
    monkeypatch.delenv("AIRLOCK_BROKER_URL", raising=False)
    cli = Airlock(tmp_path / "var")
    cli("init")
    cli("customer", "add", "ACME", "--name", "Acme")
    cli("customer", "add", "BETA", "--name", "Beta")
    cli("product", "add", "pro", "--name", "Pro")
    yield cli


def test_status_jobs_retry_and_audit(airlock: Airlock) -> None:
    inbox = airlock.home / "inbox"
    key = airlock.json("license", "add", "--customer", "ACME", "--product", "pro",
                       "--max-activations", "1")["key"]
    ring = load_keyring(airlock.home / "keys")
    (inbox / "ACME/a.req").write_bytes(WireDevice(ring, "HW-A").activation(license_key=key))
    second = WireDevice(ring, "HW-B").activation(license_key=key)
    (inbox / "ACME/b.req").write_bytes(second)
    (inbox / "ACME/junk.req").write_bytes(b"not a request")
    os.mkfifo(inbox / "ACME/pipe.req")  # never opened: quarantined
    airlock("run", "--drain", "--timeout", "60")
    (inbox / "ACME/waiting.req").write_bytes(b"waits")
    (inbox / "_processing/BETA").mkdir(parents=True)
    (inbox / "_processing/BETA/held.req").write_bytes(b"in hand")

    report = airlock.json("status")
    assert report["mode"] == "embedded"
    assert all(dep["ok"] for dep in report["dependencies"].values())
    acme, beta = report["customers"]
    assert (acme["code"], acme["waiting"], acme["in_hand"]) == ("ACME", 1, 0)
    assert acme["finished"]["hour"] == {"done": 1, "rejected": {"malformed": 1,
                                                                 "no_seats_left": 1},
                                        "quarantined": {"not_a_file": 1}}
    assert (beta["waiting"], beta["in_hand"]) == (0, 1)
    text = airlock("status", "--customer", "ACME")
    assert "database: ok" in text and "ACME" in text and "BETA" not in text

    refused = airlock.json("jobs", "list", "--status", "rejected", "--reason", "no_seats_left")
    [job] = refused
    shown = airlock.json("jobs", "show", str(job["id"]))
    assert shown["source_now"] == "_rejected/ACME/b.req" and shown["reason"] == "no_seats_left"
    [done] = airlock.json("jobs", "list", "--status", "done")
    again = airlock.json("jobs", "retry", str(done["id"]))
    assert again[0]["result"] == "not_retryable"  # an accepted file: nothing applied

    airlock("license", "update", key, "--max-activations", "2")  # the cause, fixed
    retried = airlock.json("jobs", "retry", "--status", "rejected", "--reason",
                           "no_seats_left")
    assert [r["result"] for r in retried] == ["requeued"]
    assert (inbox / "ACME/b.req").read_bytes() == second
    airlock("run", "--drain", "--timeout", "60")
    assert airlock.json("jobs", "show", str(job["id"]))["status"] == "done"
    assert airlock.json("license", "show", key)["active_devices"] == 2

    events = airlock.json("audit", "--license", key)
    actions = [e["action"] for e in events]
    assert actions.count("device.activate") == 2 and "license.update" in actions
    retries = airlock.json("audit", "--customer", "ACME", "--since", "1h")
    assert any(e["action"] == "job.retry" and e["job_id"] == job["id"] for e in retries)
    assert airlock.json("audit", "--since", "2099-01-01T00:00") == []
    airlock("jobs", "list", "--status", "nonsense", code=2)
    airlock("jobs", "show", "999999", code=1)


def test_status_exits_non_zero_when_the_database_is_down(airlock: Airlock,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setenv("AIRLOCK_DATABASE_URL",
                       "postgresql+psycopg://airlock:secret@127.0.0.1:1/airlock")
    runner = CliRunner()
    result = runner.invoke(app, ["status", "--json"], env={
        "AIRLOCK_HOME": str(airlock.home), **{k: v for k, v in os.environ.items()
                                              if k == "AIRLOCK_DATABASE_URL"}})
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["dependencies"]["database"]["ok"] is False
    assert "secret" not in result.output and report["customers"] == []
