"""Build the collaborators of one process from Settings, once, at its entry point."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine

from config.settings import Settings
from models.db import make_engine
from pipelines.intake import Intake
from pipelines.keyring import VendorKeyring, load_keyring
from pipelines.process import Processor
from pipelines.rules.common import Lockout
from pipelines.storage import open_store
from pipelines.storage.base import Store

log = logging.getLogger("airlock.run")

STALE_TEMP_SECONDS = 300.0  # a write takes well under this; an older temp file is a dead one's


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    keyring: VendorKeyring
    processor: Processor
    inbox: Store
    outbox: Store

    def intake(self) -> Intake:
        return Intake(engine=self.engine, processor=self.processor, inbox=self.inbox,
                      outbox=self.outbox)

    def remove_stale_temp(self, older_than: float = STALE_TEMP_SECONDS) -> int:
        """At start: remove the temp files a killed process left half-written in the
        outbox and the inbox (``_processing/``, the error reports); how many."""
        removed = 0
        for store in (self.outbox, self.inbox):
            try:
                count = store.remove_stale_temp(older_than)
            except OSError as exc:  # not ours to remove, say: the work goes on
                log.warning("cannot remove old temp files in %s: %s", store.location, exc)
                continue
            if count:
                log.info("removed %d temp files left in %s by a process that died", count,
                         store.location)
            removed += count
        return removed

    def close(self) -> None:
        self.engine.dispose()


def serve_metrics(runtime: Runtime) -> Any | None:
    """``/metrics`` on the configured port (None: not configured), with the backlog
    gauges read from this runtime's database and inbox."""
    settings = runtime.settings
    if settings.metrics_port is None:
        return None
    from models.types import utcnow
    from pipelines import metrics
    from pipelines.status import customer_status

    return metrics.serve(settings.metrics_port, address=settings.metrics_address,
                         statuses=lambda: customer_status(runtime.engine, runtime.inbox,
                                                          now=utcnow()))


def make_processor(settings: Settings, keyring: VendorKeyring) -> Processor:
    """The processing core's settings, in one place for every entry point."""
    lockout = Lockout(failures=settings.lockout_failures,
                      window=timedelta(seconds=settings.lockout_window_seconds))
    return Processor(keyring=keyring, max_bytes=settings.max_file_bytes,
                     max_attempts=settings.max_attempts, lockout=lockout)


def build_runtime(settings: Settings, *, outbox: Store | None = None) -> Runtime:
    keyring = load_keyring(settings.resolved_keys_dir)
    processor = make_processor(settings, keyring)
    return Runtime(
        settings=settings,
        engine=make_engine(settings.resolved_database_url),
        keyring=keyring,
        processor=processor,
        inbox=open_store(settings.resolved_inbox, settings),
        outbox=outbox or open_store(settings.resolved_outbox, settings),
    )
