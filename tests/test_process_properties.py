"""Exactly-once under any interleaving and duplication, and under real concurrency."""

from __future__ import annotations

import multiprocessing
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from models.db import create_schema, make_engine
from pipelines.keyring import VendorKeyring, load_keyring
from pipelines.ledger import Submission
from pipelines.process import Processor, process, process_many
from tests.factories import NOW, WireDevice, add_license, license_info, vendor

DEVICES = 6


def _fleet(engine: Engine, keyring: VendorKeyring, amounts: list[int]) -> tuple[str, list[bytes]]:
    """A license with one active device per amount, and each device's deactivation file."""
    vendor(engine)
    key = add_license(engine, license_type="consumption", max_consumptions=10_000,
                      max_activations=len(amounts), features=["export:consumption"])
    processor = Processor(keyring=keyring, clock=lambda: NOW)
    files = []
    for i, amount in enumerate(amounts):
        device = WireDevice(keyring, f"HW-{i}")
        assert process(device.activation(license_key=key), engine=engine, tenant="ACME",
                       processor=processor).accepted
        files.append(device.deactivation(license_key=key, consumptions=amount,
                                         features={"export": amount % 4}))
    return key, files


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(amounts=st.lists(st.integers(min_value=0, max_value=500), min_size=1, max_size=DEVICES),
       order=st.lists(st.integers(min_value=0, max_value=DEVICES - 1), min_size=1, max_size=20),
       batch=st.integers(min_value=1, max_value=5))
def test_any_interleaving_and_duplication_applies_each_file_once(
        keyring: VendorKeyring, amounts: list[int], order: list[int], batch: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'p.db'}")
        create_schema(engine)
        try:
            key, files = _fleet(engine, keyring, amounts)
            sequence = [i % len(files) for i in order]
            processor = Processor(keyring=keyring, clock=lambda: NOW)
            for start in range(0, len(sequence), batch):
                chunk = [Submission(tenant="ACME", data=files[i])
                         for i in sequence[start:start + batch]]
                assert all(o.accepted for o in process_many(chunk, engine=engine,
                                                            processor=processor))
            distinct = set(sequence)
            info = license_info(engine, key)
            assert info["consumptions"]["total"] == sum(amounts[i] for i in distinct)
            export = next(f for f in info["features"] if f["code"] == "export")
            assert export["total_consumptions"] == sum(amounts[i] % 4 for i in distinct)
            assert info["active_devices"] == len(amounts) - len(distinct)
        finally:
            engine.dispose()


def _worker(url: str, keys_dir: str, files: list[bytes], queue: multiprocessing.Queue) -> None:
    engine = make_engine(url)
    processor = Processor(keyring=load_keyring(Path(keys_dir)), clock=lambda: NOW)
    statuses = [process(f, engine=engine, tenant="ACME", processor=processor).reason or "done"
                for f in files]
    engine.dispose()
    queue.put(statuses)


def _run_in_processes(url: str, keys_dir: Path, shares: list[list[bytes]]) -> list[str]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(url, str(keys_dir), share, queue))
             for share in shares]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    return [status for result in results for status in result]


@pytest.mark.postgres
def test_two_processes_on_postgres_lose_no_update(pg_engine: Engine, pg_url: str,
                                                  tmp_path: Path) -> None:
    from pipelines.keyring import init_keyring
    from tests.conftest import truncate_all

    truncate_all(pg_engine)
    keyring, _ = init_keyring(tmp_path / "keys")
    amounts = [7 * (i + 1) for i in range(24)]
    key, files = _fleet(pg_engine, keyring, amounts)
    # Both processes get every file, in opposite orders: maximal contention and duplication.
    statuses = _run_in_processes(pg_url, tmp_path / "keys", [files, files[::-1]])
    assert set(statuses) == {"done"}
    info = license_info(pg_engine, key)
    assert info["consumptions"]["total"] == sum(amounts)
    assert info["active_devices"] == 0

    # Seats: 16 devices race for 8 seats from two processes; exactly 8 win.
    seat_key = add_license(pg_engine, max_activations=8)
    requests = [WireDevice(keyring, f"S-{i}").activation(license_key=seat_key)
                for i in range(16)]
    statuses = _run_in_processes(pg_url, tmp_path / "keys", [requests[::2], requests[1::2]])
    assert statuses.count("done") == 8 and statuses.count("no_seats_left") == 8
    assert license_info(pg_engine, seat_key)["active_devices"] == 8
    truncate_all(pg_engine)
