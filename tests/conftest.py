"""Shared fixtures: databases (SQLite and a real PostgreSQL), Redis, keyring, settings.

Services come from AIRLOCK_TEST_POSTGRES_URL / AIRLOCK_TEST_REDIS_URL (defaults: the
local servers). When one is unreachable a test that needs it is skipped on a
developer machine but FAILS under CI=true, so CI can never go green by skipping.
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlmodel import Session, SQLModel

from config.settings import Settings
from models.db import create_schema, make_engine
from pipelines.keyring import VendorKeyring, init_keyring

PG_ADMIN_URL = os.environ.get("AIRLOCK_TEST_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("AIRLOCK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def service_unavailable(what: str, error: Exception) -> None:
    message = f"{what} unreachable: {type(error).__name__}: {error}"
    if IN_CI:
        pytest.fail(message + " (CI requires it)", pytrace=False)
    pytest.skip(message)


# --- PostgreSQL: one fresh database per test session, truncated between tests -----------


@contextmanager
def own_postgres_database(prefix: str) -> Iterator[str]:
    """Create an empty PostgreSQL database, yield its URL, drop it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        admin.dispose()
        service_unavailable("PostgreSQL", exc)
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    with own_postgres_database("airlock_t") as url:
        yield url


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """An empty PostgreSQL database of the test's own, dropped afterwards."""
    with own_postgres_database("airlock_f") as url:
        yield url


@pytest.fixture(scope="session")
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    create_schema(engine)
    yield engine
    engine.dispose()


def truncate_all(engine: Engine) -> None:
    tables = ", ".join(f'"{t.name}"' for t in SQLModel.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """The same test on SQLite (a fresh file) and on the PostgreSQL server."""
    if request.param == "sqlite":
        eng = make_engine(f"sqlite:///{tmp_path / 'airlock.db'}")
        create_schema(eng)
        yield eng
        eng.dispose()
    else:
        pg = request.getfixturevalue("pg_engine")
        truncate_all(pg)
        yield pg
        truncate_all(pg)


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{tmp_path / 'airlock.db'}")
    create_schema(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as s:
        yield s


# --- Redis --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001
        service_unavailable("Redis", exc)
    finally:
        client.close()
    return REDIS_URL


# --- keys and settings --------------------------------------------------------------------


@pytest.fixture(scope="session")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> VendorKeyring:
    ring, _ = init_keyring(tmp_path_factory.mktemp("keys"))
    return ring


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """The usual 022 umask, which alone would leave new files 0644."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def file_mode(path: Path) -> int:
    """Permission bits of `path` itself (a symlink is not followed)."""
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "var", settle_seconds=0.05, scan_interval_seconds=0.2)
