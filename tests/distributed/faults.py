"""Test-only fault injection, loaded into a worker with ``--include tests.distributed.faults``
(or into ``airlock run`` / ``watch`` through `tests.distributed.faulty_cli`).

It wraps processing stages in this process only; production code has no hooks.
Configured through environment variables read at import:

* ``FAULTS_CRASH_MARKER``: a file whose bytes contain it kills the pool process
  (``os._exit(1)``) as soon as it is verified, like a parser crash or an OOM kill.
* ``FAULTS_RAISE_HARDWARE_ID``: applying a request for that hardware id raises
  `RuntimeError` (a bug one file triggers), every time, inside the chunk's transaction.
* ``FAULTS_APPLY_DELAY``: seconds every job sleeps inside its transaction, so a test
  can act while work is in flight.
* ``FAULTS_SLOW_SOURCE`` / ``FAULTS_SLOW_SECONDS``: jobs whose source contains the
  text sleep that long inside their transaction.
* ``FAULTS_CHUNK_SLOTS`` / ``FAULTS_SLOT_DIR``: only that many chunks (counted across
  the worker's processes through folders created in the slot dir) start; later ones
  hang before touching the database, like a stuck worker, so a test can kill the
  worker at a known point of a batch.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pipelines.bulk as bulk
import pipelines.process as process

_CRASH = os.environ.get("FAULTS_CRASH_MARKER", "").encode()
_RAISE_HARDWARE_ID = os.environ.get("FAULTS_RAISE_HARDWARE_ID", "")
_DELAY = float(os.environ.get("FAULTS_APPLY_DELAY", "0") or 0)
_SLOW_SOURCE = os.environ.get("FAULTS_SLOW_SOURCE", "")
_SLOW_SECONDS = float(os.environ.get("FAULTS_SLOW_SECONDS", "0") or 0)

_SLOTS = int(os.environ.get("FAULTS_CHUNK_SLOTS", "0") or 0)
_SLOT_DIR = os.environ.get("FAULTS_SLOT_DIR", "")

_verify = process.verify
_apply = process.apply
_run_chunk = bulk.run_chunk


def verify(data: bytes, **kwargs: Any) -> Any:
    if _CRASH and _CRASH in data:
        os._exit(1)
    return _verify(data, **kwargs)


def apply(state: Any, envelope: Any, **kwargs: Any) -> Any:
    if _RAISE_HARDWARE_ID and envelope.payload.get("hardware_id") == _RAISE_HARDWARE_ID:
        raise RuntimeError(f"injected fault: hardware id {_RAISE_HARDWARE_ID}")
    if _DELAY:
        time.sleep(_DELAY)
    job = kwargs.get("job")
    if _SLOW_SOURCE and job is not None and _SLOW_SOURCE in (job.source or ""):
        time.sleep(_SLOW_SECONDS)
    return _apply(state, envelope, **kwargs)


def _take_slot() -> bool:
    for number in range(_SLOTS):
        try:
            os.mkdir(os.path.join(_SLOT_DIR, f"slot-{number}"))
        except FileExistsError:
            continue
        return True
    return False


def run_chunk(env: Any, job_ids: Any, batch_id: Any = None, **kwargs: Any) -> Any:
    if _SLOTS and not _take_slot():
        while True:
            time.sleep(0.5)
    return _run_chunk(env, job_ids, batch_id, **kwargs)


process.verify = verify  # type: ignore[assignment]
process.apply = apply  # type: ignore[assignment]
bulk.run_chunk = run_chunk  # type: ignore[assignment]
