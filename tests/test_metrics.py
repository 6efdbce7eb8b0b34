"""Prometheus metrics: files by outcome, the processing histogram, backlog gauges, and
the multiprocess mode that prefork workers use."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

from sqlalchemy import Engine

from pipelines import metrics
from pipelines.intake import Intake
from pipelines.keyring import VendorKeyring
from pipelines.layout import Arrival, processing_key
from pipelines.process import Processor
from pipelines.status import customer_status
from pipelines.storage.local import LocalStore
from tests.factories import NOW, WireDevice, add_license, vendor

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_files_backlog_and_processing_time_are_served(sqlite_engine: Engine,
                                                     keyring: VendorKeyring,
                                                     tmp_path: Path) -> None:
    vendor(sqlite_engine)
    key = add_license(sqlite_engine, max_activations=1)
    inbox = LocalStore(tmp_path / "inbox")
    intake = Intake(engine=sqlite_engine, inbox=inbox, outbox=LocalStore(tmp_path / "outbox"),
                    processor=Processor(keyring=keyring, clock=lambda: NOW))
    port = _free_port()
    server = metrics.serve(port, statuses=lambda: customer_status(sqlite_engine, inbox,
                                                                  now=NOW),
                           status_cache_seconds=0)
    try:
        before = _scrape(port)
        files = [WireDevice(keyring, hw).activation(license_key=key) for hw in "AB"]
        for i, data in enumerate(files):
            held = processing_key("ACME", f"f{i}.req")
            inbox.put(held, data)
            intake.handle(Arrival(area="ACME", name=f"f{i}.req", key=held, data=data,
                                  sha256=hashlib.sha256(data).hexdigest(), size=len(data)))
        inbox.put("ACME/waiting.req", b"x")
        after = _scrape(port)
    finally:
        server.shutdown()

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    done = 'airlock_files_total{customer="ACME",kind="activation_request",outcome="done",reason=""}'
    refused = ('airlock_files_total{customer="ACME",kind="activation_request",'
               'outcome="rejected",reason="no_seats_left"}')
    assert delta(done) == 1 and delta(refused) == 1
    assert delta("airlock_processing_seconds_count") == 2
    assert after['airlock_backlog_files{customer="ACME",where="inbox"}'] == 1
    assert after['airlock_backlog_files{customer="BETA",where="inbox"}'] == 0
    assert 'airlock_oldest_waiting_seconds{customer="ACME"}' in after
    assert after["airlock_status_up"] == 1


def test_children_count_into_one_scrape_in_multiprocess_mode(tmp_path: Path) -> None:
    """What `airlock worker --metrics-port` does: the directory is set before anything
    is counted, pool processes count, the parent serves the sum."""
    port = _free_port()
    script = textwrap.dedent(f"""
        import multiprocessing, urllib.request
        from pathlib import Path
        from pipelines import metrics

        def child():
            metrics.record_retry("handover")
            metrics.record_outage("database")

        if __name__ == "__main__":
            metrics.use_directory(Path({str(tmp_path / "prom")!r}))
            procs = [multiprocessing.get_context("fork").Process(target=child) for _ in range(3)]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
                metrics.process_exited(p.pid)
            server = metrics.serve({port})
            print(urllib.request.urlopen("http://127.0.0.1:{port}/metrics").read().decode())
            server.shutdown()
        """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=True)
    lines = result.stdout.splitlines()
    assert 'airlock_retries_total{what="handover"} 3.0' in lines
    assert 'airlock_dependency_outages_total{dependency="database"} 3.0' in lines


def _families(port: int) -> dict[str, float]:
    """Every sample of a scrape, parsed with the client's own text parser."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def test_airlock_run_serves_metrics_and_writes_json_logs(tmp_path: Path) -> None:
    """A real `airlock run --processes 2 --metrics-port P --log-format json`: the two
    runners' counts add up in one scrape and match the files; every stderr line is a
    JSON object, one per file with its customer, job and reason."""
    import json
    import os
    import signal

    from config.settings import Settings
    from models.db import make_engine
    from models.migrate import upgrade
    from pipelines.keyring import init_keyring
    from tests.distributed.cluster import wait_for

    settings = Settings(home=tmp_path / "var")
    upgrade(settings.resolved_database_url)
    ring, _ = init_keyring(settings.resolved_keys_dir)
    engine = make_engine(settings.resolved_database_url)
    vendor(engine)
    key = add_license(engine, max_activations=4)
    engine.dispose()
    inbox = Path(settings.resolved_inbox) / "ACME"
    inbox.mkdir(parents=True)
    port = _free_port()
    env = {**os.environ, "AIRLOCK_HOME": str(settings.home), "AIRLOCK_SETTLE_SECONDS": "0.05",
           "AIRLOCK_SCAN_INTERVAL_SECONDS": "0.1"}
    proc = subprocess.Popen([sys.executable, "-m", "cli", "run", "--processes", "2",
                             "--log-format", "json", "--metrics-port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    done = ('airlock_files_total{customer=ACME,kind=activation_request,outcome=done,'
            'reason=}')
    refused = ('airlock_files_total{customer=ACME,kind=activation_request,'
               'outcome=rejected,reason=no_seats_left}')
    malformed = 'airlock_files_total{customer=ACME,kind=unknown,outcome=rejected,reason=malformed}'
    try:
        for i in range(5):
            (inbox / f"d{i}.req").write_bytes(WireDevice(ring, f"HW-{i}").activation(
                license_key=key))
        (inbox / "junk.req").write_bytes(b"junk")

        def counted() -> dict[str, float] | None:
            try:
                samples = _families(port)
            except OSError:
                return None  # not serving yet
            total = sum(samples.get(name, 0) for name in (done, refused, malformed))
            return samples if total == 6 else None

        samples = wait_for(counted, timeout=60, what="six files counted in one scrape")
        assert (samples[done], samples[refused], samples[malformed]) == (4, 1, 1)
        assert samples["airlock_processing_seconds_count{}"] == 6
        assert "airlock_backlog_files{customer=ACME,where=inbox}" in samples  # cached 10 s
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    entries = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert len(entries) == len([line for line in err.splitlines() if line.strip()]) - 1
    files = [e for e in entries if e["logger"] == "airlock.intake"]
    assert len(files) == 6 and {e["customer"] for e in files} == {"ACME"}
    assert sorted(e.get("reason") or "" for e in files) == ["", "", "", "", "malformed",
                                                            "no_seats_left"]
    assert all(isinstance(e["job"], int) and e["time"].endswith("+00:00") for e in files)
