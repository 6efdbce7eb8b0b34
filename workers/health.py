"""Distributed mode as `airlock status` sees it: the broker, its queues, the workers."""

from __future__ import annotations

from dataclasses import dataclass, field

from celery import Celery

from config.logging import redact
from workers.task_names import BULK, INTERACTIVE


@dataclass
class BrokerStatus:
    url: str  # without its password
    reachable: bool
    error: str | None = None
    queues: dict[str, int] = field(default_factory=dict)  # messages waiting per queue
    workers: list[str] = field(default_factory=list)  # those that answered a ping


def broker_status(app: Celery, *, timeout: float = 2.0) -> BrokerStatus:
    """Queue depths (a passive declare, which Redis and RabbitMQ both answer with the
    message count) and the workers that answer a ping within `timeout`."""
    status = BrokerStatus(url=redact(str(app.conf.broker_url)), reachable=False)
    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
            channel = conn.default_channel
            for queue in (INTERACTIVE, BULK):
                try:
                    status.queues[queue] = int(channel.queue_declare(
                        queue=queue, passive=True).message_count)
                except Exception:  # noqa: BLE001 - a queue nobody declared yet: none waiting
                    status.queues[queue] = 0
                    channel = conn.channel()  # a failed passive declare closes the channel
        status.reachable = True
        replies = app.control.inspect(timeout=timeout).ping() or {}
        status.workers = sorted(replies)
    except Exception as exc:  # noqa: BLE001 - reported as the broker being down
        status.error = redact(f"{type(exc).__name__}: {exc}".splitlines()[0])
    return status
