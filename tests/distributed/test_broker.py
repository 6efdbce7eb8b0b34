"""Through a real Redis broker and real worker processes: the normal flow, duplicates and
a poison file."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from models.ledger import FINAL_STATUSES
from tests.distributed.cluster import Worker, cli_command, wait_for, write_like_an_upload
from tests.distributed.conftest import Deployment
from tests.factories import WireDevice, add_license, license_info
from tests.test_archives import make_tar, make_zip
from workers.dispatch import enqueue_chunk, enqueue_files


def test_files_flow_through_the_broker_end_to_end(deployment: Deployment) -> None:
    """``airlock watch`` and ``airlock worker`` as separate processes, files dropped in
    the inbox folder, results in the outbox; then ``airlock import`` with a broker."""
    dep = deployment
    key = add_license(dep.engine, max_activations=50)
    # What 'airlock init' makes: watch and worker refuse to start without them.
    _ = dep.keyring
    (dep.root / "inbox").mkdir()
    env = dep.env()
    worker = Worker(env=env, log_path=dep.root / "cli-worker.log", name="cliw",
                    command=cli_command("worker", "--concurrency", "1",
                                        "--hostname", "cliw@%h"))
    watcher = Worker(env=env, log_path=dep.root / "watch.log", name="watch",
                     command=cli_command("watch", "--sweep-every", "1"))
    dep.workers += [worker, watcher]
    worker.start()
    watcher.start(wait_ready=False)

    inbox = dep.root / "inbox"
    for i in range(3):
        write_like_an_upload(inbox / "ACME" / f"dev-{i}.req",
                              WireDevice(dep.keyring, f"HW-{i}").activation(license_key=key))
    write_like_an_upload(inbox / "ACME" / "junk.req", b"not an airlock file")
    members = [(f"bulk/{i}.req", WireDevice(dep.keyring, f"HW-B{i}").activation(
        license_key=key)) for i in range(5)]
    write_like_an_upload(inbox / "ACME" / "bulk.zip", make_zip(members))

    expected = [inbox / "_processed/ACME" / f"dev-{i}.req" for i in range(3)]
    expected += [inbox / "_processed/ACME/bulk.zip", inbox / "_rejected/ACME/junk.req"]
    wait_for(lambda: all(p.exists() for p in expected), timeout=90,
             what="every dropped file to be processed and archived")
    licences = dep.outbox(".lic")
    assert len(licences) == 8 and len(dep.outbox(".rejection")) == 1
    reports = dep.outbox(".report.json")
    assert len(reports) == 1
    document = json.loads(next(iter(reports.values())))
    assert [row["member"] for row in document["members"]] == [n for n, _ in members]
    assert document["summary"] == {"done": 5}
    assert license_info(dep.engine, key)["active_devices"] == 8
    assert not list((inbox / "_processing").rglob("*.req"))

    archive = dep.root / "upload.tgz"
    archive.write_bytes(make_tar([(f"up/{i}.req", WireDevice(dep.keyring, f"HW-U{i}")
                                   .activation(license_key=key)) for i in range(3)], gz=True))
    done = subprocess.run(cli_command("import", str(archive), "--customer", "ACME", "--json",
                                      "--timeout", "120"),
                          env=env, capture_output=True, timeout=180, cwd=dep.root)
    assert done.returncode == 0, done.stderr.decode()
    summary = json.loads(done.stdout)
    assert summary["status"] == "reported" and summary["counts"] == {"done": 3}
    assert (dep.root / "outbox" / summary["report"][0]).exists()
    assert license_info(dep.engine, key)["active_devices"] == 11


@pytest.mark.parametrize("pool", ["solo", "threads"])
def test_solo_and_threads_pools(deployment: Deployment, pool: str) -> None:
    dep = deployment
    key = add_license(dep.engine, max_activations=10)
    dep.worker(pool=pool, concurrency=2)
    for i in range(3):
        dep.drop(f"ACME/{i}.req", WireDevice(dep.keyring, f"HW-{i}").activation(
            license_key=key))
    dep.drop("ACME/few.zip", make_zip([(f"{i}.req", WireDevice(dep.keyring, f"HW-Z{i}")
                                        .activation(license_key=key)) for i in range(5)]))
    assert dep.wait_reported(timeout=60).counts == {"done": 5}
    wait_for(lambda: len(dep.outbox(".lic")) == 8, timeout=60, what="every licence file")
    assert license_info(dep.engine, key)["active_devices"] == 8


def test_a_task_delivered_twice_is_a_no_op(deployment: Deployment) -> None:
    """A second copy while the first still runs, and a third after it finished: the
    effects apply once and the outbox file is rewritten with the same bytes."""
    dep = deployment
    key = add_license(dep.engine, license_type="consumption", max_consumptions=1000,
                      max_activations=10)
    [device] = dep.activated(key, 1)
    worker = dep.worker(concurrency=2, slow_source="slow-usage", slow_seconds=2)
    dep.drop("ACME/slow-usage.deact", device.deactivation(license_key=key, consumptions=5))
    [job] = [j for j in dep.jobs() if j.source == "ACME/slow-usage.deact"]
    enqueue_files(dep.app, [(job.id, "ACME/slow-usage.deact")])  # redelivered while running

    def log_count(what: str) -> int:
        return len(re.findall(rf"job {job.id} done \({what}\)", worker.log()))

    wait_for(lambda: log_count("applied") == 1 and log_count("duplicate") == 1, timeout=60,
             what="both copies of the task to run")
    [(name, first)] = dep.outbox(".receipt").items()
    enqueue_files(dep.app, [(job.id, None)])  # and once more, long after
    wait_for(lambda: log_count("duplicate") == 2, timeout=60, what="the third copy")
    assert dep.outbox(".receipt") == {name: first}
    assert license_info(dep.engine, key)["consumptions"]["total"] == 5
    [again] = [j for j in dep.jobs() if j.id == job.id]
    # Each copy that started counts an attempt (two may count before either locks the
    # row); the one delivered after the job finished counts nothing.
    assert again.status == "done" and again.attempts in (1, 2)
    assert (dep.root / "inbox/_processed/ACME/slow-usage.deact").exists()


def test_a_chunk_delivered_again_changes_nothing(deployment: Deployment) -> None:
    dep = deployment
    key = add_license(dep.engine, license_type="consumption", max_consumptions=1000,
                      max_activations=10)
    devices = dep.activated(key, 6)
    worker = dep.worker()
    dep.drop("ACME/usage.zip", make_zip([(f"{i}.deact", d.deactivation(
        license_key=key, consumptions=2)) for i, d in enumerate(devices)]))
    result = dep.wait_reported(timeout=60)
    outbox = dep.outbox()
    ids = [job.id for job in dep.jobs() if job.batch_id == result.batch_id]
    enqueue_chunk(dep.app, ids[:4], result.batch_id)
    enqueue_chunk(dep.app, ids, None)
    wait_for(lambda: worker.log().count("duplicate") >= 2, timeout=60,
             what="the redelivered chunks")
    assert dep.outbox() == outbox
    assert license_info(dep.engine, key)["consumptions"]["total"] == 12
    state = dep.batch(result.batch_id)
    assert (state.status, state.total, state.finished) == ("reported", 6, 6)


def test_a_poison_file_is_quarantined_while_the_rest_flows(deployment: Deployment) -> None:
    """A file that kills its worker process every time: alone, and inside an archive."""
    dep = deployment
    dep.overrides["max_attempts"] = 2
    key = add_license(dep.engine, max_activations=50)
    marker = "POISON-7f3a"
    worker = dep.worker(crash_marker=marker)
    dep.drop("ACME/poison.req", f"-----BEGIN AIRLOCK {marker}-----\n".encode())
    for i in range(3):
        dep.drop(f"ACME/good-{i}.req", WireDevice(dep.keyring, f"HW-{i}").activation(
            license_key=key))
    members = [(f"m{i}.req", WireDevice(dep.keyring, f"HW-M{i}").activation(license_key=key))
               for i in range(5)]
    members.insert(2, ("bad.req", f"{marker} inside an archive".encode()))
    dep.drop("ACME/mixed.zip", make_zip(members))

    wait_for(lambda: all(j.status in FINAL_STATUSES for j in dep.jobs()), timeout=150,
             what="every job to finish")
    result = dep.wait_reported(timeout=60)
    jobs = {job.source: job for job in dep.jobs()}
    for poisoned in ("ACME/poison.req", "ACME/mixed.zip!bad.req"):
        assert jobs[poisoned].status == "quarantined" and jobs[poisoned].reason == "poison"
        assert jobs[poisoned].attempts == 3  # max_attempts crashes, then quarantined
    assert [j.status for s, j in jobs.items() if "poison" not in s and "bad" not in s] \
        == ["done"] * 8
    assert license_info(dep.engine, key)["active_devices"] == 8
    assert result.counts == {"done": 5, "quarantined": 1}
    inbox = dep.root / "inbox"
    # The source is archived after its job commits: wait for the move, not just the row.
    wait_for(lambda: (inbox / "_quarantine/ACME/poison.req").exists(), timeout=30,
             what="the poison file to be quarantined")
    error = json.loads((inbox / "_quarantine/ACME/poison.req.error.json").read_text())
    assert error["reason"] == "poison"
    document = json.loads(next(iter(dep.outbox(".report.json").values())))
    rows = {row["member"]: row for row in document["members"]}
    assert rows["bad.req"]["status"] == "quarantined" and rows["bad.req"]["reason"] == "poison"
    assert worker.log().count("WorkerLostError") >= 4
