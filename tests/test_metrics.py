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
