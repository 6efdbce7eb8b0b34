"""Run the chosen scenarios, print a table and one JSON document."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import scenarios

BASELINE_RATIOS = ("embedded", "backlog")  # reported as a share of the baseline's files/s


def run_bench(*, files: int, workers: int, chosen: list[str], database_url: str | None,
              postgres_url: str | None, redis_url: str | None, json_path: Path | None,
              timeout: float = 600.0) -> dict[str, Any]:
    began = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="airlock-bench-"))
    report: dict[str, Any] = {"files": files, "workers": workers, "machine": _machine(),
                              "scenarios": {}}
    fleets = scenarios.Fleets(root / "keys")
    try:
        for name in chosen:
            started = time.perf_counter()
            figures = _one(name, root, fleets, files=files, workers=workers,
                           database_url=database_url, postgres_url=postgres_url,
                           redis_url=redis_url, timeout=timeout)
            figures["wall_seconds"] = round(time.perf_counter() - started, 1)
            report["scenarios"][name] = figures
        add_ratios(report["scenarios"])
    finally:
        remove_later(root)
    report["total_seconds"] = round(time.perf_counter() - began, 1)
    print_table(report)
    text = json.dumps(report, indent=2)
    if json_path:
        json_path.write_text(text + "\n")
    print(text)
    return report


def _one(name: str, root: Path, fleets: scenarios.Fleets, **kw: Any) -> dict[str, Any]:
    files, database_url = kw["files"], kw["database_url"]
    if name == "activation-postgres":
        if not kw["postgres_url"]:
            return {"skipped": "no --postgres-url given"}
        database_url = kw["postgres_url"]
    ws = scenarios.open_workspace(root, name, database_url, fleets)
    try:
        if name == "baseline":
            from bench.baseline import framework_free

            blobs, _setup = scenarios.deactivation_fleet(ws, files)
            return framework_free(ws.home, blobs, ws.keyring)
        if name == "embedded":
            return scenarios.embedded(ws, files, kw["timeout"], processes=kw["workers"])
        if name == "backlog":
            return scenarios.backlog(ws, files, kw["timeout"], processes=kw["workers"])
        if name == "latency":
            return scenarios.latency(ws, min(files, 60))
        if name in ("activation", "activation-postgres"):
            return scenarios.activation(ws, files, processes=kw["workers"])
        if name == "distributed":
            from bench.distributed import distributed

            return distributed(ws, files, kw["workers"], kw["redis_url"], kw["timeout"])
        if name == "bulk":
            from bench.distributed import bulk

            return bulk(ws, files, kw["timeout"], kw["redis_url"])
        if name == "portal":
            from bench.portal import portal

            return portal(ws, files)
        raise ValueError(f"unknown scenario {name!r}")
    finally:
        ws.close()


def add_ratios(figures: dict[str, dict[str, Any]]) -> None:
    """Each drop-folder scenario's files/s as a share of the same run's `baseline`."""
    base = figures.get("baseline", {}).get("files_per_s")
    if not base:
        return
    for name in BASELINE_RATIOS:
        rate = figures.get(name, {}).get("files_per_s")
        if rate is not None:
            figures[name]["to_baseline"] = round(rate / base, 2)


def _machine() -> dict[str, Any]:
    import os

    return {"python": platform.python_version(), "cpus": os.cpu_count(),
            "platform": platform.platform()}


def print_table(report: dict[str, Any]) -> None:
    table = Table(title=f"airlock bench — {report['files']} files")
    for column in ("scenario", "figures"):
        table.add_column(column)
    for name, figures in report["scenarios"].items():
        shown = {k: v for k, v in figures.items() if k not in ("wall_seconds",)}
        table.add_row(name, ", ".join(f"{k}={v}" for k, v in shown.items()))
    Console(stderr=True).print(table)


def remove_later(folder: Path) -> None:
    """Delete the scenarios' folders in a detached, low-priority process so the report
    does not wait for it: the scenarios leave ~100,000 synced files, which a file
    system mounted with ``discard`` deletes at ~0.2 ms each. Falls back to deleting
    here when no ``rm`` is available."""
    rm = shutil.which("rm")
    if rm is None:
        shutil.rmtree(folder, ignore_errors=True)
        return
    subprocess.Popen(["nice", "-n", "19", rm, "-rf", "--", str(folder)] if shutil.which("nice")
                     else [rm, "-rf", "--", str(folder)], start_new_session=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
