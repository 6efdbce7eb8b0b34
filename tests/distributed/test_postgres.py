"""Two worker processes against PostgreSQL: disjoint work, no lost update."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func
from sqlmodel import select

from models import JobOutput
from models.db import session_scope
from tests.distributed.cluster import Broker, wait_for
from tests.distributed.conftest import Deployment, deployed
from tests.factories import add_license, license_info
from tests.test_archives import make_zip

pytestmark = pytest.mark.postgres
APPLIED = re.compile(r"job (\d+) done \(applied\)")


@pytest.fixture
def pg_deployment(tmp_path: Path, broker: Broker, pg_database: str,
                  request: pytest.FixtureRequest) -> Iterator[Deployment]:
    with deployed(tmp_path, broker, pg_database, request) as dep:
        yield dep


def test_two_workers_share_the_work_and_lose_no_update(pg_deployment: Deployment) -> None:
    dep = pg_deployment
    key = add_license(dep.engine, license_type="consumption", max_consumptions=100_000,
                      max_activations=60)
    devices = dep.activated(key, 60)
    with session_scope(dep.engine) as session:
        activations = set(session.exec(select(JobOutput.job_id)))
    workers = [dep.worker(name, apply_delay=0.05) for name in ("w1", "w2")]
    for i, device in enumerate(devices[:30]):
        dep.drop(f"ACME/single-{i:02d}.deact", device.deactivation(
            license_key=key, consumptions=i + 1))
    dep.drop("ACME/usage.zip", make_zip([
        (f"usage/{i:02d}.deact", device.deactivation(license_key=key, consumptions=i + 1))
        for i, device in enumerate(devices[30:], start=30)]))

    result = dep.wait_reported(timeout=180)
    wait_for(lambda: all(j.status == "done" for j in dep.jobs()), timeout=120,
             what="every single file")
    assert result.counts == {"done": 30}
    assert license_info(dep.engine, key)["consumptions"]["total"] == sum(range(1, 61))

    jobs = {job.id for job in dep.jobs()} - activations
    assert len(jobs) == 60
    applied = [{int(n) for n in APPLIED.findall(w.log())} for w in workers]
    assert applied[0] and applied[1], "both workers should have taken work"
    assert not applied[0] & applied[1], "a job was applied by both workers"
    assert applied[0] | applied[1] == jobs
    assert all(job.attempts == 1 for job in dep.jobs() if job.id in jobs)
    with session_scope(dep.engine) as session:
        per_job = dict(session.exec(select(JobOutput.job_id, func.count())
                                    .group_by(JobOutput.job_id)).all())
    assert all(per_job[job_id] == 1 for job_id in jobs)
    assert len(dep.outbox(".receipt")) == 60
