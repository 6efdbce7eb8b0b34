"""A sender learns nothing about other tenants or bindings their key does not hold."""

from __future__ import annotations

from airlock_sdk.envelope import open_envelope
from tests.factories import WireDevice
from tests.security.conftest import Vendor, refused


def _told(airlock: Vendor, outcome) -> tuple[str, str]:  # noqa: ANN001
    payload = open_envelope(outcome.outputs[0][1],
                            resolve_verify_key=airlock.keyring.vendor_verify_key).payload
    return payload["reason"], payload["message"]


def test_another_tenants_license_looks_like_no_license(airlock: Vendor) -> None:
    acme = airlock.license(max_activations=1)
    probe = WireDevice(airlock.keyring, "HW-P")
    exists = airlock.send(probe.activation(license_key=acme), "BETA")
    missing = airlock.send(probe.activation(license_key="NOPE-NOPE"), "BETA")
    wrong_product = airlock.send(probe.activation(license_key=acme, product="lite"), "BETA")
    refused(exists, "wrong_tenant", "unknown_license")
    refused(missing, "unknown_license")
    refused(wrong_product, "wrong_tenant", "unknown_license")  # tenant before product
    assert _told(airlock, exists) == _told(airlock, missing) == _told(airlock, wrong_product)
    # The same for deactivations and device refreshes naming ACME's license.
    owner = WireDevice(airlock.keyring, "HW-1")
    assert airlock.send(owner.activation(license_key=acme)).accepted
    for data in (owner.deactivation(license_key=acme), owner.refresh_request(license_key=acme)):
        outcome = airlock.send(data, "BETA")
        refused(outcome, "wrong_tenant", "unknown_license")
        assert _told(airlock, outcome) == _told(airlock, missing)
    assert airlock.info(acme)["active_devices"] == 1
    # The vendor still sees the precise reason on the job.
    assert airlock.job(exists.job_id).reason == "wrong_tenant"
    assert airlock.job(exists.job_id).public_reason == "unknown_license"


def test_bound_hardware_ids_are_not_revealed_to_other_keys(airlock: Vendor) -> None:
    key = airlock.license(max_activations=2)
    owner = WireDevice(airlock.keyring, "HW-1")
    assert airlock.send(owner.activation(license_key=key)).accepted
    stranger_bound = WireDevice(airlock.keyring, "HW-1")  # a bound id, another key
    stranger_free = WireDevice(airlock.keyring, "HW-9")  # an id never bound
    answers = []
    for stranger in (stranger_bound, stranger_free):
        for data in (stranger.deactivation(license_key=key),
                     stranger.refresh_request(license_key=key)):
            outcome = airlock.send(data)
            assert outcome.public_reason == "unknown_device", outcome
            answers.append(_told(airlock, outcome))
    assert len(set(answers)) == 1
    assert airlock.info(key)["active_devices"] == 1
    assert airlock.device_row(key, "HW-1")["status"] == "active"
