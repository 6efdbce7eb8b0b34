"""A file claimed just now is verified before it is registered; nothing else is.

The embedded runner verifies the files of a pass before writing anything, then counts
their attempt as it registers them, then applies them: its write transactions follow
each other. A file taken again from ``_processing/``, or whose content a job already
holds, is counted before it is opened, and one past its attempts is never opened.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from models.db import reading
from models.tables import JOB
from pipelines import process
from pipelines.intake import Intake
from pipelines.keyring import VendorKeyring
from pipelines.layout import Arrival, processing_key
from pipelines.process import Processor
from pipelines.storage.local import LocalStore
from tests.factories import NOW, WireDevice, add_license, license_info, make_rule_raise, vendor

MAX_ATTEMPTS = 3


class Killed(BaseException):
    """The process dies here: nothing after it runs, no handler sees it."""


@pytest.fixture
def intake(sqlite_engine: Engine, keyring: VendorKeyring, tmp_path: Path) -> Intake:
    vendor(sqlite_engine)
    return Intake(engine=sqlite_engine,
                  processor=Processor(keyring=keyring, clock=lambda: NOW,
                                      max_attempts=MAX_ATTEMPTS),
                  inbox=LocalStore(tmp_path / "inbox"), outbox=LocalStore(tmp_path / "outbox"))


def arrival(intake: Intake, name: str, data: bytes, *, first_try: bool) -> Arrival:
    key = processing_key("ACME", name)
    intake.inbox.put(key, data)
    return Arrival(area="ACME", name=name, key=key, data=data,
                   sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                   first_try=first_try)


def jobs(engine: Engine) -> list[Any]:
    with reading(engine) as conn:
        return list(conn.execute(select(JOB.c.id, JOB.c.status, JOB.c.attempts, JOB.c.reason)
                                 .order_by(JOB.c.id)))


@pytest.fixture
def opened(intake: Intake, monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[str, int]]]:
    """At each verification, the (status, attempts) of every job row then."""
    seen: list[list[tuple[str, int]]] = []
    real = process.verify

    def verify(data: bytes, **kwargs: Any) -> Any:
        seen.append([(job.status, job.attempts) for job in jobs(intake.engine)])
        return real(data, **kwargs)

    monkeypatch.setattr(process, "verify", verify)
    return seen


def test_a_file_claimed_just_now_is_verified_before_any_row_is_written(
        intake: Intake, keyring: VendorKeyring, opened: list[Any]) -> None:
    key = add_license(intake.engine, max_activations=1)
    outcome = intake.handle(arrival(intake, "a.req", WireDevice(keyring, "HW-1").activation(
        license_key=key), first_try=True))
    assert outcome.accepted
    assert opened == [[]]  # opened once, before its job existed
    assert [(j.status, j.attempts) for j in jobs(intake.engine)] == [("done", 1)]
    assert license_info(intake.engine, key)["active_devices"] == 1


def test_a_file_taken_again_is_counted_before_it_is_opened(
        intake: Intake, keyring: VendorKeyring, opened: list[Any]) -> None:
    key = add_license(intake.engine, max_activations=1)
    outcome = intake.handle(arrival(intake, "a.req", WireDevice(keyring, "HW-1").activation(
        license_key=key), first_try=False))
    assert outcome.accepted
    assert opened == [[("pending", 1)]]  # its attempt committed first
    assert license_info(intake.engine, key)["active_devices"] == 1


def test_content_a_job_holds_is_counted_before_it_is_opened_and_a_spent_one_never(
        intake: Intake, keyring: VendorKeyring, opened: list[Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that makes its rule raise, sent again and again under new names (each a
    first try): only the first is opened before its count, and once its attempts are
    spent no copy is opened at all."""
    key = add_license(intake.engine, max_activations=1)
    data = WireDevice(keyring, "BOOM").activation(license_key=key)
    make_rule_raise(monkeypatch, "BOOM")
    outcomes = [intake.handle_many([arrival(intake, f"copy{n}.req", data, first_try=True)])
                for n in range(MAX_ATTEMPTS + 2)]
    assert [len(o.failed) for o in outcomes] == [1] * MAX_ATTEMPTS + [0, 0]
    assert [o.outcomes[0].reason for o in outcomes[-2:]] == ["poison", "poison"]
    assert outcomes[-1].outcomes[0].duplicate
    # The first copy before any row; each later one after its own count (the failed
    # chunk is applied once more on its own: two openings a try); none once spent.
    assert opened[0] == []
    assert all(seen and seen[0][1] >= 1 for seen in opened[1:])
    assert max(seen[0][1] for seen in opened[1:]) == MAX_ATTEMPTS
    assert [(j.status, j.attempts, j.reason) for j in jobs(intake.engine)] == [
        ("quarantined", MAX_ATTEMPTS + 1, "poison")]
    assert license_info(intake.engine, key)["active_devices"] == 0


def test_a_first_try_that_kills_the_process_is_counted_from_the_next_run(
        intake: Intake, keyring: VendorKeyring, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    key = add_license(intake.engine, max_activations=1)
    data = WireDevice(keyring, "HW-1").activation(license_key=key)
    openings = 0

    def verify(_data: bytes, **_kwargs: Any) -> Any:
        nonlocal openings
        openings += 1
        raise Killed

    monkeypatch.setattr(process, "verify", verify)
    with pytest.raises(Killed):
        intake.handle(arrival(intake, "a.req", data, first_try=True))
    assert jobs(intake.engine) == []  # died before anything was written
    runs = 0
    while True:  # each restart takes it again from _processing/
        runs += 1
        assert runs <= MAX_ATTEMPTS + 1, "never quarantined"
        try:
            outcome = intake.handle(arrival(intake, "a.req", data, first_try=False))
            break
        except Killed:
            continue
    assert (outcome.status, outcome.reason) == ("quarantined", "poison")
    assert openings == MAX_ATTEMPTS + 1  # the uncounted first try, then its attempts
    assert [(j.status, j.attempts) for j in jobs(intake.engine)] == [
        ("quarantined", MAX_ATTEMPTS + 1)]
    assert license_info(intake.engine, key)["active_devices"] == 0
    assert (tmp_path / "inbox/_quarantine/ACME/a.req.error.json").is_file()


def test_a_verification_that_raises_is_done_again_after_the_count_alone(
        intake: Intake, keyring: VendorKeyring, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error (not a refusal) while verifying early leaves the file to the counted
    path, where it fails on its own: the rest of the pass is applied."""
    key = add_license(intake.engine, max_activations=5)
    files = [WireDevice(keyring, f"HW-{n}").activation(license_key=key) for n in range(3)]
    real = process.verify
    openings: list[bool] = []

    def verify(data: bytes, **kwargs: Any) -> Any:
        openings.append(data == files[1])
        if data == files[1]:
            raise MemoryError("this one is too much")
        return real(data, **kwargs)

    monkeypatch.setattr(process, "verify", verify)
    applied = intake.handle_many([arrival(intake, f"f{n}.req", data, first_try=True)
                                  for n, data in enumerate(files)])
    assert [o.status for o in applied.outcomes] == ["done", "done"]
    assert [type(exc) for _, exc in applied.failed] == [MemoryError]
    assert license_info(intake.engine, key)["active_devices"] == 2
    assert sorted((j.status, j.attempts) for j in jobs(intake.engine)) == [
        ("done", 1), ("done", 1), ("pending", 1)]
    # early, then in the chunk after its count, then alone
    assert openings.count(True) == 3


def test_files_a_crash_kept_from_being_reached_are_not_counted_with_it(
        intake: Intake, keyring: VendorKeyring, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four files in a pass and the second kills the process whenever it is opened: on
    each restart the pass's files are handed over again. The other three are applied,
    the killer alone is quarantined."""
    key = add_license(intake.engine, max_activations=5)
    files = [WireDevice(keyring, f"HW-{n}").activation(license_key=key) for n in range(4)]
    real = process.verify

    def verify(data: bytes, **kwargs: Any) -> Any:
        if data == files[1]:
            raise Killed
        return real(data, **kwargs)

    monkeypatch.setattr(process, "verify", verify)
    first_try = True
    for _run in range(3 * MAX_ATTEMPTS):
        finished = {j.id for j in jobs(intake.engine) if j.status != "pending"}
        left = [arrival(intake, f"f{n}.req", data, first_try=first_try)
                for n, data in enumerate(files) if n + 1 not in finished]
        if not left:
            break
        try:
            intake.handle_many(left)
        except Killed:
            first_try = False  # the next run takes them again from _processing/
    rows = jobs(intake.engine)
    assert [(j.status, j.reason) for j in rows] == [
        ("done", None), ("quarantined", "poison"), ("done", None), ("done", None)]
    assert rows[1].attempts == MAX_ATTEMPTS + 1
    assert all(j.attempts <= 2 for j in rows if j.status == "done")
    assert license_info(intake.engine, key)["active_devices"] == 3
