"""The Device: activation, license loading, offline checks, deactivation, refresh."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from nacl.signing import SigningKey

from airlock_sdk import (
    GENESIS_HEAD,
    Device,
    DeviceError,
    Kind,
    State,
    armoured_digest,
    device_key_from_kid,
    device_kid,
    seal,
)
from airlock_sdk.envelope import b64u
from pipelines.keyring import VendorKeyring
from tests.sdk.builders import feature, issue, license_payload, open_request, refresh_payload
from tests.sdk.conftest import T0

MakeDevice = Callable[..., Device]
Activate = Callable[..., dict[str, Any]]


def reason_of(excinfo: pytest.ExceptionInfo[DeviceError]) -> str:
    return excinfo.value.reason


# --- init and activation requests -------------------------------------------------------------


def test_init_creates_state_folder(make_device: MakeDevice) -> None:
    device = make_device()
    folder = device.directory
    assert {p.name for p in folder.iterdir()} >= {"state.json", "bundle.json", "usage.jsonl",
                                                   "keys"}
    assert json.loads((folder / "state.json").read_text())["hardware_id"] == "HW-A"
    assert device.status(now=T0).state is State.NOT_ACTIVATED
    assert device.kid is None
    with pytest.raises(DeviceError) as err:
        make_device()
    assert reason_of(err) == "already_initialised"
    with pytest.raises(DeviceError) as err:
        Device(folder.parent / "nowhere")
    assert reason_of(err) == "not_initialised"


def test_activation_request_contract(make_device: MakeDevice, keyring: VendorKeyring) -> None:
    device = make_device()
    data = device.request_activation(product="cad", license_key="KEY-1", hostname="bench",
                                     os_name="Linux", app_version="2.1",
                                     variables={"site": "lab", "seats": 3}, now=T0)
    env = open_request(keyring, data, Kind.ACTIVATION_REQUEST)
    p = env.payload
    assert env.header["enc"] == "x25519-sealedbox"
    assert env.header["rcp"] == keyring.current_sealing
    assert env.kid == device.kid == device_kid(device.verify_key)
    assert b64u(bytes(device_key_from_kid(env.kid))) == p["device_public_key"]
    assert p["auth"] == {"method": "key", "key": "KEY-1"}
    assert p["created_at"] == "2030-01-01T12:00:00Z"
    assert p["usage"] == {"since_counter": 0, "since_head": GENESIS_HEAD, "counter": 0,
                          "head": GENESIS_HEAD, "consumptions": 0, "features": {}}
    assert p["variables"] == {"site": "lab", "seats": 3}
    assert (p["hostname"], p["os"], p["app_version"]) == ("bench", "Linux", "2.1")
    assert len(p["request_id"]) == 32
    assert armoured_digest(data) == env.digest
    key_file = device.directory / "keys" / f"{p['request_id']}.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert device.status(now=T0).pending_request == p["request_id"]


def test_user_activation_and_bad_arguments(make_device: MakeDevice,
                                           keyring: VendorKeyring) -> None:
    device = make_device()
    data = device.request_activation(product="cad", email="ann@example.com", password="pw",
                                     now=T0)
    auth = open_request(keyring, data).payload["auth"]
    assert auth == {"method": "user", "email": "ann@example.com", "password": "pw"}
    for kwargs in ({}, {"license_key": "K", "email": "a@b"}, {"email": "a@b"}):
        with pytest.raises(DeviceError) as err:
            device.request_activation(product="cad", now=T0, **kwargs)
        assert reason_of(err) == "invalid_argument"
    with pytest.raises(DeviceError) as err:
        device.request_activation(product="cad", license_key="K", variables={"x": [1]}, now=T0)
    assert reason_of(err) == "invalid_argument"


def test_asking_again_keeps_the_waiting_requests_key(make_device: MakeDevice) -> None:
    # The vendor may have bound the first request's key already: a second key would be
    # refused as device_already_active, so the device asks again with the same one.
    device = make_device()
    device.request_activation(product="cad", license_key="K", now=T0)
    first = device.kid
    device.request_activation(product="cad", license_key="K", now=T0)
    assert device.kid == first
    assert len(list((device.directory / "keys").iterdir())) == 1
    other = make_device("HW-OTHER")
    other.request_activation(product="cad", license_key="K", now=T0)
    assert other.kid != first


# --- loading license files --------------------------------------------------------------------


def test_license_loads_and_reports_valid(make_device: MakeDevice, activate: Activate) -> None:
    device = make_device()
    payload = activate(device, features=[feature("export", kind="activation")])
    status = device.status(now=T0)
    assert status.state is State.VALID
    assert (status.license_key, status.product, status.customer) == ("KEY-0001", "cad", "ACME")
    assert status.serial == 1 and status.pending_request is None
    assert device.entitlements.payload == payload  # type: ignore[union-attr]
    assert device.feature_enabled("export", now=T0)
    assert not device.feature_enabled("render", now=T0)
    assert device.consumption_left(now=T0) is None
    assert Device.open(device.directory).status(now=T0).to_dict()["state"] == "valid"


def _pending(device: Device, keyring: VendorKeyring, **kw: Any) -> Any:
    data = device.request_activation(product=kw.pop("product", "cad"), license_key="KEY-0001",
                                     now=T0)
    return open_request(keyring, data)


def test_license_for_another_hardware_id_is_refused(make_device: MakeDevice,
                                                    keyring: VendorKeyring) -> None:
    device_a, device_b = make_device("HW-A"), make_device("HW-B")
    env_a = _pending(device_a, keyring)
    _pending(device_b, keyring)
    license_a = issue(keyring, Kind.LICENSE, license_payload(env_a, issued_at=T0))
    with pytest.raises(DeviceError) as err:
        device_b.load(license_a, now=T0)
    assert reason_of(err) == "wrong_device"
    assert device_b.status(now=T0).state is State.NOT_ACTIVATED
    device_a.load(license_a, now=T0)
    assert device_a.status(now=T0).state is State.VALID


@pytest.mark.parametrize("change,reason", [
    ({"product": "other"}, "wrong_product"),
    ({"public_key": b64u(bytes(SigningKey.generate().verify_key))}, "wrong_device"),
    ({"hardware_id": "HW-Z"}, "wrong_device"),
])
def test_license_binding_checks(make_device: MakeDevice, keyring: VendorKeyring,
                                change: dict[str, Any], reason: str) -> None:
    device = make_device()
    env = _pending(device, keyring)
    data = issue(keyring, Kind.LICENSE, license_payload(env, issued_at=T0, **change))
    with pytest.raises(DeviceError) as err:
        device.load(data, now=T0)
    assert reason_of(err) == reason


def test_license_for_an_older_request_is_refused(make_device: MakeDevice,
                                                 keyring: VendorKeyring) -> None:
    device = make_device()
    old = _pending(device, keyring)
    _pending(device, keyring)
    unasked = license_payload(old, issued_at=T0)
    unasked["request_id"] = "f" * 32  # a request this device never made
    with pytest.raises(DeviceError) as err:
        device.load(issue(keyring, Kind.LICENSE, unasked), now=T0)
    assert reason_of(err) == "not_for_this_request"
    # An answer to the earlier request (same key) is as good as one to the latest.
    device.load(issue(keyring, Kind.LICENSE, license_payload(old, issued_at=T0)), now=T0)
    assert device.status(now=T0).state is State.VALID
    fresh = make_device("HW-B")
    with pytest.raises(DeviceError) as err:  # no request waiting at all
        fresh.load(issue(keyring, Kind.LICENSE,
                         license_payload(old, issued_at=T0, hardware_id="HW-B")), now=T0)
    assert reason_of(err) == "not_for_this_request"


def test_forged_or_damaged_license_is_refused(make_device: MakeDevice,
                                              keyring: VendorKeyring) -> None:
    device = make_device()
    env = _pending(device, keyring)
    payload = license_payload(env, issued_at=T0)
    forged = seal(Kind.LICENSE, payload, signing_key=SigningKey.generate(),
                  kid=keyring.current_signing)
    with pytest.raises(DeviceError) as err:
        device.load(forged, now=T0)
    assert reason_of(err) == "bad_signature"
    stranger = seal(Kind.LICENSE, payload, signing_key=SigningKey.generate(), kid="sig-x")
    with pytest.raises(DeviceError) as err:
        device.load(stranger, now=T0)
    assert reason_of(err) == "unknown_key"
    del payload["features"]
    with pytest.raises(DeviceError) as err:
        device.load(issue(keyring, Kind.LICENSE, payload), now=T0)
    assert reason_of(err) == "malformed"
    with pytest.raises(DeviceError) as err:
        device.load(b"not a license", now=T0)
    assert reason_of(err) == "malformed"


def test_loading_the_same_license_twice_is_harmless(make_device: MakeDevice,
                                                    keyring: VendorKeyring) -> None:
    device = make_device()
    data = issue(keyring, Kind.LICENSE, license_payload(_pending(device, keyring), issued_at=T0))
    device.load(data, now=T0)
    device.load(data, now=T0)
    assert device.status(now=T0).state is State.VALID


def test_rejection_report_is_shown(make_device: MakeDevice, keyring: VendorKeyring) -> None:
    device = make_device()
    env = _pending(device, keyring)
    report = issue(keyring, Kind.REJECTION, {
        "request_id": env.payload["request_id"], "request_sha256": env.digest,
        "issued_at": "2030-01-01T12:00:00Z", "reason": "no_seats_left", "message": "Full."})
    with pytest.raises(DeviceError) as err:
        device.load(report, now=T0)
    assert reason_of(err) == "rejected" and "no_seats_left" in err.value.message


# --- offline checks -------------------------------------------------------------------------


def test_expired_time_limited_license_reports_expired(make_device: MakeDevice,
                                                      activate: Activate) -> None:
    device = make_device()
    activate(device, license_type="time_limited", expires_at=T0 + timedelta(days=30),
             max_consumptions=10)
    assert device.status(now=T0 + timedelta(days=29)).state is State.VALID
    later = T0 + timedelta(days=30)
    assert device.status(now=later).state is State.EXPIRED
    assert device.consumption_left(now=later) == 0
    with pytest.raises(DeviceError) as err:
        device.consume(1, now=later)
    assert reason_of(err) == "expired"


def test_not_after_disabled_and_not_started(make_device: MakeDevice,
                                            activate: Activate) -> None:
    one = make_device("HW-1")
    activate(one, not_after=T0 + timedelta(days=1))
    assert one.status(now=T0 + timedelta(days=2)).state is State.EXPIRED
    two = make_device("HW-2")
    activate(two, enabled=False)
    assert two.status(now=T0).state is State.DISABLED
    with pytest.raises(DeviceError) as err:
        two.consume(now=T0)
    assert reason_of(err) == "disabled"
    three = make_device("HW-3")
    activate(three, starts_at=T0 + timedelta(days=3))
    assert three.status(now=T0).state is State.NOT_STARTED


def test_features(make_device: MakeDevice, activate: Activate) -> None:
    device = make_device()
    activate(device, features=[
        feature("export", kind="activation"),
        feature("trial", kind="activation", expires_at=T0 + timedelta(hours=1)),
        feature("render", max_consumptions=5, total=2),
    ])
    assert device.feature_enabled("export", now=T0)
    assert device.feature_enabled("trial", now=T0)
    assert device.consumption_left("render", now=T0) == 3
    for code, reason in (("export", "not_consumable"), ("nope", "unknown_feature")):
        with pytest.raises(DeviceError) as err:
            device.consume(1, feature=code, now=T0)
        assert reason_of(err) == reason
    with pytest.raises(DeviceError) as err:
        device.consumption_left("nope", now=T0)
    assert reason_of(err) == "unknown_feature"
    assert not device.feature_enabled("trial", now=T0 + timedelta(hours=2))


@pytest.mark.parametrize("limits,left", [
    ({"max_consumptions": 10, "total": 4}, 6),
    ({"max_consumptions": 10, "total": 4, "allow_overages": True, "max_overages": 3}, 9),
    ({"max_consumptions": 10, "total": 4, "max_overages": 3}, 6),  # overages not allowed
    ({"max_consumptions": 10, "allow_overages": True}, None),  # unlimited overages
    ({"max_consumptions": 2, "total": 5}, 0),
    ({}, None),
])
def test_license_consumption_limits(make_device: MakeDevice, activate: Activate,
                                    limits: dict[str, Any], left: int | None) -> None:
    device = make_device()
    activate(device, license_type="consumption", **limits)
    assert device.consumption_left(now=T0) == left
    if left is None:
        device.consume(1000, now=T0)
        return
    if left > 1:
        device.consume(left - 1, now=T0)
    if left:
        device.consume(1, now=T0)
    with pytest.raises(DeviceError) as err:
        device.consume(1, now=T0)
    assert reason_of(err) == "consumption_limit"
    assert device.consumption_left(now=T0) == 0
    assert device.status(now=T0).consumption["used"] == left  # type: ignore[index]


def test_feature_consumption_limit_and_expiry(make_device: MakeDevice,
                                              activate: Activate) -> None:
    device = make_device()
    activate(device, features=[
        feature("render", max_consumptions=3, allow_overages=True, max_overages=1),
        feature("old", max_consumptions=3, expires_at=T0 + timedelta(minutes=1)),
    ])
    device.consume(4, feature="render", now=T0)
    with pytest.raises(DeviceError) as err:
        device.consume(1, feature="render", now=T0)
    assert reason_of(err) == "consumption_limit"
    with pytest.raises(DeviceError) as err:
        device.consume(1, feature="old", now=T0 + timedelta(minutes=2))
    assert reason_of(err) == "feature_expired"
    assert device.consumption_left(now=T0) is None  # the license itself has no limit
    with pytest.raises(DeviceError) as err:
        device.consume(0, now=T0)
    assert reason_of(err) == "invalid_argument"


# --- deactivation ------------------------------------------------------------------------------


def test_deactivation_reports_usage_since_activation(make_device: MakeDevice,
                                                     activate: Activate,
                                                     keyring: VendorKeyring) -> None:
    device = make_device()
    payload = activate(device, max_consumptions=100, features=[feature("render")])
    device.consume(3, now=T0)
    device.consume(2, feature="render", now=T0)
    device.consume(4, now=T0)
    bound_kid = device.kid
    data = device.deactivate(variables={"site": "lab"}, now=T0 + timedelta(hours=1))
    env = open_request(keyring, data, Kind.DEACTIVATION)
    p = env.payload
    counter, head = device.verify_usage()
    assert env.kid == bound_kid
    assert b64u(bytes(device_key_from_kid(env.kid))) == payload["device"]["public_key"]
    assert env.header["enc"] == "x25519-sealedbox"
    assert (p["product"], p["license_key"], p["hardware_id"], p["serial"]) == \
        ("cad", "KEY-0001", "HW-A", 1)
    assert p["usage"] == {"since_counter": 0, "since_head": GENESIS_HEAD, "counter": 3,
                          "head": head, "consumptions": 7, "features": {"render": 2}}
    assert counter == 3 and p["variables"] == {"site": "lab"}
    assert device.status(now=T0).state is State.DEACTIVATED
    with pytest.raises(DeviceError) as err:
        device.consume(1, now=T0)
    assert reason_of(err) == "deactivated"
    assert device.deactivate(now=T0) == data == device.deactivation_file()
    with pytest.raises(DeviceError) as err:
        device.request_refresh(now=T0)
    assert reason_of(err) == "deactivated"


def test_deactivation_signed_by_another_key_is_detectable(make_device: MakeDevice,
                                                          activate: Activate,
                                                          keyring: VendorKeyring) -> None:
    device = make_device()
    payload = activate(device)
    genuine = open_request(keyring, device.deactivate(now=T0))
    other = SigningKey.generate()
    forged = seal(Kind.DEACTIVATION, genuine.payload, signing_key=other,
                  kid=device_kid(other.verify_key), recipient=keyring.public_bundle().sealing_key,
                  recipient_kid=keyring.current_sealing)
    env = open_request(keyring, forged)
    bound = payload["device"]["public_key"]
    assert b64u(bytes(device_key_from_kid(genuine.kid))) == bound
    assert b64u(bytes(device_key_from_kid(env.kid))) != bound


def test_reactivation_continues_the_usage_chain(make_device: MakeDevice, activate: Activate,
                                                keyring: VendorKeyring) -> None:
    device = make_device()
    activate(device)
    kid = device.kid
    device.consume(2, now=T0)
    first = open_request(keyring, device.deactivate(now=T0)).payload["usage"]
    request = open_request(keyring, device.request_activation(product="cad",
                                                              license_key="KEY-0001", now=T0))
    # Whether or not the deactivation reached the vendor, the activation carries the
    # same usage under the same key: the vendor bills it once either way.
    assert request.payload["usage"] == first
    assert request.kid == kid
    device.load(issue(keyring, Kind.LICENSE, license_payload(request, issued_at=T0, serial=2)),
                now=T0)
    assert device.status(now=T0).state is State.VALID
    assert device.deactivation_file() is None
    device.consume(5, now=T0)
    second = open_request(keyring, device.deactivate(now=T0)).payload
    assert second["serial"] == 2
    assert second["usage"]["since_counter"] == first["counter"] == 1
    assert second["usage"]["since_head"] == first["head"]
    assert (second["usage"]["counter"], second["usage"]["consumptions"]) == (2, 5)


def test_another_license_after_a_deactivation_needs_it_delivered(
        make_device: MakeDevice, activate: Activate, keyring: VendorKeyring) -> None:
    device = make_device()
    activate(device)
    device.consume(2, now=T0)
    device.deactivate(now=T0)
    with pytest.raises(DeviceError) as err:
        device.request_activation(product="cad", license_key="OTHER-KEY", now=T0)
    assert reason_of(err) == "deactivation_pending"
    request = open_request(keyring, device.request_activation(
        product="cad", license_key="OTHER-KEY", deactivation_delivered=True, now=T0))
    assert request.payload["usage"]["consumptions"] == 0
    assert request.kid != device_kid(device.files.read_key(
        device.files.read()["activation"]["request_id"]).verify_key)


def test_activation_refused_while_active(make_device: MakeDevice, activate: Activate) -> None:
    device = make_device()
    activate(device)
    with pytest.raises(DeviceError) as err:
        device.request_activation(product="cad", license_key="K", now=T0)
    assert reason_of(err) == "already_activated"


# --- refresh -----------------------------------------------------------------------------------


def test_refresh_replaces_entitlements_and_refuses_older_serials(
        make_device: MakeDevice, activate: Activate, keyring: VendorKeyring) -> None:
    device = make_device()
    base = activate(device, serial=3, features=[feature("export", kind="activation")])
    later = T0 + timedelta(days=1)
    newer = refresh_payload(base, issued_at=later, serial=4,
                            features=[feature("render", max_consumptions=9)])
    device.load(issue(keyring, Kind.REFRESH, newer), now=later)
    status = device.status(now=later)
    assert status.serial == 4 and [f["code"] for f in status.features] == ["render"]
    for serial in (4, 2):
        stale = refresh_payload(base, issued_at=later, serial=serial)
        with pytest.raises(DeviceError) as err:
            device.load(issue(keyring, Kind.REFRESH, stale), now=later)
        assert reason_of(err) == "stale_serial"
    assert device.status(now=later).serial == 4


@pytest.mark.parametrize("patch,reason", [
    ({"device": {"hardware_id": "HW-B", "public_key": "x"}}, "wrong_device"),
    ({"product": "other"}, "wrong_product"),
])
def test_refresh_for_another_device_or_product_is_refused(
        make_device: MakeDevice, activate: Activate, keyring: VendorKeyring,
        patch: dict[str, Any], reason: str) -> None:
    device = make_device()
    base = activate(device)
    payload = refresh_payload(base, issued_at=T0, serial=2)
    payload.update(patch)
    with pytest.raises(DeviceError) as err:
        device.load(issue(keyring, Kind.REFRESH, payload), now=T0)
    assert reason_of(err) == reason
    other_key = refresh_payload(base, issued_at=T0, serial=2)
    other_key["device"]["public_key"] = b64u(bytes(SigningKey.generate().verify_key))
    with pytest.raises(DeviceError) as err:
        device.load(issue(keyring, Kind.REFRESH, other_key), now=T0)
    assert reason_of(err) == "wrong_device"


def test_refresh_reset_restarts_the_local_period(make_device: MakeDevice, activate: Activate,
                                                 keyring: VendorKeyring) -> None:
    device = make_device()
    base = activate(device, license_type="consumption", max_consumptions=5, total=1)
    device.consume(4, now=T0)
    with pytest.raises(DeviceError):
        device.consume(1, now=T0)
    same_period = refresh_payload(base, issued_at=T0, serial=2)
    device.load(issue(keyring, Kind.REFRESH, same_period), now=T0)
    assert device.consumption_left(now=T0) == 0
    reset = refresh_payload(base, issued_at=T0, serial=3, reset_consumption=True)
    reset["license"]["consumptions"]["total"] = 0
    device.load(issue(keyring, Kind.REFRESH, reset), now=T0)
    assert device.consumption_left(now=T0) == 5
    device.consume(5, now=T0)
    report = open_request(keyring, device.deactivate(now=T0)).payload
    assert report["usage"]["consumptions"] == 9  # everything since activation is reported
    assert report["serial"] == 3


def test_refresh_needs_an_activation(make_device: MakeDevice, activate: Activate,
                                     keyring: VendorKeyring) -> None:
    device = make_device()
    base = activate(device)
    fresh = make_device("HW-B")
    payload = refresh_payload(base, issued_at=T0, serial=2)
    payload["device"]["hardware_id"] = "HW-B"
    with pytest.raises(DeviceError) as err:
        fresh.load(issue(keyring, Kind.REFRESH, payload), now=T0)
    assert reason_of(err) == "not_activated"


def test_device_refresh_request(make_device: MakeDevice, activate: Activate,
                                keyring: VendorKeyring) -> None:
    device = make_device()
    with pytest.raises(DeviceError) as err:
        device.request_refresh(now=T0)
    assert reason_of(err) == "not_activated"
    activate(device)
    env = open_request(keyring, device.request_refresh(now=T0), Kind.REFRESH_REQUEST)
    assert env.kid == device.kid
    assert env.payload["scope"] == {"device": {"license_key": "KEY-0001", "hardware_id": "HW-A"}}
    assert env.payload["reset_consumption"] is False
    assert device.status(now=T0).refresh_request == env.payload["request_id"]


# --- clock ---------------------------------------------------------------------------------------


def test_clock_rollback_is_reported_and_refused(make_device: MakeDevice,
                                                activate: Activate) -> None:
    device = make_device()
    activate(device, license_type="time_limited", expires_at=T0 + timedelta(days=30))
    device.consume(1, now=T0 + timedelta(days=20))
    back = T0 + timedelta(days=1)
    status = device.status(now=back)
    assert status.state is State.CLOCK_ROLLBACK and status.trusted_time == "2030-01-21T12:00:00Z"
    with pytest.raises(DeviceError) as err:
        device.consume(1, now=back)
    assert reason_of(err) == "clock_rollback"
    assert not device.feature_enabled("x", now=back)
    # within the tolerance is fine, and so is the clock set right again
    assert device.status(now=T0 + timedelta(days=20, minutes=-4)).state is State.VALID
    assert device.status(now=T0 + timedelta(days=21)).state is State.VALID


def test_files_from_the_future_and_activation_after_rollback(
        make_device: MakeDevice, keyring: VendorKeyring) -> None:
    device = make_device()
    env = _pending(device, keyring)
    data = issue(keyring, Kind.LICENSE, license_payload(env, issued_at=T0 + timedelta(hours=2)))
    with pytest.raises(DeviceError) as err:
        device.load(data, now=T0)
    assert reason_of(err) == "clock_rollback"
    device.load(data, now=T0 + timedelta(hours=2))
    other = make_device("HW-B")
    other.status(now=T0 + timedelta(days=5))
    with pytest.raises(DeviceError) as err:
        other.request_activation(product="cad", license_key="K", now=T0)
    assert reason_of(err) == "clock_rollback"
