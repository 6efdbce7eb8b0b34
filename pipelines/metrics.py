"""Prometheus metrics: what the pipeline did, counted where it happens, served on request.

Every finished file is counted once, where its one log line is written
(`intake.log_outcome`): by customer, kind, outcome and public reason, with the time
from its registration to its result. Hand-over retries, dependency outages and
quarantines are counted where they happen; the backlog gauges are computed from
`pipelines.status` when Prometheus scrapes.

`prometheus_client` is imported only when a metric is first used: a process with
several children (`airlock worker`'s prefork pool, `airlock run --processes`) must set
``PROMETHEUS_MULTIPROC_DIR`` (`use_directory`) before that, so that the children's
counts land in files the serving process adds up.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.process import Outcome
    from pipelines.status import CustomerStatus

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Seconds from registration to result: a single file takes milliseconds, a backlog or
# a bulk member minutes.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
_STATUS_CACHE_SECONDS = 10.0


@dataclass(frozen=True)
class _Metrics:
    files: Any
    processing: Any
    retries: Any
    outages: Any
    mail: Any


@cache
def _metrics() -> _Metrics:
    from prometheus_client import Counter, Histogram

    return _Metrics(
        files=Counter("airlock_files", "Files finished, by customer, kind, outcome and "
                      "public reason", ["customer", "kind", "outcome", "reason"]),
        processing=Histogram("airlock_processing_seconds", "From a file's registration "
                             "to its result", buckets=_BUCKETS),
        retries=Counter("airlock_retries", "Hand-overs tried again after a failure",
                        ["what"]),
        outages=Counter("airlock_dependency_outages", "Times a dependency was found "
                        "unreachable", ["dependency"]),
        mail=Counter("airlock_mail_messages", "Mail messages handled, by outcome (taken, "
                     "rejected with the reason)", ["outcome", "reason"]),
    )


def record_outcome(outcome: Outcome) -> None:
    """Count one finished file (a redelivery of a finished one is not counted again)."""
    if outcome.duplicate:
        return
    metrics = _metrics()
    metrics.files.labels(customer=outcome.tenant, kind=outcome.kind or "unknown",
                         outcome=outcome.status,
                         reason=outcome.public_reason or "").inc()
    if outcome.registered_at is not None and outcome.finished_at is not None:
        metrics.processing.observe(
            max(0.0, (outcome.finished_at - outcome.registered_at).total_seconds()))


def record_retry(what: str) -> None:
    _metrics().retries.labels(what=what).inc()


def record_mail(outcome: str, reason: str = "") -> None:
    _metrics().mail.labels(outcome=outcome, reason=reason).inc()


def record_outage(dependency: str) -> None:
    _metrics().outages.labels(dependency=dependency).inc()


def use_directory(parent: Path) -> Path:
    """Multiprocess mode from here on, for this process and the children it starts, in
    a directory of its own under `parent` (``pid-<pid>``); those of processes that are
    gone are removed (the counts of an earlier run must not add up again)."""
    parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    for old in parent.glob("pid-*"):
        pid = old.name.removeprefix("pid-")
        if not pid.isdigit() or not Path(f"/proc/{pid}").exists() or int(pid) == os.getpid():
            shutil.rmtree(old, ignore_errors=True)
    directory = parent / f"pid-{os.getpid()}"
    directory.mkdir(mode=0o700)
    os.environ[MULTIPROC_ENV] = str(directory)
    return directory


def process_exited(pid: int) -> None:
    """A child of a multiprocess set-up is gone (its live gauges go with it)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


class _StatusCollector:
    """``airlock_backlog_files`` and ``airlock_oldest_waiting_seconds`` per customer,
    from `pipelines.status` at scrape time (cached a few seconds: a scrape lists the
    inbox)."""

    def __init__(self, statuses: Callable[[], list[CustomerStatus]], cache_seconds: float
                 ) -> None:
        self._statuses = statuses
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._cached: tuple[float, list[CustomerStatus]] | None = None

    def _current(self) -> list[CustomerStatus]:
        with self._lock:
            if (self._cached is None
                    or time.monotonic() - self._cached[0] >= self._cache_seconds):
                self._cached = (time.monotonic(), self._statuses())
            return self._cached[1]

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        backlog = GaugeMetricFamily("airlock_backlog_files", "Files waiting in the inbox "
                                    "or in hand, per customer", labels=["customer", "where"])
        oldest = GaugeMetricFamily("airlock_oldest_waiting_seconds", "Age of the oldest "
                                   "file waiting in the inbox", labels=["customer"])
        up = GaugeMetricFamily("airlock_status_up", "1 if the status could be read")
        try:
            statuses = self._current()
        except Exception:  # noqa: BLE001 - a scrape must answer; the failure is the metric
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        for status in statuses:
            backlog.add_metric([status.code, "inbox"], status.waiting)
            backlog.add_metric([status.code, "in_hand"], status.in_hand)
            oldest.add_metric([status.code], status.oldest_waiting_seconds or 0.0)
        yield from (backlog, oldest, up)


class _Forward:
    """This process's default registry, inside the registry one server serves."""

    def __init__(self, registry: Any) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Any]:
        yield from self._registry.collect()


def serve(port: int, *, address: str = "127.0.0.1",
          statuses: Callable[[], list[CustomerStatus]] | None = None,
          status_cache_seconds: float = _STATUS_CACHE_SECONDS) -> Any:
    """Serve ``/metrics`` on `address`:`port` from a background thread: this process's
    metrics, or every process's in multiprocess mode, plus the backlog gauges when
    `statuses` is given. Returns the HTTP server (``shutdown()`` stops it)."""
    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

    _metrics()  # the metrics exist (at zero) from the first scrape
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Forward(REGISTRY))  # type: ignore[arg-type]
    if statuses is not None:
        registry.register(_StatusCollector(statuses, status_cache_seconds))  # type: ignore[arg-type]
    server, _thread = start_http_server(port, addr=address, registry=registry)
    return server
