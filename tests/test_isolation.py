"""One file's failure never changes another's outcome, in every mode.

A file whose processing raises (here: an activation for hardware id BOOM, made to
raise inside the rule) sits in the same pass, message or chunk as valid files of
another tenant: those are done at once, and only the failing file is quarantined,
with a report, once its attempts are used up.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from config.settings import Settings
from models.db import session_scope
from pipelines import bulk
from pipelines.intake import Intake
from pipelines.keyring import VendorKeyring
from pipelines.layout import Arrival, processing_key
from pipelines.ledger import Submission, register
from pipelines.process import Processor
from pipelines.storage.local import LocalStore
from tests.factories import NOW, WireDevice, add_license, license_info, make_rule_raise, vendor
from workers.runtime import Runtime
from workers.tasks import run_process_files

MAX_ATTEMPTS = 3


@pytest.fixture(autouse=True)
def boom(monkeypatch: pytest.MonkeyPatch) -> None:
    make_rule_raise(monkeypatch, "BOOM")


@pytest.fixture
def runtime(sqlite_engine: Engine, keyring: VendorKeyring, tmp_path: Path) -> Runtime:
    vendor(sqlite_engine)
    return Runtime(settings=Settings(home=tmp_path / "var", chunk_size=10),
                   engine=sqlite_engine, keyring=keyring,
                   processor=Processor(keyring=keyring, clock=lambda: NOW,
                                       max_attempts=MAX_ATTEMPTS),
                   inbox=LocalStore(tmp_path / "inbox"), outbox=LocalStore(tmp_path / "outbox"))


def _files(keyring: VendorKeyring, engine: Engine) -> tuple[str, str, list[tuple[str, bytes]]]:
    acme, beta = add_license(engine, max_activations=5), add_license(
        engine, customer_code="BETA", max_activations=5)
    files = [("ACME", WireDevice(keyring, "BOOM").activation(license_key=acme)),
             ("BETA", WireDevice(keyring, "HW-1").activation(license_key=beta)),
             ("BETA", WireDevice(keyring, "HW-2").activation(license_key=beta)),
             ("ACME", WireDevice(keyring, "HW-3").activation(license_key=acme))]
    return acme, beta, files


def _claimed(intake: Intake, area: str, name: str, data: bytes) -> Arrival:
    key = processing_key(area, name)
    intake.inbox.put(key, data)
    return Arrival(area=area, name=name, key=key, data=data,
                   sha256=hashlib.sha256(data).hexdigest(), size=len(data))


def _message(runtime: Runtime, files: list[tuple[str, bytes]]
             ) -> tuple[list[Arrival], list[Any], list[tuple[int, str | None]]]:
    """The files claimed and registered as the watcher does: (arrivals, jobs, the
    ``process_files`` items)."""
    intake = runtime.intake()
    arrivals = [_claimed(intake, area, f"f{i}.req", data) for i, (area, data) in
                enumerate(files)]
    with session_scope(runtime.engine) as session:
        jobs = register(session, [Submission(tenant=a.area, data=a.data, source=a.key)
                                  for a in arrivals], now=NOW, count_attempt=False)
    items: list[tuple[int, str | None]] = [(job.id, a.key)
                                           for job, a in zip(jobs, arrivals, strict=True)]
    return arrivals, jobs, items


def _until_it_ends(deliver: Any) -> Any:
    """Redeliver (as the broker does) until the failing file stops failing: it must be
    quarantined within its attempts."""
    for _ in range(MAX_ATTEMPTS):
        try:
            return deliver()
        except ZeroDivisionError:
            continue
    raise AssertionError("the failing file was not quarantined after its attempts")


def _quarantined_with_report(runtime: Runtime) -> None:
    root = Path(runtime.inbox.location.removeprefix("file://"))
    reports = list((root / "_quarantine").rglob("*.error.json"))
    assert len(reports) == 1 and b"poison" in reports[0].read_bytes()


def test_embedded_pass(runtime: Runtime) -> None:
    acme, beta, files = _files(runtime.keyring, runtime.engine)
    intake = runtime.intake()
    arrivals = [_claimed(intake, area, f"f{i}.req", data) for i, (area, data) in
                enumerate(files)]
    done = intake.handle_many(arrivals).outcomes
    assert sorted(o.status for o in done) == ["done"] * 3  # the valid ones, at once
    assert license_info(runtime.engine, beta)["active_devices"] == 2
    assert license_info(runtime.engine, acme)["active_devices"] == 1
    left: list[Any] = []
    for _ in range(MAX_ATTEMPTS):  # later passes: the failing file alone is left
        left = intake.handle_many([arrivals[0]]).outcomes
        if left:
            break
    assert [o.status for o in left] == ["quarantined"]
    assert left[0].reason == "poison"
    _quarantined_with_report(runtime)


def test_celery_inbox_message(runtime: Runtime) -> None:
    acme, beta, files = _files(runtime.keyring, runtime.engine)
    _arrivals, _jobs, items = _message(runtime, files)
    with pytest.raises(ZeroDivisionError):  # the message is retried for the failing file
        run_process_files(runtime, items)
    assert license_info(runtime.engine, beta)["active_devices"] == 2
    assert license_info(runtime.engine, acme)["active_devices"] == 1
    outcomes = _until_it_ends(lambda: run_process_files(runtime, items))
    assert [o.status for o in outcomes if not o.duplicate] == ["quarantined"]
    assert license_info(runtime.engine, beta)["active_devices"] == 2
    _quarantined_with_report(runtime)


def test_celery_inbox_message_logs_each_file_once(runtime: Runtime,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """One line per finished file: the valid files once when archived, the failing one
    none until it is quarantined; a copy of the message whose files are archived
    already logs each job once."""
    _acme, _beta, files = _files(runtime.keyring, runtime.engine)
    arrivals, jobs, items = _message(runtime, files)

    def lines() -> list[str]:
        found = [r.getMessage() for r in caplog.records
                 if r.name in ("airlock.intake", "airlock.tasks") and ": job " in r.getMessage()]
        caplog.clear()
        return found

    caplog.set_level(logging.INFO, logger="airlock")
    with pytest.raises(ZeroDivisionError):
        run_process_files(runtime, items)
    assert sorted(lines()) == sorted(f"{a.area}/{a.name}: job {job.id} done (applied)"
                                     for a, job in zip(arrivals[1:], jobs[1:], strict=True))
    again = [f"{a.area}: job {job.id} done (duplicate)"
             for a, job in zip(arrivals[1:], jobs[1:], strict=True)]
    for _ in range(MAX_ATTEMPTS):  # redelivered: each valid file once per delivery
        try:
            run_process_files(runtime, items)
        except ZeroDivisionError:
            assert sorted(lines()) == sorted(again)
            continue
        assert sorted(lines()) == sorted([f"ACME/f0.req: job {jobs[0].id} quarantined [poison] "
                                          "(applied)", *again])
        break
    else:
        pytest.fail("the failing file was not quarantined after its attempts")
    run_process_files(runtime, items)  # a copy of the message, every file archived
    assert sorted(lines()) == sorted([f"ACME: job {jobs[0].id} quarantined [poison] (duplicate)",
                                      *again])


def test_celery_bulk_chunk(runtime: Runtime) -> None:
    acme, beta, files = _files(runtime.keyring, runtime.engine)
    with session_scope(runtime.engine) as session:
        jobs = register(session, [Submission(tenant=area, data=data, source=f"x.zip!{i}")
                                  for i, (area, data) in enumerate(files)], now=NOW,
                        count_attempt=False, reevaluate=False)
    ids = [job.id for job in jobs]
    with pytest.raises(ZeroDivisionError):
        bulk.run_chunk(runtime, ids)
    assert license_info(runtime.engine, beta)["active_devices"] == 2
    assert license_info(runtime.engine, acme)["active_devices"] == 1
    result = _until_it_ends(lambda: bulk.run_chunk(runtime, ids))
    statuses = {o.job_id: o.status for o in result.outcomes}
    assert statuses[ids[0]] == "quarantined"
    assert [statuses[j] for j in ids[1:]] == ["done"] * 3
    assert license_info(runtime.engine, acme)["active_devices"] == 1
