"""From an arrived file to its results: process, deliver to the outbox, archive the source.

The order is what makes a crash harmless: the job commits first, then the outbox is
written (deterministic names, so a rerun overwrites the same objects), then the
source leaves the inbox. A file caught half-way is simply handled again; the ledger
makes the second pass apply nothing and write the same bytes.
"""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine

from models.db import session_scope
from models.types import utcnow
from pipelines.handler import apply_jobs
from pipelines.layout import (
    Arrival,
    error_report_key,
    outbox_key,
    unique_archive_key,
)
from pipelines.ledger import Submission, register
from pipelines.process import Outcome, Processor, process
from pipelines.storage.base import Store
from pipelines.storage.local import LocalStore

log = logging.getLogger("airlock.intake")

DISPOSITIONS = {"done": "processed", "rejected": "rejected", "quarantined": "quarantine"}
_ARCHIVE_TRIES = 100


def deliver(outbox: Store, outcomes: Sequence[Outcome]) -> list[str]:
    """Every result of `outcomes`, durable together before anything is archived (a
    local outbox syncs once for the batch); returns the keys written."""
    results = [(outbox_key(o.tenant, name), content)
               for o in outcomes for name, content in o.outputs]
    outbox.put_many(results)
    return [key for key, _ in results]


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
        self._log(arrival, outcome)
        if self.on_outcome is not None:
            self.on_outcome(arrival, outcome)
        return outcome

    def handle_many(self, arrivals: Sequence[Arrival]) -> list[Outcome]:
        """`handle` for a batch: one `process_many` (two transactions for all), then the
        outbox writes made durable together, then the sources archived.

        The crash argument of `handle` holds per batch: until a source is archived it
        stays in ``_processing/`` and a rerun rewrites the same results from the jobs.
        """
        if not arrivals:
            return []
        with session_scope(self.engine) as session:
            jobs = register(session, [Submission(tenant=a.area, data=a.data, source=a.key)
                                      for a in arrivals], now=self.processor.clock(),
                            count_attempt=False)
        applied = apply_jobs(self.engine, self.processor, [job.id for job in jobs])
        finished = {outcome.job_id: outcome for outcome in applied.outcomes}
        # A file that failed stays in _processing/ for the next pass; the others go on.
        handled = [(arrival, finished[job.id]) for arrival, job in zip(arrivals, jobs,
                                                                     strict=True)
                   if job.id in finished]
        self.deliver_many([outcome for _, outcome in handled])
        self.archive_many(handled)
        if self.on_outcome is not None:
            for arrival, outcome in handled:
                self.on_outcome(arrival, outcome)
        return [outcome for _, outcome in handled]

    def deliver_many(self, outcomes: Sequence[Outcome]) -> list[str]:
        return deliver(self.outbox, outcomes)

    def archive_many(self, handled: Sequence[tuple[Arrival, Outcome]]) -> None:
        """`archive` for a batch whose results are delivered; a local inbox syncs once."""
        inbox = self.inbox if isinstance(self.inbox, LocalStore) else None
        for arrival, outcome in handled:
            self.archive(arrival, outcome, durable=inbox is None)
            self._log(arrival, outcome)
        if inbox is not None:
            inbox.sync()  # the archive moves and error reports, all at once

    def _log(self, arrival: Arrival, outcome: Outcome) -> None:
        log.info("%s/%s -> %s%s%s", arrival.area, arrival.name, outcome.status,
                 f" [{outcome.reason}]" if outcome.reason else "",
                 " (duplicate)" if outcome.duplicate else "")

    def deliver(self, area: str, outcome: Outcome) -> list[str]:
        keys = []
        for name, content in outcome.outputs:
            key = outbox_key(area, name)
            self.outbox.put(key, content)
            keys.append(key)
        return keys

    def archive(self, arrival: Arrival, outcome: Outcome, *, durable: bool = True) -> str:
        """Move the source to its disposition folder (with an error report if refused);
        `durable=False` (local inbox only) leaves the fsyncs to one `sync` of the batch.

        A local inbox may have several archivers (`airlock run --processes`): the report
        name is taken with an exclusive create and the file moved without replacing,
        so two files of the same name never overwrite each other's archive."""
        disposition = DISPOSITIONS[outcome.status]
        local = self.inbox if isinstance(self.inbox, LocalStore) else None
        for _ in range(_ARCHIVE_TRIES):
            target = unique_archive_key(self.inbox, disposition, arrival.area, arrival.name,
                                        arrival.sha256)
            try:
                if disposition != "processed":
                    self._report(arrival, outcome, target, local, durable)
                if local is not None:
                    local.move(arrival.key, target, durable=durable, replace=False)
                else:
                    self.inbox.move(arrival.key, target)
            except FileExistsError:
                continue  # another archiver took that name a moment ago: the next one
            except FileNotFoundError:
                pass  # another worker archived the same object already
            return target
        raise RuntimeError(f"no free archive name for {arrival.key}")

    def _report(self, arrival: Arrival, outcome: Outcome, target: str,
                local: LocalStore | None, durable: bool) -> None:
        report = {
            "status": outcome.status, "reason": outcome.reason, "message": outcome.message,
            "job_id": outcome.job_id, "request_id": outcome.request_id,
            "tenant": arrival.area, "source": arrival.key, "sha256": arrival.sha256,
            "results": [outbox_key(arrival.area, name) for name, _ in outcome.outputs],
            "at": utcnow().isoformat(),
        }
        content = (json.dumps(report, indent=2) + "\n").encode()
        if local is not None:
            if not local.put_if_absent(error_report_key(target), content, durable=durable):
                raise FileExistsError(errno.EEXIST, "report name taken", target)
        else:
            self.inbox.put(error_report_key(target), content)
