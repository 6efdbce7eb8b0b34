"""`airlock demo`: a demo vendor, simulated devices, files through the pipeline, a summary."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from cli.common import settings_of
from config.logging import setup_logging
from models.migrate import upgrade
from pipelines.keyring import init_keyring


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    ctx: typer.Context,
    devices: int = typer.Option(24, "--devices", min=1, max=5000),
    log_level: str = typer.Option("WARNING", "--log-level"),
) -> None:
    """Run the whole loop on the embedded default (the home folder must be fresh)."""
    from workers.demo import run_demo
    from workers.runtime import build_runtime

    settings = settings_of(ctx)
    setup_logging(log_level)
    if (settings.home / "airlock.db").exists():
        typer.echo(f"{settings.home} already holds a database; use a fresh AIRLOCK_HOME",
                   err=True)
        raise typer.Exit(2)
    settings.home.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    init_keyring(settings.resolved_keys_dir)
    runtime = build_runtime(settings)
    try:
        summary = run_demo(runtime, devices=devices, home=settings.home)
    finally:
        runtime.close()
    console = Console()
    table = Table(title="Files processed")
    for column in ("kind", "status", "reason", "files"):
        table.add_column(column)
    for row in summary["outcomes"]:
        table.add_row(row["kind"], row["status"], row["reason"], str(row["files"]))
    console.print(table)
    table = Table(title="Licenses")
    for column in ("license", "customer", "product", "type", "seats", "consumptions"):
        table.add_column(column)
    for row in summary["licenses"]:
        table.add_row(*(str(row[c]) for c in ("license", "customer", "product", "type", "seats",
                                               "consumptions")))
    console.print(table)
    console.print(f"refresh files loaded by devices: {summary['refresh_files_loaded']}")
    console.print(f"outbox: {summary['outbox']} ({summary['outbox_files']} files) — "
                  f"try: airlock outbox list")
