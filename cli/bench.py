"""`airlock bench`: throughput, latency and memory on generated data."""

from __future__ import annotations

from pathlib import Path

import typer

from bench import SCENARIOS


def bench(
    files: int = typer.Option(20000, "--files", min=1),
    workers: int = typer.Option(2, "--workers", min=1),
    scenario: list[str] = typer.Option(list(SCENARIOS), "--scenario",
                                       help=f"Any of: {', '.join(SCENARIOS)}"),
    database_url: str | None = typer.Option(None, "--database-url",
                                            help="Empty database to use (default: SQLite)"),
    postgres_url: str | None = typer.Option(
        "postgresql+psycopg://postgres@127.0.0.1:5432/test", "--postgres-url",
        help="Empty PostgreSQL database for the activation-postgres scenario"),
    redis_url: str = typer.Option("redis://127.0.0.1:6379/15", "--broker-url", "--redis-url",
                                  help="The benchmark's own broker (redis:// or amqp://): "
                                  "emptied first"),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the JSON here"),
    timeout: float = typer.Option(600.0, "--timeout"),
) -> None:
    """Run the benchmark scenarios; print a table and a JSON document."""
    from bench.runner import run_bench  # on use: every other command starts without it
    from bench.scenarios import RefusedDatabase

    unknown = set(scenario) - set(SCENARIOS)
    if unknown:
        raise typer.BadParameter(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    try:
        run_bench(files=files, workers=workers, chosen=scenario, database_url=database_url,
                  postgres_url=postgres_url, redis_url=redis_url, json_path=json_path,
                  timeout=timeout)
    except RefusedDatabase as exc:
        typer.echo(f"error: [refused] {exc}", err=True)
        raise typer.Exit(2) from None


bench_app = typer.Typer(add_completion=False)
bench_app.command()(bench)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
