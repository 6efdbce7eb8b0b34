"""The operator's job view: list, show (where the source is now), and retry."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from config.settings import Settings
from models import JobStatus
from models.db import reading
from models.tables import AUDIT
from pipelines import process
from pipelines.bulk import handle_archive
from pipelines.intake import Intake
from pipelines.jobs import JobQuery, RetryResult, job_record, list_jobs, retry_jobs, select_retry
from pipelines.keyring import VendorKeyring
from pipelines.layout import Arrival, processing_key
from pipelines.process import Processor
from pipelines.storage.local import LocalStore
from tests.factories import NOW, WireDevice, add_license, license_info, vendor
from tests.test_archives import make_zip
from workers.runtime import Runtime

MAX_ATTEMPTS = 2


@pytest.fixture
def broken(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """While `broken[0]`, applying hardware id BOOM raises (a bug since fixed)."""
    state = [True]
    real = process.apply

    def apply(st: Any, envelope: Any, **kwargs: Any) -> Any:
        if state[0] and envelope.payload.get("hardware_id") == "BOOM":
            raise ZeroDivisionError("a bug this file triggers")
        return real(st, envelope, **kwargs)

    monkeypatch.setattr(process, "apply", apply)
    return state


@pytest.fixture
def runtime(engine: Engine, keyring: VendorKeyring, tmp_path: Path) -> Runtime:
    vendor(engine)
    return Runtime(settings=Settings(home=tmp_path / "var", chunk_size=10),
                   engine=engine, keyring=keyring,
                   processor=Processor(keyring=keyring, clock=lambda: NOW,
                                       max_attempts=MAX_ATTEMPTS),
                   inbox=LocalStore(tmp_path / "inbox"), outbox=LocalStore(tmp_path / "outbox"))


def _handle(intake: Intake, key: str, data: bytes) -> Arrival:
    """Claim `key` (``AREA/name`` in the inbox) and hand it over until it finishes."""
    area, name = key.split("/", 1)
    held = processing_key(area, name)
    intake.inbox.move(key, held) if intake.inbox.exists(key) else intake.inbox.put(held, data)
    arrival = Arrival(area=area, name=name, key=held, data=data,
                      sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    for _ in range(MAX_ATTEMPTS + 1):
        if intake.handle_many([arrival]).outcomes:
            break
    return arrival


def test_a_quarantined_file_is_retried_through_the_inbox_once_its_cause_is_fixed(
        runtime: Runtime, broken: list[bool]) -> None:
    key = add_license(runtime.engine, max_activations=3)
    intake = runtime.intake()
    boom = WireDevice(runtime.keyring, "BOOM").activation(license_key=key)
    good = WireDevice(runtime.keyring, "HW-1").activation(license_key=key)
    _handle(intake, "ACME/boom.req", boom)
    _handle(intake, "ACME/good.req", good)
    [quarantined] = list_jobs(runtime.engine, JobQuery(status=JobStatus.QUARANTINED))
    [done] = list_jobs(runtime.engine, JobQuery(status=JobStatus.DONE))
    assert quarantined["reason"] == "poison" and quarantined["tenant"] == "ACME"
    assert list_jobs(runtime.engine, JobQuery(reason="poison", customer="BETA")) == []
    shown = job_record(runtime.engine, runtime.inbox, runtime.outbox, quarantined["id"])
    assert shown is not None
    assert shown["source_now"] == "_quarantine/ACME/boom.req"
    assert [e["reason"] for e in shown["evaluations"]] == ["poison"]
    assert [r["in_outbox"] for r in shown["results"]] == [True]  # the rejection report

    # retrying what was accepted, or is unknown, does nothing and says so
    refused = retry_jobs(runtime, [done["id"], 999_999])
    assert [r.result for r in refused] == [RetryResult.NOT_RETRYABLE, RetryResult.NOT_FOUND]
    assert "never applied again" in refused[0].detail
    assert license_info(runtime.engine, key)["active_devices"] == 1

    broken[0] = False  # the bug is fixed
    assert select_retry(runtime.engine, status=JobStatus.QUARANTINED, reason="poison") == [
        quarantined["id"]]
    [retried] = retry_jobs(runtime, [quarantined["id"]])
    assert retried.result == RetryResult.REQUEUED and retried.extra["to"] == "ACME/boom.req"
    assert runtime.inbox.get("ACME/boom.req") == boom
    assert not runtime.inbox.exists("_quarantine/ACME/boom.req")
    assert not runtime.inbox.exists("_quarantine/ACME/boom.req.error.json")
    _handle(intake, "ACME/boom.req", boom)  # what the runner does with it
    after = job_record(runtime.engine, runtime.inbox, runtime.outbox, quarantined["id"])
    assert after is not None and after["status"] == "done" and after["attempts"] == 1
    assert after["source_now"] == "_processed/ACME/boom.req"
    assert [e["status"] for e in after["evaluations"]] == ["quarantined", "done"]
    assert license_info(runtime.engine, key)["active_devices"] == 2
    with reading(runtime.engine) as conn:
        actions = list(conn.execute(select(AUDIT.c.action, AUDIT.c.job_id)
                                    .where(AUDIT.c.action == "job.retry")))
    assert [tuple(a) for a in actions] == [("job.retry", quarantined["id"])]
    again = retry_jobs(runtime, [quarantined["id"]])  # now accepted: never again
    assert again[0].result == RetryResult.NOT_RETRYABLE


def test_a_fixable_refusal_is_retried_and_a_permanent_one_is_not(runtime: Runtime,
                                                                 broken: list[bool]) -> None:
    key = add_license(runtime.engine, max_activations=1)
    intake = runtime.intake()
    _handle(intake, "ACME/first.req", WireDevice(runtime.keyring, "A").activation(
        license_key=key))
    second = WireDevice(runtime.keyring, "B").activation(license_key=key)
    _handle(intake, "ACME/second.req", second)
    _handle(intake, "ACME/junk.req", b"not a request")
    rejected = {j["source"].rsplit("/", 1)[-1]: j for j in
                list_jobs(runtime.engine, JobQuery(status=JobStatus.REJECTED))}
    assert rejected["second.req"]["reason"] == "no_seats_left"
    results = retry_jobs(runtime, [rejected["junk.req"]["id"], rejected["second.req"]["id"]])
    assert results[0].result == RetryResult.NOT_RETRYABLE and "malformed" in results[0].detail
    assert runtime.inbox.exists("_rejected/ACME/junk.req")
    assert results[1].result == RetryResult.REQUEUED
    assert runtime.inbox.get("ACME/second.req") == second
    _handle(intake, "ACME/second.req", second)  # still no seat: refused again, recorded
    shown = job_record(runtime.engine, runtime.inbox, runtime.outbox,
                       rejected["second.req"]["id"])
    assert shown is not None and shown["status"] == "rejected"
    assert [e["reason"] for e in shown["evaluations"]] == ["no_seats_left"] * 2
    assert license_info(runtime.engine, key)["active_devices"] == 1


def test_a_quarantined_bulk_member_is_applied_again_and_its_report_rewritten(
        runtime: Runtime, broken: list[bool]) -> None:
    key = add_license(runtime.engine, max_activations=5)
    members = [("m/boom.req", WireDevice(runtime.keyring, "BOOM").activation(license_key=key)),
               ("m/ok.req", WireDevice(runtime.keyring, "OK").activation(license_key=key))]
    data = make_zip(members)
    held = processing_key("ACME", "drop.zip")
    runtime.inbox.put(held, data)
    arrival = Arrival(area="ACME", name="drop.zip", key=held, data=data,
                      sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    result = None
    for _ in range(MAX_ATTEMPTS + 2):
        try:
            result = handle_archive(runtime, arrival)
            break
        except ZeroDivisionError:
            continue
    assert result is not None and result.status == "reported"
    [member] = list_jobs(runtime.engine, JobQuery(status=JobStatus.QUARANTINED))
    shown = job_record(runtime.engine, runtime.inbox, runtime.outbox, member["id"])
    assert shown is not None and shown["source_now"] == "_processed/ACME/drop.zip"
    broken[0] = False
    [retried] = retry_jobs(runtime, [member["id"]])
    assert retried.result == RetryResult.APPLIED and retried.status == "done"
    report = runtime.outbox.get(result.report_keys[0]).decode()
    assert '"quarantined"' not in report and license_info(runtime.engine, key)[
        "active_devices"] == 2
