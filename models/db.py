"""Engine and session factory. Nothing is created at import time."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    Engine,
    and_,
    bindparam,
    create_engine,
    event,
    false,
    or_,
)
from sqlalchemy.engine import make_url
from sqlmodel import Session, SQLModel

from models.write_lock import LOCK_SUFFIX, WriteLockedConnection

SQLITE_BUSY_TIMEOUT_MS = 30_000
READ_ONLY = "airlock_read_only"
DATABASE_FILE_MODE = 0o600  # the database holds license state: owner only
DATABASE_DIR_MODE = 0o700


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """An engine tuned for the backend: SQLite gets WAL, busy_timeout and BEGIN IMMEDIATE."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, echo=echo)
    return create_engine(url, echo=echo, pool_pre_ping=True, pool_size=5, max_overflow=5)


def _sqlite_engine(url: str, *, echo: bool) -> Engine:
    database = make_url(url).database
    lock_file: str | None = None
    if database and database != ":memory:" and not database.startswith("file:"):
        _prepare_private_file(Path(database))
        lock_file = f"{Path(database).resolve()}{LOCK_SUFFIX}"
    engine = create_engine(url, echo=echo, connect_args={
        "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "factory": WriteLockedConnection})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        # Let SQLAlchemy issue BEGIN itself (pysqlite's own BEGIN is deferred).
        dbapi_connection.isolation_level = None
        if lock_file is not None:
            dbapi_connection.use_lock_file(lock_file)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        # IMMEDIATE takes the write lock up front: no lock upgrade deadlock, no
        # "database is locked" half-way through a transaction. A connection marked
        # read-only (see `reading`) only reads, so it takes no lock: WAL lets it read
        # beside a writer.
        if conn.get_execution_options().get(READ_ONLY):
            conn.exec_driver_sql("BEGIN")
            return
        dbapi_connection = conn.connection.dbapi_connection
        if isinstance(dbapi_connection, WriteLockedConnection):
            dbapi_connection.lock_for_write(SQLITE_BUSY_TIMEOUT_MS / 1000)
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            if isinstance(dbapi_connection, WriteLockedConnection):
                dbapi_connection.release_write_lock()
            raise

    return engine


def _prepare_private_file(path: Path) -> None:
    """Create the SQLite file 0600 before SQLite does, so that it never exists with the
    umask's permissions; tighten an existing database (and its -wal / -shm) that group
    or others may read.

    SQLite creates the -wal and -shm (and -journal) files with the database file's
    permissions (os_unix.c: findCreateFileMode, unixOpenSharedMemory, and robust_open's
    fchmod, which the umask cannot weaken), so a 0600 database keeps them 0600 too.
    """
    if not path.parent.exists():
        # Only the last folder gets the mode (pathlib gives missing ancestors the
        # default); an existing folder is the operator's and is left alone.
        path.parent.mkdir(parents=True, exist_ok=True, mode=DATABASE_DIR_MODE)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, DATABASE_FILE_MODE)
    except FileExistsError:
        pass
    else:
        try:
            os.fchmod(fd, DATABASE_FILE_MODE)  # a umask could only narrow it; be exact
        finally:
            os.close(fd)
    for candidate in (path, path.with_name(path.name + "-wal"),
                      path.with_name(path.name + "-shm")):
        # PermissionError: another user's file (a shared setup); not ours to change.
        with suppress(FileNotFoundError, PermissionError):
            mode = stat.S_IMODE(os.stat(candidate).st_mode)
            if mode & 0o077:
                os.chmod(candidate, mode & ~0o077)


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A connection for reads only: on SQLite it does not take the write lock."""
    with engine.connect() as conn:
        yield conn.execution_options(**{READ_ONLY: True})


def ids_param(name: str = "ids") -> BindParameter[Any]:
    """An ``IN`` list given at execution (``{"ids": [...]}``), for statements built once:
    built anew with the values, a statement costs ~100 µs more per execution (each value
    coerced, the cache key computed again)."""
    return bindparam(name, expanding=True)


def pairs_in(first: ColumnElement[Any], second: ColumnElement[Any],
             pairs: Iterable[tuple[Any, Any]]) -> ColumnElement[bool]:
    """``(first, second) IN pairs`` written so that an index on (first, second) serves
    it: one ``first = ? AND second IN (...)`` per distinct first value, OR-ed.

    SQLite plans the row-value form, ``(a, b) IN (VALUES ...)``, as a scan of the whole
    table: the cost of each lookup grew with every job ever registered. Each list is
    one expanding parameter: given as values, every one of them is coerced apart.
    """
    grouped: dict[Any, list[Any]] = {}
    for a, b in pairs:
        grouped.setdefault(a, []).append(b)
    return or_(false(), *(and_(first == a, second.in_(
        bindparam(None, bs, type_=second.type, expanding=True)))
        for a, bs in grouped.items()))


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def create_schema(engine: Engine) -> None:
    """Create every table directly (tests), stamped with the migrations' head so the
    start-up checks see a current schema; production uses the migrations."""
    import models  # noqa: F401  (registers the tables)
    from models.migrate import stamp_head

    SQLModel.metadata.create_all(engine)
    stamp_head(engine)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session committed on success and rolled back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
