"""Distributed-mode commands and bulk imports: ``watch``, ``worker`` and ``import``.

`register(app)` adds them to the ``airlock`` command line.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli.checks import check_input, check_pipeline
from cli.common import (
    LOG_FORMAT_HELP,
    METRICS_PORT_HELP,
    emit,
    err_console,
    fail,
    observed,
    preflight,
    settings_of,
)
from config.logging import setup_logging
from config.settings import Settings
from pipelines import bulk
from pipelines.catalog import CODE
from pipelines.storage.s3 import S3Store, make_s3_client, parse_s3_url
from workers.runtime import Runtime, build_runtime


def register(app: typer.Typer) -> None:
    """Add ``watch``, ``worker`` and ``import`` to `app`."""
    app.command("watch")(watch)
    app.command("worker")(worker)
    app.command("import")(import_archive)


def _need_broker(settings: Settings) -> None:
    if settings.embedded:
        fail("no broker configured: set AIRLOCK_BROKER_URL=redis://... or amqp://... (or use "
             "'airlock run' for embedded mode)", reason="config", code=2)


def _stop_on_signals(stop: threading.Event) -> None:
    def _stop(signum: int, _frame: Any) -> None:
        typer.echo(f"signal {signum}: finishing the file in hand, then stopping", err=True)
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)


def watch(
    ctx: typer.Context,
    requeue_after: float = typer.Option(
        900.0, "--requeue-after", help="Publish again a job a live worker left untouched "
        "for N seconds (a dead worker's jobs are owed again after 20 s)"),
    sweep_every: float = typer.Option(10.0, "--sweep-every", help="Seconds between sweeps"),
    log_level: str = typer.Option("INFO", "--log-level"),
    log_format: str | None = typer.Option(None, "--log-format", help=LOG_FORMAT_HELP),
    metrics_port: int | None = typer.Option(None, "--metrics-port", min=1, max=65535,
                                            help=METRICS_PORT_HELP),
) -> None:
    """Watch the inbox and queue each file (or archive chunk) for the workers."""
    from workers.celery_app import make_celery
    from workers.dispatch import watch as run_watch
    from workers.runtime import serve_metrics

    settings = observed(settings_of(ctx), log_format=log_format, metrics_port=metrics_port)
    _need_broker(settings)
    with preflight():
        check_pipeline(settings, broker=True, inbox_must_exist=True)
    setup_logging(log_level, settings.log_format)
    runtime = build_runtime(settings)
    server = serve_metrics(runtime)
    stop = threading.Event()
    _stop_on_signals(stop)
    try:
        run_watch(runtime, make_celery(settings), stop, requeue_after=requeue_after,
                  sweep_every=sweep_every)
    finally:
        if server is not None:
            server.shutdown()
        runtime.close()


def worker(
    ctx: typer.Context,
    concurrency: int = typer.Option(2, "--concurrency", "-c", min=1),
    queues: str = typer.Option("interactive,bulk", "--queues", "-Q"),
    pool: str = typer.Option("prefork", "--pool", "-P",
                             help="prefork, solo or threads"),
    loglevel: str = typer.Option("INFO", "--loglevel", "-l"),
    hostname: str | None = typer.Option(None, "--hostname", "-n",
                                        help="Node name, e.g. worker1@%h"),
    log_format: str | None = typer.Option(None, "--log-format", help=LOG_FORMAT_HELP),
    metrics_port: int | None = typer.Option(None, "--metrics-port", min=1, max=65535,
                                            help=METRICS_PORT_HELP),
) -> None:
    """Start a Celery worker that processes queued files."""
    from celery.signals import setup_logging as celery_setup_logging
    from celery.signals import worker_process_shutdown

    from pipelines import metrics
    from workers.celery_app import make_celery
    from workers.runtime import serve_metrics

    settings = observed(settings_of(ctx), log_format=log_format, metrics_port=metrics_port)
    _need_broker(settings)
    if pool not in ("prefork", "solo", "threads"):
        fail("--pool must be prefork, solo or threads", code=2)
    with preflight():
        # The watcher makes the claimed files' folders; a worker only reads them.
        check_pipeline(settings, broker=True, inbox_must_exist=False)
    argv = ["worker", f"--concurrency={concurrency}", f"--queues={queues}", f"--pool={pool}",
            f"--loglevel={loglevel}"]
    if hostname:
        argv.append(f"--hostname={hostname}")

    @celery_setup_logging.connect(weak=False)
    def _our_logging(**_: Any) -> None:  # a receiver here: Celery leaves logging to us
        setup_logging(loglevel.upper(), settings.log_format)

    app = make_celery(settings)
    server = None
    if settings.metrics_port is not None:
        # before the pool forks: its processes count into files this one adds up
        metrics.use_directory(settings.home / "metrics")

        @worker_process_shutdown.connect(weak=False)
        def _counted_out(pid: int | None = None, **_: Any) -> None:
            metrics.process_exited(pid or os.getpid())

        server = serve_metrics(app.airlock_runtime.get())  # type: ignore[attr-defined]
    try:
        app.worker_main(argv)
    finally:
        if server is not None:
            server.shutdown()


def import_archive(
    ctx: typer.Context,
    archive: str = typer.Argument(..., help="A local file or s3://bucket/key"),
    customer: str = typer.Option(..., "--customer", help="Tenant the archive is from"),
    wait: bool = typer.Option(True, "--wait/--no-wait",
                              help="With a broker: follow progress until the report"),
    timeout: float = typer.Option(0, "--timeout", help="Give up waiting after N seconds"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Import a zip, tar, tar.gz or NDJSON archive of request files for a customer."""
    if not CODE.fullmatch(customer):
        fail(f"{customer!r} is not a customer code", code=2)
    settings = settings_of(ctx)
    if not archive.startswith("s3://"):
        with preflight(code=2):
            check_input(Path(archive))  # a FIFO would block the open below
    with preflight():
        # Member lists go to the inbox, reports to the outbox: both are made on demand.
        check_pipeline(settings, broker=not settings.embedded, inbox_must_exist=False)
    runtime = build_runtime(settings)
    try:
        with _open_archive(archive, settings) as (name, handle):
            result = _run_import(runtime, name, handle, customer, wait=wait, timeout=timeout,
                                 quiet=as_json)
    except FileNotFoundError:
        fail(f"{archive}: no such object", code=2)
    except bulk.LeaseLost:
        fail(f"{archive}: another import took the batch over while this one was stalled; "
             "it goes on from there", reason="import_in_progress")
    finally:
        runtime.close()
    if result.busy:
        fail(f"{archive}: another import of the same bytes is loading batch "
             f"{result.batch_id}; try again once it is done", reason="import_in_progress")
    emit(_result_row(result), as_json=as_json)
    if not result.accepted:
        raise typer.Exit(1)


@contextmanager
def _open_archive(location: str, settings: Settings) -> Iterator[tuple[str, IO[bytes]]]:
    """(file name, seekable file): a local file, or an S3 object spooled to a temp file."""
    if location.startswith("s3://"):
        bucket, key = parse_s3_url(location)
        if not key:
            fail(f"{location}: name an object, s3://bucket/key", code=2)
        store = S3Store(bucket, client=make_s3_client(settings))
        with store.open(key) as handle:
            yield key.rsplit("/", 1)[-1], handle
        return
    path = Path(location)
    with path.open("rb") as handle:
        yield path.name, handle


def _run_import(runtime: Runtime, name: str, handle: IO[bytes], customer: str, *, wait: bool,
                timeout: float, quiet: bool) -> bulk.BatchResult:
    with _progress(quiet) as progress:
        task = progress.add_task(f"{name}: importing", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        if runtime.settings.embedded:
            return bulk.import_archive(runtime, tenant=customer, name=name,
                                       source=f"cli:{name}", fileobj=handle,
                                       on_progress=advance)
        from workers.celery_app import make_celery
        from workers.dispatch import CelerySink

        sink = CelerySink(make_celery(runtime.settings), runtime)
        result = bulk.import_archive(runtime, tenant=customer, name=name,
                                     source=f"cli:{name}", fileobj=handle, sink=sink)
        if not wait or result.busy:
            return result
        progress.update(task, description=f"{name}: processing", completed=0)
        followed = _follow(runtime, result.batch_id, lambda r: advance(r.finished, r.total),
                           timeout)
        followed.members = result.members
        return followed


def _follow(runtime: Runtime, batch_id: int, on_update: Any, timeout: float
            ) -> bulk.BatchResult:
    """Poll the batch row until it is reported (or rejected), or `timeout` passes."""
    deadline = time.monotonic() + timeout if timeout else None
    while True:
        result = bulk.batch_result(runtime.engine, batch_id)
        on_update(result)
        if result.status in bulk.FINAL_BATCH:
            return result
        if deadline is not None and time.monotonic() > deadline:
            fail(f"batch {batch_id} is still {result.status} "
                 f"({result.finished}/{result.total} jobs finished)", reason="timeout")
        time.sleep(0.5)


def _progress(quiet: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err_console, disable=quiet,
                    transient=True)


def _result_row(result: bulk.BatchResult) -> dict[str, Any]:
    return {"batch_id": result.batch_id, "customer": result.tenant, "status": result.status,
            "reason": result.reason, "message": result.message, "members": result.members,
            "jobs": result.total, "finished": result.finished, "counts": result.counts,
            "report": result.report_keys, "duplicate": result.duplicate}
