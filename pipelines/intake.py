"""From an arrived file to its results: apply, deliver to the outbox, archive the source.

The order is what makes a crash harmless: the job commits first, then the outbox is
written (deterministic names, so a rerun overwrites the same objects), then the
source leaves the inbox. A file caught half-way is simply handled again; the ledger
makes the second pass apply nothing and write the same bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine

from models.db import session_scope
from pipelines import metrics
from pipelines.archiving import archive
from pipelines.handler import Applied, apply_jobs, count_first_attempt
from pipelines.layout import Arrival, Disposition, outbox_key
from pipelines.ledger import Submission, register
from pipelines.process import Outcome, Processor, verify_first
from pipelines.storage.base import Store

log = logging.getLogger("airlock.intake")


def deliver(outbox: Store, outcomes: Sequence[Outcome]) -> list[str]:
    """Every result of `outcomes`, durable together before anything is archived (a
    local outbox syncs once for the batch); returns the keys written."""
    results = [(outbox_key(o.tenant, name), content)
               for o in outcomes for name, content in o.outputs]
    outbox.put_many(results)
    return [key for key, _ in results]


@dataclass
class Intake:
    """The one way an arrived file is handled, whoever hands it over (a source in
    embedded mode, a Celery task, an upload): `handle_many` registers and applies
    (`handler.apply_jobs`), `finish` delivers, archives and logs."""

    engine: Engine
    processor: Processor
    inbox: Store
    outbox: Store
    on_outcome: Callable[[Arrival, Outcome], None] | None = None

    def handle(self, arrival: Arrival) -> Outcome:
        """`handle_many` for one file; its failure is raised (it stays in hand)."""
        applied = self.handle_many([arrival])
        applied.raise_first()
        return applied.outcomes[0]

    def handle_many(self, arrivals: Sequence[Arrival]) -> Applied:
        """Register the claimed `arrivals` as jobs, apply them, deliver and archive the
        ones that finished. A file that failed stays in ``_processing/`` for the next
        try (its error is in `Applied.failed`); the others go on."""
        return self._handle([(submission_of(a), a) for a in arrivals])

    def handle_submissions(self, submissions: Sequence[Submission]) -> Applied:
        """`handle_many` for files that are not in the inbox (nothing to archive)."""
        return self._handle([(submission, None) for submission in submissions])

    def _handle(self, items: Sequence[tuple[Submission, Arrival | None]]) -> Applied:
        """Outcomes in the order of `items` (one per item that finished)."""
        if not items:
            return Applied()
        now = self.processor.clock()
        submissions = [submission for submission, _ in items]
        # Files claimed just now are verified before anything is written; the attempt
        # is counted as they are registered (if none was tried before), and the
        # chunk's transaction follows.
        first = [i for i, (_, arrival) in enumerate(items)
                 if arrival is not None and arrival.first_try]
        early = verify_first(self.engine, self.processor, [submissions[i] for i in first], now)
        with session_scope(self.engine) as session:
            jobs = register(session, submissions, now=now, count_attempt=False)
            counted = count_first_attempt(session.connection(), jobs, now)
        applied = apply_jobs(self.engine, self.processor, [job.id for job in jobs],
                             attempt_counted=counted, now=now,
                             verified={jobs[first[k]].id: v for k, v in early.items()})
        finished = {outcome.job_id: outcome for outcome in applied.outcomes}
        handled = [(arrival, finished[job.id])
                   for (_, arrival), job in zip(items, jobs, strict=True) if job.id in finished]
        self.finish(handled)
        applied.outcomes = [outcome for _, outcome in handled]
        return applied

    def finish(self, handled: Sequence[tuple[Arrival | None, Outcome]]) -> None:
        """Deliver every outcome's results (durable together), then archive each source
        still in the inbox (None: nothing to archive) and log one line per file."""
        deliver(self.outbox, [outcome for _, outcome in handled])
        at = self.processor.clock().isoformat()
        for arrival, outcome in handled:
            if arrival is not None:
                archive(self.inbox, arrival, Disposition.of(outcome.status),
                        None if outcome.accepted else _report(arrival, outcome, at),
                        durable=False)
        self.inbox.sync()  # the archive moves and error reports, all at once
        for arrival, outcome in handled:
            log_outcome(arrival, outcome)
            if arrival is not None and self.on_outcome is not None:
                self.on_outcome(arrival, outcome)


def submission_of(arrival: Arrival) -> Submission:
    """The ledger's view of an arrival: its bytes, or for one refused unread its
    refusal, identity and size."""
    if arrival.refusal is None:
        return Submission(tenant=arrival.area, data=arrival.data, source=arrival.key,
                          digest=arrival.sha256)  # hashed from these bytes as they were read
    return Submission(tenant=arrival.area, data=b"", source=arrival.key,
                      refusal=arrival.refusal, digest=arrival.sha256, size=arrival.size)


def _report(arrival: Arrival, outcome: Outcome, at: str) -> dict[str, object]:
    """The ``.error.json`` beside a refused or quarantined file (for the vendor)."""
    return {
        "status": outcome.status, "reason": outcome.reason, "message": outcome.message,
        "job_id": outcome.job_id, "request_id": outcome.request_id,
        "tenant": arrival.area, "source": arrival.key, "size": arrival.size,
        # an entry refused unread has no content hash: its digest names the entry
        ("identity" if arrival.refusal else "sha256"): arrival.sha256,
        **({"detail": arrival.detail} if arrival.detail else {}),
        "results": [outbox_key(arrival.area, name) for name, _ in outcome.outputs],
        "at": at,
    }


def log_outcome(arrival: Arrival | None, outcome: Outcome) -> None:
    """Count the file in the metrics and log its one line, in every mode:
    ``ACME/x.req: job 12 rejected [no_seats_left] (applied)``."""
    metrics.record_outcome(outcome)
    where = f"{arrival.area}/{arrival.name}" if arrival else outcome.tenant
    log.info("%s: job %s %s%s (%s)", where, outcome.job_id, outcome.status,
             f" [{outcome.reason}]" if outcome.reason else "",
             "duplicate" if outcome.duplicate else "applied",
             extra={"customer": outcome.tenant, "job": outcome.job_id,
                    "request_id": outcome.request_id, "reason": outcome.reason})
