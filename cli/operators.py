"""`airlock operator ...`: the people who may sign in to the vendor console."""

from __future__ import annotations

import sys

import typer

from cli.admin import JSON_OPT
from cli.common import db_session, emit, engine_of, fail
from pipelines.operators import add_operator, list_operators, remove_operator

app = typer.Typer(help="Vendor console operators (argon2id passwords).", no_args_is_help=True)


@app.command("add")
def operator_add(ctx: typer.Context, name: str = typer.Argument(...),
                 password_stdin: bool = typer.Option(
                     False, "--password-stdin", help="Read the password from standard input")
                 ) -> None:
    """Add an operator; the password is asked for twice (or read from stdin)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    with db_session(ctx) as session:
        add_operator(session=session, name=name, password=password)
    typer.echo(f"operator {name.strip().lower()} added", err=True)


@app.command("list")
def operator_list(ctx: typer.Context, as_json: bool = JSON_OPT) -> None:
    """Operators and when each last signed in."""
    emit(list_operators(engine_of(ctx)), as_json=as_json, title="Operators",
         columns=["name", "created_at", "last_login_at"])


@app.command("remove")
def operator_remove(ctx: typer.Context, name: str = typer.Argument(...)) -> None:
    """Remove an operator and end their sessions."""
    with db_session(ctx) as session:
        found = remove_operator(session=session, name=name.strip().lower())
    if not found:
        fail(f"no operator {name!r}", reason="unknown_operator")
    typer.echo(f"operator {name} removed", err=True)
