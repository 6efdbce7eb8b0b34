"""The Celery application for distributed mode: `make_celery(settings)`.

``celery -A workers.celery_app:app worker`` reads the settings once, through the lazy
module attribute `app`; everything else builds its app from the `Settings` it was
given. The broker is Redis or RabbitMQ (`config.broker.BrokerKind`, from the URL's
scheme); what differs between them is in `BROKER_OPTIONS`. Delivery is at-least-once
(late acks, requeue when a worker dies), which the ledger turns into exactly-once
effects; the job rows, not the broker, decide what is still owed (`workers.liveness`).
The engine, keyring and stores are built per worker process after the fork
(`worker_process_init`), or lazily on first use with the solo and threads pools, and
never shared across a fork.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown, worker_shutdown
from kombu import Queue

from config.broker import BrokerKind, broker_kind
from config.settings import Settings, load_settings
from models.types import utcnow
from workers.liveness import Heartbeat, claim, process_name
from workers.runtime import Runtime, build_runtime
from workers.task_names import (  # noqa: F401 - re-exported for the publishers
    BULK,
    FINISH_BATCH,
    INTERACTIVE,
    NOOP,
    PROCESS_CHUNK,
    PROCESS_FILES,
    ROUTES,
)
from workers.tasks import register_tasks

log = logging.getLogger("airlock.celery")


RABBITMQ_CONSUMER_TIMEOUT = 1800  # seconds: RabbitMQ's default consumer_timeout (30 min)
HEARTBEAT = 30  # seconds: AMQP heartbeat, so a vanished host's connection is dropped soon


def visibility_timeout(settings: Settings) -> int:
    """Seconds before Redis hands an unacknowledged message to another worker: twice the
    hard time limit, so a task still running is never started a second time. Recovery
    from a dead worker does not wait for it: the sweep republishes from the job rows."""
    return 2 * settings.task_time_limit


def soft_time_limit(settings: Settings) -> int:
    """The soft limit (a retry, counted as an attempt) comes before the hard kill."""
    limit = settings.task_time_limit
    return max(1, min(limit - 1, int(limit * 0.8)))


def retry_backoff_max(settings: Settings) -> int:
    """The longest wait between retries: a message waiting for its retry is held
    unacknowledged (RabbitMQ's consumer_timeout counts that wait too)."""
    return max(5, min(300, settings.task_time_limit))


def _redis_options(settings: Settings) -> dict[str, Any]:
    vt = visibility_timeout(settings)
    return {"broker_transport_options": {
        "visibility_timeout": vt,
        # Look for abandoned messages often enough to notice them soon after `vt`.
        "unacked_restore_interval": max(1, min(10, vt // 5)),
        "unacked_restore_throttle": 1,
        "socket_connect_timeout": 5,
        "socket_timeout": 30,
        "socket_keepalive": True,
    }}


def _rabbitmq_options(settings: Settings) -> dict[str, Any]:
    # Unacknowledged messages return to the queue as soon as the consumer's connection
    # drops (a killed worker's socket closes at once; a vanished host's after missed
    # heartbeats). Publisher confirms: a publish returns once the broker has the message.
    held = settings.task_time_limit + retry_backoff_max(settings)
    if held >= RABBITMQ_CONSUMER_TIMEOUT:
        log.warning("AIRLOCK_TASK_TIME_LIMIT=%ss: a message may be held %ss unacknowledged, "
                    "over RabbitMQ's default consumer_timeout (%ss); raise consumer_timeout "
                    "in rabbitmq.conf", settings.task_time_limit, held,
                    RABBITMQ_CONSUMER_TIMEOUT)
    return {
        "broker_heartbeat": HEARTBEAT,
        "broker_transport_options": {"confirm_publish": True, "connect_timeout": 5},
    }


BROKER_OPTIONS: dict[BrokerKind, Callable[[Settings], dict[str, Any]]] = {
    BrokerKind.REDIS: _redis_options,
    BrokerKind.RABBITMQ: _rabbitmq_options,
}


class RuntimeHolder:
    """The collaborators of the current process, built on first use and rebuilt after a
    fork (the parent's pooled connections are left alone, never reused); and the
    process's `Heartbeat`, started by its first claim (see `workers.liveness`)."""

    def __init__(self, settings: Settings,
                 factory: Callable[[Settings], Runtime] = build_runtime) -> None:
        self.settings = settings
        self._factory = factory
        self._lock = threading.Lock()
        self._runtime: Runtime | None = None
        self._heartbeat: Heartbeat | None = None
        self._pid: int | None = None
        _HOLDERS.add(self)

    def get(self) -> Runtime:
        with self._lock:
            return self._current()

    def _current(self) -> Runtime:
        if self._runtime is None or self._pid != os.getpid():
            if self._runtime is not None:
                self._runtime.engine.dispose(close=False)  # inherited: drop, not close
            self._heartbeat = None  # the parent's: its thread did not survive the fork
            self._runtime = self._factory(self.settings)
            self._pid = os.getpid()
        return self._runtime

    def claim(self, job_ids: Sequence[int]) -> bool:
        """This process takes `job_ids` (its name on their rows) and counts this attempt
        of each when all are pending and untried (True: see `workers.liveness.claim`);
        it beats from now on."""
        with self._lock:
            runtime = self._current()
            if self._heartbeat is None:
                self._heartbeat = Heartbeat(runtime.engine, process_name())
                self._heartbeat.start()
            name = self._heartbeat.name
        return claim(runtime.engine, name, job_ids, utcnow(), count_attempt=True)

    def after_fork(self) -> None:
        """In a new pool process: forget inherited connections, build fresh ones now."""
        with self._lock:
            if self._runtime is not None and self._pid != os.getpid():
                self._runtime.engine.dispose(close=False)
                self._runtime = None
        self.get()

    def close(self) -> None:
        with self._lock:
            if self._runtime is not None and self._pid == os.getpid():
                if self._heartbeat is not None:
                    self._heartbeat.stop()
                self._runtime.close()
            self._runtime = None
            self._heartbeat = None


_HOLDERS: weakref.WeakSet[RuntimeHolder] = weakref.WeakSet()


@worker_process_init.connect(weak=False)
def _init_pool_process(**_: Any) -> None:
    for holder in list(_HOLDERS):
        holder.after_fork()


@worker_process_shutdown.connect(weak=False)
@worker_shutdown.connect(weak=False)  # the solo and threads pools run tasks in the worker
def _close_pool_process(**_: Any) -> None:
    for holder in list(_HOLDERS):
        holder.close()


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings derived from Airlock's `Settings`; what depends on the broker
    comes from `BROKER_OPTIONS`, keyed by the URL's `BrokerKind`."""
    if settings.broker_url is None:
        raise ValueError("no broker configured (AIRLOCK_BROKER_URL): embedded mode runs "
                         "without Celery")
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # keep trying while the broker is away
        **BROKER_OPTIONS[broker_kind(settings.broker_url)](settings),
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure": True,  # a failure is final; the job row keeps the state
        "task_acks_on_timeout": False,  # a hard kill at the time limit requeues
        "task_time_limit": settings.task_time_limit,
        "task_soft_time_limit": soft_time_limit(settings),
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_hijack_root_logger": True,
        # Durable queues, persistent messages (Celery's default delivery mode): a
        # RabbitMQ restart keeps what was queued.
        "task_queues": (Queue(INTERACTIVE, routing_key=INTERACTIVE, durable=True),
                        Queue(BULK, routing_key=BULK, durable=True)),
        "task_default_queue": INTERACTIVE,
        "task_routes": ROUTES,
        "task_create_missing_queues": False,
        "worker_send_task_events": False,
    }


def make_celery(settings: Settings) -> Celery:
    """A Celery app for `settings` with Airlock's tasks registered on it."""
    config = celery_config(settings)
    app = Celery("airlock", set_as_current=False)
    app.conf.update(config)
    holder = RuntimeHolder(settings)
    app.airlock_runtime = holder  # type: ignore[attr-defined]
    register_tasks(app, holder, retry_backoff_max=retry_backoff_max(settings))
    return app


_lazy_app: Celery | None = None
_lazy_lock = threading.Lock()


def default_app() -> Celery:
    """The app of this process, from `load_settings()`, built on first use."""
    global _lazy_app
    with _lazy_lock:
        if _lazy_app is None:
            _lazy_app = make_celery(load_settings())
            _lazy_app.set_current()
        return _lazy_app


def __getattr__(name: str) -> Any:
    if name == "app":  # `celery -A workers.celery_app:app`: settings read only then
        return default_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
