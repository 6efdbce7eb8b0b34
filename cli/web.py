"""`airlock serve` (portal, API) and the customers' API tokens."""

from __future__ import annotations

import signal
import threading
from typing import Any

import typer

from cli.admin import JSON_OPT, customer_app
from cli.checks import check_pipeline
from cli.common import db_session, emit, engine_of, fail, preflight, settings_of
from config.logging import setup_logging
from models.types import utcnow
from pipelines.tokens import issue_token, list_tokens, revoke_token

token_app = typer.Typer(help="Bearer tokens for the customer API (printed once, kept hashed).",
                        no_args_is_help=True)


@token_app.command("add")
def token_add(ctx: typer.Context, customer: str = typer.Argument(..., help="Customer code"),
              name: str = typer.Option(..., "--name", help="What the token is for"),
              as_json: bool = JSON_OPT) -> None:
    """Issue a token for CUSTOMER; it is printed now and never again."""
    with db_session(ctx) as session:
        row, token = issue_token(session=session, customer=customer, name=name, now=utcnow())
        prefix = row.prefix
    emit({"customer": customer, "name": name, "prefix": prefix, "token": token},
         as_json=as_json)


@token_app.command("list")
def token_list(ctx: typer.Context, customer: str | None = typer.Argument(None),
               as_json: bool = JSON_OPT) -> None:
    """The tokens (never their secret): prefix, name, created, last used, revoked."""
    rows = list_tokens(engine_of(ctx), customer)
    emit(rows, as_json=as_json, title="API tokens",
         columns=["customer", "prefix", "name", "created_at", "last_used_at", "revoked_at"])


@token_app.command("revoke")
def token_revoke(ctx: typer.Context,
                 prefix: str = typer.Argument(..., help="Token prefix")) -> None:
    """Revoke a token at once: the next request with it is refused."""
    with db_session(ctx) as session:
        found = revoke_token(session=session, prefix=prefix, now=utcnow())
    if not found:
        fail(f"no token with prefix {prefix!r}", reason="unknown_token")
    typer.echo(f"token {prefix} revoked", err=True)


customer_app.add_typer(token_app, name="token")


def serve_command(
    ctx: typer.Context,
    port: int | None = typer.Option(None, "--port", min=1, max=65535,
                                    help="Port (AIRLOCK_SERVE_PORT, default 8080)"),
    address: str | None = typer.Option(None, "--address", help="Address (default loopback)"),
    log_level: str = typer.Option("INFO", "--log-level"),
) -> None:
    """Serve the offline portal (/) and the customer API (/api/v1, docs at /docs).

    Uploads are handled like any arrival: in this process in embedded mode, queued to
    the workers when AIRLOCK_BROKER_URL is set."""
    from web.serve import serve

    settings = settings_of(ctx)
    update: dict[str, Any] = {}
    if port is not None:
        update["serve_port"] = port
    if address is not None:
        update["serve_address"] = address
    settings = settings.model_copy(update=update) if update else settings
    with preflight():
        check_pipeline(settings, broker=not settings.embedded, inbox_must_exist=True)
    setup_logging(log_level, settings.log_format)
    stop = threading.Event()

    def _stop(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    serve(settings, stop)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
