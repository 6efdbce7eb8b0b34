"""Embedded mode: watch the inbox and process each file in this process."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from typing import Any

from config.logging import setup_logging
from config.process import settle_heap
from config.settings import Settings
from pipelines import metrics
from pipelines.bulk import handle_archive, is_bulk
from pipelines.layout import Arrival
from pipelines.sources import Source, make_source
from workers.runtime import Runtime, build_runtime, serve_metrics

log = logging.getLogger("airlock.run")

DRAIN_TIMEOUT = 3600.0  # `airlock run --drain` without --timeout


class EmbeddedRunner:
    """Feeds the configured inbox's source (folder or s3://) to the intake."""

    def __init__(self, runtime: Runtime, slot: tuple[int, int] = (0, 1)) -> None:
        self.runtime = runtime
        self.intake = runtime.intake()
        self.source: Source = make_source(runtime.settings, runtime.inbox, self.on_batch,
                                          slot=slot)

    def on_batch(self, arrivals: list[Arrival]) -> list[Arrival]:
        """Handle a batch; the arrivals not finished (still in the inbox) come back."""
        # A whole pass's ready files in two transactions and one outbox sync: per-file
        # commits and fsyncs, not the work itself, were what bounded throughput.
        singles = [a for a in arrivals if not is_bulk(a)]
        archives = [a for a in arrivals if is_bulk(a)]
        applied = self.intake.handle_many(singles)
        for arrival in archives:  # archives expand into their own batch of jobs
            handle_archive(self.runtime, arrival)
        # Only a failed file or an archive can still be in the inbox: ask the store
        # about those alone (a pass of finished files costs no look-up).
        maybe_left = (singles if applied.failed else []) + archives
        left = self.runtime.inbox.which_exist([a.key for a in maybe_left]) if maybe_left else set()
        return [a for a in maybe_left if a.key in left]

    def run(self, stop: threading.Event) -> None:
        log.info("watching %s (embedded mode)", self.runtime.settings.resolved_inbox)
        self.source.run(stop)

    def drain(self, stop: threading.Event, timeout: float | None = None) -> bool:
        """Process until the inbox has nothing left (True), or stop, timeout, or only
        files whose hand-over failed are left (False)."""
        return self.source.drain(timeout if timeout else DRAIN_TIMEOUT, stop)


def run_embedded(settings: Settings, stop: threading.Event, *, processes: int = 1,
                 drain: bool = False, timeout: float | None = None,
                 log_level: str = "INFO") -> list[bool]:
    """`airlock run`: this process and `processes - 1` children (started fresh, so no
    connection or thread is shared) each run an `EmbeddedRunner` on the same inbox.
    Returns, per process, whether it drained (with `drain`) or stopped cleanly."""
    if settings.metrics_port is not None and processes > 1:
        # the children count into files this process adds up when it serves /metrics
        metrics.use_directory(settings.home / "metrics")
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_child, name=f"airlock-run-{n}",
                                args=(settings, drain, timeout, log_level, (n, processes)))
                for n in range(1, processes)]
    for child in children:
        child.start()
    try:
        mine = _run_one(settings, stop, drain=drain, timeout=timeout, log_level=log_level,
                        slot=(0, processes), serve=True)
    finally:
        if not drain or stop.is_set():
            for child in children:
                if child.pid is not None and child.exitcode is None:
                    os.kill(child.pid, signal.SIGTERM)  # each finishes its files in hand
        for child in children:
            child.join()
            if child.pid is not None:
                metrics.process_exited(child.pid)
    return [mine, *(child.exitcode == 0 for child in children)]


def _run_one(settings: Settings, stop: threading.Event, *, drain: bool,
             timeout: float | None, log_level: str, slot: tuple[int, int],
             serve: bool = False) -> bool:
    setup_logging(log_level, settings.log_format)
    runtime = build_runtime(settings)
    server = serve_metrics(runtime) if serve else None
    try:
        runtime.remove_stale_temp()
        runner = EmbeddedRunner(runtime, slot)
        if drain:
            return runner.drain(stop, timeout=timeout)
        runner.run(stop)
        return True
    finally:
        if server is not None:
            server.shutdown()
        runtime.close()


def _child(settings: Settings, drain: bool, timeout: float | None, log_level: str,
           slot: tuple[int, int]) -> None:
    settle_heap()  # a process of its own: the modules it runs on are imported by now
    stop = threading.Event()

    def _stop(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; Ctrl-C reaches all
    if not _run_one(settings, stop, drain=drain, timeout=timeout, log_level=log_level,
                    slot=slot):
        raise SystemExit(1)
