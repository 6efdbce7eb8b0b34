"""The loading lease: one import at a time loads a batch.

Two imports of one archive (the same bytes under two names, or a file taken again
while the first import still runs) would both register its members, and one that
refused it (by its name) would mark rejected a batch the other was applying. So the
import that loads a batch holds a lease on its row, renews it with every chunk it
registers, and only the holder moves the batch on (`state.set_status(lease=...)`). A
lease whose holder stopped (a process here that is gone, or no renewal for `LEASE`)
can be taken over.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from models import Batch, BatchStatus
from models.db import session_scope

log = logging.getLogger("airlock.bulk")

LEASE = timedelta(minutes=5)


class LeaseLost(Exception):
    """Another import took the batch over (this one went `LEASE` without renewing)."""


@dataclass(frozen=True)
class Lease:
    batch_id: int
    holder: str  # "<host>/<boot id>/<pid namespace>:<pid>:<start time>:<nonce>"


def take_lease(engine: Engine, batch_id: int, *, now: datetime) -> Lease | None:
    """The lease on a loading batch, if nobody else holds it; None otherwise."""
    lease = Lease(batch_id, f"{_here()}:{os.getpid()}:{_started(os.getpid())}:"
                            f"{secrets.token_hex(6)}")
    with session_scope(engine) as session:
        row = session.execute(select(Batch.loader, Batch.lease_until).where(
            Batch.id == batch_id, Batch.status == BatchStatus.LOADING)).first()
        if row is None:
            return None
        holder, until = row
        if holder is not None and until is not None and until > now and not _gone(holder):
            return None
        # Compare and set on both columns: a holder that renewed meanwhile (PostgreSQL
        # re-checks the row after waiting for its lock) keeps the lease.
        taken = session.execute(update(Batch).where(
            col(Batch.id) == batch_id, col(Batch.status) == BatchStatus.LOADING,
            _is(col(Batch.loader), holder), _is(col(Batch.lease_until), until))
            .values(loader=lease.holder, lease_until=now + LEASE)).rowcount == 1  # type: ignore[attr-defined]
    if taken and holder is not None:
        log.warning("batch %s: taking over the import that %s left", batch_id, holder)
    return lease if taken else None


def _is(column: Any, value: Any) -> Any:
    return column.is_(None) if value is None else column == value


def renew_lease(session: Session, lease: Lease, *, now: datetime) -> None:
    """Extend `lease` in the caller's transaction; `LeaseLost` if it is not ours now."""
    if session.execute(update(Batch).where(
            col(Batch.id) == lease.batch_id, col(Batch.status) == BatchStatus.LOADING,
            col(Batch.loader) == lease.holder).values(lease_until=now + LEASE)
            ).rowcount != 1:  # type: ignore[attr-defined]
        raise LeaseLost(f"batch {lease.batch_id} is being loaded by another import")


def release_lease(engine: Engine, lease: Lease) -> None:
    """Give the lease up (an import that failed: the next try takes it at once)."""
    with session_scope(engine) as session:
        session.execute(update(Batch).where(col(Batch.id) == lease.batch_id,
                                            col(Batch.loader) == lease.holder)
                        .values(loader=None, lease_until=None))


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


@functools.cache
def _here() -> str:
    """This machine's boot and process-id namespace: where a holder's pid means
    something. A host name alone is not enough: cloned machines share theirs, and
    every host's first pid namespace has the same number."""
    try:
        namespace: str | None = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = None
    boot = _read("/proc/sys/kernel/random/boot_id")
    if namespace is None or boot is None:
        return f"{socket.gethostname()[:32]}/?"  # no holder is ever known gone by its pid
    return f"{socket.gethostname()[:32]}/{boot}/{namespace}"


def _started(pid: int) -> str:
    """When process `pid` started (clock ticks since boot), or "?": tells a pid used
    again from the holder's."""
    stat = _read(f"/proc/{pid}/stat")
    fields = stat.rpartition(")")[2].split() if stat else []
    return fields[19] if len(fields) > 19 else "?"


def _gone(holder: str) -> bool:
    """True if `holder` was a process here (`_here`) that no longer runs. Another
    machine's import is only known gone by its lease running out."""
    parts = holder.rsplit(":", 3)
    here = _here()
    if len(parts) != 4 or parts[0] != here or here.endswith("/?") or not parts[1].isdigit():
        return False
    pid, started = int(parts[1]), parts[2]
    if pid == os.getpid():
        return False  # an import of this very process still running (another thread)
    now_started = _started(pid)
    if now_started == "?":  # no stat: no such process, or one /proc hides from us
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return started != "?" and now_started != started  # the pid names another process now
