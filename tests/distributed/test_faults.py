"""Faults in the middle of a bulk import, on each broker: a worker SIGKILLed, the broker
restarted. Every member must still be applied exactly once. (Messages the broker lost
are in ``test_recovery.py``.)"""

from __future__ import annotations

import json
import time

import pytest

from tests.distributed.cluster import wait_for
from tests.distributed.conftest import Deployment
from tests.factories import WireDevice, add_license, license_info
from tests.test_archives import make_zip


def _usage_archive(dep: Deployment, count: int) -> tuple[str, bytes, int]:
    """(license key, a zip of `count` deactivations, the consumption they add up to)."""
    key = add_license(dep.engine, license_type="consumption", max_consumptions=100_000,
                      max_activations=count)
    devices = dep.activated(key, count)
    files = [(f"usage/{i:03d}.deact", device.deactivation(license_key=key, consumptions=i + 1))
             for i, device in enumerate(devices)]
    return key, make_zip(files), sum(range(1, count + 1))


def _check_exactly_once(dep: Deployment, key: str, members: int, total: int) -> None:
    result = dep.wait_reported(timeout=180)
    assert result.status == "reported" and result.counts == {"done": members}
    assert license_info(dep.engine, key)["consumptions"]["total"] == total
    assert len(dep.outbox(".receipt")) == members  # one outbox file per member
    document = json.loads(next(iter(dep.outbox(".report.json").values())))
    assert len(document["members"]) == members
    assert {row["status"] for row in document["members"]} == {"done"}
    # No redelivery loop: the interrupted chunk is tried again once or twice, no more.
    assert max(job.attempts for job in dep.jobs()) <= 3


def test_worker_killed_mid_batch_loses_nothing(deployment: Deployment) -> None:
    """The killed worker held chunks it had not started (no claim on their rows):
    RabbitMQ requeues them when its connection drops; on Redis they wait in the unacked
    hash, and the sweep ``airlock watch`` runs publishes them again once the queue is
    empty."""
    dep = deployment
    key, archive, total = _usage_archive(dep, 40)
    dep.sweep_in_background()
    slots = dep.root / "slots"
    slots.mkdir()
    first = dep.worker("w1", concurrency=2, chunk_slots=2, slot_dir=slots)
    dep.drop("ACME/usage.zip", archive)
    wait_for(lambda: dep.batch().finished == 8, timeout=90, what="two chunks")
    wait_for(lambda: first.log().count(" received") >= 4, timeout=30,
             what="the worker to hold more chunks")
    first.kill()  # SIGKILL to the main process and every pool process, mid-batch
    state = dep.batch()
    assert (state.status, state.finished, state.total) == ("open", 8, 40)
    dep.worker("w2", concurrency=2)
    _check_exactly_once(dep, key, 40, total)


@pytest.mark.restarts_broker
def test_broker_restart_mid_batch_loses_nothing(deployment: Deployment) -> None:
    dep = deployment
    key, archive, total = _usage_archive(dep, 30)
    dep.sweep_in_background()
    dep.worker("w1", apply_delay=0.2)
    dep.drop("ACME/usage.zip", archive)
    wait_for(lambda: dep.batch().finished >= 4, timeout=90, what="the first chunks")
    dep.broker.stop()
    time.sleep(2)  # the broker is away for a while, not just a blip
    dep.broker.start()
    _check_exactly_once(dep, key, 30, total)


def test_a_fixable_refusal_is_evaluated_again_through_the_broker(deployment: Deployment) -> None:
    """The same file, sent again after the vendor added a seat, is applied by a worker."""
    from models.db import session_scope
    from pipelines import catalog

    dep = deployment
    key = add_license(dep.engine, max_activations=0)
    data = WireDevice(dep.keyring, "HW-1").activation(license_key=key)
    dep.worker("w1")
    dep.drop("ACME/first.req", data)

    def job_reason() -> str | None:
        (job,) = dep.jobs()
        return job.reason if job.status == "rejected" else None

    wait_for(lambda: job_reason() == "no_seats_left", timeout=60, what="the refusal")
    with session_scope(dep.engine) as session:
        catalog.update_license(session=session, key=key, max_activations=1)
    dep.drop("ACME/again.req", data)
    wait_for(lambda: dep.jobs()[0].status == "done", timeout=60, what="the second evaluation")
    assert license_info(dep.engine, key)["active_devices"] == 1
    assert len(dep.jobs()) == 1
