"""Embedded mode's hand-over in a process of its own, for `airlock serve` and `airlock mail`.

`airlock serve` answers HTTP on an event loop and hands uploads over for processing.
In one interpreter the two share a single lock: measured with eight clients, a
one-file hand-over took 50 ms beside the request threads against 20 ms alone. A child
process runs the same `EmbeddedRunner.on_batch`; the server sends it the claimed
arrivals and gets back the keys still in hand.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from config.settings import Settings
from pipelines.layout import Arrival
from pipelines.uploads import Handover
from workers.runtime import Runtime

log = logging.getLogger("airlock.run")


class ProcessHandover:
    """A `pipelines.uploads.Handover` that runs in a child process (started on first
    use, started again if it died)."""

    def __init__(self, settings: Settings, *, log_level: str = "INFO") -> None:
        self.settings = settings
        self.log_level = log_level
        self._lock = threading.Lock()
        self._child: BaseProcess | None = None
        self._conn: Connection | None = None

    def _start(self) -> Connection:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(target=_child_main, name="airlock-handover",
                                  args=(self.settings, child, self.log_level), daemon=True)
        try:
            process.start()
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self._child, self._conn = process, parent
        return parent

    def __call__(self, arrivals: list[Arrival]) -> list[Arrival]:
        with self._lock:
            conn = self._conn if self._conn is not None and self._alive() else self._start()
            try:
                conn.send(arrivals)
                left: set[str] = conn.recv()
            except (EOFError, OSError) as exc:
                self._stop()
                raise RuntimeError(f"the processing process stopped: {exc!r}") from exc
        return [a for a in arrivals if a.key in left]

    def _alive(self) -> bool:
        return self._child is not None and self._child.is_alive()

    def _stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._child is not None:
            self._child.join(timeout=30)
            if self._child.is_alive():
                self._child.kill()
            self._child = None

    def close(self) -> None:
        with self._lock:
            self._stop()


def _child_main(settings: Settings, conn: Connection, log_level: str) -> None:
    import signal

    from config.logging import setup_logging
    from workers.embedded import EmbeddedRunner
    from workers.runtime import build_runtime

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server stops it by closing the pipe
    setup_logging(log_level, settings.log_format)
    runtime = build_runtime(settings)
    runner = EmbeddedRunner(runtime)
    try:
        while True:
            try:
                arrivals: list[Arrival] = conn.recv()
            except EOFError:
                return
            try:
                left = {a.key for a in runner.on_batch(arrivals)}
            except Exception:  # the files stay in hand; the server tries them again
                log.exception("hand-over of %d uploads failed", len(arrivals))
                left = {a.key for a in arrivals}
            conn.send(left)
    finally:
        runtime.close()


def handover_for(runtime: Runtime) -> tuple[Handover, Callable[[], None]]:
    """The hand-over and how to end it. Embedded: the runner's, in a child process
    (processed there, not beside the request threads). With a broker: the watcher's
    (registered, then queued for the workers)."""
    if runtime.settings.embedded:
        child = ProcessHandover(runtime.settings)
        return child, child.close
    from workers.celery_app import make_celery
    from workers.dispatch import Watcher

    return Watcher(runtime, make_celery(runtime.settings)).on_batch, lambda: None
