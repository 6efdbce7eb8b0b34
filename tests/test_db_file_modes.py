"""The SQLite database and its -wal / -shm files are private to the owner (0600)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from models.db import make_engine
from tests.conftest import file_mode


def _mode(path: Path) -> int:
    return file_mode(path)


def _write_and_check(db: Path) -> None:
    engine = make_engine(f"sqlite:///{db}")
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))
            conn.execute(text("INSERT INTO t VALUES (1)"))
        # While a connection is open the WAL and the shared-memory index exist.
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("SELECT count(*) FROM t")).scalar() >= 1
            files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
            for path in files:
                assert path.exists(), path
                assert _mode(path) == 0o600, f"{path.name}: {_mode(path):o}"
    finally:
        engine.dispose()


def test_a_fresh_database_and_its_wal_and_shm_are_0600(tmp_path: Path,
                                                        permissive_umask: None) -> None:
    db = tmp_path / "var" / "airlock.db"
    engine = make_engine(f"sqlite:///{db}")  # created before the first connect
    engine.dispose()
    assert _mode(db) == 0o600
    assert _mode(db.parent) == 0o700  # the folder it made for the database
    _write_and_check(db)


def test_an_existing_folder_is_left_alone(tmp_path: Path, permissive_umask: None) -> None:
    tmp_path.chmod(0o755)
    make_engine(f"sqlite:///{tmp_path / 'a.db'}").dispose()
    assert _mode(tmp_path) == 0o755
    assert _mode(tmp_path / "a.db") == 0o600


def test_a_world_readable_database_is_tightened(tmp_path: Path,
                                                permissive_umask: None) -> None:
    db = tmp_path / "airlock.db"
    _write_and_check(db)  # a real database with content...
    for suffix in ("", "-wal", "-shm"):
        path = db.with_name(db.name + suffix)
        if not path.exists():
            path.touch()  # a WAL/SHM left behind (an unclean stop) with loose modes
        path.chmod(0o644)
    _write_and_check(db)  # ...is 0600 again, with its -wal / -shm, once opened
    engine = make_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:  # and keeps its content
            assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 2
    finally:
        engine.dispose()


def test_memory_databases_touch_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for url in ("sqlite://", "sqlite:///:memory:"):
        engine = make_engine(url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
        engine.dispose()
    assert list(tmp_path.iterdir()) == []
