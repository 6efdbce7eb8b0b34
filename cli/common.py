"""Shared plumbing for the CLI: settings from the context, output, friendly failure."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from cli.checks import NotReady
from config.logging import LogFormat
from config.settings import Settings
from models.db import make_engine, session_scope
from pipelines.catalog import CatalogError
from pipelines.keyring import KeyringError, VendorKeyring, load_keyring

console = Console()
err_console = Console(stderr=True)


def settings_of(ctx: typer.Context) -> Settings:
    root = ctx.find_root()
    return root.obj["settings"]  # type: ignore[index, no-any-return]


def fail(message: str, *, reason: str | None = None, code: int = 1) -> NoReturn:
    prefix = f"[{reason}] " if reason else ""
    # soft_wrap: one line however long (a URL, a path), as scripts and logs expect
    err_console.print("[bold red]error:[/] " + escape(prefix + message), highlight=False,
                      soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def preflight(code: int = 1) -> Iterator[None]:
    """Around a command's start-up checks: a missing dependency is one line and exit
    `code`."""
    try:
        yield
    except NotReady as exc:
        fail(exc.message, reason=exc.reason, code=code)


LOG_FORMAT_HELP = "text (default) or json: one object per line (also AIRLOCK_LOG_FORMAT)"
METRICS_PORT_HELP = "Serve Prometheus /metrics on this port (also AIRLOCK_METRICS_PORT)"


def observed(settings: Settings, *, log_format: str | None,
             metrics_port: int | None) -> Settings:
    """`settings` with the --log-format and --metrics-port given on the command line."""
    update: dict[str, Any] = {}
    if log_format is not None:
        try:
            update["log_format"] = LogFormat(log_format)
        except ValueError:
            fail(f"--log-format {log_format!r}: text or json", reason="bad_option", code=2)
    if metrics_port is not None:
        update["metrics_port"] = metrics_port
    return settings.model_copy(update=update) if update else settings


def engine_of(ctx: typer.Context) -> Engine:
    root = ctx.find_root()
    if "engine" not in root.obj:
        root.obj["engine"] = make_engine(settings_of(ctx).resolved_database_url)
        ctx.call_on_close(root.obj["engine"].dispose)
    return root.obj["engine"]  # type: ignore[no-any-return]


def keyring_of(ctx: typer.Context) -> VendorKeyring:
    try:
        return load_keyring(settings_of(ctx).resolved_keys_dir)
    except KeyringError as exc:
        fail(str(exc), reason="no_keys")


@contextmanager
def db_session(ctx: typer.Context) -> Iterator[Session]:
    """A committed session; catalog and database errors become friendly exits."""
    try:
        with session_scope(engine_of(ctx)) as session:
            yield session
    except CatalogError as exc:
        fail(exc.message, reason=exc.reason)
    except OperationalError as exc:
        fail(f"database unavailable or not initialised ({exc.orig.__class__.__name__}); "
             "run 'airlock init' or 'airlock db upgrade'", reason="database")


def emit(data: Any, *, as_json: bool, columns: list[str] | None = None,
         title: str | None = None) -> None:
    """JSON for scripts, a table (list of dicts) or key/value lines for people."""
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return
    if isinstance(data, list):
        cols = columns or (list(data[0]) if data else [])
        table = Table(title=title)
        for column in cols:
            table.add_column(column)
        for row in data:
            table.add_row(*(_cell(row.get(c)) for c in cols))
        console.print(table)
        return
    for key, value in data.items():
        console.print(f"[bold]{key}[/]: {_cell(value)}", highlight=False)


def _cell(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return "" if value is None else str(value)
