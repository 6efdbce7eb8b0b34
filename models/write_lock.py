"""SQLite writers queue on a lock file beside the database, not in SQLite's busy handler.

SQLite lets one writer in at a time; a second one (another `airlock run` process, a
Celery worker) retries from its busy handler, which sleeps 1, 2, 5 … 50, 100 ms between
tries. While the first holds the lock for a chunk of a few hundred files, the second
wakes long after the lock is free: in a two-process run a quarter of the time went to
those sleeps. Here a write transaction first takes an exclusive ``flock`` on
``<database>-lock`` (polled every 0.5 to 4 ms), so the next writer starts within
milliseconds of the commit. The lock is advisory: SQLite's own locking still decides,
and a writer that does not take it (the sqlite3 shell) only costs speed. After the
busy timeout without the lock the transaction goes ahead and SQLite's own wait applies.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from typing import Any

LOCK_SUFFIX = "-lock"
LOCK_FILE_MODE = 0o600
_FIRST_POLL, _LONGEST_POLL = 0.0005, 0.004  # seconds


class WriteLockedConnection(sqlite3.Connection):
    """A pysqlite connection (`sqlite3.connect(..., factory=...)`) that holds the
    database's lock file from `lock_for_write` until its transaction ends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock_path: str | None = None
        self._lock_fd: int | None = None
        self._held = False

    def use_lock_file(self, path: str) -> None:
        self._lock_path = path

    def lock_for_write(self, timeout: float) -> None:
        """Take the lock file (no-op without one, or when held); give up quietly after
        `timeout` seconds (SQLite's busy timeout then applies)."""
        if self._lock_path is None or self._held:
            return
        if self._lock_fd is None:
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                    LOCK_FILE_MODE)
        deadline = time.monotonic() + timeout
        delay = _FIRST_POLL
        while True:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return
                time.sleep(delay)
                delay = min(delay * 2, _LONGEST_POLL)
                continue
            self._held = True
            return

    def release_write_lock(self) -> None:
        if self._held and self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        self._held = False

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.release_write_lock()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.release_write_lock()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.release_write_lock()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
