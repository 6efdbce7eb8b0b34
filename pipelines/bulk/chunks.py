"""Applying a batch's chunks: what the bulk stages need, and where chunks go."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Engine
from sqlalchemy import select as sa_select

from config.settings import Settings
from models import BatchStatus
from models.db import reading
from models.tables import JOB
from pipelines.bulk.state import update_progress
from pipelines.handler import apply_jobs
from pipelines.intake import deliver, log_outcome
from pipelines.process import Outcome, Processor
from pipelines.storage.base import Store

log = logging.getLogger("airlock.bulk")


class BulkEnv(Protocol):
    """What the bulk stages need; `workers.runtime.Runtime` is one."""

    settings: Settings
    engine: Engine
    processor: Processor
    inbox: Store
    outbox: Store


@dataclass
class BulkParts:
    """A `BulkEnv` put together by hand (tests, callers without a Runtime)."""

    settings: Settings
    engine: Engine
    processor: Processor
    inbox: Store
    outbox: Store


class ChunkSink(Protocol):
    """Where registered chunks go: processed now (embedded) or enqueued (distributed)."""

    def chunk(self, batch_id: int, job_ids: list[int]) -> None: ...

    def finish(self, batch_id: int) -> None: ...

    def resume(self, batch_id: int) -> None: ...


@dataclass
class ChunkResult:
    outcomes: list[Outcome]
    finish: list[int]  # batches whose every job is finished: their report is due


def run_chunk(env: BulkEnv, job_ids: Sequence[int], batch_id: int | None = None, *,
              attempt_counted: bool = False) -> ChunkResult:
    """Apply a chunk (`handler.apply_jobs`: a failing file never holds up the others),
    deliver its results and update its batch's progress; then raise the first failure,
    so that the chunk's delivery is retried for the files that failed.
    `attempt_counted`: the caller committed this attempt of every job already."""
    with reading(env.engine) as conn:  # no write lock for a read
        rows = conn.execute(sa_select(JOB.c.id, JOB.c.batch_id)
                            .where(JOB.c.id.in_(sorted(set(job_ids))))).all()
    applied = apply_jobs(env.engine, env.processor, sorted(row.id for row in rows),
                         attempt_counted=attempt_counted)
    deliver(env.outbox, applied.outcomes)
    batches = {batch_id} if batch_id is not None else {row[1] for row in rows if row[1]}
    now = env.processor.clock()
    finish = []
    for bid in sorted(batches):
        flipped, status = update_progress(env.engine, bid, now=now)
        if flipped or status == BatchStatus.COMPLETE:
            finish.append(bid)
    for outcome in applied.outcomes:
        log_outcome(None, outcome)
    log.info("chunk of %d jobs (batch %s): %s", len(job_ids), batch_id,
             _summary(applied.outcomes, len(applied.failed)))
    applied.raise_first()
    return ChunkResult(applied.outcomes, finish)


def _summary(outcomes: list[Outcome], failed: int) -> str:
    counts: dict[str, int] = {"failed": failed} if failed else {}
    for outcome in outcomes:
        label = outcome.status + (" duplicate" if outcome.duplicate else "")
        counts[label] = counts.get(label, 0) + 1
    return ", ".join(f"{n} {label}" for label, n in sorted(counts.items())) or "nothing"
