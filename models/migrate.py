"""Run the Alembic migrations programmatically (no alembic.ini on disk needed)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Alembic is imported on use: most commands never migrate
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy import Engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(database_url), revision)


def current_revision(database_url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    from models.db import make_engine

    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


@cache
def _scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS_DIR))


def head_revision() -> str | None:
    """The revision the migrations end at: what a current database records."""
    return _scripts().get_current_head()


def known_revision(revision: str) -> bool:
    """Whether `revision` is one of these migrations (not one of a newer airlock)."""
    from alembic.util import CommandError

    try:
        return _scripts().get_revision(revision) is not None
    except CommandError:
        return False


def stamp_head(engine: Engine) -> None:
    """Record the head revision without running the migrations: for a schema made from
    the models (`create_schema`), which the migrations at head match (a test holds it)."""
    from alembic.runtime.migration import MigrationContext

    with engine.begin() as connection:
        MigrationContext.configure(connection).stamp(_scripts(), "head")
