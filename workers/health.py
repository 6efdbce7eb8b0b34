"""Distributed mode as `airlock status` sees it: the broker, its queues, the workers."""

from __future__ import annotations

from dataclasses import dataclass, field

from celery import Celery

from config.logging import redact
from workers.broker import queue_depths


@dataclass
class BrokerStatus:
    url: str  # without its password
    reachable: bool
    error: str | None = None
    queues: dict[str, int] = field(default_factory=dict)  # messages waiting per queue
    workers: list[str] = field(default_factory=list)  # those that answered a ping


def broker_status(app: Celery, *, timeout: float = 2.0) -> BrokerStatus:
    """Each queue's depth and the workers that answer a ping within `timeout`."""
    status = BrokerStatus(url=redact(str(app.conf.broker_url)), reachable=False)
    try:
        status.queues = queue_depths(app)
        status.reachable = True
        status.workers = sorted(app.control.inspect(timeout=timeout).ping() or {})
    except Exception as exc:  # noqa: BLE001 - reported as the broker being down
        status.error = redact(f"{type(exc).__name__}: {exc}".splitlines()[0])
    return status
