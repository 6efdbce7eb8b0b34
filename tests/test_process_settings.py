"""The `airlock` program tunes its interpreter (`config.process.settle_heap`); a process
that only imports Airlock, such as this test run, keeps Python's defaults."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

from config.process import GC_THRESHOLDS

ROOT = Path(__file__).resolve().parent.parent

_PROBE = """
import gc, sys
sys.argv = ["airlock", "--help"]
from cli.main import run
try:
    run()
except SystemExit:
    pass
print(gc.get_threshold(), gc.get_freeze_count())
"""


def test_the_program_freezes_its_startup_heap_and_collects_less_often() -> None:
    done = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=True)
    thresholds, frozen = done.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    assert thresholds == str(GC_THRESHOLDS)
    assert int(frozen) > 10_000  # the modules imported before the command ran


def test_importing_the_command_line_changes_nothing() -> None:
    import cli.main  # noqa: F401

    assert gc.get_threshold() != GC_THRESHOLDS
