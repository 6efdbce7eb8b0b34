"""Retrieval (`airlock outbox list|get`) and the embedded runner on an s3:// inbox."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from typer.testing import CliRunner

from cli.main import app
from models.migrate import upgrade
from pipelines.keyring import init_keyring
from tests.factories import WireDevice, add_license, license_info, vendor
from tests.s3fixtures import MotoEndpoint, create_bucket, moto_server  # noqa: F401
from workers.embedded import EmbeddedRunner
from workers.runtime import build_runtime


def test_outbox_list_and_get(tmp_path: Path) -> None:
    env = {"AIRLOCK_HOME": str(tmp_path / "var")}
    cli = CliRunner()
    for folder, name in (("ACME", "a.lic"), ("ACME", "b.receipt"), ("BETA", "c.lic")):
        target = tmp_path / "var" / "outbox" / folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f"content of {name}".encode())
    listed = cli.invoke(app, ["outbox", "list", "--customer", "ACME", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    assert [row["key"] for row in json.loads(listed.output)] == ["ACME/a.lic", "ACME/b.receipt"]
    future = cli.invoke(app, ["outbox", "list", "--since", "2999-01-01", "--json"], env=env)
    assert json.loads(future.output) == []
    got = cli.invoke(app, ["outbox", "get", "ACME/a.lic", "--out", str(tmp_path / "dl")],
                     env=env)
    assert got.exit_code == 0
    assert (tmp_path / "dl" / "ACME__a.lic").read_bytes() == b"content of a.lic"
    missing = cli.invoke(app, ["outbox", "get", "ACME/zzz.lic"], env=env)
    assert missing.exit_code == 1
    escape = cli.invoke(app, ["outbox", "get", "../../etc/passwd"], env=env)
    assert escape.exit_code == 1


def test_embedded_runner_on_an_s3_inbox(tmp_path: Path, moto_server: MotoEndpoint) -> None:  # noqa: F811
    bucket = create_bucket(moto_server)
    settings = moto_server.settings(home=tmp_path / "var", inbox=f"s3://{bucket}/inbox",
                                    outbox=f"s3://{bucket}/outbox")
    upgrade(settings.resolved_database_url)
    init_keyring(settings.resolved_keys_dir)
    runtime = build_runtime(settings)
    vendor(runtime.engine)
    key = add_license(runtime.engine, max_activations=3)
    client = moto_server.client()
    for i in range(3):
        client.put_object(Bucket=bucket, Key=f"inbox/ACME/hw{i}.req",
                          Body=WireDevice(runtime.keyring, f"HW-{i}").activation(license_key=key))
    assert EmbeddedRunner(runtime).drain(threading.Event(), timeout=60)
    listed = client.list_objects_v2(Bucket=bucket, Prefix="outbox/ACME/")
    assert len([o for o in listed["Contents"] if o["Key"].endswith(".lic")]) == 3
    assert license_info(runtime.engine, key)["active_devices"] == 3
    runtime.close()
