"""`airlock status` in distributed mode, on each broker: queue depths and the workers
that answer a ping; a health check that fails while no worker answers."""

from __future__ import annotations

import json
import subprocess

from tests.distributed.cluster import cli_command
from tests.distributed.conftest import Deployment


def _status(dep: Deployment) -> tuple[int, dict]:  # type: ignore[type-arg]
    done = subprocess.run(cli_command("status", "--json"), env=dep.env(), capture_output=True,
                          text=True, timeout=120)
    return done.returncode, json.loads(done.stdout)


def test_status_reports_the_broker_queues_and_workers(deployment: Deployment) -> None:
    dep = deployment
    _ = dep.engine  # schema and customers
    (dep.root / "inbox").mkdir(exist_ok=True)
    code, report = _status(dep)
    assert code == 1 and report["mode"] == "distributed"  # no worker yet: unhealthy
    deps = report["dependencies"]
    assert deps["broker"]["ok"] and set(deps["broker"]["queues"]) == {"interactive", "bulk"}
    assert deps["workers"]["ok"] is False and deps["workers"]["answered"] == []
    assert "guest:guest" not in json.dumps(report)
    dep.worker("w1")
    code, report = _status(dep)
    assert code == 0, report
    assert [name.split("@")[0] for name in report["dependencies"]["workers"]["answered"]] == [
        "w1"]
