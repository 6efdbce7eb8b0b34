"""docker-compose.yml stays a valid, complete description of distributed mode."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_compose_file_describes_every_service() -> None:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"redis", "postgres", "s3", "migrate", "worker", "watcher", "flower"} <= set(services)
    for name in ("redis", "postgres", "s3"):
        assert "healthcheck" in services[name], name
    assert "noeviction" in services["redis"]["command"]
    for name in ("worker", "watcher"):
        conditions = {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}
        assert conditions["migrate"] == "service_completed_successfully"
        assert conditions["redis"] == "service_healthy"
    assert services["worker"]["command"][0] == "worker"
    assert services["watcher"]["command"] == ["watch"]
    env = services["worker"]["environment"]
    assert env["AIRLOCK_BROKER_URL"].startswith("redis://")
    assert env["AIRLOCK_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert (ROOT / "Dockerfile").exists()


def test_the_rabbitmq_override_moves_every_airlock_service_to_rabbitmq() -> None:
    from config.broker import BrokerKind, broker_kind

    base = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    override = yaml.safe_load((ROOT / "docker-compose.rabbitmq.yml").read_text())["services"]
    assert "healthcheck" in override["rabbitmq"]
    for name in ("migrate", "worker", "watcher", "flower"):
        assert name in base
        url = override[name]["environment"]["AIRLOCK_BROKER_URL"]
        assert broker_kind(url) is BrokerKind.RABBITMQ
        assert override[name]["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
