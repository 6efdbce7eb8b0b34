"""Pipeline commands: process files, run the inbox watcher, retrieve results, refresh."""

from __future__ import annotations

import signal
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import typer

from cli.checks import check_database, check_pipeline, check_store, read_input
from cli.common import (
    LOG_FORMAT_HELP,
    METRICS_PORT_HELP,
    emit,
    engine_of,
    fail,
    keyring_of,
    observed,
    preflight,
    settings_of,
)
from models.db import session_scope
from models.types import utcnow
from pipelines import catalog
from pipelines.catalog import CatalogError
from pipelines.intake import Intake
from pipelines.layout import OPERATOR, outbox_key
from pipelines.ledger import Submission
from pipelines.process import Outcome, Processor, process
from pipelines.refresh_request import operator_refresh_request, refresh_scope
from pipelines.storage import open_store
from pipelines.storage.base import Store
from pipelines.storage.local import LocalStore
from workers.runtime import make_processor

outbox_app = typer.Typer(help="Results waiting for vendors and customers.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("process")(process_files)
    app.command("run")(run)
    app.command("refresh")(refresh)
    app.command("refresh-request")(refresh_request)
    app.add_typer(outbox_app, name="outbox")


def _processor(ctx: typer.Context) -> Processor:
    return make_processor(settings_of(ctx), keyring_of(ctx))


def _outcome_row(name: str, outcome: Outcome, keys: list[str]) -> dict[str, Any]:
    return {"file": name, "status": outcome.status, "reason": outcome.reason,
            "kind": outcome.kind, "request_id": outcome.request_id,
            "duplicate": outcome.duplicate, "results": keys}


def process_files(
    ctx: typer.Context,
    files: list[Path] = typer.Argument(..., help="Request files (regular files)"),
    customer: str | None = typer.Option(None, "--customer", help="Tenant the files came from"),
    operator: bool = typer.Option(False, "--operator", help="Vendor-issued files"),
    outbox: Path | None = typer.Option(None, "--outbox", help="Folder for results"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Run the processing core on FILES now; exit 1 if any was rejected."""
    if bool(customer) == operator:
        fail("give exactly one of --customer CODE or --operator", code=2)
    settings = settings_of(ctx)
    with preflight():
        check_store(str(outbox) if outbox else settings.resolved_outbox, settings,
                    what="outbox", must_exist=False)
        check_database(settings)
        inputs = [(path, read_input(path)) for path in files]  # all, before any is processed
    store: Store = (LocalStore(outbox, file_mode=settings.file_mode) if outbox
                    else open_store(settings.resolved_outbox, settings))
    area = customer or OPERATOR
    processor = _processor(ctx)
    intake = Intake(engine=engine_of(ctx), processor=processor, inbox=store, outbox=store)
    applied = intake.handle_submissions([
        Submission(tenant=area, data=data, source=f"cli:{path.name}")
        for path, data in inputs])
    if applied.failed:
        job_id, error = applied.failed[0]
        fail(f"job {job_id} could not be processed ({type(error).__name__}: {error}); "
             "run the command again", reason="failed")
    rows = [_outcome_row(path.name, outcome,
                         [outbox_key(area, name) for name, _ in outcome.outputs])
            for (path, _), outcome in zip(inputs, applied.outcomes, strict=True)]
    emit(rows, as_json=as_json, columns=["file", "status", "reason", "results"],
         title="Outcomes")
    if any(row["status"] != "done" for row in rows):
        raise typer.Exit(1)


def run(
    ctx: typer.Context,
    drain: bool = typer.Option(False, "--drain", help="Stop once the inbox is empty"),
    timeout: float = typer.Option(0, "--timeout", help="With --drain: give up after N s"),
    processes: int = typer.Option(1, "--processes", min=1,
                                  help="Runner processes sharing the inbox (one per core)"),
    log_level: str = typer.Option("INFO", "--log-level"),
    log_format: str | None = typer.Option(None, "--log-format", help=LOG_FORMAT_HELP),
    metrics_port: int | None = typer.Option(None, "--metrics-port", min=1, max=65535,
                                            help=METRICS_PORT_HELP),
) -> None:
    """Watch the inbox and process files in-process (embedded mode). Ctrl-C stops cleanly.

    With --processes N, N runners share the inbox: claims are atomic renames and held
    files are locked, so no file is handed to two of them; SQLite's write lock is taken
    only for the short apply transaction of each batch.
    """
    from workers.embedded import run_embedded

    settings = observed(settings_of(ctx), log_format=log_format, metrics_port=metrics_port)
    if processes > 1 and settings.resolved_inbox.startswith("s3://"):
        fail("--processes above 1 needs a drop-folder inbox: S3 objects are not claimed, "
             "so every process would read every object", reason="bad_option")
    with preflight():
        check_pipeline(settings, broker=False, inbox_must_exist=True)
    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        typer.echo(f"signal {signum}: finishing the files in hand, then stopping", err=True)
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    results = run_embedded(settings, stop, processes=processes, drain=drain,
                           timeout=timeout or None, log_level=log_level)
    if drain and not all(results):
        fail("the inbox did not drain: the timeout passed, or files are left whose "
             "hand-over failed (they are tried again by the next run)", reason="timeout")


def _outbox_store(ctx: typer.Context) -> Store:
    """The outbox, which must exist: reading a mistyped one would list nothing."""
    settings = settings_of(ctx)
    with preflight():
        check_store(settings.resolved_outbox, settings, what="outbox", must_exist=True)
    return open_store(settings.resolved_outbox, settings)


@outbox_app.command("list")
def outbox_list(
    ctx: typer.Context,
    customer: str | None = typer.Option(None, "--customer"),
    since: datetime | None = typer.Option(None, "--since", help="Only newer results (UTC)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List results in the outbox (newest last)."""
    store = _outbox_store(ctx)
    floor = since.replace(tzinfo=since.tzinfo or UTC) if since else None
    prefix = f"{customer}/" if customer else ""
    rows = [{"key": info.key, "size": info.size, "modified": info.modified.isoformat()}
            for info in store.list(prefix) if floor is None or info.modified >= floor]
    rows.sort(key=lambda r: str(r["modified"]))
    emit(rows, as_json=as_json, columns=["key", "size", "modified"], title="Outbox")


@outbox_app.command("get")
def outbox_get(
    ctx: typer.Context,
    keys: list[str] = typer.Argument(...),
    out: Path | None = typer.Option(None, "--out", help="Folder to save into; stdout if unset"),
) -> None:
    """Fetch results by key (as listed by 'outbox list')."""
    store = _outbox_store(ctx)
    for key in keys:
        try:
            data = store.get(key)
        except (FileNotFoundError, ValueError) as exc:
            fail(f"{key}: {exc.__class__.__name__}", reason="not_found")
        if out is None:
            typer.echo(data.decode("ascii", errors="replace"), nl=False)
        else:
            target = out / key.replace("/", "__")
            out.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            typer.echo(f"wrote {target}", err=True)


def refresh_request(
    ctx: typer.Context,
    license_keys: list[str] = typer.Option(..., "--license", help="Repeat for a bulk refresh"),
    hardware_id: str | None = typer.Option(None, "--hardware-id"),
    reset_consumption: bool = typer.Option(False, "--reset-consumption"),
    expires_days: int | None = typer.Option(
        None, "--expires-days", min=1, help="Refused after this many days (default: "
        "AIRLOCK_VENDOR_REQUEST_DAYS, 7)"),
    out: Path = typer.Option(..., "--out"),
) -> None:
    """Write an operator-signed refresh request for the pipeline (drop it in the inbox).
    It applies once, in the area it is dropped in, before it expires."""
    try:
        scope = refresh_scope(license_keys, hardware_id)
    except ValueError as exc:
        fail(str(exc), code=2)
    days = expires_days or settings_of(ctx).vendor_request_days
    out.write_bytes(operator_refresh_request(keyring_of(ctx), scope, now=utcnow(),
                                             reset_consumption=reset_consumption,
                                             valid_for=timedelta(days=days)))
    typer.echo(f"wrote {out}", err=True)


def refresh(
    ctx: typer.Context,
    key: str = typer.Argument(..., help="License key"),
    hardware_id: str | None = typer.Option(None, "--hardware-id", help="One device only"),
    reset_consumption: bool = typer.Option(False, "--reset-consumption"),
    out: Path = typer.Option(..., "--out", help="Folder for license_refresh.lic files"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Render license_refresh.lic for one device or every active device of a license."""
    engine = engine_of(ctx)
    try:
        with session_scope(engine) as session:
            tenant = catalog.describe_license(session=session, key=key)["customer"]
    except CatalogError as exc:
        fail(exc.message, reason=exc.reason)
    request = operator_refresh_request(keyring_of(ctx), refresh_scope([key], hardware_id),
                                       now=utcnow(), reset_consumption=reset_consumption)
    outcome = process(request, engine=engine, tenant=tenant, processor=_processor(ctx),
                      source="cli:refresh")
    if not outcome.accepted:
        fail(outcome.message or "refused", reason=outcome.reason)
    written = []
    for name, content in outcome.outputs:
        relative = Path(*name.split("/")[1:])  # drop the request id folder
        target = out / relative if len(outcome.outputs) > 1 or hardware_id is None \
            else out / relative.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        written.append(str(target))
    emit({"request_id": outcome.request_id, "devices": len(written), "files": written},
         as_json=as_json)

