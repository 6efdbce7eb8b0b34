"""`airlock device ...` end to end, as subprocesses against a fresh AIRLOCK_HOME."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from airlock_sdk import Kind
from pipelines.keyring import load_keyring
from tests.sdk.builders import feature, issue, license_payload, open_request


def run(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AIRLOCK_HOME": str(home), "COLUMNS": "200"}
    for name in ("AIRLOCK_DATABASE_URL", "AIRLOCK_KEYS_DIR"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "cli", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("airlock-home")
    result = run(folder, "init")
    assert result.returncode == 0, result.stderr
    return folder


def test_help_everywhere(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    monkeypatch.setenv("AIRLOCK_HOME", str(home))
    commands = ["init", "request-activation", "load", "status", "consume", "deactivate",
                "request-refresh"]
    runner = CliRunner()
    top = runner.invoke(app, ["device", "--help"])
    assert top.exit_code == 0 and all(c in top.output for c in commands)
    for command in commands:
        result = runner.invoke(app, ["device", command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output
    assert run(home, "device", "--help").returncode == 0


def test_device_lifecycle(home: Path, tmp_path: Path) -> None:
    keyring = load_keyring(home / "keys")
    device = tmp_path / "device"
    assert run(home, "device", "init", str(device), "--hardware-id", "HW-CLI").returncode == 0
    bundle = tmp_path / "bundle.json"
    bundle.write_text(keyring.public_bundle().to_json())
    assert run(home, "device", "init", str(tmp_path / "d2"), "--hardware-id", "HW-2",
               "--bundle", str(bundle)).returncode == 0

    request = tmp_path / "activation.req"
    result = run(home, "device", "request-activation", str(device), "--product", "cad",
                 "--key", "KEY-CLI", "--var", "site=lab", "--app-version", "1.0",
                 "--out", str(request))
    assert result.returncode == 0, result.stderr
    env = open_request(keyring, request.read_bytes(), Kind.ACTIVATION_REQUEST)
    assert env.payload["variables"] == {"site": "lab"}
    assert env.payload["hostname"] and env.payload["os"]

    lic = tmp_path / "license.lic"
    lic.write_bytes(issue(keyring, Kind.LICENSE, license_payload(
        env, issued_at=datetime.now(UTC), license_type="consumption", max_consumptions=5,
        features=[feature("render", max_consumptions=2)])))
    assert run(home, "device", "load", str(device), str(lic)).returncode == 0

    status = run(home, "device", "status", str(device), "--json")
    data = json.loads(status.stdout)
    assert data["state"] == "valid" and data["license_key"] == "KEY-CLI"
    assert run(home, "device", "status", str(device)).returncode == 0

    assert run(home, "device", "consume", str(device), "--amount", "3").returncode == 0
    assert run(home, "device", "consume", str(device), "--feature", "render").returncode == 0
    over = run(home, "device", "consume", str(device), "--amount", "3")
    assert over.returncode == 1 and "[consumption_limit]" in over.stderr

    refresh = tmp_path / "refresh.req"
    assert run(home, "device", "request-refresh", str(device), "--out",
               str(refresh)).returncode == 0
    assert open_request(keyring, refresh.read_bytes()).kind is Kind.REFRESH_REQUEST

    out = tmp_path / "deactivation.req"
    assert run(home, "device", "deactivate", str(device), "--var", "site=home", "--out",
               str(out)).returncode == 0
    usage = open_request(keyring, out.read_bytes(), Kind.DEACTIVATION).payload
    assert usage["usage"]["consumptions"] == 3 and usage["usage"]["features"] == {"render": 1}
    assert usage["variables"] == {"site": "home"}
    again = run(home, "device", "deactivate", str(device), "--out", "-")
    assert again.stdout.encode() == out.read_bytes()
    status = json.loads(run(home, "device", "status", str(device), "--json").stdout)
    assert status["state"] == "deactivated"


def test_user_password_comes_from_stdin(home: Path, tmp_path: Path) -> None:
    keyring = load_keyring(home / "keys")
    device = tmp_path / "device"
    run(home, "device", "init", str(device), "--hardware-id", "HW-U")
    out = tmp_path / "user.req"
    result = run(home, "device", "request-activation", str(device), "--product", "cad",
                 "--user", "ann@example.com", "--out", str(out), stdin="s3cret pw\n")
    assert result.returncode == 0, result.stderr
    auth = open_request(keyring, out.read_bytes()).payload["auth"]
    assert auth == {"method": "user", "email": "ann@example.com", "password": "s3cret pw"}


def test_friendly_errors(home: Path, tmp_path: Path) -> None:
    missing = run(home, "device", "status", str(tmp_path / "nothing"))
    assert missing.returncode == 1 and "[not_initialised]" in missing.stderr
    device = tmp_path / "device"
    run(home, "device", "init", str(device), "--hardware-id", "HW-E")
    junk = tmp_path / "junk.lic"
    junk.write_text("hello")
    bad = run(home, "device", "load", str(device), str(junk))
    assert bad.returncode == 1 and "[malformed]" in bad.stderr
    both = run(home, "device", "request-activation", str(device), "--product", "cad",
               "--out", str(tmp_path / "x"))
    assert both.returncode == 1 and "[invalid_argument]" in both.stderr
    assert "Traceback" not in bad.stderr + both.stderr + missing.stderr
