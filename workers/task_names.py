"""The names the enqueue side and the workers share: queues, tasks and their routes.

A module of its own so that the tasks, the Celery app and the publishers all import it
and none of them imports another for a name.
"""

from __future__ import annotations

INTERACTIVE, BULK = "interactive", "bulk"
PROCESS_FILES = "airlock.process_files"
PROCESS_CHUNK = "airlock.process_chunk"
FINISH_BATCH = "airlock.finish_batch"
NOOP = "airlock.noop"  # the benchmark's baseline: Celery's own cost per task
ROUTES = {PROCESS_FILES: {"queue": INTERACTIVE}, PROCESS_CHUNK: {"queue": BULK},
          FINISH_BATCH: {"queue": BULK}, NOOP: {"queue": INTERACTIVE}}
