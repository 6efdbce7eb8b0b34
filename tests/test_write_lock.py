"""SQLite writers queue on ``<database>-lock``: the next one starts when the first ends."""

from __future__ import annotations

import fcntl
import os
import stat
import threading
from pathlib import Path

from sqlalchemy import text

from models.db import make_engine, reading
from models.write_lock import LOCK_SUFFIX, WriteLockedConnection


def _engine(path: Path):  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS t (n INTEGER)"))
    return engine


def test_a_second_writer_waits_on_the_lock_file_and_goes_on_at_the_commit(tmp_path: Path):
    db = tmp_path / "airlock.db"
    first, second = _engine(db), _engine(db)  # two engines: two processes, in effect
    lock = Path(f"{db}{LOCK_SUFFIX}")
    order: list[str] = []
    entered = threading.Event()
    try:
        with first.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))
            assert stat.S_IMODE(lock.stat().st_mode) == 0o600  # beside a private database

            def write() -> None:
                with second.begin() as other:
                    entered.set()
                    order.append("second")
                    other.execute(text("INSERT INTO t VALUES (2)"))

            thread = threading.Thread(target=write)
            thread.start()
            assert not entered.wait(0.3)  # it queues on the lock while we hold it
            order.append("first commits")
        thread.join(10)
        assert order == ["first commits", "second"]
        with reading(second) as conn:
            assert conn.execute(text("SELECT n FROM t ORDER BY n")).scalars().all() == [1, 2]
        probe = os.open(lock, os.O_RDWR)
        try:  # nobody holds it once both transactions ended
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(probe)
    finally:
        first.dispose()
        second.dispose()


def test_a_rollback_and_a_failed_transaction_release_the_lock(tmp_path: Path):
    db = tmp_path / "airlock.db"
    engine = _engine(db)
    try:
        try:
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO nowhere VALUES (1)"))
        except Exception:  # noqa: BLE001 - the table does not exist: rolled back
            pass
        probe = os.open(f"{db}{LOCK_SUFFIX}", os.O_RDWR)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(probe)
        with reading(engine) as conn:  # a reader never takes the lock
            conn.execute(text("SELECT count(*) FROM t")).scalar_one()
    finally:
        engine.dispose()


def test_a_lock_held_too_long_is_given_up_and_sqlite_decides(tmp_path: Path):
    import sqlite3

    db = tmp_path / "x.db"
    lock = f"{db}{LOCK_SUFFIX}"
    holder = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)  # a writer that never lets go
    connection = sqlite3.connect(db, factory=WriteLockedConnection, isolation_level=None)
    try:
        assert isinstance(connection, WriteLockedConnection)
        connection.use_lock_file(lock)
        connection.lock_for_write(0.05)  # returns without it instead of hanging
        connection.execute("BEGIN IMMEDIATE")  # SQLite's own lock is free: goes ahead
        connection.execute("CREATE TABLE t (n INTEGER)")
        connection.commit()
        assert connection.execute("SELECT count(*) FROM t").fetchone() == (0,)
    finally:
        connection.close()
        os.close(holder)
