"""Bulk archives in embedded mode: expand → job rows → chunks → report, and refusals."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
import time
import zipfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func
from sqlmodel import col, select
from typer.testing import CliRunner

from config.settings import Settings
from models import Batch, Job, JobOutput
from models.db import READ_ONLY, session_scope
from models.types import utcnow
from pipelines import archives, bulk
from pipelines.bulk import BulkParts, handle_archive, run_chunk, update_progress
from pipelines.bulk.lease import LEASE, Lease, LeaseLost, _here, _started, take_lease
from pipelines.bulk.report import write_report
from pipelines.bulk.state import get_batch, open_batch
from pipelines.keyring import VendorKeyring
from pipelines.layout import make_arrival
from pipelines.process import Processor, process
from pipelines.storage.local import LocalStore
from tests.factories import NOW, WireDevice, add_license, license_info, vendor
from tests.s3fixtures import moto_server  # noqa: F401  (fixture)
from tests.test_archives import (
    far_offset_zip,
    make_ndjson,
    make_tar,
    make_zip,
    other_disks_zip,
    overlapping_zip,
    padded_stream_zip,
)


@pytest.fixture
def env(sqlite_engine: Engine, keyring: VendorKeyring, tmp_path: Path) -> BulkParts:
    vendor(sqlite_engine)
    sandbox = tmp_path / "sandbox"
    return BulkParts(settings=Settings(home=tmp_path / "var", chunk_size=4),
                     engine=sqlite_engine,
                     processor=Processor(keyring=keyring, clock=lambda: NOW),
                     inbox=LocalStore(sandbox / "inbox"), outbox=LocalStore(sandbox / "outbox"))


def activations(keyring: VendorKeyring, key: str, n: int) -> list[tuple[str, bytes]]:
    return [(f"requests/dev-{i:05d}.req", WireDevice(keyring, f"HW-{i}").activation(
        license_key=key)) for i in range(n)]


def drop(env: BulkParts, name: str, data: bytes, area: str = "ACME") -> bulk.BatchResult:
    key = f"{area}/{name}"
    env.inbox.put(key, data)
    return handle_archive(env, make_arrival(key, data))


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def report(env: BulkParts, result: bulk.BatchResult) -> tuple[dict[str, Any], list[dict]]:
    json_key, csv_key = result.report_keys
    document = json.loads(env.outbox.get(json_key))
    rows = list(csv.DictReader(io.StringIO(env.outbox.get(csv_key).decode())))
    return document, rows


def job_count(engine: Engine) -> int:
    with session_scope(engine) as session:
        return int(session.exec(select(func.count()).select_from(Job)).one())


# --- the happy path ---------------------------------------------------------------------


def test_zip_import_applies_members_and_reports_each_one(env: BulkParts, keyring) -> None:
    key = add_license(env.engine, max_activations=100)
    files = activations(keyring, key, 6)
    files += [("notes.txt", b"not an airlock file"), ("copy-of-first.req", files[0][1])]
    result = drop(env, "march.zip", make_zip(files))
    assert result.status == "reported" and result.accepted and not result.duplicate
    assert result.members == 8 and result.total == 7  # the copy reuses the first job
    assert result.counts == {"done": 6, "rejected": 1}
    assert license_info(env.engine, key)["active_devices"] == 6

    document, rows = report(env, result)
    assert [r["member"] for r in rows] == [name for name, _ in files]
    assert document["member_count"] == 8 and document["summary"] == {"done": 7, "rejected": 1}
    assert document["status"] == "complete" and document["archive"] == "march.zip"
    by_name = {r["member"]: r for r in rows}
    assert by_name["notes.txt"]["status"] == "rejected"
    assert by_name["notes.txt"]["reason"] == "malformed" and by_name["notes.txt"]["message"]
    assert by_name["copy-of-first.req"]["results"] == by_name[files[0][0]]["results"]
    for row in rows:
        for result_key in row["results"].split(";"):
            assert env.outbox.exists(result_key)
    lic = [r for r in rows if r["status"] == "done"]
    assert all(r["request_id"] and r["results"] == f"ACME/{r['request_id']}.lic" for r in lic)

    outbox = files_under(env.outbox.root)
    assert sum(name.endswith(".lic") for name in outbox) == 6
    assert sum(name.endswith(".rejection") for name in outbox) == 1
    assert f"ACME/batches/march.zip.{result.sha256[:12]}.report.json" in outbox
    assert "_processed/ACME/march.zip" in files_under(env.inbox.root)


@pytest.mark.parametrize("name,build", [
    ("x.tar", lambda f: make_tar(f)),
    ("x.tar.gz", lambda f: make_tar(f, gz=True)),
    ("x.tgz", lambda f: make_tar(f, gz=True)),
    ("x.ndjson", lambda f: make_ndjson([(n, d.decode()) for n, d in f])),
])
def test_tar_and_ndjson_imports(env: BulkParts, keyring, name: str, build: Any) -> None:
    key = add_license(env.engine, max_activations=100)
    files = activations(keyring, key, 5)
    result = drop(env, name, build(files))
    assert result.status == "reported" and result.counts == {"done": 5}
    _, rows = report(env, result)
    assert [r["member"] for r in rows] == [n for n, _ in files]
    assert license_info(env.engine, key)["active_devices"] == 5


def test_members_are_registered_one_commit_per_chunk(env: BulkParts, keyring,
                                                     monkeypatch) -> None:
    key = add_license(env.engine, max_activations=100)
    chunks: list[list[int]] = []
    real = bulk.InlineSink.chunk

    def spy(self: bulk.InlineSink, batch_id: int, job_ids: list[int]) -> None:
        chunks.append(job_ids)
        real(self, batch_id, job_ids)

    monkeypatch.setattr(bulk.InlineSink, "chunk", spy)
    drop(env, "nine.zip", make_zip(activations(keyring, key, 9)))
    assert [len(c) for c in chunks] == [4, 4, 1]


def test_consumption_from_a_bulk_of_deactivations(env: BulkParts, keyring) -> None:
    key = add_license(env.engine, license_type="consumption", max_consumptions=10_000,
                      max_activations=100)
    devices = [WireDevice(keyring, f"HW-{i}") for i in range(7)]
    for device in devices:
        assert process(device.activation(license_key=key), engine=env.engine, tenant="ACME",
                       processor=env.processor).accepted
    files = [(f"d{i}.deact", d.deactivation(license_key=key, consumptions=i + 1))
             for i, d in enumerate(devices)]
    result = drop(env, "usage.zip", make_zip(files))
    assert result.counts == {"done": 7}
    assert license_info(env.engine, key)["consumptions"]["total"] == sum(range(1, 8))
    receipts = [n for n in files_under(env.outbox.root) if n.endswith(".receipt")]
    assert len(receipts) == 7


# --- exactly once ---------------------------------------------------------------------------


def test_reimport_applies_nothing_and_redelivers_the_same_report(env: BulkParts,
                                                                keyring) -> None:
    key = add_license(env.engine, max_activations=100)
    data = make_zip(activations(keyring, key, 5))
    first = drop(env, "a.zip", data)
    report_bytes = env.outbox.get(first.report_keys[0])
    env.outbox.delete(first.report_keys[0])
    again = drop(env, "a-again.zip", data)
    assert again.duplicate and again.batch_id == first.batch_id
    assert env.outbox.get(first.report_keys[0]) == report_bytes
    assert license_info(env.engine, key)["active_devices"] == 5
    assert job_count(env.engine) == 5
    assert {"_processed/ACME/a.zip", "_processed/ACME/a-again.zip"} <= set(
        files_under(env.inbox.root))


def test_interrupted_import_resumes_without_applying_twice(env: BulkParts, keyring,
                                                           monkeypatch) -> None:
    key = add_license(env.engine, max_activations=100)
    data = make_zip(activations(keyring, key, 10))
    real = bulk.InlineSink.chunk
    calls = {"n": 0}

    def crash_after_first(self: bulk.InlineSink, batch_id: int, job_ids: list[int]) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the process dies half-way through registration
        real(self, batch_id, job_ids)

    monkeypatch.setattr(bulk.InlineSink, "chunk", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        drop(env, "big.zip", data)
    with session_scope(env.engine) as session:
        assert session.exec(select(Batch.status)).one() == "loading"
    monkeypatch.setattr(bulk.InlineSink, "chunk", real)
    result = handle_archive(env, make_arrival("ACME/big.zip", data))  # handed over again
    assert result.status == "reported" and result.counts == {"done": 10}
    assert license_info(env.engine, key)["active_devices"] == 10


def test_a_chunk_run_twice_does_not_count_twice(env: BulkParts, keyring, monkeypatch) -> None:
    key = add_license(env.engine, max_activations=100)
    finished: list[int] = []
    monkeypatch.setattr(bulk.InlineSink, "finish", lambda self, bid: finished.append(bid))
    result = drop(env, "c.zip", make_zip(activations(keyring, key, 6)))
    assert result.status == "complete" and finished == [result.batch_id]
    with session_scope(env.engine) as session:
        ids = list(session.exec(select(Job.id).order_by(Job.id)))
    again = run_chunk(env, ids[:4], result.batch_id)  # a redelivered chunk
    assert all(o.duplicate for o in again.outcomes)
    assert update_progress(env.engine, result.batch_id, now=NOW) == (False, "complete")
    state = bulk.batch_result(env.engine, result.batch_id)
    assert (state.total, state.finished) == (6, 6)


def test_progress_cannot_flip_before_every_member_is_registered(env: BulkParts) -> None:
    with session_scope(env.engine) as session:
        batch = Batch(tenant="ACME", source="x", sha256="0" * 64, status="loading")
        session.add(batch)
    assert update_progress(env.engine, batch.id, now=NOW) == (False, "loading")  # type: ignore[arg-type]


# --- refusals ------------------------------------------------------------------------------


def _zip_symlink() -> bytes:
    link = zipfile.ZipInfo("link.req")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    return make_zip([("fine.req", b"x"), (link, b"../../../../etc/passwd")])


def _tar_link(kind: bytes) -> bytes:
    entry = tarfile.TarInfo("link.req")
    entry.type = kind
    entry.linkname = "../../escape-target"
    return make_tar([("fine.req", b"x"), (entry, b"")], gz=True)


def _lying_zip() -> bytes:
    from tests.test_archives import _lie_about_size

    return _lie_about_size(make_zip([("bomb.req", b"\0" * 3_000_000)]), 100)


ESCAPE = "airlock-escape-7c1e.req"
HOSTILE = [
    ("slip.zip", lambda: make_zip([("ok.req", b"x"), (f"../../../{ESCAPE}", b"evil")]),
     "unsafe_archive"),
    ("abs.zip", lambda: make_zip([(f"/tmp/{ESCAPE}", b"evil")]), "unsafe_archive"),
    ("slip.tar.gz", lambda: make_tar([(f"../../{ESCAPE}", b"evil")], gz=True), "unsafe_archive"),
    ("link.zip", _zip_symlink, "unsafe_archive"),
    ("symlink.tgz", lambda: _tar_link(tarfile.SYMTYPE), "unsafe_archive"),
    ("hardlink.tar.gz", lambda: _tar_link(tarfile.LNKTYPE), "unsafe_archive"),
    ("ratio.zip", lambda: make_zip([("bomb.req", b"\0" * 250_000)]), "archive_too_large"),
    ("lying.zip", _lying_zip, "unsafe_archive"),
    ("garbage.zip", lambda: b"this is not a zip", "unsupported_archive"),
    ("overlap.zip", overlapping_zip, "unsafe_archive"),
    ("padded.zip", padded_stream_zip, "unsafe_archive"),
    ("offset.zip", lambda: far_offset_zip(2**63), "unsupported_archive"),
    ("disks.zip", other_disks_zip, "unsupported_archive"),
    ("bidi.zip", lambda: make_zip([("a.req", b"x"), ("invoice\u202eqer.exe", b"x")]),
     "unsafe_archive"),
    ("nfd.zip", lambda: make_zip([("caf\u00e9.req", b"x"), ("cafe\u0301.req", b"y")]),
     "unsafe_archive"),
]


@pytest.mark.parametrize("name,build,reason", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_archive_is_refused_whole_with_a_report(env: BulkParts, tmp_path: Path,
                                                        name: str, build: Any,
                                                        reason: str) -> None:
    before = {p for p in files_under(tmp_path) if not p.startswith("sandbox/")}
    result = drop(env, name, build())
    assert result.status == "rejected" and not result.accepted
    assert result.reason == reason and result.message
    assert job_count(env.engine) == 0

    document, rows = report(env, result)
    assert document["status"] == "rejected" and document["reason"] == reason
    assert document["message"] == result.message and rows == []
    inbox = files_under(env.inbox.root)
    assert f"_rejected/ACME/{name}" in inbox
    error = json.loads(env.inbox.get(f"_rejected/ACME/{name}.error.json"))
    assert error["reason"] == reason and error["results"] == result.report_keys

    after = {p for p in files_under(tmp_path) if not p.startswith("sandbox/")}
    assert after - before <= {"airlock.db-wal", "airlock.db-shm"}
    assert not list(tmp_path.rglob(ESCAPE)) and not Path("/tmp", ESCAPE).exists()
    assert all(p.startswith(("_rejected/", "_batches/")) for p in inbox)


def test_refused_archive_dropped_again_is_refused_again_without_work(env: BulkParts) -> None:
    data = make_zip([("../x.req", b"x")])
    first = drop(env, "bad.zip", data)
    second = drop(env, "bad-again.zip", data)
    assert second.duplicate and second.status == "rejected" and second.reason == first.reason
    assert "_rejected/ACME/bad-again.zip" in files_under(env.inbox.root)


class _WatchedOutbox(LocalStore):
    """An outbox that records the batch's row as each file of a report lands in it."""

    def __init__(self, root: Path, engine: Engine) -> None:
        super().__init__(root)
        self.engine, self.seen = engine, []  # type: list[tuple[str, str, str | None]]

    def put_file(self, key: str, fileobj: Any) -> None:
        super().put_file(key, fileobj)
        with session_scope(self.engine) as session:
            row = session.exec(select(Batch)).one()
            self.seen.append((key, row.status, row.report_name))


def test_a_refused_archive_turns_final_only_with_its_report_written_and_named(
        env: BulkParts, tmp_path: Path) -> None:
    # A reader that waits for a final batch (the mail reply, the portal) reads its
    # report name in the same row: it must never find the batch rejected without it.
    outbox = _WatchedOutbox(tmp_path / "watched-outbox", env.engine)
    env = BulkParts(settings=env.settings, engine=env.engine, processor=env.processor,
                    inbox=env.inbox, outbox=outbox)
    result = drop(env, "bad.zip", make_zip([("../x.req", b"x")]))
    assert result.status == "rejected" and len(result.report_keys) == 2
    assert [status for _key, status, _name in outbox.seen] == ["loading", "loading"]
    with session_scope(env.engine) as session:
        row = session.exec(select(Batch)).one()
    assert row.status == "rejected" and row.report_name == result.report_keys[0].split("/", 1)[1]
    first = outbox.get(result.report_keys[0])
    assert bulk.redeliver_report(env, row) == result.report_keys
    assert outbox.get(result.report_keys[0]) == first  # the row rebuilds the same bytes


def test_a_refusal_that_lost_its_lease_leaves_the_winners_report(env: BulkParts) -> None:
    # The first import went `LEASE` without renewing; a second one took the batch over
    # and refused it first. The first one's refusal, when it comes, changes nothing.
    data = make_zip([("../x.req", b"x")])
    env.inbox.put("ACME/bad.zip", data)
    with session_scope(env.engine) as session:
        batch, _created = open_batch(session, tenant="ACME", source="ACME/bad.zip",
                                     sha256=hashlib.sha256(data).hexdigest(), now=NOW)
    assert batch.id is not None
    stale = take_lease(env.engine, batch.id, now=NOW)
    assert stale is not None
    assert take_lease(env.engine, batch.id, now=NOW + LEASE / 2) is None  # still held
    fresh = take_lease(env.engine, batch.id, now=NOW + LEASE + timedelta(seconds=1))
    assert fresh is not None and fresh.holder != stale.holder
    winner = bulk.reject_batch(env, batch.id, "unsafe_archive", "first", source="ACME/bad.zip",
                               lease=fresh)
    loser = bulk.reject_batch(env, batch.id, "archive_too_large", "second",
                              source="ACME/bad.zip", lease=stale)
    assert loser.reason == winner.reason == "unsafe_archive" and loser.message == "first"
    document, _rows = report(env, loser)
    assert document["reason"] == "unsafe_archive" and document["message"] == "first"
    assert get_batch(env.engine, batch.id).loader is None  # the lease ended with it


def test_a_refusal_after_the_same_archive_was_imported_leaves_that_import_standing(
        env: BulkParts, keyring) -> None:
    # The same bytes under two names, one the importer can read and one it refuses
    # (say, a suffix it does not know): the refusal, checked last, changes nothing.
    key = add_license(env.engine, max_activations=10)
    data = make_zip(activations(keyring, key, 2))
    good = drop(env, "fleet.zip", data)
    assert good.status == "reported"
    before = env.outbox.get(good.report_keys[0])
    env.inbox.delete(bulk.manifest_key(get_batch(env.engine, good.batch_id)))
    env.inbox.put("ACME/fleet-copy.zip", data)  # the report could not be built again
    late = bulk.reject_batch(env, good.batch_id, "unsupported_archive", "not read",
                             source="ACME/fleet-copy.zip",
                             lease=Lease(good.batch_id, "elsewhere/?:1:stale"))
    assert late.status == "reported" and late.reason is None
    assert env.outbox.get(good.report_keys[0]) == before
    assert license_info(env.engine, key)["active_devices"] == 2
    assert "_processed/ACME/fleet-copy.zip" in files_under(env.inbox.root)


# --- one import at a time: the loading lease ----------------------------------------------


class _SecondImportMidway(bulk.InlineSink):
    """Applies chunks inline; before the first one, the same bytes arrive under another
    name and are handed over while this import still loads the batch."""

    def __init__(self, env: BulkParts, name: str, data: bytes) -> None:
        super().__init__(env)
        self.name, self.data = name, data
        self.second: bulk.BatchResult | None = None

    def chunk(self, batch_id: int, job_ids: list[int]) -> None:
        if self.second is None:
            key = f"ACME/{self.name}"
            self.env.inbox.put(key, self.data)
            self.second = handle_archive(self.env, make_arrival(key, self.data))
        super().chunk(batch_id, job_ids)


def test_a_second_import_of_a_loading_archive_waits_for_the_first(env: BulkParts,
                                                                   keyring) -> None:
    # The copy's name says tar, its bytes are a zip: alone it would be refused. While
    # the first import loads the batch, that refusal must not turn it rejected under
    # the members the first one applies: the copy is handed back, to be tried later.
    key = add_license(env.engine, max_activations=10)
    data = make_zip(activations(keyring, key, 6))
    env.inbox.put("ACME/fleet.zip", data)
    sink = _SecondImportMidway(env, "fleet-copy.tar", data)
    first = handle_archive(env, make_arrival("ACME/fleet.zip", data), sink=sink)
    second = sink.second
    assert second is not None and second.busy and second.status == "loading"
    assert second.batch_id == first.batch_id and not second.report_keys
    assert first.status == "reported" and first.reason is None and first.counts == {"done": 6}
    assert license_info(env.engine, key)["active_devices"] == 6
    row = get_batch(env.engine, first.batch_id)
    assert row.status == "reported" and row.loader is None and row.lease_until is None
    assert "ACME/fleet-copy.tar" in files_under(env.inbox.root)  # still in hand

    again = handle_archive(env, make_arrival("ACME/fleet-copy.tar", data))  # the retry
    assert again.duplicate and again.status == "reported" and not again.busy
    assert again.report_keys == first.report_keys
    assert license_info(env.engine, key)["active_devices"] == 6
    assert "_processed/ACME/fleet-copy.tar" in files_under(env.inbox.root)


def _leased(env: BulkParts, data: bytes, holder: str, until: datetime) -> int:
    with session_scope(env.engine) as session:
        batch, _created = open_batch(session, tenant="ACME", source="ACME/first.zip",
                                     sha256=hashlib.sha256(data).hexdigest(), now=NOW)
        batch.loader, batch.lease_until = holder, until
        session.add(batch)
    assert batch.id is not None
    return batch.id


def test_a_lease_held_elsewhere_is_waited_for_until_it_runs_out(env: BulkParts,
                                                                keyring) -> None:
    key = add_license(env.engine, max_activations=10)
    data = make_zip(activations(keyring, key, 3))
    batch_id = _leased(env, data, "other-host/pid:[1]:4242:abc", NOW + LEASE)
    busy = drop(env, "fleet.zip", data)
    assert busy.busy and busy.status == "loading" and job_count(env.engine) == 0
    assert get_batch(env.engine, batch_id).loader == "other-host/pid:[1]:4242:abc"

    later = BulkParts(settings=env.settings, engine=env.engine, outbox=env.outbox,
                      inbox=env.inbox, processor=Processor(
                          keyring=keyring, clock=lambda: NOW + LEASE + timedelta(seconds=1)))
    taken = handle_archive(later, make_arrival("ACME/fleet.zip", data))
    assert taken.status == "reported" and not taken.busy and taken.counts == {"done": 3}
    assert license_info(env.engine, key)["active_devices"] == 3


def test_a_lease_of_a_process_here_that_is_gone_is_taken_over_at_once(env: BulkParts,
                                                                      keyring) -> None:
    key = add_license(env.engine, max_activations=10)
    data = make_zip(activations(keyring, key, 2))
    dead = subprocess.Popen(["true"])  # once reaped, its pid names no process
    dead.wait()
    _leased(env, data, f"{_here()}:{dead.pid}:1:abc", NOW + LEASE)
    result = drop(env, "fleet.zip", data)
    assert result.status == "reported" and result.counts == {"done": 2}
    assert license_info(env.engine, key)["active_devices"] == 2

    # A live process of this host (this one's parent) keeps its lease; its pid with
    # another start time was a holder that ended, the number now used again.
    parent = os.getppid()
    for data, started, busy in ((make_zip([("a.txt", b"a")]), _started(parent), True),
                                (make_zip([("b.txt", b"b")]), "1", False)):
        _leased(env, data, f"{_here()}:{parent}:{started}:a", NOW + LEASE)
        assert drop(env, "other.zip", data).busy is busy

    # The same pid and namespace on another machine (its boot id differs): waited for.
    elsewhere = _here().replace(_here().split("/")[1], "00000000-0000-0000-0000-000000000000")
    assert elsewhere != _here()
    data = make_zip([("c.txt", b"c")])
    _leased(env, data, f"{elsewhere}:{dead.pid}:1:abc", NOW + LEASE)
    assert drop(env, "third.zip", data).busy


def test_an_import_that_fails_gives_its_lease_back(env: BulkParts, keyring) -> None:
    key = add_license(env.engine, max_activations=10)
    data = make_zip(activations(keyring, key, 6))

    class Failing(bulk.InlineSink):
        def chunk(self, batch_id: int, job_ids: list[int]) -> None:
            raise OSError("disk gone")

    env.inbox.put("ACME/fleet.zip", data)
    with pytest.raises(OSError):
        handle_archive(env, make_arrival("ACME/fleet.zip", data), sink=Failing(env))
    row = get_batch(env.engine, 1)
    assert row.status == "loading" and row.loader is None
    result = handle_archive(env, make_arrival("ACME/fleet.zip", data))  # the retry goes on
    assert result.status == "reported" and result.counts == {"done": 6}
    assert license_info(env.engine, key)["active_devices"] == 6


def test_an_import_that_lost_its_lease_registers_no_more(env: BulkParts, keyring) -> None:
    key = add_license(env.engine, max_activations=10)
    data = make_zip(activations(keyring, key, 6))

    class TakenOver(bulk.InlineSink):
        def chunk(self, batch_id: int, job_ids: list[int]) -> None:
            with session_scope(self.env.engine) as session:  # another import took it
                row = session.exec(select(Batch).where(Batch.id == batch_id)).one()
                row.loader = "other-host/pid:[1]:1:x"
                session.add(row)
            super().chunk(batch_id, job_ids)

    env.inbox.put("ACME/fleet.zip", data)
    with pytest.raises(LeaseLost):
        handle_archive(env, make_arrival("ACME/fleet.zip", data), sink=TakenOver(env))
    assert job_count(env.engine) == 4  # the first chunk only (chunk_size 4)
    row = get_batch(env.engine, 1)
    assert row.status == "loading" and row.loader == "other-host/pid:[1]:1:x"


def test_archive_for_an_unknown_customer_is_refused(env: BulkParts, keyring) -> None:
    result = drop(env, "who.zip", make_zip([("a.req", b"x")]), area="NOBODY")
    assert result.status == "rejected" and result.reason == "unknown_tenant"
    assert job_count(env.engine) == 0


def test_limits_come_from_settings(env: BulkParts, keyring) -> None:
    env.settings = Settings(home=env.settings.home, max_archive_members=3, chunk_size=4)
    key = add_license(env.engine, max_activations=100)
    result = drop(env, "many.zip", make_zip(activations(keyring, key, 4)))
    assert result.reason == "archive_too_large"
    assert license_info(env.engine, key)["active_devices"] == 0


def test_operator_area_archives_are_not_bulk() -> None:
    assert not bulk.is_bulk(make_arrival("_operator/x.zip", b""))
    assert bulk.is_bulk(make_arrival("ACME/sub/x.ZIP", b""))
    assert not bulk.is_bulk(make_arrival("ACME/x.req", b""))


def test_archive_names_in_reports_are_safe() -> None:
    assert bulk.archive_name("cli:my archive (1).zip") == "my_archive__1_.zip"
    assert bulk.archive_name("_processing/ACME/sub/x.zip.claim-0123456789ab") == "x.zip"
    assert bulk.archive_name("ACME/deep/er/y.tgz") == "y.tgz"


# --- scale and the command line ---------------------------------------------------------------


@pytest.mark.slow  # ~2 minutes: the processing core applies ~10 ms per activation
def test_ten_thousand_member_zip(env: BulkParts, keyring, tmp_path: Path) -> None:
    env.settings = Settings(home=tmp_path / "var")  # the default chunk size
    keys = [add_license(env.engine, max_activations=250) for _ in range(50)]
    files = [(f"requests/{i:05d}.req", WireDevice(keyring, f"HW-{i}").activation(
        license_key=keys[i % 50])) for i in range(9_990)]
    files += [(f"junk/{i}.txt", f"junk {i}".encode()) for i in range(10)]
    started = time.monotonic()
    result = drop(env, "ten-thousand.zip", make_zip(files))
    print(f"10,000-member zip imported in {time.monotonic() - started:.1f}s")
    assert result.status == "reported" and result.members == 10_000
    assert result.counts == {"done": 9_990, "rejected": 10}
    document, rows = report(env, result)
    assert len(rows) == 10_000 and document["member_count"] == 10_000
    assert [r["member"] for r in rows] == [n for n, _ in files]
    assert document["summary"] == {"done": 9_990, "rejected": 10}
    assert all(r["status"] == "done" and r["results"] == f"ACME/{r['request_id']}.lic"
               for r in rows[:9_990])
    assert all(r["reason"] == "malformed" for r in rows[9_990:])
    assert sum(license_info(env.engine, k)["active_devices"] for k in keys) == 9_990
    with session_scope(env.engine) as session:
        assert session.exec(select(func.count()).select_from(JobOutput)).one() == 10_000
        assert session.exec(select(func.max(Job.attempts))).one() == 1
    outbox = list((env.outbox.root / "ACME").iterdir())
    assert sum(p.suffix == ".lic" for p in outbox) == 9_990
    assert sum(p.suffix == ".rejection" for p in outbox) == 10


def test_import_command_in_embedded_mode(tmp_path: Path, keyring, monkeypatch) -> None:
    from cli.distributed import register
    from cli.main import app
    from models.db import create_schema, make_engine
    from pipelines.keyring import init_keyring

    home = tmp_path / "home"
    monkeypatch.setenv("AIRLOCK_HOME", str(home))
    monkeypatch.delenv("AIRLOCK_BROKER_URL", raising=False)
    engine = make_engine(f"sqlite:///{home / 'airlock.db'}")
    create_schema(engine)
    vendor(engine)
    ring, _ = init_keyring(home / "keys")
    key = add_license(engine, max_activations=10)
    archive = tmp_path / "upload.zip"
    archive.write_bytes(make_zip(activations(ring, key, 3)))
    if not any(c.name == "import" for c in app.registered_commands):
        register(app)
    outcome = CliRunner().invoke(app, ["import", str(archive), "--customer", "ACME", "--json"])
    assert outcome.exit_code == 0, outcome.output
    summary = json.loads(outcome.stdout)
    assert summary["status"] == "reported" and summary["members"] == 3
    assert summary["report"][0].startswith("ACME/batches/upload.zip.")
    assert (home / "outbox" / summary["report"][1]).exists()
    again = CliRunner().invoke(app, ["import", str(archive), "--customer", "ACME", "--json"])
    assert json.loads(again.stdout)["duplicate"] is True
    bad = tmp_path / "bad.zip"
    bad.write_bytes(make_zip([("../x.req", b"x")]))
    refused = CliRunner().invoke(app, ["import", str(bad), "--customer", "ACME", "--json"])
    assert refused.exit_code == 1 and json.loads(refused.stdout)["reason"] == "unsafe_archive"

    busy = tmp_path / "busy.zip"  # another import (another host) is loading these bytes
    busy.write_bytes(make_zip(activations(ring, key, 2)))
    with session_scope(engine) as session:
        batch, _ = open_batch(session, tenant="ACME", source="ACME/busy.zip",
                              sha256=hashlib.sha256(busy.read_bytes()).hexdigest(), now=NOW)
        batch.loader, batch.lease_until = "other-host/pid:[1]:7:x", utcnow() + LEASE
        session.add(batch)
    waiting = CliRunner().invoke(app, ["import", str(busy), "--customer", "ACME", "--json"])
    assert waiting.exit_code == 1 and waiting.stdout == ""
    assert "[import_in_progress]" in waiting.stderr and "Traceback" not in waiting.stderr
    assert len(waiting.stderr.strip().splitlines()) == 1
    with session_scope(engine) as session:
        assert session.exec(select(func.count()).select_from(Job).where(
            col(Job.batch_id).is_not(None))).one() == 3
    engine.dispose()


# --- where archives come from -------------------------------------------------------------


def test_archive_claimed_by_the_drop_folder_is_archived_from_processing(env: BulkParts,
                                                                        keyring) -> None:
    from pipelines.layout import Arrival, processing_key

    key = add_license(env.engine, max_activations=10)
    data = make_zip(activations(keyring, key, 2))
    claimed = processing_key("ACME", "in/drop.zip") + ".claim-0123456789ab"
    env.inbox.put(claimed, data)
    arrival = Arrival(area="ACME", name="in/drop.zip", key=claimed, data=data,
                      sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    result = handle_archive(env, arrival)
    assert result.status == "reported"
    assert files_under(env.inbox.root) == ["_batches/ACME/1.members.ndjson",
                                           "_processed/ACME/in/drop.zip"]
    assert result.report_keys[0] == f"ACME/batches/drop.zip.{result.sha256[:12]}.report.json"


def test_archive_is_streamed_from_the_store_when_the_arrival_has_no_bytes(
        env: BulkParts, keyring) -> None:
    from pipelines.layout import Arrival

    key = add_license(env.engine, max_activations=10)
    data = make_zip(activations(keyring, key, 3))
    env.inbox.put("ACME/lazy.zip", data)
    arrival = Arrival(area="ACME", name="lazy.zip", key="ACME/lazy.zip", data=b"",
                      sha256="", size=len(data))
    result = handle_archive(env, arrival)
    assert result.status == "reported" and result.counts == {"done": 3}
    assert result.sha256 == hashlib.sha256(data).hexdigest()


def test_s3_archives_are_spooled_to_a_temp_file(env: BulkParts, keyring,
                                                moto_server) -> None:  # noqa: F811
    from pipelines.layout import Arrival
    from tests.s3fixtures import make_s3_store

    key = add_license(env.engine, max_activations=10)
    store = make_s3_store(moto_server)
    env.inbox = store
    data = make_zip(activations(keyring, key, 3))
    store.put("ACME/remote.zip", data)
    with store.open("ACME/remote.zip") as spooled:
        assert not isinstance(spooled, io.BytesIO) and spooled.read() == data
    with pytest.raises(FileNotFoundError):
        with store.open("ACME/missing.zip"):
            pass
    result = handle_archive(env, Arrival(area="ACME", name="remote.zip", key="ACME/remote.zip",
                                         data=b"", sha256="", size=len(data)))
    assert result.status == "reported" and result.counts == {"done": 3}
    assert [info.key for info in store.list("_processed/")] == ["_processed/ACME/remote.zip"]


def test_import_command_reads_an_s3_url(tmp_path: Path, moto_server,  # noqa: F811
                                        monkeypatch) -> None:
    from cli.distributed import register
    from cli.main import app
    from models.db import create_schema, make_engine
    from pipelines.keyring import init_keyring
    from tests.s3fixtures import create_bucket

    home = tmp_path / "home"
    for name, value in {"AIRLOCK_HOME": str(home), "AIRLOCK_S3_ENDPOINT_URL": moto_server.url,
                        "AIRLOCK_S3_REGION": moto_server.region}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AIRLOCK_BROKER_URL", raising=False)
    engine = make_engine(f"sqlite:///{home / 'airlock.db'}")
    create_schema(engine)
    vendor(engine)
    ring, _ = init_keyring(home / "keys")
    key = add_license(engine, max_activations=10)
    bucket = create_bucket(moto_server)
    moto_server.client("s3").put_object(Bucket=bucket, Key="uploads/acme.ndjson",
                                        Body=make_ndjson([(n, d.decode()) for n, d in
                                                          activations(ring, key, 2)]))
    if not any(c.name == "import" for c in app.registered_commands):
        register(app)
    runner = CliRunner()
    ok = runner.invoke(app, ["import", f"s3://{bucket}/uploads/acme.ndjson", "--customer",
                             "ACME", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["counts"] == {"done": 2}
    missing = runner.invoke(app, ["import", f"s3://{bucket}/nope.zip", "--customer", "ACME"])
    assert missing.exit_code == 2
    engine.dispose()


def test_report_falls_back_to_the_jobs_when_the_member_list_is_gone(env: BulkParts, keyring,
                                                                    monkeypatch) -> None:
    key = add_license(env.engine, max_activations=10)
    monkeypatch.setattr(bulk.InlineSink, "finish", lambda self, bid: None)
    files = activations(keyring, key, 3)
    result = drop(env, "lost.zip", make_zip(files))
    assert result.status == "complete"
    with session_scope(env.engine) as session:
        batch = session.exec(select(Batch)).one()
    env.inbox.delete(bulk.manifest_key(batch))
    finished = bulk.finish_batch(env, result.batch_id)
    assert finished.status == "reported"
    _, rows = report(env, finished)
    assert [r["member"] for r in rows] == [n for n, _ in files]


def test_the_report_puts_back_results_missing_from_the_outbox(env: BulkParts, keyring,
                                                              monkeypatch) -> None:
    # A worker that died between its commit and its outbox writes leaves results only
    # in the database; the report is the last chance to deliver them.
    key = add_license(env.engine, max_activations=10)
    monkeypatch.setattr(bulk.InlineSink, "finish", lambda self, bid: None)
    result = drop(env, "gap.zip", make_zip(activations(keyring, key, 3)))
    delivered = sorted(f for f in files_under(env.outbox.root) if f.endswith(".lic"))
    assert len(delivered) == 3
    kept = env.outbox.get(delivered[1])
    env.outbox.delete(delivered[1])
    finished = bulk.finish_batch(env, result.batch_id)
    assert finished.status == "reported" and finished.members == 3
    assert env.outbox.get(delivered[1]) == kept
    assert sorted(f for f in files_under(env.outbox.root) if f.endswith(".lic")) == delivered


def test_a_member_shared_with_an_unfinished_batch_is_applied_by_the_report(
        env: BulkParts, keyring, monkeypatch) -> None:
    # The second archive's copy of a member reuses the first archive's job, which that
    # batch has not got to: the second report applies it once rather than report it
    # pending, and delivers its result.
    key = add_license(env.engine, max_activations=10)
    files = activations(keyring, key, 3)
    with monkeypatch.context() as stalled:
        stalled.setattr(bulk.InlineSink, "chunk", lambda self, bid, ids: None)
        stalled.setattr(bulk.InlineSink, "finish", lambda self, bid: None)
        first = drop(env, "first.zip", make_zip(files[:2]))
    assert first.status == "open" and first.counts == {"pending": 2}

    def own_jobs_only(sink: bulk.InlineSink, bid: int, ids: list[int]) -> None:
        # The chunk leaves the shared job to its own batch (which has not run it).
        with session_scope(env.engine) as session:
            own = list(session.exec(select(Job.id).where(col(Job.id).in_(ids),
                                                         Job.batch_id == bid)))
        run_chunk(sink.env, own, bid)

    monkeypatch.setattr(bulk.InlineSink, "chunk", own_jobs_only)
    second = drop(env, "second.zip", make_zip([files[2], ("copy.req", files[0][1])]))
    assert second.status == "reported" and second.total == 1
    _document, rows = report(env, second)
    assert [(r["member"], r["status"]) for r in rows] == [(files[2][0], "done"),
                                                          ("copy.req", "done")]
    assert env.outbox.exists(rows[1]["results"])
    with session_scope(env.engine) as session:
        jobs = {j.source: j for j in session.exec(select(Job))}
    shared = jobs[f"ACME/first.zip!{files[0][0]}"]
    assert shared.status == "done" and shared.attempts == 1
    assert jobs[f"ACME/first.zip!{files[1][0]}"].status == "pending"  # not the report's
    assert license_info(env.engine, key)["active_devices"] == 2


def test_a_report_larger_than_its_memory_spool_is_complete(env: BulkParts) -> None:
    batch = Batch(id=7, tenant="ACME", source="cli:big.zip", sha256="ab" * 32,
                  status="complete", total=0, finished=0, created_at=NOW)
    rows = ({"member": f"requests/device-{n:06d}.req", "status": "done", "reason": None,
             "message": None, "request_id": f"req-{n}", "results": [f"ACME/req-{n}.lic"]}
            for n in range(12_000))  # ~2.5 MB of JSON: past the 1 MiB spool
    keys, count = write_report(env.outbox, batch, rows)
    assert count == 12_000
    text = env.outbox.get(keys[0]).decode()
    document = json.loads(text)
    assert text == json.dumps(document, indent=2) + "\n"
    assert document["summary"] == {"done": 12_000} and document["member_count"] == 12_000
    assert document["members"][11_999]["results"] == ["ACME/req-11999.lic"]
    lines = env.outbox.get(keys[1]).decode().splitlines()
    assert len(lines) == 12_001 and lines[-1] == "requests/device-011999.req,done,,req-11999," \
                                                 "ACME/req-11999.lic,"


def test_an_archive_that_changes_between_its_two_reads_is_not_imported(env: BulkParts,
                                                                       keyring,
                                                                       monkeypatch) -> None:
    key = add_license(env.engine, max_activations=10)
    files = activations(keyring, key, 3)

    def swapped(fileobj, fmt, limits):  # the second read sees other bytes
        for member in archives.read_members(fileobj, fmt, limits):
            yield archives.Member(member.name, member.data + b" ")

    monkeypatch.setattr(bulk.importer, "read_members", swapped)
    with pytest.raises(RuntimeError, match="changed while it was being read"):
        drop(env, "moving.zip", make_zip(files))
    assert job_count(env.engine) == 0
    with session_scope(env.engine) as session:
        assert session.exec(select(Batch.status)).one() == "loading"


def test_the_batch_report_gives_public_reasons_only(env: BulkParts, keyring) -> None:
    """A bulk member naming another tenant's license reads as no license, in the JSON
    and the CSV; the job keeps the precise reason for the vendor."""
    beta = add_license(env.engine, customer_code="BETA")
    owner = WireDevice(keyring, "HW-B")
    assert process(owner.activation(license_key=beta), engine=env.engine, tenant="BETA",
                   processor=env.processor).accepted
    files = [("theirs.req", WireDevice(keyring, "HW-1").activation(license_key=beta)),
             ("none.req", WireDevice(keyring, "HW-2").activation(license_key="NO-SUCH-KEY")),
             ("stranger.req", owner.deactivation(license_key=beta))]
    result = drop(env, "probe.zip", make_zip(files))
    document, rows = report(env, result)
    by_name = {r["member"]: r for r in rows}
    assert by_name["theirs.req"]["reason"] == by_name["none.req"]["reason"] == "unknown_license"
    assert by_name["theirs.req"]["message"] == by_name["none.req"]["message"]
    assert by_name["stranger.req"]["reason"] == "unknown_license"
    assert "wrong_tenant" not in json.dumps(document)
    with session_scope(env.engine) as session:
        reasons = set(session.exec(select(Job.reason).where(Job.tenant == "ACME")))
    assert reasons == {"wrong_tenant", "unknown_license"}
    assert license_info(env.engine, beta)["active_devices"] == 1


def _batch_with_jobs(engine: Engine, statuses: list[str]) -> int:
    with session_scope(engine) as session:
        batch = Batch(tenant="ACME", source="cli:p.zip", sha256="cd" * 32, status="open",
                      total=len(statuses), finished=0, created_at=NOW)
        session.add(batch)
        session.flush()
        for n, status in enumerate(statuses):
            session.add(Job(tenant="ACME", sha256=f"{n:064d}", source=f"m{n}", size=1,
                            status=status, batch_id=batch.id, created_at=NOW,
                            updated_at=NOW))
        assert batch.id is not None
        return batch.id


def _progress(engine: Engine, batch_id: int) -> tuple[str, int, int]:
    with session_scope(engine) as session:
        batch = session.exec(select(Batch).where(Batch.id == batch_id)).one()
        return batch.status, batch.finished, batch.total


def test_a_batch_completes_when_no_job_is_pending_whatever_the_recount(
        sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Progress is recounted at most every RECOUNT_SECONDS per process (a count reads
    every job of the batch); completion is decided at once, from the pending jobs."""
    monkeypatch.setattr(bulk.state, "RECOUNT_SECONDS", 3600.0)
    batch_id = _batch_with_jobs(sqlite_engine, ["done", "rejected", "pending"])
    assert update_progress(sqlite_engine, batch_id, now=NOW) == (False, "open")
    assert _progress(sqlite_engine, batch_id) == ("open", 2, 3)  # the first call counts
    with session_scope(sqlite_engine) as session:
        session.execute(Job.__table__.update().where(  # type: ignore[attr-defined]
            col(Job.batch_id) == batch_id, col(Job.status) == "pending").values(
            status="quarantined"))
    assert update_progress(sqlite_engine, batch_id, now=NOW) == (True, "complete")
    assert _progress(sqlite_engine, batch_id) == ("complete", 3, 3)
    assert update_progress(sqlite_engine, batch_id, now=NOW) == (False, "complete")


def test_progress_between_recounts_is_the_last_count(
        sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    batch_id = _batch_with_jobs(sqlite_engine, ["done", "pending", "pending"])
    monkeypatch.setattr(bulk.state, "RECOUNT_SECONDS", 3600.0)
    update_progress(sqlite_engine, batch_id, now=NOW)
    with session_scope(sqlite_engine) as session:
        session.execute(Job.__table__.update().where(  # type: ignore[attr-defined]
            col(Job.sha256) == f"{1:064d}").values(status="done"))
    update_progress(sqlite_engine, batch_id, now=NOW)
    assert _progress(sqlite_engine, batch_id) == ("open", 1, 3)  # not recounted yet
    monkeypatch.setattr(bulk.state, "RECOUNT_SECONDS", 0.0)
    assert update_progress(sqlite_engine, batch_id, now=NOW) == (False, "open")
    assert _progress(sqlite_engine, batch_id) == ("open", 2, 3)


def test_a_chunk_whose_batch_has_jobs_pending_writes_nothing_between_recounts(
        sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three write transactions a chunk became two: progress between recounts, with
    jobs still pending, is only read (the workers and the importer share one writer)."""
    batch_id = _batch_with_jobs(sqlite_engine, ["done", "pending", "pending"])
    monkeypatch.setattr(bulk.state, "RECOUNT_SECONDS", 3600.0)
    writes: list[bool] = []

    def on_begin(conn: Any) -> None:
        writes.append(not conn.get_execution_options().get(READ_ONLY))

    event.listen(sqlite_engine, "begin", on_begin)
    try:
        assert update_progress(sqlite_engine, batch_id, now=NOW) == (False, "open")
        assert writes.count(True) == 1  # the first call counts
        writes.clear()
        for _ in range(3):
            assert update_progress(sqlite_engine, batch_id, now=NOW) == (False, "open")
        assert writes and not any(writes)
        with session_scope(sqlite_engine) as session:
            session.execute(Job.__table__.update().where(  # type: ignore[attr-defined]
                col(Job.batch_id) == batch_id).values(status="done"))
        writes.clear()
        assert update_progress(sqlite_engine, batch_id, now=NOW) == (True, "complete")
        assert writes.count(True) == 1  # the flip itself
    finally:
        event.remove(sqlite_engine, "begin", on_begin)
    assert _progress(sqlite_engine, batch_id) == ("complete", 3, 3)


def test_the_embedded_runner_hands_a_busy_archive_back_to_its_source(tmp_path: Path) -> None:
    from models.migrate import upgrade
    from pipelines.keyring import init_keyring
    from pipelines.layout import Arrival, processing_key
    from workers.embedded import EmbeddedRunner
    from workers.runtime import build_runtime

    settings = Settings(home=tmp_path / "var")
    upgrade(settings.resolved_database_url)
    init_keyring(settings.resolved_keys_dir)
    runtime = build_runtime(settings)
    try:
        vendor(runtime.engine)
        key = add_license(runtime.engine, max_activations=10)
        data = make_zip(activations(runtime.keyring, key, 2))
        inbox_key = processing_key("ACME", "fleet.zip")
        runtime.inbox.put(inbox_key, data)
        arrival = Arrival("ACME", "fleet.zip", inbox_key, data,
                          hashlib.sha256(data).hexdigest(), len(data))
        now = runtime.processor.clock()
        with session_scope(runtime.engine) as session:
            batch, _ = open_batch(session, tenant="ACME", source="ACME/first.zip",
                                  sha256=arrival.sha256, now=now)
            batch.loader, batch.lease_until = "other-host/pid:[1]:7:x", now + LEASE
            session.add(batch)
        runner = EmbeddedRunner(runtime)
        assert runner.on_batch([arrival]) == [arrival]  # in hand, tried again later
        assert runtime.inbox.exists(inbox_key) and job_count(runtime.engine) == 0

        with session_scope(runtime.engine) as session:  # the other import went quiet
            row = session.exec(select(Batch)).one()
            row.lease_until = now - timedelta(seconds=1)
            session.add(row)
        assert runner.on_batch([arrival]) == []
        assert runtime.inbox.exists("_processed/ACME/fleet.zip")
        assert get_batch(runtime.engine, batch.id).status == "reported"  # type: ignore[arg-type]
        assert license_info(runtime.engine, key)["active_devices"] == 2
    finally:
        runtime.close()


def test_a_refusal_does_not_decide_a_batch_another_import_has_members_in(
        env: BulkParts, keyring) -> None:
    # The import of fleet.zip registered a chunk and its process died. The same bytes
    # then come as fleet.tar, which cannot be read as a tar: that file is refused, but
    # not the batch whose members were applied; fleet.zip's retry finishes it.
    key = add_license(env.engine, max_activations=10)
    data = make_zip(activations(keyring, key, 6))

    class Dies(bulk.InlineSink):
        def chunk(self, batch_id: int, job_ids: list[int]) -> None:
            super().chunk(batch_id, job_ids)
            raise KeyboardInterrupt  # stands for the process being killed

    env.inbox.put("ACME/fleet.zip", data)
    with pytest.raises(KeyboardInterrupt):
        handle_archive(env, make_arrival("ACME/fleet.zip", data), sink=Dies(env))
    assert license_info(env.engine, key)["active_devices"] == 4  # the first chunk

    copy = drop(env, "fleet.tar", data)
    assert copy.status == "rejected" and copy.reason and not copy.report_keys
    row = get_batch(env.engine, copy.batch_id)
    assert row.status == "loading" and row.reason is None and row.loader is None
    error = json.loads(env.inbox.get("_rejected/ACME/fleet.tar.error.json"))
    assert error["reason"] == copy.reason and error["batch_id"] == row.id
    assert not list((env.outbox.root / "ACME").glob("batches/*"))  # no report stands

    done = handle_archive(env, make_arrival("ACME/fleet.zip", data))
    assert done.status == "reported" and done.counts == {"done": 6}
    assert license_info(env.engine, key)["active_devices"] == 6


@pytest.mark.parametrize("holder", ["", "garbage", "a:b:c", "x/y:notapid:1:n",
                                    ":::", "other-host/pid:[1]:4242:abc:extra:colons"])
def test_a_holder_that_does_not_parse_is_never_taken_for_gone(holder: str) -> None:
    # A malformed or foreign holder (a row edited by hand, another version) is waited
    # out by its lease's end, never taken over early.
    from pipelines.bulk.lease import _gone

    assert _gone(holder) is False
