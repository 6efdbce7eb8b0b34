"""From an arrived file to its results: process, deliver to the outbox, archive the source.

The order is what makes a crash harmless: the job commits first, then the outbox is
written (deterministic names, so a rerun overwrites the same objects), then the
source leaves the inbox. A file caught half-way is simply handled again; the ledger
makes the second pass apply nothing and write the same bytes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from models.types import utcnow
from pipelines.layout import (
    Arrival,
    error_report_key,
    outbox_key,
    unique_archive_key,
)
from pipelines.process import Outcome, Processor, process
from pipelines.storage.base import Store

log = logging.getLogger("airlock.intake")

DISPOSITIONS = {"done": "processed", "rejected": "rejected", "quarantined": "quarantine"}


@dataclass
class Intake:
    engine: Engine
    processor: Processor
    inbox: Store
    outbox: Store
    on_outcome: Callable[[Arrival, Outcome], None] | None = None

    def handle(self, arrival: Arrival) -> Outcome:
        """Process one claimed arrival end to end (safe to call again for the same file)."""
        outcome = process(arrival.data, engine=self.engine, tenant=arrival.area,
                          processor=self.processor, source=arrival.key)
        self.deliver(arrival.area, outcome)
        self.archive(arrival, outcome)
        log.info("%s/%s -> %s%s%s", arrival.area, arrival.name, outcome.status,
                 f" [{outcome.reason}]" if outcome.reason else "",
                 " (duplicate)" if outcome.duplicate else "")
        if self.on_outcome is not None:
            self.on_outcome(arrival, outcome)
        return outcome

    def deliver(self, area: str, outcome: Outcome) -> list[str]:
        keys = []
        for name, content in outcome.outputs:
            key = outbox_key(area, name)
            self.outbox.put(key, content)
            keys.append(key)
        return keys

    def archive(self, arrival: Arrival, outcome: Outcome) -> str:
        disposition = DISPOSITIONS[outcome.status]
        target = unique_archive_key(self.inbox, disposition, arrival.area, arrival.name,
                                    arrival.sha256)
        if disposition != "processed":
            report = {
                "status": outcome.status, "reason": outcome.reason, "message": outcome.message,
                "job_id": outcome.job_id, "request_id": outcome.request_id,
                "tenant": arrival.area, "source": arrival.key, "sha256": arrival.sha256,
                "results": [outbox_key(arrival.area, name) for name, _ in outcome.outputs],
                "at": utcnow().isoformat(),
            }
            self.inbox.put(error_report_key(target),
                           (json.dumps(report, indent=2) + "\n").encode())
        try:
            self.inbox.move(arrival.key, target)
        except FileNotFoundError:
            pass  # another worker archived the same object already
        return target
