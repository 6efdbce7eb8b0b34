"""`airlock mail` and the senders that speak for each customer."""

from __future__ import annotations

import signal
import threading
from typing import Any

import typer

from cli.admin import JSON_OPT, customer_app
from cli.checks import check_pipeline
from cli.common import db_session, emit, engine_of, fail, preflight, settings_of
from config.logging import setup_logging
from pipelines.sources.mail.senders import add_sender, list_senders, remove_sender

sender_app = typer.Typer(help="Mail senders (an address or a whole domain) per customer.",
                         no_args_is_help=True)


@sender_app.command("add")
def sender_add(ctx: typer.Context, customer: str = typer.Argument(...),
               address: str | None = typer.Option(None, "--address"),
               domain: str | None = typer.Option(None, "--domain")) -> None:
    """Take mail from ADDRESS (or anyone at DOMAIN) as CUSTOMER's."""
    with db_session(ctx) as session:
        row = add_sender(session=session, customer=customer, address=address, domain=domain)
        what = row.address or row.domain
    typer.echo(f"{what} -> {customer}", err=True)


@sender_app.command("list")
def sender_list(ctx: typer.Context, customer: str | None = typer.Argument(None),
                as_json: bool = JSON_OPT) -> None:
    emit(list_senders(engine_of(ctx), customer), as_json=as_json, title="Mail senders",
         columns=["customer", "address", "domain", "created_at"])


@sender_app.command("remove")
def sender_remove(ctx: typer.Context, sender: str = typer.Argument(..., help="Address or domain")
                  ) -> None:
    with db_session(ctx) as session:
        found = remove_sender(session=session, value=sender)
    if not found:
        fail(f"no sender {sender!r}", reason="unknown_sender")
    typer.echo(f"{sender} removed", err=True)


customer_app.add_typer(sender_app, name="sender")


def mail_command(ctx: typer.Context,
                 once: bool = typer.Option(False, "--once", help="One pass, then stop"),
                 log_level: str = typer.Option("INFO", "--log-level")) -> None:
    """Take request files from the mailbox (AIRLOCK_IMAP_URL) and reply with the answers
    (AIRLOCK_SMTP_URL, AIRLOCK_MAIL_FROM)."""
    from workers.mail import MailSettingsError, mail_setup, run_mail

    settings = settings_of(ctx)
    try:
        mail_setup(settings)
    except MailSettingsError as exc:
        fail(str(exc), reason="config", code=2)
    with preflight():
        check_pipeline(settings, broker=not settings.embedded, inbox_must_exist=True)
    setup_logging(log_level, settings.log_format)
    stop = threading.Event()

    def _stop(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    run_mail(settings, stop, once=once)


def register(app: typer.Typer) -> None:
    app.command("mail")(mail_command)
