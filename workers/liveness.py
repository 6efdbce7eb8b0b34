"""Which worker process holds which job, and whether it is still alive.

A worker process that takes a message first claims its jobs: its name goes on the job
rows (`Job.claimed_by`), in the same commit as a beat of its `WorkerBeat` row. From
then on a `Heartbeat` thread refreshes that row every `HEARTBEAT_EVERY` seconds until
the process stops (a clean stop removes the row). The watcher's sweep
(`workers.dispatch.requeue_stale`) reads the job rows, not the broker: a pending job
whose claimant has not beaten for `DEAD_AFTER` is owed again and is published again,
whatever the broker still holds (a Redis message waits for its visibility timeout; a
RabbitMQ one returns when the connection drops; either way the ledger makes the second
copy harmless).

The beat is the worker's clock and the sweep compares it with the watcher's: the hosts'
clocks must agree to within a few seconds (NTP), far inside `DEAD_AFTER`.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, bindparam, delete, insert, update

from models import JobStatus
from models.db import ids_param, session_scope
from models.tables import JOB, WORKER_BEAT
from models.types import utcnow
from pipelines.handler import count_first_attempt

log = logging.getLogger("airlock.liveness")

HEARTBEAT_EVERY = 5.0  # seconds between a worker process's beats
DEAD_AFTER = timedelta(seconds=20)  # four beats missed: the process is gone


def process_name() -> str:
    """A name for this process that no other process reuses (host, pid, random)."""
    return f"{socket.gethostname()[:120]}/{os.getpid()}/{secrets.token_hex(4)}"


def _beat(conn: Connection, name: str, now: datetime) -> None:
    beat = WORKER_BEAT.c
    if conn.execute(update(WORKER_BEAT).where(beat.name == name)
                    .values(beat_at=now)).rowcount == 0:
        conn.execute(insert(WORKER_BEAT).values(name=name, started_at=now, beat_at=now))


def beat(engine: Engine, name: str, now: datetime) -> None:
    """Record that `name` is alive at `now` (one writer per name: no race on insert)."""
    with session_scope(engine) as session:
        _beat(session.connection(), name, now)


_CLAIM = (update(JOB).where(JOB.c.id.in_(ids_param()), JOB.c.status == JobStatus.PENDING)
          .values(claimed_by=bindparam("name"))
          .returning(JOB.c.id, JOB.c.status, JOB.c.attempts))


def claim(engine: Engine, name: str, job_ids: Sequence[int], now: datetime, *,
          count_attempt: bool = False) -> bool:
    """`name` takes the unfinished jobs among `job_ids` (its beat in the same commit, so a
    claim never names a worker without a row). With `count_attempt`, the same commit
    counts this attempt of every job if all of them are pending and none was tried
    before (`handler.count_first_attempt`): True then, and the caller applies them with
    ``attempt_counted=True``; a worker then takes the write lock once less per message.
    Otherwise (a copy of a message, a finished job among them, which may be reopened
    before it is applied) nothing is counted here and `apply_jobs` counts file by file."""
    with session_scope(engine) as session:
        conn = session.connection()
        _beat(conn, name, now)
        if not job_ids:
            return False
        ids = list(dict.fromkeys(job_ids))
        taken = conn.execute(_CLAIM, {"ids": ids, "name": name}).all()
        if not count_attempt or len(taken) < len(ids):  # one is finished, or gone
            return False
        return count_first_attempt(conn, taken, now)


def forget(engine: Engine, name: str) -> None:
    """`name` stops: its row goes, so its remaining claims are owed at the next sweep."""
    with session_scope(engine) as session:
        session.execute(delete(WORKER_BEAT).where(WORKER_BEAT.c.name == name))


class Heartbeat:
    """A daemon thread that beats for `name` every `every` seconds until `stop`."""

    def __init__(self, engine: Engine, name: str, *, every: float = HEARTBEAT_EVERY,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.engine = engine
        self.name = name
        self.every = every
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="airlock-heartbeat",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self.every):
            try:
                beat(self.engine, self.name, self._clock())
            except Exception as exc:  # noqa: BLE001 - the next beat tries again
                if not failing:
                    log.warning("heartbeat of %s not recorded (%s: %s); retrying", self.name,
                                type(exc).__name__, exc)
                failing = True
                continue
            failing = False

    def stop(self) -> None:
        """Stop beating and remove the row (best effort: a database that is away leaves
        it to go stale, which the sweep treats the same)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.every + 5)
        try:
            forget(self.engine, self.name)
        except Exception as exc:  # noqa: BLE001 - stopping anyway
            log.warning("could not remove the heartbeat of %s: %s", self.name, exc)
