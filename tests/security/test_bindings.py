"""An active binding belongs to its device key; moving it is an audited vendor action."""

from __future__ import annotations

from models.db import session_scope
from pipelines import catalog
from pipelines.catalog import CatalogError
from tests.factories import WireDevice
from tests.security.conftest import Vendor, refused


def test_second_device_declaring_an_active_hardware_id_is_refused(airlock: Vendor) -> None:
    key = airlock.license(max_activations=1)
    first = airlock.device("HW-1")
    assert airlock.activate(first, key).accepted
    bound = airlock.device_row(key, "HW-1")
    hijacker = airlock.device("HW-1", name="hijacker")
    outcome = airlock.activate(hijacker, key)
    refused(outcome, "device_already_active")
    assert airlock.info(key)["active_devices"] == 1
    assert airlock.device_row(key, "HW-1") == bound  # key, serial, usage untouched
    # The original device can still deactivate.
    assert airlock.send(first.deactivate(now=airlock.now)).accepted
    assert airlock.info(key)["active_devices"] == 0


def test_the_same_key_asking_again_gets_its_license_again(airlock: Vendor) -> None:
    key = airlock.license(max_activations=1)
    device = WireDevice(airlock.keyring, "HW-1")
    first = airlock.send(device.activation(license_key=key))
    again = airlock.send(device.activation(license_key=key))  # new request id, same key
    assert first.accepted and again.accepted
    assert airlock.info(key)["active_devices"] == 1
    assert airlock.device_row(key, "HW-1")["serial"] == 2


def test_sdk_asking_again_before_the_answer_keeps_one_binding(airlock: Vendor) -> None:
    key = airlock.license(max_activations=1)
    device = airlock.device("HW-1")
    first = device.request_activation(product="pro", license_key=key, now=airlock.now)
    second = device.request_activation(product="pro", license_key=key, now=airlock.now)
    answer_to_first = airlock.send(first)
    assert airlock.send(second).accepted
    device.load(answer_to_first.outputs[0][1], now=airlock.now)
    assert device.status(now=airlock.now).state.value == "valid"
    assert airlock.info(key)["active_devices"] == 1


def test_release_frees_the_seat_for_replaced_hardware(airlock: Vendor) -> None:
    key = airlock.license(max_activations=1)
    old = WireDevice(airlock.keyring, "HW-1")
    assert airlock.send(old.activation(license_key=key)).accepted
    old.consume(5)  # never reported: lost by the release
    replacement = WireDevice(airlock.keyring, "HW-1")
    refused(airlock.send(replacement.activation(license_key=key)), "device_already_active")
    with session_scope(airlock.engine) as session:
        released = catalog.release_device(session=session, key=key, hardware_id="HW-1")
    assert "lost" in released["note"]
    (event,) = airlock.audit("device.release")
    assert event.detail["hardware_id"] == "HW-1" and event.detail["unreported_usage"] == "lost"
    assert airlock.info(key)["active_devices"] == 0
    assert airlock.send(replacement.activation(license_key=key)).accepted
    assert airlock.info(key)["active_devices"] == 1
    assert airlock.device_row(key, "HW-1")["public_key"] != old.kid
    # The old device's late deactivation finds no binding of its key: nothing released.
    refused(airlock.send(old.deactivation(license_key=key)), "wrong_device_key",
            "unknown_device")
    assert airlock.info(key)["active_devices"] == 1
    assert airlock.billed(key) == 0


def test_release_refuses_unknown_and_inactive_devices(airlock: Vendor) -> None:
    key = airlock.license()
    for hardware_id, reason in (("HW-X", "unknown_device"),):
        with session_scope(airlock.engine) as session:
            try:
                catalog.release_device(session=session, key=key, hardware_id=hardware_id)
            except CatalogError as exc:
                assert exc.reason == reason
            else:
                raise AssertionError("released a device that does not exist")


def test_a_released_device_reporting_later_is_billed_without_a_second_release(
        airlock: Vendor) -> None:
    key = airlock.license(license_type="consumption", max_consumptions=100, max_activations=1)
    device = airlock.device("HW-1")
    assert airlock.activate(device, key).accepted
    device.consume(30, now=airlock.now)
    with session_scope(airlock.engine) as session:
        catalog.release_device(session=session, key=key, hardware_id="HW-1")
    assert airlock.info(key)["active_devices"] == 0
    late = airlock.send(device.deactivate(now=airlock.now))
    assert late.accepted and late.outputs[0][0].endswith(".receipt")
    assert airlock.billed(key) == 30
    assert airlock.info(key)["active_devices"] == 0
    # Everything is billed: the same device may now start again, nothing twice.
    assert airlock.activate(device, key).accepted
    assert airlock.billed(key) == 30
    assert airlock.info(key)["active_devices"] == 1


def test_a_first_binding_that_reports_usage_is_refused(airlock: Vendor) -> None:
    key = airlock.license(license_type="consumption", max_consumptions=1000)
    device = WireDevice(airlock.keyring, "HW-1")
    device.consume(300)
    usage = {"since_counter": 0, "since_head": "0" * 64, "counter": device.counter,
             "head": device.head, "consumptions": 300, "features": {}}
    refused(airlock.send(device.activation(license_key=key, usage=usage)),
            "usage_discontinuity")
    assert airlock.info(key)["active_devices"] == 0 and airlock.billed(key) == 0
    fresh = {**usage, "since_counter": device.counter, "since_head": device.head,
             "consumptions": 0}
    assert airlock.send(device.activation(license_key=key, usage=fresh)).accepted
