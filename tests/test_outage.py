"""The retry schedule and the outage log lines shared by the sources and the watcher."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from pipelines.outage import Backoff, Dependency, Outage, Retries, Unreachable, dependency_of
from pipelines.storage.base import TransientStorageError


def test_backoff_doubles_up_to_its_cap_with_jitter_below_each_step():
    backoff = Backoff(first=1.0, cap=30.0)
    assert [backoff.delay(n, rng=lambda: 1.0) for n in (1, 2, 3, 6, 20)] == [1, 2, 4, 30, 30]
    assert [backoff.delay(n, rng=lambda: 0.0) for n in (1, 2, 6)] == [0.5, 1, 15]


def test_retries_are_due_after_their_backoff_and_all_at_once_when_hurried():
    now = [0.0]
    retries: Retries[str] = Retries(Backoff(first=1.0), clock=lambda: now[0], rng=lambda: 1.0)
    assert retries.failed("a") == 1 and retries.failed("a") == 2  # due at 2
    retries.failed("b")  # due at 1
    assert retries.due() == [] and retries.is_waiting("a") and retries.next_due() == 1
    now[0] = 1
    assert retries.due() == ["b"]
    retries.hurry()
    assert retries.due() == ["a", "b"]
    retries.keep_only(["a"])
    assert "b" not in retries and len(retries) == 1
    retries.forget("a")
    assert retries.next_due() == float("inf")


@pytest.mark.parametrize(("error", "dependency"), [
    (OperationalError("SELECT 1", {}, Exception("refused")), Dependency.DATABASE),
    (Unreachable(Dependency.BROKER, ConnectionError("refused")), Dependency.BROKER),
    (TransientStorageError("SlowDown"), Dependency.STORAGE),
    (IntegrityError("INSERT", {}, Exception("duplicate")), None),
    (ZeroDivisionError("a bug"), None),
])
def test_which_dependency_an_error_names(error, dependency):
    assert dependency_of(error) == dependency


def test_an_outage_is_logged_once_each_way_and_a_bug_once_with_its_traceback(caplog):
    now = [100.0]
    outage = Outage(logging.getLogger("test.outage"), clock=lambda: now[0])
    down = OperationalError("SELECT 1", {}, Exception("connection refused\nmore detail"))
    with caplog.at_level(logging.DEBUG, logger="test.outage"):
        for _ in range(3):
            assert outage.failed(down, "a.req") is Dependency.DATABASE
        assert outage.down
        now[0] += 12
        assert outage.recovered() is True and outage.recovered() is False
        outage.failed(ZeroDivisionError("a bug"), "b.req", first=True)
        outage.failed(ZeroDivisionError("a bug"), "b.req", first=False)
    lines = [(r.levelname, r.getMessage(), bool(r.exc_info)) for r in caplog.records
             if r.levelno >= logging.WARNING]
    assert lines == [
        ("WARNING", "database unreachable: connection refused; retrying", False),
        ("WARNING", "database reachable again after 12 s", False),
        ("ERROR", "handing over b.req failed; retrying", True),
        ("WARNING", "handing over b.req failed again (ZeroDivisionError: a bug); retrying",
         False),
    ]
