"""Operating the pipeline: `airlock status`, `airlock jobs list|show|retry`, `airlock audit`."""

from __future__ import annotations

import re
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

import typer

from cli.checks import NotReady, check_database, check_store
from cli.common import emit, engine_of, fail, preflight, settings_of
from config.settings import Settings
from models import JobStatus
from models.types import utcnow
from pipelines.audit import audit_events
from pipelines.jobs import JobQuery, RetryResult, job_record, list_jobs, retry_jobs, select_retry
from pipelines.status import customer_status
from pipelines.storage import open_store

jobs_app = typer.Typer(help="Inspect and retry jobs (one per arrived file).",
                       no_args_is_help=True)

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def register(app: typer.Typer) -> None:
    app.command("status")(status)
    app.command("audit")(audit)
    app.add_typer(jobs_app, name="jobs")


def parse_since(text: str | None) -> datetime | None:
    """``30m``, ``2h``, ``7d`` ago, or an ISO time (UTC when it names no zone)."""
    if text is None:
        return None
    match = _DURATION.match(text.strip())
    if match:
        return utcnow() - timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        fail(f"--since {text!r}: give a time (2026-12-01T08:00) or an age (30m, 2h, 7d)",
             reason="bad_option", code=2)
    return moment if moment.tzinfo else moment.replace(tzinfo=utcnow().tzinfo)


# --- status -----------------------------------------------------------------------------


def status(
    ctx: typer.Context,
    customer: str | None = typer.Option(None, "--customer", help="One customer only"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Backlog, outcomes and dependencies, per customer; exit 1 if something is down
    (so it serves as a health check)."""
    settings = settings_of(ctx)
    deps = _dependencies(settings)
    report: dict[str, Any] = {"mode": "distributed" if settings.broker_url else "embedded",
                              "dependencies": deps, "customers": []}
    if deps["database"]["ok"] and deps["inbox"]["ok"]:
        inbox = open_store(settings.resolved_inbox, settings)
        try:
            found = customer_status(engine_of(ctx), inbox, now=utcnow(),
                                    customers=[customer] if customer else None)
        except Exception as exc:  # noqa: BLE001 - reported, and the exit says so
            deps["inbox"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            found = []
        report["customers"] = [asdict(c) for c in found]
        if customer and not found:
            fail(f"no customer with code {customer!r}", reason="unknown_customer")
    down = [name for name, dep in deps.items() if not dep["ok"]]
    if as_json:
        emit(report, as_json=True)
    else:
        _print_status(report)
    if down:
        raise typer.Exit(1)


def _dependencies(settings: Settings) -> dict[str, dict[str, Any]]:
    deps: dict[str, dict[str, Any]] = {}
    for name, check in (
            ("database", lambda: check_database(settings)),
            ("inbox", lambda: check_store(settings.resolved_inbox, settings, what="inbox",
                                          must_exist=True)),
            ("outbox", lambda: check_store(settings.resolved_outbox, settings,
                                           what="outbox", must_exist=False))):
        try:
            check()
            deps[name] = {"ok": True}
        except NotReady as exc:
            deps[name] = {"ok": False, "error": exc.message}
    if settings.broker_url:
        from workers.celery_app import make_celery
        from workers.health import broker_status

        broker = broker_status(make_celery(settings))
        deps["broker"] = {"ok": broker.reachable, "url": broker.url, "error": broker.error,
                          "queues": broker.queues}
        deps["workers"] = {"ok": bool(broker.workers), "answered": broker.workers,
                           **({} if broker.workers or not broker.reachable
                              else {"error": "no worker answered a ping"})}
    return deps


def _print_status(report: dict[str, Any]) -> None:
    lines = [f"mode: {report['mode']}"]
    for name, dep in report["dependencies"].items():
        state = "ok" if dep["ok"] else f"DOWN: {dep.get('error')}"
        extra = ""
        if name == "broker" and dep.get("queues"):
            extra = " (" + ", ".join(f"{q} {n} waiting" for q, n in dep["queues"].items()) + ")"
        if name == "workers" and dep.get("answered"):
            extra = f" ({', '.join(dep['answered'])})"
        lines.append(f"{name}: {state}{extra}")
    typer.echo("\n".join(lines))
    rows = []
    for c in report["customers"]:
        hour, day = c["finished"]["hour"], c["finished"]["day"]
        rows.append({
            "customer": c["code"], "waiting": c["waiting"], "in hand": c["in_hand"],
            "oldest waiting": _age(c["oldest_waiting_seconds"]),
            "last hour": _outcomes(hour), "last day": _outcomes(day),
            "batches": ", ".join(f"#{b['batch_id']} {b['archive']} {b['finished']}/"
                                 f"{b['total']}" for b in c["batches"]) or "-"})
    if rows:
        emit(rows, as_json=False, title="Customers")


def _outcomes(finished: dict[str, Any]) -> str:
    parts = [f"{finished['done']} done"]
    for label in ("rejected", "quarantined"):
        counts = finished[label]
        if counts:
            total = sum(counts.values())
            parts.append(f"{total} {label} (" + ", ".join(
                f"{reason} {n}" for reason, n in sorted(counts.items())) + ")")
    return "; ".join(parts)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# --- jobs -------------------------------------------------------------------------------


def _job_status(value: str | None) -> JobStatus | None:
    if value is None:
        return None
    try:
        return JobStatus(value)
    except ValueError:
        fail(f"--status {value!r}: one of {', '.join(s.value for s in JobStatus)}",
             reason="bad_option", code=2)


@jobs_app.command("list")
def jobs_list(
    ctx: typer.Context,
    status_: str | None = typer.Option(None, "--status",
                                       help="pending, done, rejected or quarantined"),
    customer: str | None = typer.Option(None, "--customer"),
    reason: str | None = typer.Option(None, "--reason", help="precise or public reason"),
    since: str | None = typer.Option(None, "--since", help="30m, 2h, 7d or an ISO time"),
    limit: int = typer.Option(50, "--limit", min=1, max=10_000),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The newest jobs first."""
    _ready(ctx)
    rows = list_jobs(engine_of(ctx), JobQuery(status=_job_status(status_), customer=customer,
                                              reason=reason, since=parse_since(since),
                                              limit=limit))
    emit(rows, as_json=as_json, columns=["id", "tenant", "source", "kind", "status",
                                         "reason", "attempts", "created_at"], title="Jobs")


@jobs_app.command("show")
def jobs_show(ctx: typer.Context, job_id: int = typer.Argument(...),
              as_json: bool = typer.Option(False, "--json")) -> None:
    """One job whole: its file, every evaluation, its results, where its file is now."""
    settings = _ready(ctx)
    record = job_record(engine_of(ctx), open_store(settings.resolved_inbox, settings),
                        open_store(settings.resolved_outbox, settings), job_id)
    if record is None:
        fail(f"no job {job_id}", reason="not_found")
    emit(record, as_json=as_json)


@jobs_app.command("retry")
def jobs_retry(
    ctx: typer.Context,
    job_ids: list[int] = typer.Argument(None, help="Job ids (or use --status)"),
    status_: str | None = typer.Option(None, "--status", help="quarantined or rejected"),
    reason: str | None = typer.Option(None, "--reason"),
    customer: str | None = typer.Option(None, "--customer"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Run quarantined files and fixable refusals again through the normal path (an
    accepted file is never applied again); says what it did per job."""
    from workers.runtime import build_runtime

    settings = _ready(ctx)
    chosen = _job_status(status_)
    if bool(job_ids) == (chosen is not None):
        fail("give job ids or --status (with --reason/--customer), not both", code=2)
    ids = list(job_ids) if job_ids else select_retry(
        engine_of(ctx), status=chosen, reason=reason, customer=customer)  # type: ignore[arg-type]
    runtime = build_runtime(settings)
    try:
        results = retry_jobs(runtime, ids)
    finally:
        runtime.close()
    rows = [{"job": r.job_id, "result": r.result, "status": r.status, "detail": r.detail}
            for r in results]
    emit(rows, as_json=as_json, columns=["job", "result", "status", "detail"],
         title="Retried")
    if any(r.result == RetryResult.NOT_FOUND for r in results):
        raise typer.Exit(1)


# --- audit ------------------------------------------------------------------------------


def audit(
    ctx: typer.Context,
    license_key: str | None = typer.Option(None, "--license", help="One license's events"),
    customer: str | None = typer.Option(None, "--customer"),
    since: str | None = typer.Option(None, "--since", help="30m, 2h, 7d or an ISO time"),
    limit: int = typer.Option(100, "--limit", min=1, max=100_000),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The audit trail, newest first: activations, deactivations, refreshes, lockouts,
    releases, retries and catalogue changes."""
    _ready(ctx)
    rows = audit_events(engine_of(ctx), license_key=license_key, customer=customer,
                        since=parse_since(since), limit=limit)
    emit(rows, as_json=as_json, columns=["at", "tenant", "actor", "action", "license",
                                         "job_id", "detail"], title="Audit")


def _ready(ctx: typer.Context) -> Settings:
    settings = settings_of(ctx)
    with preflight():
        check_database(settings)
    return settings
