"""One file's failure never changes another's outcome, through real processes.

A file whose processing raises (applying it raises `RuntimeError`, injected into the
real runner or worker process by `tests.distributed.faults`) shares the embedded pass,
the Celery message or the bulk chunk with valid files: those are done on the first
attempt, and only the failing file is quarantined once its attempts are used up, with
its report. (The in-process versions are in ``tests/test_isolation.py``.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from config.broker import BrokerKind
from models.migrate import upgrade
from tests.distributed.cluster import Worker, cli_command, wait_for, write_like_an_upload
from tests.distributed.conftest import Deployment
from tests.factories import WireDevice, add_license, license_info
from tests.test_archives import make_zip

MAX_ATTEMPTS = 2
BOOM = "HW-BOOM"  # the hardware id whose activation raises
FAULTS = {"FAULTS_RAISE_HARDWARE_ID": BOOM}
SAME_PASS = "a chunk of 4 jobs failed"  # the handler's line: the four were applied together


def _deploy(dep: Deployment, **overrides: Any) -> tuple[str, str]:
    """A migrated database (as production has) and a license for ACME and for BETA."""
    dep.overrides.update(max_attempts=MAX_ATTEMPTS, **overrides)
    upgrade(dep.database_url)
    return (add_license(dep.engine, max_activations=5),
            add_license(dep.engine, customer_code="BETA", max_activations=5))


def _drop(dep: Deployment, key: str, data: bytes) -> Path:
    """Write `key` into the inbox folder as an upload would; its archived path."""
    write_like_an_upload(dep.root / "inbox" / key, data)
    return dep.root / "inbox" / "_processed" / key


def _drop_mixed(dep: Deployment, acme: str, beta: str) -> list[Path]:
    """The failing ACME file beside valid files of BETA and of ACME; the valid ones'
    archive paths."""
    _drop(dep, "ACME/boom.req", WireDevice(dep.keyring, BOOM).activation(license_key=acme))
    return [_drop(dep, "BETA/b1.req", WireDevice(dep.keyring, "HW-B1").activation(
                license_key=beta)),
            _drop(dep, "BETA/b2.req", WireDevice(dep.keyring, "HW-B2").activation(
                license_key=beta)),
            _drop(dep, "ACME/a1.req", WireDevice(dep.keyring, "HW-A1").activation(
                license_key=acme))]


def _job(dep: Deployment, name: str) -> Any:
    """The job of the file (or member) `name`; None before it is registered."""
    jobs = [j for j in dep.jobs() if j.source.endswith(name)]
    assert len(jobs) <= 1, jobs
    return jobs[0] if jobs else None


def _status(dep: Deployment, name: str) -> str | None:
    job = _job(dep, name)
    return job.status if job is not None else None


def _valid_done_at_once(dep: Deployment, names: list[str]) -> None:
    """Wait for the valid files' jobs: done, on their first attempt."""
    wait_for(lambda: all(_status(dep, n) == "done" for n in names), timeout=90,
             what="the valid files to be done")
    assert {n: _job(dep, n).attempts for n in names} == dict.fromkeys(names, 1)


def _bound(dep: Deployment, key: str) -> set[str]:
    return {d["hardware_id"] for d in license_info(dep.engine, key)["devices"]
            if d["status"] == "active"}


def _quarantined_after_its_attempts(dep: Deployment, name: str) -> None:
    """Quarantined as poison: `MAX_ATTEMPTS` failed tries, then the pass that stops it
    without opening the file."""
    wait_for(lambda: _status(dep, name) == "quarantined", timeout=120,
             what=f"{name} to be quarantined")
    job = _job(dep, name)
    assert (job.reason, job.attempts) == ("poison", MAX_ATTEMPTS + 1)


def _quarantined_file(dep: Deployment, key: str) -> dict[str, Any]:
    """The file in ``_quarantine/`` (moved after its job committed) and its report."""
    target = dep.root / "inbox" / "_quarantine" / key
    wait_for(target.exists, timeout=30, what=f"{key} in _quarantine/")
    report = json.loads(target.with_name(target.name + ".error.json").read_text())
    assert (report["status"], report["reason"], report["tenant"]) == (
        "quarantined", "poison", key.split("/")[0])
    return report


def _check_outcome(dep: Deployment, acme: str, beta: str, processed: list[Path]) -> None:
    wait_for(lambda: all(p.exists() for p in processed), timeout=30,
             what="the valid files in _processed/")
    assert _bound(dep, beta) == {"HW-B1", "HW-B2"} and _bound(dep, acme) == {"HW-A1"}
    licences = dep.outbox(".lic")
    assert sorted(name.split("/")[0] for name in licences) == ["ACME", "BETA", "BETA"]
    _quarantined_after_its_attempts(dep, "boom.req")
    report = _quarantined_file(dep, "ACME/boom.req")
    assert [key.split("/")[0] for key in report["results"]] == ["ACME"]  # its rejection
    assert not list((dep.root / "inbox" / "_processing").rglob("*.req"))
    # The failing file changed nothing for the others.
    assert _bound(dep, beta) == {"HW-B1", "HW-B2"} and _bound(dep, acme) == {"HW-A1"}


def _watch(dep: Deployment) -> None:
    """A real ``airlock watch``; its sweep publishes again, after 2 s, what failed."""
    watcher = Worker(env=dep.env(), log_path=dep.root / "watch.log", name="watch",
                     command=cli_command("watch", "--sweep-every", "1",
                                         "--requeue-after", "2"))
    dep.workers.append(watcher)
    watcher.start(wait_ready=False)


@pytest.mark.parametrize("broker_kind", [BrokerKind.REDIS], ids=str)  # runs without one
def test_embedded_run(deployment: Deployment) -> None:
    """A real ``airlock run`` on the drop folder; restarted while the failing file waits
    in ``_processing/`` (a runner that retries it by itself just gets there sooner)."""
    dep = deployment
    acme, beta = _deploy(dep, broker_url=None)
    processed = _drop_mixed(dep, acme, beta)
    runner = Worker(env=dep.env(), log_path=dep.root / "run.log", name="run", faults=FAULTS,
                    command=[sys.executable, "-m", "tests.distributed.faulty_cli", "run"])
    dep.workers.append(runner)
    runner.start(wait_ready=False)
    _valid_done_at_once(dep, ["b1.req", "b2.req", "a1.req"])
    assert SAME_PASS in runner.log()
    for _ in range(MAX_ATTEMPTS):
        wait_for(lambda: _status(dep, "boom.req") == "quarantined" or
                 "injected fault" in runner.log_since_start(),
                 timeout=60, what="the failing file to be tried")
        if _status(dep, "boom.req") == "quarantined":
            break
        runner.stop()
        runner.start(wait_ready=False)  # the restart hands the file over again
    _check_outcome(dep, acme, beta, processed)


def test_celery_single_files(deployment: Deployment) -> None:
    """Real ``airlock watch`` and a real worker: the four files go in one message; the
    watcher's sweep publishes the failing one again until it is quarantined."""
    dep = deployment
    acme, beta = _deploy(dep)
    processed = _drop_mixed(dep, acme, beta)
    worker = dep.worker("w1", raise_hardware_id=BOOM)
    _watch(dep)
    _valid_done_at_once(dep, ["b1.req", "b2.req", "a1.req"])
    assert SAME_PASS in worker.log()
    _check_outcome(dep, acme, beta, processed)


def test_celery_bulk_chunk(deployment: Deployment) -> None:
    """An ACME archive whose one chunk holds the failing member beside three valid ones,
    and a BETA file dropped with it: the valid members are done at once and in the
    report; the failing member is quarantined there with its reason."""
    dep = deployment
    acme, beta = _deploy(dep, chunk_size=4)
    members = [(f"m{i}.req", WireDevice(dep.keyring, f"HW-M{i}").activation(
        license_key=acme)) for i in range(3)]
    members.insert(1, ("bad.req", WireDevice(dep.keyring, BOOM).activation(license_key=acme)))
    archived = _drop(dep, "ACME/mixed.zip", make_zip(members))
    single = _drop(dep, "BETA/b1.req", WireDevice(dep.keyring, "HW-B1").activation(
        license_key=beta))
    worker = dep.worker("w1", raise_hardware_id=BOOM)
    _watch(dep)
    _valid_done_at_once(dep, ["b1.req", "!m0.req", "!m1.req", "!m2.req"])
    assert SAME_PASS in worker.log()
    assert _bound(dep, acme) == {"HW-M0", "HW-M1", "HW-M2"} and _bound(dep, beta) == {"HW-B1"}

    _quarantined_after_its_attempts(dep, "!bad.req")
    result = dep.wait_reported(timeout=60)
    assert result.counts == {"done": 3, "quarantined": 1}
    document = json.loads(next(iter(dep.outbox(".report.json").values())))
    rows = {row["member"]: row for row in document["members"]}
    assert list(rows) == [name for name, _ in members]
    assert rows["bad.req"]["status"] == "quarantined" and rows["bad.req"]["reason"] == "poison"
    for name in ("m0.req", "m1.req", "m2.req"):
        assert rows[name]["status"] == "done" and rows[name]["results"]
        assert all((dep.root / "outbox" / key).exists() for key in rows[name]["results"])
    wait_for(lambda: archived.exists() and single.exists(), timeout=30,
             what="the archive and the BETA file in _processed/")
    assert sorted(name.split("/")[0] for name in dep.outbox(".lic")) == ["ACME"] * 3 + ["BETA"]
    assert _bound(dep, acme) == {"HW-M0", "HW-M1", "HW-M2"} and _bound(dep, beta) == {"HW-B1"}
