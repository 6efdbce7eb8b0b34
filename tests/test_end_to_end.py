"""The whole loop through both CLIs: vendor commands, device commands, the pipeline."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app


class Airlock:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.runner = CliRunner()

    def __call__(self, *args: str, ok: bool = True, stdin: str | None = None) -> str:
        result = self.runner.invoke(app, [str(a) for a in args], input=stdin,
                                    env={"AIRLOCK_HOME": str(self.home)})
        if ok:
            assert result.exit_code == 0, (args, result.output, result.exception)
        return result.output

    def json(self, *args: str, ok: bool = True, stdin: str | None = None) -> object:
        return json.loads(self(*args, ok=ok, stdin=stdin))


@pytest.fixture
def airlock(tmp_path: Path) -> Airlock:
    cli = Airlock(tmp_path / "var")
    cli("init")
    cli("customer", "add", "ACME", "--name", "Acme Corp")
    cli("product", "add", "pro", "--name", "Pro")
    return cli


def submit(airlock: Airlock, *files: Path, ok: bool = True) -> list[dict]:
    return airlock.json("process", *files, "--customer", "ACME", "--json",
                        ok=ok)  # type: ignore[return-value]


def result_path(airlock: Airlock, row: dict, suffix: str) -> Path:
    (key,) = [k for k in row["results"] if k.endswith(suffix)]
    return airlock.home / "outbox" / key


def test_activate_consume_deactivate_reactivate_update_refresh(airlock: Airlock,
                                                                tmp_path: Path) -> None:
    key = airlock.json("license", "add", "--customer", "ACME", "--product", "pro", "--type",
                       "time_limited", "--validity-days", "30", "--max-activations", "2",
                       "--feature", "export:consumption:100", "--json")["key"]  # type: ignore[index]
    devices = {n: tmp_path / f"dev{n}" for n in (1, 2, 3)}
    requests = {}
    for n, folder in devices.items():
        airlock("device", "init", folder, "--hardware-id", f"HW-{n}")
        requests[n] = tmp_path / f"act{n}.req"
        airlock("device", "request-activation", folder, "--product", "pro", "--key", key,
                "--out", requests[n])

    rows = submit(airlock, *requests.values(), ok=False)  # the third is refused: exit 1
    assert [r["status"] for r in rows] == ["done", "done", "rejected"]
    assert rows[2]["reason"] == "no_seats_left"
    for n in (1, 2):
        airlock("device", "load", devices[n], result_path(airlock, rows[n - 1], ".lic"))
    status = airlock.json("device", "status", devices[1], "--json")
    assert status["state"] == "valid"  # type: ignore[index]

    airlock("device", "consume", devices[1], "--amount", "7", "--feature", "export")
    off = tmp_path / "off1.req"
    airlock("device", "deactivate", devices[1], "--out", off)
    (row,) = submit(airlock, off)
    assert row["status"] == "done" and result_path(airlock, row, ".receipt").exists()
    shown = airlock.json("license", "show", key, "--json")
    assert shown["active_devices"] == 1  # type: ignore[index]
    assert shown["features"][0]["total_consumptions"] == 7  # type: ignore[index]

    again = tmp_path / "act3b.req"
    airlock("device", "request-activation", devices[3], "--product", "pro", "--key", key,
            "--out", again)
    (row,) = submit(airlock, again)
    assert row["status"] == "done"
    airlock("device", "load", devices[3], result_path(airlock, row, ".lic"))

    airlock("license", "update", key, "--extend-days", "365", "--feature", "pdf")
    out = tmp_path / "refresh"
    refreshed = airlock.json("refresh", key, "--out", out, "--json")
    assert refreshed["devices"] == 2  # type: ignore[index]
    files = sorted(Path(p) for p in refreshed["files"])  # type: ignore[index]
    by_device = {n: next(f for f in files if f"HW-{n}" in str(f)) for n in (2, 3)}
    before = airlock.json("device", "status", devices[2], "--json")
    for n, refresh_file in by_device.items():
        airlock("device", "load", devices[n], refresh_file)
        status = airlock.json("device", "status", devices[n], "--json")
        assert status["expires_at"] > before["expires_at"]  # type: ignore[index,operator]
        assert {f["code"] for f in status["features"]} == {"export", "pdf"}  # type: ignore[index]
    wrong = airlock("device", "load", devices[3], by_device[2], ok=False)
    assert "wrong_device" in wrong


def test_user_based_activation_via_the_device_cli(airlock: Airlock, tmp_path: Path) -> None:
    airlock("license", "add", "--customer", "ACME", "--product", "pro", "--user",
            "ana@acme.example", "--json", stdin="long-password\n")
    folder = tmp_path / "dev"
    airlock("device", "init", folder, "--hardware-id", "HW-U")
    request = tmp_path / "u.req"
    airlock("device", "request-activation", folder, "--product", "pro", "--user",
            "ana@acme.example", "--out", request, stdin="long-password\n")
    assert b"long-password" not in request.read_bytes()  # sealed in transit
    (row,) = submit(airlock, request)
    assert row["status"] == "done"
    airlock("device", "load", folder, result_path(airlock, row, ".lic"))
    assert airlock.json("device", "status", folder, "--json")["user"] == "ana@acme.example"  # type: ignore[index]


def test_operator_refresh_request_through_the_pipeline(airlock: Airlock, tmp_path: Path) -> None:
    key = airlock.json("license", "add", "--customer", "ACME", "--product", "pro",
                       "--max-activations", "2", "--json")["key"]  # type: ignore[index]
    folder = tmp_path / "dev"
    airlock("device", "init", folder, "--hardware-id", "HW-R")
    request = tmp_path / "act.req"
    airlock("device", "request-activation", folder, "--product", "pro", "--key", key,
            "--out", request)
    (row,) = submit(airlock, request)
    airlock("device", "load", folder, result_path(airlock, row, ".lic"))
    airlock("license", "update", key, "--feature", "pdf")
    refresh_request = tmp_path / "refresh.req"
    airlock("refresh-request", "--license", key, "--out", refresh_request)
    assert b"BEGIN AIRLOCK REFRESH REQUEST" in refresh_request.read_bytes()
    (row,) = airlock.json("process", refresh_request, "--operator", "--json")  # type: ignore[misc]
    assert row["status"] == "done"
    refresh_file = result_path(airlock, row, "license_refresh.lic")
    airlock("device", "load", folder, refresh_file)
    features = airlock.json("device", "status", folder, "--json")["features"]  # type: ignore[index]
    assert [f["code"] for f in features] == ["pdf"]
    bad = airlock("refresh-request", "--license", key, "--license", "OTHER", "--hardware-id",
                  "HW-R", "--out", tmp_path / "x.req", ok=False)
    assert "exactly one license" in bad


def test_vendor_actions_release_unlock_and_request_expiry(airlock: Airlock,
                                                          tmp_path: Path) -> None:
    """`device release`, `license unlock` and `refresh-request --expires-days`."""
    key = airlock.json("license", "add", "--customer", "ACME", "--product", "pro", "--json")[
        "key"]  # type: ignore[index]
    old, new = tmp_path / "old", tmp_path / "new"
    for folder in (old, new):
        airlock("device", "init", folder, "--hardware-id", "HW-1")
    rows = []
    for n, folder in enumerate((old, new)):
        request = tmp_path / f"act{n}.req"
        airlock("device", "request-activation", folder, "--product", "pro", "--key", key,
                "--out", request)
        rows += submit(airlock, request, ok=n == 0)
    assert rows[1]["reason"] == "device_already_active"
    released = airlock.json("device", "release", key, "HW-1", "--json")
    assert released["hardware_id"] == "HW-1" and "lost" in released["note"]  # type: ignore[index]
    assert airlock.json("license", "show", key, "--json")["active_devices"] == 0  # type: ignore[index]
    again = airlock("device", "release", key, "HW-1", ok=False)
    assert "[device_not_active]" in again and "Traceback" not in again

    user_key = airlock.json("license", "add", "--customer", "ACME", "--product", "pro",
                            "--user", "ana@acme.example", "--json",
                            stdin="long-password\n")["key"]  # type: ignore[index]
    unlocked = airlock.json("license", "unlock", user_key, "--user", "ANA@acme.example",
                            "--json")
    assert unlocked == {"license": user_key, "user": "ana@acme.example", "failures_cleared": 0}
    missing = airlock("license", "unlock", user_key, "--user", "bob@acme.example", ok=False)
    assert "[unknown_user]" in missing

    out = tmp_path / "r.req"
    airlock("refresh-request", "--license", key, "--expires-days", "2", "--out", out)
    from airlock_sdk.envelope import open_envelope
    from pipelines.keyring import load_keyring

    ring = load_keyring(airlock.home / "keys")
    payload = open_envelope(out.read_bytes(), resolve_verify_key=ring.vendor_verify_key).payload
    created, expires = (datetime.fromisoformat(payload[k].replace("Z", "+00:00"))
                        for k in ("created_at", "expires_at"))
    assert expires - created == timedelta(days=2)
