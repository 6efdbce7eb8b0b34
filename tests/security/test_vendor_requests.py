"""Vendor-signed requests apply once, in the area they were dropped in, before expiry."""

from __future__ import annotations

from datetime import timedelta

from airlock_sdk.envelope import Kind
from airlock_sdk.payloads import format_time
from pipelines.layout import OPERATOR
from pipelines.render import sign
from tests.factories import NOW, WireDevice, operator_refresh
from tests.security.conftest import Vendor, refused


def _used_license(airlock: Vendor) -> str:
    key = airlock.license(license_type="consumption", max_consumptions=100, max_activations=2)
    device = WireDevice(airlock.keyring, "HW-1")
    assert airlock.send(device.activation(license_key=key)).accepted
    assert airlock.send(device.deactivation(license_key=key, consumptions=60)).accepted
    assert airlock.billed(key) == 60
    return key


def test_a_reset_replayed_in_a_customer_area_is_refused(airlock: Vendor) -> None:
    key = _used_license(airlock)
    reset = operator_refresh(airlock.keyring, {"license": key}, reset=True)
    assert airlock.send(reset, OPERATOR).accepted
    assert airlock.billed(key) == 0
    device = WireDevice(airlock.keyring, "HW-2")
    assert airlock.send(device.activation(license_key=key)).accepted
    assert airlock.send(device.deactivation(license_key=key, consumptions=25)).accepted
    refused(airlock.send(reset, "ACME"), "replay")
    assert airlock.billed(key) == 25
    assert airlock.send(reset, OPERATOR).accepted  # the same file in its own area: its answer
    assert airlock.billed(key) == 25


def test_the_same_request_id_in_two_customer_areas_applies_once(airlock: Vendor) -> None:
    key = _used_license(airlock)
    reset = operator_refresh(airlock.keyring, {"license": key}, reset=True,
                             request_id="e" * 32)
    assert airlock.send(reset, "ACME").accepted
    device = WireDevice(airlock.keyring, "HW-2")
    assert airlock.send(device.activation(license_key=key)).accepted
    assert airlock.send(device.deactivation(license_key=key, consumptions=10)).accepted
    for area in ("BETA", OPERATOR):
        refused(airlock.send(reset, area), "replay")
    other = operator_refresh(airlock.keyring, {"license": key}, reset=True,
                             request_id="e" * 32)  # other content, same id
    refused(airlock.send(other, OPERATOR), "replay")
    assert airlock.billed(key) == 10


def test_expired_and_undated_vendor_requests_are_refused(airlock: Vendor) -> None:
    key = _used_license(airlock)
    late = operator_refresh(airlock.keyring, {"license": key}, reset=True,
                            expires_at=NOW - timedelta(seconds=1))
    refused(airlock.send(late, OPERATOR), "expired_request")
    undated = sign(airlock.keyring, Kind.REFRESH_REQUEST, {
        "request_id": "d" * 32, "created_at": format_time(NOW), "scope": {"license": key},
        "reset_consumption": True})
    outcome = airlock.send(undated, OPERATOR)
    refused(outcome, "malformed")
    assert "expires" in (outcome.message or "")
    assert airlock.billed(key) == 60
    # The expiry is not retried: the same file later is the same answer.
    refused(airlock.send(late, OPERATOR), "expired_request")


def test_cli_requests_carry_the_configured_expiry(tmp_path, keyring) -> None:  # noqa: ANN001
    from pipelines.refresh_request import operator_refresh_request
    from tests.sdk.builders import open_request

    data = operator_refresh_request(keyring, {"license": "K"}, now=NOW,
                                    valid_for=timedelta(days=3))
    payload = open_request(keyring, data).payload
    assert payload["expires_at"] == format_time(NOW + timedelta(days=3))
