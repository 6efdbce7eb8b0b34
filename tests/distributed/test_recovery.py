"""Recovery within a minute, on each broker, with the default settings: a real
``airlock watch`` (its sweep every 10 s), real workers, ``AIRLOCK_TASK_TIME_LIMIT`` at
its default of 300 s (so Redis hands a dead worker's message to another only after
its 600 s visibility timeout: recovery must not wait for it).

Each test asserts on the outcome once the bound has passed, not on speed: every file
done, exactly once, within `WITHIN` seconds of a worker being available again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.migrate import upgrade
from tests.distributed.cluster import (
    Worker,
    cli_command,
    take_messages,
    wait_for,
    write_like_an_upload,
)
from tests.distributed.conftest import Deployment
from tests.factories import WireDevice, add_license, license_info
from tests.test_archives import make_zip
from workers.broker import queue_depths

WITHIN = 60.0  # seconds after a worker is available again: the acceptance bound
DEFAULTS: dict[str, Any] = {"task_time_limit": None, "max_attempts": None}  # None: default


def _deploy(dep: Deployment, members: int) -> tuple[str, str, list[WireDevice]]:
    """Default recovery settings, a migrated database, a seat license, and a usage
    license with `members` devices active on it (their activations are job rows too)."""
    dep.overrides.update(DEFAULTS)
    assert dep.settings.task_time_limit == 300
    upgrade(dep.database_url)
    usage = add_license(dep.engine, license_type="consumption", max_consumptions=10_000,
                        max_activations=members)
    return add_license(dep.engine, max_activations=50), usage, dep.activated(usage, members)


def _watch(dep: Deployment) -> Worker:
    """``airlock watch`` with no options: the default sweep."""
    watcher = Worker(env=dep.env(), log_path=dep.root / "watch.log", name="watch",
                     command=cli_command("watch"))
    dep.workers.append(watcher)
    return watcher.start(wait_ready=False)


def _drop_files(dep: Deployment, seats: str, usage: str, devices: list[WireDevice],
                singles: int) -> tuple[list[Path], int]:
    """Activation requests and a zip of deactivations (with usage) written into the
    inbox as uploads; the singles' archive paths and the usage the members add up to."""
    inbox = dep.root / "inbox"
    for i in range(singles):
        write_like_an_upload(inbox / "ACME" / f"a{i}.req", WireDevice(
            dep.keyring, f"HW-{i}").activation(license_key=seats))
    write_like_an_upload(inbox / "ACME" / "usage.zip", make_zip([
        (f"u{i:02d}.deact", d.deactivation(license_key=usage, consumptions=i + 1))
        for i, d in enumerate(devices)]))
    return ([inbox / "_processed" / "ACME" / f"a{i}.req" for i in range(singles)],
            sum(range(1, len(devices) + 1)))


def _all_done(dep: Deployment, jobs: int) -> bool:
    rows = dep.jobs()
    return len(rows) == jobs and all(job.status == "done" for job in rows)


def _check_exactly_once(dep: Deployment, seats: str, usage: str, archived: list[Path],
                        total: int, members: int) -> None:
    assert license_info(dep.engine, seats)["active_devices"] == len(archived)
    assert license_info(dep.engine, usage)["consumptions"]["total"] == total
    wait_for(lambda: all(p.exists() for p in archived), timeout=30,
             what="the single files archived")
    report = dep.wait_reported(timeout=WITHIN)
    assert report.status == "reported" and report.counts == {"done": members}
    assert len(dep.outbox(".receipt")) == members


def test_a_killed_workers_files_are_done_within_a_minute(deployment: Deployment) -> None:
    """SIGKILL mid-chunk (its jobs claimed, inside their transaction): RabbitMQ requeues
    its message when the connection drops; on Redis the message waits in the unacked
    hash for 600 s, and the sweep publishes the jobs again once the dead worker's
    heartbeat is 20 s old."""
    dep = deployment
    members = 12  # 3 chunks of 4, each job 1 s inside its transaction
    seats, usage, devices = _deploy(dep, members)
    jobs = len(dep.jobs()) + 2 + members
    first = dep.worker("w1", apply_delay=1)
    _watch(dep)
    archived, total = _drop_files(dep, seats, usage, devices, singles=2)

    def in_flight() -> bool:
        return any(job.status == "pending" and job.attempts >= 1 and job.batch_id
                   for job in dep.jobs())

    wait_for(in_flight, timeout=90, what="a chunk in progress")
    first.kill()  # SIGKILL to the worker and its pool process, mid-chunk
    assert not _all_done(dep, jobs)
    dep.worker("w2")  # returns once the worker is ready
    wait_for(lambda: _all_done(dep, jobs), timeout=WITHIN,
             what="every file done after the new worker was up")
    _check_exactly_once(dep, seats, usage, archived, total, members)


def test_a_lost_message_is_published_again_within_a_minute(deployment: Deployment) -> None:
    """Every message taken off the queues before a worker saw it (what kombu's Redis
    transport loses when a worker dies between popping a message and recording it; what
    a broker that lost its data no longer has): the job rows still say the work is
    owed, and the sweep publishes it again once the queues are empty."""
    dep = deployment
    members = 8  # 2 chunks of 4
    seats, usage, devices = _deploy(dep, members)
    jobs = len(dep.jobs()) + 2 + members
    _watch(dep)
    archived, total = _drop_files(dep, seats, usage, devices, singles=2)

    def queued() -> bool:
        if len(dep.jobs()) < jobs or dep.batch().status != "open":
            return False
        depths = queue_depths(dep.app)
        return depths["interactive"] >= 1 and depths["bulk"] == 2

    wait_for(queued, timeout=60, what="the files queued (their messages and 2 chunks)")
    assert take_messages(dep.app) >= 3
    assert queue_depths(dep.app) == {"interactive": 0, "bulk": 0}
    dep.worker("w1")
    wait_for(lambda: _all_done(dep, jobs), timeout=WITHIN,
             what="every file done after the worker was up")
    _check_exactly_once(dep, seats, usage, archived, total, members)
