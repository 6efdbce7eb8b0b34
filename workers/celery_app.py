"""The Celery application for distributed mode: `make_celery(settings)`.

``celery -A workers.celery_app:app worker`` reads the settings once, through the lazy
module attribute `app`; everything else builds its app from the `Settings` it was
given. Delivery is at-least-once (late acks, requeue when a worker dies), which the
ledger turns into exactly-once effects. The engine, keyring and stores are built per
worker process after the fork (`worker_process_init`), or lazily on first use with the
solo and threads pools, and never shared across a fork.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown
from kombu import Queue

from config.settings import Settings, load_settings
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


def visibility_timeout(settings: Settings) -> int:
    """Seconds before Redis hands an unacknowledged message to another worker: twice the
    hard time limit, so a task still running is never started a second time."""
    return 2 * settings.task_time_limit


def soft_time_limit(settings: Settings) -> int:
    """The soft limit (a retry, counted as an attempt) comes before the hard kill."""
    limit = settings.task_time_limit
    return max(1, min(limit - 1, int(limit * 0.8)))


class RuntimeHolder:
    """The collaborators of the current process, built on first use and rebuilt after a
    fork (the parent's pooled connections are left alone, never reused)."""

    def __init__(self, settings: Settings,
                 factory: Callable[[Settings], Runtime] = build_runtime) -> None:
        self.settings = settings
        self._factory = factory
        self._lock = threading.Lock()
        self._runtime: Runtime | None = None
        self._pid: int | None = None
        _HOLDERS.add(self)

    def get(self) -> Runtime:
        with self._lock:
            if self._runtime is None or self._pid != os.getpid():
                if self._runtime is not None:
                    self._runtime.engine.dispose(close=False)  # inherited: drop, not close
                self._runtime = self._factory(self.settings)
                self._pid = os.getpid()
            return self._runtime

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
                self._runtime.close()
            self._runtime = None


_HOLDERS: weakref.WeakSet[RuntimeHolder] = weakref.WeakSet()


@worker_process_init.connect(weak=False)
def _init_pool_process(**_: Any) -> None:
    for holder in list(_HOLDERS):
        holder.after_fork()


@worker_process_shutdown.connect(weak=False)
def _close_pool_process(**_: Any) -> None:
    for holder in list(_HOLDERS):
        holder.close()


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings derived from Airlock's `Settings`."""
    vt = visibility_timeout(settings)
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # keep trying while the broker is away
        "broker_transport_options": {
            "visibility_timeout": vt,
            # Look for abandoned messages often enough to notice them soon after `vt`.
            "unacked_restore_interval": max(1, min(10, vt // 5)),
            "unacked_restore_throttle": 1,
            "socket_connect_timeout": 5,
            "socket_timeout": 30,
            "socket_keepalive": True,
        },
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
        "task_queues": (Queue(INTERACTIVE, routing_key=INTERACTIVE),
                        Queue(BULK, routing_key=BULK)),
        "task_default_queue": INTERACTIVE,
        "task_routes": ROUTES,
        "task_create_missing_queues": False,
        "worker_send_task_events": False,
    }


def make_celery(settings: Settings) -> Celery:
    """A Celery app for `settings` with Airlock's tasks registered on it."""
    if settings.broker_url is None:
        raise ValueError("no broker configured (AIRLOCK_BROKER_URL): embedded mode runs "
                         "without Celery")
    app = Celery("airlock", set_as_current=False)
    app.conf.update(celery_config(settings))
    holder = RuntimeHolder(settings)
    app.airlock_runtime = holder  # type: ignore[attr-defined]
    register_tasks(app, holder)
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
