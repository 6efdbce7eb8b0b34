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
from tests.distributed.cluster import RedisServer, wait_for
from tests.distributed.conftest import Deployment
from tests.factories import add_license, license_info
from tests.test_archives import make_zip

pytestmark = pytest.mark.postgres
# A worker's line for a job it applied: the inbox file it archived, or the job itself.
APPLIED = re.compile(r"ACME/(?:job (\d+)|(\S+)) -> done$", re.M)


@pytest.fixture
def pg_deployment(tmp_path: Path, pg_database: str) -> Iterator[Deployment]:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    dep = Deployment(root=tmp_path, redis=redis, database_url=pg_database)
    try:
        yield dep
    finally:
        dep.close()


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
    by_file = {job.source: job.id for job in dep.jobs()}
    applied = [{int(job_id) if job_id else by_file[f"ACME/{name}"]
                for job_id, name in APPLIED.findall(w.log())} for w in workers]
    assert applied[0] and applied[1], "both workers should have taken work"
    assert not applied[0] & applied[1], "a job was applied by both workers"
    assert applied[0] | applied[1] == jobs
    assert all(job.attempts == 1 for job in dep.jobs() if job.id in jobs)
    with session_scope(dep.engine) as session:
        per_job = dict(session.exec(select(JobOutput.job_id, func.count())
                                    .group_by(JobOutput.job_id)).all())
    assert all(per_job[job_id] == 1 for job_id in jobs)
    assert len(dep.outbox(".receipt")) == 60
