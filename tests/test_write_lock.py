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


def _pages_in_database_file(path: Path) -> int:
    """The page count the main file's header records: what checkpoints have copied."""
    with open(path, "rb") as handle:
        return int.from_bytes(handle.read(100)[28:32], "big")


def test_the_wal_is_checkpointed_after_the_lock_file_is_released(tmp_path: Path,
                                                                   monkeypatch) -> None:
    import models.write_lock as write_lock

    db = tmp_path / "airlock.db"
    lock = Path(f"{db}{LOCK_SUFFIX}")
    monkeypatch.setattr(write_lock, "CHECKPOINT_EVERY", 0.0)
    lock_free: list[bool] = []
    checkpoint = WriteLockedConnection.checkpoint

    def probing(self: WriteLockedConnection) -> None:
        probe = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            lock_free.append(True)
        except BlockingIOError:
            lock_free.append(False)
        finally:
            os.close(probe)
        checkpoint(self)

    monkeypatch.setattr(WriteLockedConnection, "checkpoint", probing)
    engine = _engine(db)
    try:
        with engine.connect() as conn:  # SQLite's own checkpoint would run in the commit
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
        before = _pages_in_database_file(db)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t SELECT value FROM json_each(:a)"),
                         {"a": "[" + ",".join(str(10**12 + n) for n in range(5000)) + "]"})
        with reading(engine) as conn:  # a read commits too, and checkpoints nothing
            assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 5000
        assert lock_free and all(lock_free)  # each checkpoint ran with the lock file free
        assert len(lock_free) == 2  # the table's creation, the insert: writes only
        assert _pages_in_database_file(db) > before + 5  # the rows are in the main file
    finally:
        engine.dispose()


def test_without_checkpoints_the_rows_stay_in_the_wal(tmp_path: Path, monkeypatch) -> None:
    """The counterpart of the test above: what it sees in the main file is the
    connection's checkpoint, not SQLite's automatic one."""
    monkeypatch.setattr(WriteLockedConnection, "checkpoint", lambda self: None)
    db = tmp_path / "airlock.db"
    engine = _engine(db)
    try:
        before = _pages_in_database_file(db)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t SELECT value FROM json_each(:a)"),
                         {"a": "[" + ",".join(str(10**12 + n) for n in range(5000)) + "]"})
        assert _pages_in_database_file(db) == before
    finally:
        engine.dispose()
