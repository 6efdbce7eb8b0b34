"""Every unit a device reports is billed once; re-activating never resets usage."""

from __future__ import annotations

import shutil

import pytest

from airlock_sdk import DeviceError
from tests.factories import WireDevice
from tests.security.conftest import Vendor, refused


def _consumption_license(airlock: Vendor, seats: int = 1) -> str:
    return airlock.license(license_type="consumption", max_consumptions=100,
                           max_activations=seats, features=["export:consumption:50"])


def test_kept_deactivation_then_reactivation_bills_the_units(airlock: Vendor) -> None:
    """The attack: consume, deactivate (keep the file), re-activate, deliver only that."""
    key = _consumption_license(airlock)
    device = airlock.device("HW-1")
    assert airlock.activate(device, key).accepted
    for _ in range(3):
        device.consume(30, now=airlock.now)
        kept = device.deactivate(now=airlock.now)
        assert airlock.activate(device, key).accepted  # the deactivation is never delivered
        # Delivered late, the kept file is stale: refused, never billed a second time,
        # and the seat stays with the device that is active again.
        refused(airlock.send(kept), "usage_discontinuity")
    assert airlock.billed(key) == 90
    info = airlock.info(key)
    assert info["active_devices"] == 1
    row = airlock.device_row(key, "HW-1")
    assert row["status"] == "active" and row["usage"]["counter"] == 3


def test_delivered_deactivation_then_reactivation_bills_nothing_more(airlock: Vendor) -> None:
    key = _consumption_license(airlock)
    device = airlock.device("HW-1")
    assert airlock.activate(device, key).accepted
    device.consume(30, now=airlock.now)
    device.consume(5, feature="export", now=airlock.now)
    assert airlock.send(device.deactivate(now=airlock.now)).accepted
    assert airlock.info(key)["active_devices"] == 0
    assert airlock.activate(device, key).accepted  # carries the same usage: already billed
    info = airlock.info(key)
    assert info["consumptions"]["total"] == 30
    assert info["features"][0]["total_consumptions"] == 5
    assert info["active_devices"] == 1
    device.consume(7, now=airlock.now)
    assert airlock.send(device.deactivate(now=airlock.now)).accepted
    assert airlock.billed(key) == 37


def test_restored_snapshot_cannot_unbill_or_fork(airlock: Vendor) -> None:
    key = _consumption_license(airlock)
    device = airlock.device("HW-1")
    assert airlock.activate(device, key).accepted
    snapshot = airlock.folder / "snapshot"
    shutil.copytree(device.directory, snapshot)
    device.consume(40, now=airlock.now)
    assert airlock.send(device.deactivate(now=airlock.now)).accepted
    assert airlock.billed(key) == 40
    tip = airlock.device_row(key, "HW-1")["usage"]

    # The snapshot from before the consumption is restored and used on another fork.
    shutil.rmtree(device.directory)
    shutil.copytree(snapshot, device.directory)
    restored = type(device).open(device.directory)
    restored.consume(3, now=airlock.now)
    refused(airlock.send(restored.deactivate(now=airlock.now)), "already_deactivated")
    refused(airlock.send(restored.request_activation(product="pro", license_key=key,
                                                     now=airlock.now)),
            "usage_discontinuity")
    assert airlock.billed(key) == 40
    assert airlock.device_row(key, "HW-1")["usage"] == tip  # never backwards or sideways
    assert airlock.info(key)["active_devices"] == 0


def test_wiped_device_while_bound_is_refused_then_fresh_after_release(airlock: Vendor) -> None:
    key = _consumption_license(airlock)
    device = airlock.device("HW-1")
    assert airlock.activate(device, key).accepted
    device.consume(10, now=airlock.now)
    tip = airlock.device_row(key, "HW-1")["usage"]
    wiped = airlock.device("HW-1", name="wiped")  # the state folder deleted and made again
    refused(airlock.activate(wiped, key), "device_already_active")
    assert airlock.device_row(key, "HW-1")["usage"] == tip
    assert airlock.info(key)["active_devices"] == 1

    # A fresh chain once everything is billed (a recorded deactivation) is accepted.
    assert airlock.send(device.deactivate(now=airlock.now)).accepted
    assert airlock.activate(wiped, key).accepted
    assert airlock.billed(key) == 10
    assert airlock.device_row(key, "HW-1")["usage"]["counter"] == 0


def test_forged_segments_are_refused(airlock: Vendor) -> None:
    """Hand-made activations from the bound device key whose usage does not continue."""
    key = _consumption_license(airlock)
    device = WireDevice(airlock.keyring, "HW-1")
    assert airlock.send(device.activation(license_key=key)).accepted
    device.consume(20)
    synced = (device.synced_counter, device.synced_head)
    bad_since = {"since_counter": 5, "since_head": "ab" * 32, "counter": device.counter,
                 "head": device.head, "consumptions": 1, "features": {}}
    backwards = {"since_counter": 1, "since_head": device.head, "counter": 0,
                 "head": "0" * 64, "consumptions": 0, "features": {}}
    units_without_records = {"since_counter": synced[0], "since_head": synced[1],
                             "counter": synced[0], "head": synced[1], "consumptions": 9,
                             "features": {}}
    for usage in (bad_since, backwards, units_without_records):
        refused(airlock.send(device.activation(license_key=key, usage=usage)),
                "usage_discontinuity")
    assert airlock.billed(key) == 0
    good = {"since_counter": synced[0], "since_head": synced[1], "counter": device.counter,
            "head": device.head, "consumptions": 20, "features": {"export": 0}}
    assert airlock.send(device.activation(license_key=key, usage=good)).accepted
    assert airlock.billed(key) == 20
    assert airlock.info(key)["active_devices"] == 1


def test_sdk_refuses_another_license_while_a_deactivation_may_be_undelivered(
        airlock: Vendor) -> None:
    key, other = _consumption_license(airlock), _consumption_license(airlock)
    device = airlock.device("HW-1")
    assert airlock.activate(device, key).accepted
    device.consume(12, now=airlock.now)
    pending = device.deactivate(now=airlock.now)
    with pytest.raises(DeviceError) as err:
        device.request_activation(product="pro", license_key=other, now=airlock.now)
    assert err.value.reason == "deactivation_pending"
    assert airlock.send(pending).accepted
    assert airlock.activate(device, other, deactivation_delivered=True).accepted
    assert (airlock.billed(key), airlock.billed(other)) == (12, 0)
    assert (airlock.info(key)["active_devices"], airlock.info(other)["active_devices"]) == (0, 1)
