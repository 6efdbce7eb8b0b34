"""`airlock run` on a folder: every file that arrives ends processed, rejected (with a
readable report) or quarantined — counted, not sampled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from config.settings import Settings
from models.db import make_engine
from models.migrate import upgrade
from pipelines.keyring import init_keyring
from pipelines.process import process
from tests.factories import WireDevice, add_license, license_info, vendor
from workers.embedded import EmbeddedRunner
from workers.runtime import Runtime, build_runtime


def _home(tmp_path: Path) -> tuple[Settings, str]:
    settings = Settings(home=tmp_path / "var", settle_seconds=0.05, scan_interval_seconds=0.1)
    upgrade(settings.resolved_database_url)
    init_keyring(settings.resolved_keys_dir)
    engine = make_engine(settings.resolved_database_url)
    vendor(engine)
    key = add_license(engine, max_activations=5, license_type="consumption",
                      max_consumptions=1000)
    engine.dispose()
    return settings, key


def _run_setup(settings: Settings) -> tuple[dict[str, str], Runtime, Path]:
    """Environment for an `airlock run` child, this process's runtime, ACME's inbox."""
    env = {**os.environ, "AIRLOCK_HOME": str(settings.home), "AIRLOCK_SETTLE_SECONDS": "0.05",
           "AIRLOCK_SCAN_INTERVAL_SECONDS": "0.1"}
    inbox = Path(settings.resolved_inbox) / "ACME"
    inbox.mkdir(parents=True, exist_ok=True)
    return env, build_runtime(settings), inbox


def _files(root: Path, area: str) -> list[str]:
    folder = root / area
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_every_arrival_is_accounted_for(tmp_path: Path) -> None:
    settings, key = _home(tmp_path)
    runtime = build_runtime(settings)
    inbox = Path(settings.resolved_inbox)
    devices = [WireDevice(runtime.keyring, f"HW-{i}") for i in range(8)]
    dropped = {}
    for i, device in enumerate(devices):  # 8 devices, 5 seats: 3 refused
        dropped[f"ACME/a{i}.req"] = device.activation(license_key=key)
    dropped["ACME/copy-of-a0.req"] = dropped["ACME/a0.req"]  # same file, second name
    dropped["ACME/garbage.bin"] = os.urandom(300)
    dropped["ACME/big.req"] = b"x" * (settings.max_file_bytes + 1)
    dropped["BETA/stranger.req"] = devices[0].activation(license_key=key)  # wrong tenant
    dropped["NOBODY/x.req"] = b"hello"  # no such customer
    dropped["_operator/dev.req"] = devices[1].activation(license_key=key)  # needs a tenant
    for name, data in dropped.items():
        (inbox / name).parent.mkdir(parents=True, exist_ok=True)
        (inbox / name).write_bytes(data)
    (inbox / "ACME" / "upload.part").write_bytes(b"still uploading")  # ignored, left alone

    assert EmbeddedRunner(runtime).drain(threading.Event(), timeout=120)
    processed = _files(inbox, "_processed")
    rejected = [n for n in _files(inbox, "_rejected") if not n.endswith(".error.json")]
    reports = [n for n in _files(inbox, "_rejected") if n.endswith(".error.json")]
    quarantined = _files(inbox, "_quarantine")
    assert len(processed) + len(rejected) + len(quarantined) == len(dropped)
    assert len(processed) == 6  # 5 activations + the copy of a0 (same result)
    assert len(reports) == len(rejected) == 8
    for report in reports:
        body = json.loads(next((inbox / "_rejected").rglob(report)).read_text())
        assert body["reason"] and body["message"] and body["results"]
    assert _files(inbox, "_processing") == []
    assert (inbox / "ACME" / "upload.part").exists()
    assert license_info(runtime.engine, key)["active_devices"] == 5
    runtime.close()


def test_killed_runner_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL `airlock run` mid-stream; a restarted one finishes every file once."""
    settings, key = _home(tmp_path)
    env, runtime, inbox = _run_setup(settings)
    devices = [WireDevice(runtime.keyring, f"HW-{i}") for i in range(5)]
    for device in devices:
        assert process(device.activation(license_key=key), engine=runtime.engine,
                       tenant="ACME", processor=runtime.processor).accepted
    for i, device in enumerate(devices):
        (inbox / f"off{i}.req").write_bytes(device.deactivation(license_key=key,
                                                                consumptions=10 + i))
    proc = subprocess.Popen([sys.executable, "-m", "cli", "run"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    processed = Path(settings.resolved_inbox) / "_processed" / "ACME"
    while time.monotonic() < deadline and not (processed.exists() and any(processed.iterdir())):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert EmbeddedRunner(runtime).drain(threading.Event(), timeout=120)
    assert len(list(processed.iterdir())) == 5
    assert license_info(runtime.engine, key)["consumptions"]["total"] == sum(
        10 + i for i in range(5))
    receipts = list((Path(settings.resolved_outbox) / "ACME").glob("*.receipt"))
    assert len(receipts) == 5
    runtime.close()


def test_ctrl_c_stops_cleanly(tmp_path: Path) -> None:
    settings, key = _home(tmp_path)
    env, runtime, inbox = _run_setup(settings)
    proc = subprocess.Popen([sys.executable, "-m", "cli", "run"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for i in range(3):
        (inbox / f"a{i}.req").write_bytes(
            WireDevice(runtime.keyring, f"HW-{i}").activation(license_key=key))
    outbox = Path(settings.resolved_outbox) / "ACME"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(outbox.glob("*.lic"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "Traceback" not in output
    assert output.count(" done (applied)") == 3  # one log line per file
    assert _files(Path(settings.resolved_inbox), "_processing") == []
    runtime.close()


def test_archive_dropped_in_the_inbox_is_imported(tmp_path: Path) -> None:
    import io
    import zipfile

    settings, key = _home(tmp_path)
    runtime = build_runtime(settings)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for i in range(3):
            archive.writestr(f"requests/hw{i}.req",
                             WireDevice(runtime.keyring, f"HW-{i}").activation(license_key=key))
        archive.writestr("notes.txt", b"not an airlock file")
    inbox = Path(settings.resolved_inbox) / "ACME"
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / "fleet.zip").write_bytes(buffer.getvalue())
    assert EmbeddedRunner(runtime).drain(threading.Event(), timeout=120)
    outbox = Path(settings.resolved_outbox) / "ACME"
    (report_path,) = list((outbox / "batches").glob("*.report.json"))
    report = json.loads(report_path.read_text())
    rows = report["members"] if isinstance(report, dict) else report
    assert sorted(r["status"] for r in rows) == ["done", "done", "done", "rejected"]
    assert len(list(outbox.glob("*.lic"))) == 3
    assert license_info(runtime.engine, key)["active_devices"] == 3
    assert _files(Path(settings.resolved_inbox), "_processed") == ["fleet.zip"]
    runtime.close()


def test_two_runner_processes_share_the_inbox_and_apply_each_file_once(tmp_path: Path) -> None:
    """`airlock run --processes 2 --drain`: both runners claim from one folder; every
    deactivation is applied once (the consumption total says so) and archived once."""
    settings, key = _home(tmp_path)
    env, runtime, inbox = _run_setup(settings)
    engine = runtime.engine
    other = add_license(engine, max_activations=40, license_type="consumption",
                        max_consumptions=10**6)
    devices = [WireDevice(runtime.keyring, f"HW-{i}") for i in range(40)]
    for device in devices:
        assert process(device.activation(license_key=other), engine=engine, tenant="ACME",
                       processor=runtime.processor).accepted
    for i, device in enumerate(devices):
        (inbox / f"off{i:02d}.req").write_bytes(device.deactivation(license_key=other,
                                                                    consumptions=i + 1))
    proc = subprocess.run([sys.executable, "-m", "cli", "run", "--processes", "2", "--drain",
                           "--timeout", "120"], env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(_files(Path(settings.resolved_inbox), "_processed")) == 40
    assert _files(Path(settings.resolved_inbox), "_processing") == []
    info = license_info(engine, other)
    assert info["consumptions"]["total"] == sum(range(1, 41))
    assert info["active_devices"] == 0
    receipts = list((Path(settings.resolved_outbox) / "ACME").glob("*.receipt"))
    assert len(receipts) == 40
    runtime.close()


def test_more_than_one_process_needs_a_drop_folder(tmp_path: Path) -> None:
    env = {**os.environ, "AIRLOCK_HOME": str(tmp_path), "AIRLOCK_INBOX": "s3://bucket/in"}
    proc = subprocess.run([sys.executable, "-m", "cli", "run", "--processes", "2"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "[bad_option]" in proc.stderr and "drop-folder" in proc.stderr
