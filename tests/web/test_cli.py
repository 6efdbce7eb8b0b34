"""`airlock customer token ...` and `airlock serve` as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from sqlalchemy import select
from typer.testing import CliRunner

from cli.main import app
from models.db import make_engine, reading
from models.tables import API_TOKEN
from models.types import utcnow
from pipelines.tokens import authenticate
from tests.web.conftest import _free_port


def _cli(home: Path, *args: str, ok: bool = True) -> str:
    result = CliRunner().invoke(app, list(args), env={"AIRLOCK_HOME": str(home)})
    if ok:
        assert result.exit_code == 0, (args, result.output, result.exception)
    return result.output


def test_token_add_list_revoke(tmp_path: Path) -> None:
    home = tmp_path / "var"
    _cli(home, "init")
    _cli(home, "customer", "add", "ACME", "--name", "Acme")
    added = json.loads(_cli(home, "customer", "token", "add", "ACME", "--name", "ERP", "--json"))
    token = added["token"]
    assert token.startswith("alk_") and added["prefix"] in token
    engine = make_engine(f"sqlite:///{home / 'airlock.db'}")
    with reading(engine) as conn:
        stored = conn.execute(select(API_TOKEN.c.token_hash)).scalars().all()
    assert stored and token not in stored[0] and len(stored[0]) == 64  # only its hash
    assert authenticate(engine, token, now=utcnow()) is not None
    listed = json.loads(_cli(home, "customer", "token", "list", "--json"))
    assert [row["prefix"] for row in listed] == [added["prefix"]]
    assert "token" not in listed[0] and token not in json.dumps(listed)
    assert listed[0]["last_used_at"] is not None  # the use just now is recorded
    _cli(home, "customer", "token", "revoke", added["prefix"])
    assert authenticate(engine, token, now=utcnow()) is None
    missing = CliRunner().invoke(app, ["customer", "token", "revoke", "nope"],
                                 env={"AIRLOCK_HOME": str(home)})
    assert missing.exit_code == 1 and "no token" in missing.output
    assert "Traceback" not in missing.output
    unknown = CliRunner().invoke(app, ["customer", "token", "add", "NOPE", "--name", "x"],
                                 env={"AIRLOCK_HOME": str(home)})
    assert unknown.exit_code == 1 and "NOPE" in unknown.output
    engine.dispose()


def test_serve_runs_until_sigterm(tmp_path: Path) -> None:
    home = tmp_path / "var"
    _cli(home, "init")
    port = _free_port()
    env = {**os.environ, "AIRLOCK_HOME": str(home), "AIRLOCK_PORTAL_TITLE": "Served Portal"}
    process = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--port", str(port)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        page = None
        while page is None and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[0].decode()
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
            except httpx.TransportError:
                time.sleep(0.05)
        assert page is not None and "Served Portal" in page.text
        assert httpx.get(f"http://127.0.0.1:{port}/openapi.json").json()["paths"]
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()
    assert process.returncode == 0, output
    assert "serving on http://127.0.0.1" in output
