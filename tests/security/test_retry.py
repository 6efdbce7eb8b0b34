"""A refusal the vendor can fix is evaluated again when the file is sent again."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import select

from models import JobEvaluation
from models.db import session_scope
from pipelines import catalog
from pipelines.ledger import Submission, register
from pipelines.process import process_jobs
from tests.factories import NOW, WireDevice
from tests.security.conftest import Vendor, refused


def _evaluations(airlock: Vendor, job_id: int) -> list[tuple[str, str | None]]:
    with session_scope(airlock.engine) as session:
        rows = session.exec(select(JobEvaluation).where(JobEvaluation.job_id == job_id)
                            .order_by(JobEvaluation.id))  # type: ignore[arg-type]
        return [(row.status, row.reason) for row in rows]


def _update(airlock: Vendor, key: str, **changes) -> None:  # noqa: ANN003
    with session_scope(airlock.engine) as session:
        catalog.update_license(session=session, key=key, now=NOW, **changes)


@pytest.mark.parametrize("cause,reason,fix", [
    (dict(max_activations=0), "no_seats_left", dict(max_activations=1)),
    (dict(enabled=False), "license_disabled", dict(enabled=True)),
    (dict(expires_at=NOW - timedelta(days=1)), "license_expired", dict(extend_days=30)),
    (dict(allow_offline_activation=False), "offline_not_allowed",
     dict(allow_offline_activation=True)),
])
def test_the_same_file_after_the_fix_succeeds_once(airlock: Vendor, cause,  # noqa: ANN001
                                                   reason: str, fix) -> None:  # noqa: ANN001
    key = airlock.license()
    _update(airlock, key, **cause)
    data = WireDevice(airlock.keyring, "HW-1").activation(license_key=key)
    first = airlock.send(data)
    refused(first, reason)
    refused(airlock.send(data), reason)  # nothing fixed yet: the same answer again
    _update(airlock, key, **fix)
    again = airlock.send(data)
    assert again.accepted and again.job_id == first.job_id and not again.duplicate
    assert airlock.info(key)["active_devices"] == 1
    replayed = airlock.send(data)  # accepted: applied once, the same answer
    assert replayed.accepted and replayed.duplicate
    assert replayed.outputs == again.outputs
    assert airlock.info(key)["active_devices"] == 1
    assert _evaluations(airlock, first.job_id) == [("rejected", reason), ("rejected", reason),
                                                   ("done", None)]


def test_a_locked_out_activation_succeeds_after_the_unlock(airlock: Vendor) -> None:
    key = airlock.license(users={"ana@acme.example": "correct horse"})
    device = WireDevice(airlock.keyring, "HW-1")
    for _ in range(3):
        airlock.send(device.activation(email="ana@acme.example", password="guess"))
    data = device.activation(email="ana@acme.example", password="correct horse")
    refused(airlock.send(data), "locked_out", "bad_credentials")
    with session_scope(airlock.engine) as session:
        catalog.unlock_user(session=session, key=key, email="ana@acme.example")
    assert airlock.send(data).accepted
    assert airlock.info(key)["active_devices"] == 1


def test_refusals_intrinsic_to_the_file_keep_their_answer(airlock: Vendor) -> None:
    key = airlock.license(max_activations=2)
    owner = WireDevice(airlock.keyring, "HW-1")
    assert airlock.send(owner.activation(license_key=key)).accepted
    stranger = WireDevice(airlock.keyring, "HW-1")
    hijack = stranger.activation(license_key=key)
    first = airlock.send(hijack)
    refused(first, "device_already_active")
    bad_key = stranger.deactivation(license_key=key)
    refused(airlock.send(bad_key), "wrong_device_key", "unknown_device")
    assert airlock.send(owner.deactivation(license_key=key)).accepted  # the cause went away
    second = airlock.send(hijack)  # but device_already_active is not re-evaluated
    assert second.duplicate and second.reason == "device_already_active"
    assert airlock.send(bad_key).duplicate
    assert airlock.info(key)["active_devices"] == 0
    assert _evaluations(airlock, first.job_id) == [("rejected", "device_already_active")]


def test_a_bulk_member_keeps_its_batchs_answer(airlock: Vendor) -> None:
    key = airlock.license(max_activations=0)
    data = WireDevice(airlock.keyring, "HW-1").activation(license_key=key)
    first = airlock.send(data)
    refused(first, "no_seats_left")
    _update(airlock, key, max_activations=1)
    # Registered as a bulk member: not opened again.
    with session_scope(airlock.engine) as session:
        (job,) = register(session, [Submission(tenant="ACME", data=data)], now=NOW,
                          count_attempt=False, reevaluate=False)
    assert (job.id, job.status) == (first.job_id, "rejected")
    (outcome,) = process_jobs([job.id], engine=airlock.engine, processor=airlock.processor)
    assert outcome.duplicate and outcome.reason == "no_seats_left"
    assert airlock.info(key)["active_devices"] == 0
