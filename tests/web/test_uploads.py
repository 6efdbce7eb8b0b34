"""The upload hand-over under failure: nothing lost, answered once it is processed."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.settings import Settings
from models.db import make_engine
from models.migrate import upgrade
from pipelines.keyring import init_keyring
from pipelines.layout import Arrival
from pipelines.uploads import NotYetRegistered, Uploads
from tests.factories import WireDevice, add_license, license_info, vendor
from workers.embedded import EmbeddedRunner
from workers.handover import ProcessHandover
from workers.runtime import Runtime, build_runtime


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    settings = Settings(home=tmp_path / "var")
    settings.home.mkdir(parents=True)
    upgrade(settings.resolved_database_url)
    init_keyring(settings.resolved_keys_dir)
    engine = make_engine(settings.resolved_database_url)
    vendor(engine)
    engine.dispose()
    built = build_runtime(settings)
    yield built
    built.close()


def _send(uploads: Uploads, data: bytes, name: str = "a.req") -> object:
    return uploads.receive("ACME", name, io.BytesIO(data),
                           sha256=hashlib.sha256(data).hexdigest(), size=len(data))


def test_a_failed_hand_over_is_tried_again_and_the_resend_gets_the_answer(
        runtime: Runtime) -> None:
    runner = EmbeddedRunner(runtime)
    calls: list[int] = []

    def flaky(arrivals: list[Arrival]) -> list[Arrival]:
        calls.append(len(arrivals))
        if len(calls) == 1:
            raise ConnectionError("the processing process went away")
        return runner.on_batch(arrivals)

    key = add_license(runtime.engine, max_activations=1)
    data = WireDevice(runtime.keyring, "HW-1").activation(license_key=key)
    uploads = Uploads(runtime.engine, runtime.inbox, runtime.outbox, flaky, retry_after=0.05)
    uploads.start()
    try:
        with pytest.raises(NotYetRegistered):
            _send(uploads, data)
        inbox = Path(runtime.settings.resolved_inbox)
        kept = [*inbox.glob("_processing/ACME/upload-*"), *inbox.glob("_processed/ACME/upload-*")]
        assert len(kept) == 1  # stored (in hand, or already processed by the retry): not lost
        deadline = time.monotonic() + 30
        while license_info(runtime.engine, key)["active_devices"] == 0:
            assert time.monotonic() < deadline, "the stored upload was never tried again"
            time.sleep(0.02)
        again = uploads.wait(_send(uploads, data, "again.req"), 5)  # type: ignore[arg-type]
    finally:
        uploads.close()
    assert again.final and again.accepted
    assert license_info(runtime.engine, key)["active_devices"] == 1
    inbox = Path(runtime.settings.resolved_inbox)
    assert not list(inbox.glob("_processing/ACME/*"))
    assert len(list(inbox.glob("_processed/ACME/upload-*"))) == 2


def test_the_processing_process_is_started_again_when_it_died(runtime: Runtime) -> None:
    key = add_license(runtime.engine, max_activations=2)
    handover = ProcessHandover(runtime.settings)
    uploads = Uploads(runtime.engine, runtime.inbox, runtime.outbox, handover)
    uploads.start()
    try:
        first = uploads.wait(_send(uploads, WireDevice(runtime.keyring, "HW-1").activation(  # type: ignore[arg-type]
            license_key=key)), 10)
        child = handover._child
        assert child is not None and child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        second = uploads.wait(_send(uploads, WireDevice(runtime.keyring, "HW-2").activation(  # type: ignore[arg-type]
            license_key=key), "b.req"), 10)
    finally:
        uploads.close()
        handover.close()
    assert first.accepted and second.accepted
    assert license_info(runtime.engine, key)["active_devices"] == 2


def test_an_archive_handed_back_is_tried_again(runtime: Runtime) -> None:
    """An uploaded archive whose bytes another import is loading comes back from the
    hand-over; it is kept and tried again until it is taken."""
    from pipelines.bulk import is_bulk
    from tests.test_archives import make_zip

    runner = EmbeddedRunner(runtime)
    calls: list[str] = []

    def busy_once(arrivals: list[Arrival]) -> list[Arrival]:
        calls.extend(a.name for a in arrivals)
        if len(calls) == 1:
            assert is_bulk(arrivals[0])
            return arrivals  # as the runner does while another import holds the batch
        return runner.on_batch(arrivals)

    key = add_license(runtime.engine, max_activations=5)
    data = make_zip([(f"d{i}.req", WireDevice(runtime.keyring, f"HW-{i}").activation(
        license_key=key)) for i in range(2)])
    uploads = Uploads(runtime.engine, runtime.inbox, runtime.outbox, busy_once,
                      retry_after=0.05)
    uploads.start()
    try:
        try:
            _send(uploads, data, "fleet.zip")
        except NotYetRegistered:
            pass  # answered 202: the batch is not there yet
        deadline = time.monotonic() + 30
        while license_info(runtime.engine, key)["active_devices"] < 2:
            assert time.monotonic() < deadline, "the archive handed back was never tried again"
            time.sleep(0.02)
    finally:
        uploads.close()
    assert len(calls) == 2
    inbox = Path(runtime.settings.resolved_inbox)
    assert not list(inbox.glob("_processing/ACME/*"))
    assert len(list(inbox.glob("_processed/ACME/upload-*"))) == 1
