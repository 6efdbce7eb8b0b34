"""Files applied together in one chunk (one `process_many` call) behave exactly as if
they had been applied one after another, on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, func
from sqlmodel import select

from models import AuditEvent, ConsumptionEvent, Device
from models.db import session_scope
from pipelines.keyring import VendorKeyring
from pipelines.ledger import Submission
from pipelines.process import Outcome, Processor, process_many
from tests.factories import NOW, WireDevice, add_license, license_info, operator_refresh, vendor


@pytest.fixture
def core(engine: Engine, keyring: VendorKeyring) -> tuple[Engine, Processor]:
    vendor(engine)
    return engine, Processor(keyring=keyring, clock=lambda: NOW)


def chunk(core: tuple[Engine, Processor], *files: bytes) -> list[Outcome]:
    engine, processor = core
    return process_many([Submission("ACME", data) for data in files], engine=engine,
                        processor=processor)


def counts(engine: Engine) -> tuple[int, int, int]:
    with session_scope(engine) as session:
        return tuple(session.exec(select(func.count()).select_from(model)).one()  # type: ignore[return-value]
                     for model in (Device, ConsumptionEvent, AuditEvent))


def added(before: tuple[int, ...], after: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(b - a for a, b in zip(before, after, strict=True))


def test_activate_then_deactivate_the_same_device_in_one_chunk(core, keyring) -> None:
    key = add_license(core[0], max_activations=1, license_type="consumption",
                      max_consumptions=100)
    device = WireDevice(keyring, "HW-1")
    activation = device.activation(license_key=key)
    deactivation = device.deactivation(license_key=key, consumptions=7)
    again = WireDevice(keyring, "HW-2").activation(license_key=key)  # the freed seat
    before = counts(core[0])
    outcomes = chunk(core, activation, deactivation, again)
    assert [o.status for o in outcomes] == ["done", "done", "done"]
    info = license_info(core[0], key)
    assert info["active_devices"] == 1 and info["consumptions"]["total"] == 7
    assert added(before, counts(core[0])) == (2, 1, 3)  # devices, events, audit rows


def test_a_rejected_file_in_the_middle_changes_nothing(core, keyring) -> None:
    key = add_license(core[0], max_activations=2, license_type="consumption",
                      max_consumptions=100)
    first, second, third = (WireDevice(keyring, f"HW-{i}") for i in range(3))
    before = counts(core[0])
    outcomes = chunk(core, first.activation(license_key=key),
                     second.activation(license_key=key),
                     third.activation(license_key=key),  # no seat left: rejected
                     first.deactivation(license_key=key, consumptions=5),
                     third.activation(license_key=key, request_id="b" * 32))  # seat again
    assert [o.reason for o in outcomes] == [None, None, "no_seats_left", None, None]
    info = license_info(core[0], key)
    assert info["active_devices"] == 2 and info["consumptions"]["total"] == 5
    # The refused activation left no device row, no audit row and no claim: its
    # request id could still be used by a later file with other content.
    assert added(before, counts(core[0])) == (3, 1, 4)


def test_second_deactivation_of_a_device_in_one_chunk_gets_the_first_receipt(
        core, keyring) -> None:
    key = add_license(core[0], max_activations=1, license_type="consumption",
                      max_consumptions=100)
    device = WireDevice(keyring, "HW-1")
    assert chunk(core, device.activation(license_key=key))[0].accepted
    first = device.deactivation(license_key=key, consumptions=2)
    device.synced_counter, device.synced_head = device.counter, device.head
    second = device.deactivation(license_key=key, consumptions=3)
    done, refused = chunk(core, first, second)
    assert done.accepted and refused.reason == "already_deactivated"
    assert done.outputs[0] in refused.outputs  # the original receipt comes along
    assert license_info(core[0], key)["consumptions"]["total"] == 2


def test_same_request_twice_in_one_chunk_applies_once(core, keyring) -> None:
    key = add_license(core[0], max_activations=3)
    device = WireDevice(keyring, "HW-1")
    data = device.activation(license_key=key, request_id="c" * 32)
    other = WireDevice(keyring, "HW-2").activation(license_key=key, request_id="c" * 32)
    original, copy, replay = chunk(core, data, data, other)
    assert original.accepted and copy.job_id == original.job_id
    assert replay.reason == "replay"
    assert license_info(core[0], key)["active_devices"] == 1


def test_refresh_of_a_license_sees_devices_activated_earlier_in_the_chunk(
        core, keyring) -> None:
    key = add_license(core[0], max_activations=3)
    devices = [WireDevice(keyring, f"HW-{i}") for i in range(2)]
    *activations, refresh = chunk(core, *(d.activation(license_key=key) for d in devices),
                                  operator_refresh(keyring, {"license": key}))
    assert all(o.accepted for o in activations)
    assert refresh.accepted and len(refresh.outputs) == 2
    with session_scope(core[0]) as session:
        assert sorted(session.exec(select(Device.last_serial))) == [2, 2]
