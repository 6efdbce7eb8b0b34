"""Numbers are checked where they enter: 64-bit bounds, totals that would overflow."""

from __future__ import annotations

from airlock_sdk.envelope import Kind, canonical_json
from airlock_sdk.payloads import INT64_MAX
from pipelines.ledger import Submission
from pipelines.process import process_many
from tests.factories import WireDevice
from tests.security.conftest import Vendor, refused


def _bound(airlock: Vendor, **license_kwargs) -> tuple[str, WireDevice]:  # noqa: ANN003
    key = airlock.license(license_type="consumption", max_activations=2,
                          features=["export:consumption"], **license_kwargs)
    device = WireDevice(airlock.keyring, "HW-1")
    assert airlock.send(device.activation(license_key=key)).accepted
    return key, device


def test_a_consumption_beyond_64_bits_is_refused_not_a_crash(airlock: Vendor) -> None:
    key, device = _bound(airlock)
    outcome = airlock.send(device.deactivation(license_key=key, consumptions=2**63))
    refused(outcome, "out_of_range")
    assert "usage.consumptions" in (outcome.message or "")
    feature = WireDevice(airlock.keyring, "HW-2")
    assert airlock.send(feature.activation(license_key=key)).accepted
    outcome = airlock.send(feature.deactivation(license_key=key,
                                                features={"export": 2**64}))
    refused(outcome, "out_of_range")
    assert "usage.features.export" in (outcome.message or "")
    info = airlock.info(key)
    assert info["consumptions"]["total"] == 0 and info["active_devices"] == 2


def test_a_total_that_would_overflow_is_refused_and_nothing_saturates(airlock: Vendor) -> None:
    key, device = _bound(airlock)
    assert airlock.send(device.deactivation(license_key=key,
                                            consumptions=INT64_MAX)).accepted
    assert airlock.billed(key) == INT64_MAX
    second = WireDevice(airlock.keyring, "HW-2")
    assert airlock.send(second.activation(license_key=key)).accepted
    outcome = airlock.send(second.deactivation(license_key=key, consumptions=1))
    refused(outcome, "out_of_range")
    assert "total_consumptions" in (outcome.message or "")
    info = airlock.info(key)
    assert info["consumptions"]["total"] == INT64_MAX  # not wrapped, not saturated
    assert info["active_devices"] == 1  # the refused file released nothing
    assert airlock.send(second.refresh_request(license_key=key)).accepted  # reports still work


def test_feature_total_overflow_is_refused(airlock: Vendor) -> None:
    key, device = _bound(airlock)
    assert airlock.send(device.deactivation(license_key=key,
                                            features={"export": INT64_MAX})).accepted
    second = WireDevice(airlock.keyring, "HW-2")
    assert airlock.send(second.activation(license_key=key)).accepted
    refused(airlock.send(second.deactivation(license_key=key, consumptions=3,
                                             features={"export": 1})), "out_of_range")
    info = airlock.info(key)
    assert info["features"][0]["total_consumptions"] == INT64_MAX
    assert info["consumptions"]["total"] == 0  # the license part was not billed either
    assert info["active_devices"] == 1


def test_duplicate_keys_in_a_sealed_payload_are_malformed(airlock: Vendor) -> None:
    key, device = _bound(airlock)
    device.consume(500)
    body = canonical_json({
        "request_id": "c" * 32, "created_at": "2026-06-01T12:00:00Z", "product": "pro",
        "license_key": key, "hardware_id": "HW-1", "serial": 1, "variables": {},
        "usage": {"since_counter": 0, "since_head": "0" * 64, "counter": device.counter,
                  "head": device.head, "consumptions": 500, "features": {}}})
    # The first copy says 0 units, the second 500: parsers that keep different copies
    # would disagree on what was billed.
    forged = body.replace(b'"consumptions":500', b'"consumptions":0,"consumptions":500')
    assert forged != body
    refused(airlock.send(device.seal_raw(Kind.DEACTIVATION, forged)), "malformed")
    assert airlock.billed(key) == 0
    assert airlock.info(key)["active_devices"] == 1
    assert airlock.send(device.seal_raw(Kind.DEACTIVATION, body)).accepted  # the honest bytes
    assert airlock.billed(key) == 500


def test_over_long_texts_are_refused_and_never_fail_the_chunk(airlock: Vendor) -> None:
    """On PostgreSQL a text longer than its column fails the write: one such file in a
    chunk would fail every file of it. Refused as malformed, the others are applied."""
    key = airlock.license(max_activations=10)
    device = WireDevice(airlock.keyring, "HW-1")
    assert airlock.send(device.activation(license_key=key)).accepted
    hostile = {
        "hardware_id": WireDevice(airlock.keyring, "H" * 257).activation(license_key=key),
        "hostname": WireDevice(airlock.keyring, "HW-2").activation(license_key=key,
                                                                   hostname="h" * 257),
        "os": WireDevice(airlock.keyring, "HW-3").activation(license_key=key, os="o" * 129),
        "auth.email": WireDevice(airlock.keyring, "HW-4").activation(
            email="a" * 250 + "@x.example", password="long-password"),
        "usage.head": device.deactivation(license_key=key, head="f" * 65),
        "usage.features": device.deactivation(license_key=key,
                                              features={"f" * 65: 1}),
    }
    good = WireDevice(airlock.keyring, "HW-OK").activation(license_key=key)
    chunk = [Submission(tenant="ACME", data=data) for data in [*hostile.values(), good]]
    outcomes = process_many(chunk, engine=airlock.engine, processor=airlock.processor)
    for (field, _), outcome in zip(hostile.items(), outcomes, strict=False):
        refused(outcome, "malformed")
        assert field in (outcome.message or ""), (field, outcome.message)
    assert outcomes[-1].accepted
    info = airlock.info(key)
    assert info["active_devices"] == 2
    assert {d["hardware_id"] for d in info["devices"]} == {"HW-1", "HW-OK"}
