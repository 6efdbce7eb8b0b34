"""Looking into Airlock's queues through kombu, the same way on Redis and RabbitMQ.

`queue_depths` counts the messages waiting in each queue (ready, not yet delivered to
a worker): the sweep republishes an unclaimed job only when its queue is empty, so a
long backlog that is legitimately queued is never published twice. Messages a worker
already holds are not counted (RabbitMQ does not report them over AMQP); they are
claimed on the job rows instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from kombu import Connection

from config.broker import BrokerKind, broker_kind
from workers.task_names import BULK, INTERACTIVE

QUEUES = (INTERACTIVE, BULK)


@contextmanager
def broker_channel(app: Celery) -> Iterator[Any]:
    """A channel on a connection of its own, closed afterwards; a broker that cannot be
    reached raises at once (one connection attempt, not the worker's endless retries)."""
    conn: Connection = app.connection_for_read()
    try:
        conn.ensure_connection(max_retries=1)
        yield conn.channel()
    finally:
        conn.close()


def queue_depths(app: Celery) -> dict[str, int]:
    """Messages waiting in each queue. Declaring is idempotent (the queues' own
    arguments), and creates a queue no worker has declared yet, empty."""
    queues = {queue.name: queue for queue in app.conf.task_queues}
    with broker_channel(app) as channel:
        return {name: int(queues[name].bind(channel).queue_declare().message_count)
                for name in QUEUES}


def purge(app: Celery) -> int:
    """Drop every waiting message (the benchmark's own broker only); how many went."""
    with broker_channel(app) as channel:
        return sum(int(channel.queue_purge(name) or 0) for name in queue_depths(app))


def unacknowledged(app: Celery) -> int | None:
    """Messages delivered to workers and not yet acknowledged, where the broker tells:
    kombu's Redis transport keeps them in a hash; RabbitMQ reports them only through
    its management API (None)."""
    if broker_kind(str(app.conf.broker_url)) is not BrokerKind.REDIS:
        return None
    with broker_channel(app) as channel:
        return int(channel.client.hlen(channel.unacked_key))
