"""Arrival → process → outbox → archive, with a crash between any two steps."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from sqlalchemy import Engine

from pipelines.intake import Intake
from pipelines.keyring import VendorKeyring
from pipelines.layout import Arrival, processing_key
from pipelines.process import Processor
from pipelines.storage.local import LocalStore
from tests.factories import NOW, WireDevice, add_license, license_info, vendor


@pytest.fixture
def intake(sqlite_engine: Engine, keyring: VendorKeyring, tmp_path: Path) -> Intake:
    vendor(sqlite_engine)
    return Intake(engine=sqlite_engine, processor=Processor(keyring=keyring, clock=lambda: NOW),
                  inbox=LocalStore(tmp_path / "inbox"), outbox=LocalStore(tmp_path / "outbox"))


def claimed(intake: Intake, area: str, name: str, data: bytes) -> Arrival:
    key = processing_key(area, name)
    intake.inbox.put(key, data)
    return Arrival(area=area, name=name, key=key, data=data,
                   sha256=hashlib.sha256(data).hexdigest(), size=len(data))


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_accepted_file_goes_to_outbox_and_processed(intake: Intake, keyring, tmp_path) -> None:
    key = add_license(intake.engine)
    arrival = claimed(intake, "ACME", "a.req", WireDevice(keyring, "HW").activation(
        license_key=key))
    outcome = intake.handle(arrival)
    assert outcome.accepted
    assert files_under(tmp_path / "outbox") == [f"ACME/{outcome.request_id}.lic"]
    assert files_under(tmp_path / "inbox") == ["_processed/ACME/a.req"]


def test_rejected_file_has_a_readable_error_report(intake: Intake, tmp_path) -> None:
    outcome = intake.handle(claimed(intake, "ACME", "junk.req", b"not a file"))
    assert outcome.reason == "malformed"
    inbox = files_under(tmp_path / "inbox")
    assert inbox == ["_rejected/ACME/junk.req", "_rejected/ACME/junk.req.error.json"]
    report = json.loads((tmp_path / "inbox/_rejected/ACME/junk.req.error.json").read_text())
    assert report["reason"] == "malformed" and report["message"]
    assert report["results"] == [f"ACME/{outcome.outputs[0][0]}"]
    assert len(files_under(tmp_path / "outbox")) == 1


def test_unknown_tenant_folder_is_rejected(intake: Intake, keyring) -> None:
    key = add_license(intake.engine)
    outcome = intake.handle(claimed(intake, "NOBODY", "a.req", WireDevice(
        keyring, "HW").activation(license_key=key)))
    assert outcome.reason == "unknown_tenant"
    assert license_info(intake.engine, key)["active_devices"] == 0


def test_crash_after_commit_before_outbox_rewrites_same_bytes(intake: Intake, keyring,
                                                              tmp_path) -> None:
    key = add_license(intake.engine, license_type="consumption", max_consumptions=50)
    device = WireDevice(keyring, "HW")
    intake.handle(claimed(intake, "ACME", "act.req", device.activation(license_key=key)))
    data = device.deactivation(license_key=key, consumptions=5)
    arrival = claimed(intake, "ACME", "deact.req", data)

    class Crash(Exception):
        pass

    real_put = intake.outbox.put_many
    intake.outbox.put_many = lambda *a, **k: (_ for _ in ()).throw(Crash())  # type: ignore[method-assign]
    with pytest.raises(Crash):
        intake.handle(arrival)
    intake.outbox.put_many = real_put  # type: ignore[method-assign]
    assert (tmp_path / "inbox" / arrival.key).exists()  # still in hand: nothing lost
    again = intake.handle(arrival)  # what recovery does after a restart
    assert again.accepted and again.duplicate
    assert license_info(intake.engine, key)["consumptions"]["total"] == 5
    receipts = [p for p in files_under(tmp_path / "outbox") if p.endswith(".receipt")]
    assert len(receipts) == 1


def test_same_name_dropped_twice_is_archived_twice_without_overwrite(intake: Intake,
                                                                     keyring) -> None:
    key = add_license(intake.engine, max_activations=3)
    first = WireDevice(keyring, "A").activation(license_key=key)
    second = WireDevice(keyring, "B").activation(license_key=key)
    intake.handle(claimed(intake, "ACME", "same.req", first))
    intake.handle(claimed(intake, "ACME", "same.req", second))
    processed = [p for p in files_under(intake.inbox.root) if p.startswith("_processed")]
    assert len(processed) == 2
    assert license_info(intake.engine, key)["active_devices"] == 2


def test_two_archivers_racing_for_one_name_never_replace_each_other(
        intake: Intake, tmp_path, monkeypatch) -> None:
    """Two runners (`airlock run --processes 2`) archive same-named files at the same
    moment: both saw the plain archive name free before either moved. The second one
    must take another name, for the file and for its report, not overwrite the first."""
    data = b"second file"
    first = claimed(intake, "ACME", "x.req", b"first file")
    second = claimed(intake, "ACME", "x.req.claim-0123456789ab", data)
    second = Arrival(area="ACME", name="x.req", key=second.key, data=data,
                     sha256=second.sha256, size=second.size)
    intake.handle(first)
    monkeypatch.setattr(intake.inbox, "exists", lambda _key: False)  # a stale look
    intake.handle(second)
    rejected = tmp_path / "inbox/_rejected/ACME"
    assert (rejected / "x.req").read_bytes() == b"first file"
    others = [p for p in rejected.iterdir() if p.name.startswith("x.req.")
              and not p.name.endswith(".error.json")]
    assert [p.read_bytes() for p in others] == [data]
    first_report = json.loads((rejected / "x.req.error.json").read_text())
    assert first_report["source"] == first.key
    assert json.loads((rejected / f"{others[0].name}.error.json").read_text())[
        "source"] == second.key


@pytest.mark.parametrize(("reason", "status", "folder"), [
    ("too_large", "rejected", "_rejected"), ("not_a_file", "quarantined", "_quarantine"),
    ("bad_name", "rejected", "_rejected")])
def test_an_entry_refused_unread_is_registered_without_content_and_reported(
        intake: Intake, tmp_path: Path, reason: str, status: str, folder: str) -> None:
    """What a source hands over for an entry it must not open: no content is stored,
    the size and an identity are; the customer gets a rejection report, the entry is
    archived with an error report, and handing it over again changes nothing."""
    from sqlalchemy import select

    from airlock_sdk.envelope import open_envelope
    from models.db import reading
    from models.tables import JOB

    key = processing_key("ACME", "huge.req")
    intake.inbox.put(key, b"\0" * 1000)  # stands for what was seen only through stat
    arrival = Arrival.refused(area="ACME", name="huge.req", key=key, reason=reason,
                              size=300 * 1024 * 1024, identity="inode 42 mtime 7",
                              detail="original name 'huge\\udcff.req'")
    outcome = intake.handle(arrival)
    assert (outcome.status, outcome.reason) == (status, reason)
    with reading(intake.engine) as conn:
        [row] = conn.execute(select(JOB.c.payload, JOB.c.size, JOB.c.sha256, JOB.c.status))
    assert row.payload is None and row.size == 300 * 1024 * 1024
    assert row.sha256 == arrival.sha256 != hashlib.sha256(b"\0" * 1000).hexdigest()
    [rejection] = [p for p in files_under(tmp_path / "outbox") if p.endswith(".rejection")]
    signed = open_envelope((tmp_path / "outbox" / rejection).read_bytes(),
                           resolve_verify_key=intake.processor.keyring.any_verify_key)
    assert signed.payload["reason"] == reason
    report = json.loads((tmp_path / "inbox" / folder / "ACME/huge.req.error.json").read_text())
    assert report["reason"] == reason and report["identity"] == arrival.sha256
    assert "sha256" not in report and report["detail"] == "original name 'huge\\udcff.req'"
    assert report["size"] == 300 * 1024 * 1024
    again = intake.handle(arrival)  # the same entry handed over again
    assert again.duplicate and again.status == status
