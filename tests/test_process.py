"""The processing core, rule by rule, on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from nacl.signing import SigningKey
from sqlalchemy import Engine
from sqlmodel import select

from airlock_sdk.envelope import Kind, open_envelope
from models import ConsumptionEvent, Job
from models.db import session_scope
from pipelines.errors import public_reason
from pipelines.keyring import VendorKeyring
from pipelines.layout import OPERATOR
from pipelines.process import Outcome, Processor, process
from tests.factories import NOW, WireDevice, add_license, license_info, operator_refresh, vendor


@pytest.fixture
def core(engine: Engine, keyring: VendorKeyring) -> tuple[Engine, Processor]:
    vendor(engine)
    return engine, Processor(keyring=keyring, clock=lambda: NOW)


def run(core: tuple[Engine, Processor], data: bytes, tenant: str = "ACME") -> Outcome:
    engine, processor = core
    return process(data, engine=engine, tenant=tenant, processor=processor)


def read(keyring: VendorKeyring, data: bytes) -> Any:
    return open_envelope(data, resolve_verify_key=keyring.vendor_verify_key)


def rejected(outcome: Outcome, reason: str, keyring: VendorKeyring) -> None:
    assert outcome.status == "rejected", outcome
    assert outcome.reason == reason
    report = read(keyring, outcome.outputs[0][1])
    # The sender is told the public reason; the job keeps the precise one.
    assert outcome.public_reason == public_reason(reason)
    assert report.kind is Kind.REJECTION and report.payload["reason"] == public_reason(reason)
    assert report.payload["message"]


# --- activation --------------------------------------------------------------------------


def test_key_activation_returns_a_bound_license_file(core, keyring) -> None:
    key = add_license(core[0], max_activations=2, features=["export:consumption:10"])
    device = WireDevice(keyring, "HW-1")
    outcome = run(core, device.activation(license_key=key))
    assert outcome.status == "done" and outcome.kind == "activation_request"
    name, data = outcome.outputs[0]
    assert name == f"{outcome.request_id}.lic"
    lic = read(keyring, data)
    assert lic.kind is Kind.LICENSE
    assert lic.payload["device"]["hardware_id"] == "HW-1"
    assert lic.payload["license"]["key"] == key and lic.payload["serial"] == 1
    assert lic.payload["features"][0]["code"] == "export"
    assert license_info(core[0], key)["active_devices"] == 1


def test_user_activation_checks_password_and_assignment(core, keyring) -> None:
    key = add_license(core[0], users={"ana@example.com": "correct horse"})
    ok = run(core, WireDevice(keyring, "HW-U").activation(email="ana@example.com",
                                                        password="correct horse"))
    assert ok.status == "done"
    assert read(keyring, ok.outputs[0][1]).payload["license"]["user"] == "ana@example.com"
    bad = run(core, WireDevice(keyring, "HW-V").activation(email="ana@example.com",
                                                         password="wrong horse"))
    rejected(bad, "bad_credentials", keyring)
    nobody = run(core, WireDevice(keyring, "HW-W").activation(email="bob@example.com",
                                                            password="correct horse"))
    rejected(nobody, "bad_credentials", keyring)
    assert license_info(core[0], key)["active_devices"] == 1


@pytest.mark.parametrize("license_kwargs,activation_kwargs,tenant,reason", [
    ({"enabled_off": True}, {}, "ACME", "license_disabled"),
    ({"license_type": "subscription"}, {}, "ACME", "subscription_offline"),
    ({"allow_offline_activation": False}, {}, "ACME", "offline_not_allowed"),
    ({"license_type": "time_limited", "validity_days": 1, "now": NOW - timedelta(days=3)}, {},
     "ACME", "license_expired"),
    ({}, {"product": "lite"}, "ACME", "wrong_product"),
    ({}, {"product": "nope"}, "ACME", "unknown_product"),
    ({}, {"license_key": "NOT-A-KEY"}, "ACME", "unknown_license"),
    ({}, {}, "BETA", "wrong_tenant"),
    ({}, {}, OPERATOR, "needs_tenant"),
    ({}, {"device_public_key": "A" * 43}, "ACME", "key_mismatch"),
])
def test_activation_refusals(core, keyring, license_kwargs, activation_kwargs, tenant,
                             reason) -> None:
    license_kwargs, activation_kwargs = dict(license_kwargs), dict(activation_kwargs)
    disabled = license_kwargs.pop("enabled_off", False)
    key = add_license(core[0], **license_kwargs)
    if disabled:
        with session_scope(core[0]) as session:
            from pipelines import catalog

            catalog.update_license(session=session, key=key, enabled=False)
    activation_kwargs.setdefault("license_key", key)
    outcome = run(core, WireDevice(keyring, "HW-1").activation(**activation_kwargs), tenant)
    rejected(outcome, reason, keyring)
    assert license_info(core[0], key)["active_devices"] == 0


def test_policy_without_offline_blocks_activation(core, keyring) -> None:
    from pipelines import catalog

    with session_scope(core[0]) as session:
        catalog.add_policy(session=session, code="online", name="Online", product_code="pro",
                           allow_offline_activation=False)
    inherited = add_license(core[0], policy_code="online", product_code=None)
    overridden = add_license(core[0], policy_code="online", product_code=None,
                             allow_offline_activation=True)
    rejected(run(core, WireDevice(keyring, "A").activation(license_key=inherited)),
             "offline_not_allowed", keyring)
    assert run(core, WireDevice(keyring, "B").activation(license_key=overridden)).accepted


def test_seats_are_counted_and_same_hardware_is_reissued(core, keyring) -> None:
    key = add_license(core[0], max_activations=2)
    a, b, c = (WireDevice(keyring, hw) for hw in ("A", "B", "C"))
    assert run(core, a.activation(license_key=key)).accepted
    assert run(core, b.activation(license_key=key)).accepted
    rejected(run(core, c.activation(license_key=key)), "no_seats_left", keyring)
    reissued = run(core, a.activation(license_key=key))  # the same device key asks again
    assert reissued.accepted
    payload = read(keyring, reissued.outputs[0][1]).payload
    assert payload["serial"] == 2
    assert license_info(core[0], key)["active_devices"] == 2
    other = WireDevice(keyring, "A")  # the same hardware id under another device key
    rejected(run(core, other.activation(license_key=key)), "device_already_active", keyring)
    devices = {d["hardware_id"]: d for d in license_info(core[0], key)["devices"]}
    assert devices["A"]["public_key"] == payload["device"]["public_key"]


def test_reactivation_after_deactivation_needs_and_takes_a_seat(core, keyring) -> None:
    key = add_license(core[0], max_activations=1)
    a = WireDevice(keyring, "A")
    assert run(core, a.activation(license_key=key)).accepted
    assert run(core, a.deactivation(license_key=key)).accepted
    assert run(core, a.activation(license_key=key)).accepted
    assert license_info(core[0], key)["active_devices"] == 1


# --- deactivation ------------------------------------------------------------------------


def test_deactivation_releases_seat_adds_consumptions_and_syncs_variables(core,
                                                                         keyring) -> None:
    key = add_license(core[0], license_type="consumption", max_consumptions=100,
                      max_activations=1, features=["export:consumption:5", "pdf"])
    device = WireDevice(keyring, "HW-1")
    assert run(core, device.activation(license_key=key)).accepted
    outcome = run(core, device.deactivation(license_key=key, consumptions=40,
                                            features={"export": 3},
                                            variables={"site": "ship", "runs": 7}))
    assert outcome.accepted, outcome
    receipt = read(keyring, outcome.outputs[0][1])
    assert receipt.kind is Kind.RECEIPT
    assert receipt.payload["applied"]["consumptions"] == 40
    assert receipt.payload["applied"]["features"] == {"export": 3}
    assert receipt.payload["applied"]["seats"] == {"active": 0, "max": 1}
    info = license_info(core[0], key)
    assert info["active_devices"] == 0
    assert info["consumptions"]["total"] == 40
    assert {f["code"]: f["total_consumptions"] for f in info["features"]} == {"export": 3,
                                                                              "pdf": 0}
    assert info["devices"][0]["variables"] == {"site": "ship", "runs": 7}


def test_overage_is_recorded_and_reported_never_dropped(core, keyring) -> None:
    key = add_license(core[0], license_type="consumption", max_consumptions=10,
                      features=["export:consumption:2"], max_activations=1)
    device = WireDevice(keyring, "HW-1")
    run(core, device.activation(license_key=key))
    outcome = run(core, device.deactivation(license_key=key, consumptions=15,
                                            features={"export": 5, "gone": 4}))
    assert outcome.accepted
    applied = read(keyring, outcome.outputs[0][1]).payload["applied"]
    assert applied["overage"] == {"license": 5, "features": {"export": 3}}
    assert set(applied["overage_unauthorized"]) == {"license", "export"}
    assert applied["unknown_features"] == {"gone": 4}
    info = license_info(core[0], key)
    assert info["consumptions"]["total"] == 15 and info["consumptions"]["overage"] == 5
    with session_scope(core[0]) as session:
        events = session.exec(select(ConsumptionEvent)).all()
        assert sum(e.amount for e in events if e.feature_code == "gone") == 4


@pytest.mark.parametrize("case,reason", [
    ("other_key", "wrong_device_key"),
    ("unknown_device", "unknown_device"),
    ("discontinuity", "usage_discontinuity"),
    ("usage_without_records", "usage_discontinuity"),
    ("wrong_tenant", "wrong_tenant"),
    ("wrong_product", "wrong_product"),
    ("unknown_license", "unknown_license"),
])
def test_deactivation_refusals(core, keyring, case, reason) -> None:
    key = add_license(core[0], max_activations=2, license_type="consumption",
                      max_consumptions=100)
    device = WireDevice(keyring, "HW-1")
    run(core, device.activation(license_key=key))
    kwargs: dict[str, Any] = {"license_key": key, "consumptions": 5}
    tenant = "ACME"
    if case == "other_key":
        kwargs["signer"] = SigningKey.generate()
    elif case == "unknown_device":
        device = WireDevice(keyring, "HW-NEVER")
    elif case == "discontinuity":
        kwargs["since_head"] = "f" * 64
    elif case == "usage_without_records":
        kwargs.update(counter=0, head="0" * 64)  # 5 units claimed, chain did not move
    elif case == "wrong_tenant":
        tenant = "BETA"
    elif case == "wrong_product":
        kwargs["product"] = "lite"
    elif case == "unknown_license":
        kwargs["license_key"] = "NOPE"
    outcome = run(core, device.deactivation(**kwargs), tenant)
    rejected(outcome, reason, keyring)
    info = license_info(core[0], key)
    assert info["active_devices"] == 1 and info["consumptions"]["total"] == 0


def test_subscription_cannot_be_deactivated_offline(core, keyring) -> None:
    key = add_license(core[0])
    device = WireDevice(keyring, "HW-1")
    run(core, device.activation(license_key=key))
    from pipelines import catalog

    with session_scope(core[0]) as session:
        lic = catalog.get_license(session=session, key=key)
        lic.license_type = "subscription"
        session.add(lic)
    rejected(run(core, device.deactivation(license_key=key)), "subscription_offline", keyring)


def test_second_deactivation_returns_original_receipt(core, keyring) -> None:
    key = add_license(core[0])
    device = WireDevice(keyring, "HW-1")
    run(core, device.activation(license_key=key))
    first = run(core, device.deactivation(license_key=key, consumptions=2))
    assert first.accepted
    second = run(core, device.deactivation(license_key=key))
    rejected(second, "already_deactivated", keyring)
    assert second.outputs[1] == first.outputs[0]  # the original receipt, byte for byte


# --- exactly once ------------------------------------------------------------------------


def test_same_file_twice_applies_once_and_yields_same_bytes(core, keyring) -> None:
    key = add_license(core[0], license_type="consumption", max_consumptions=100)
    device = WireDevice(keyring, "HW-1")
    run(core, device.activation(license_key=key))
    data = device.deactivation(license_key=key, consumptions=9)
    first, second = run(core, data), run(core, data)
    assert first.accepted and second.accepted and second.duplicate
    assert first.outputs == second.outputs
    rewrapped = data.replace(b"\n", b"\r\n")  # same file through a mail gateway
    third = run(core, rewrapped)
    assert third.accepted and third.outputs == first.outputs
    assert license_info(core[0], key)["consumptions"]["total"] == 9


def test_same_request_id_with_other_content_is_a_replay(core, keyring) -> None:
    key = add_license(core[0], license_type="consumption", max_consumptions=100,
                      max_activations=2)
    device = WireDevice(keyring, "HW-1")
    run(core, device.activation(license_key=key))
    request_id = "ab" * 16
    assert run(core, device.deactivation(license_key=key, consumptions=1,
                                         request_id=request_id)).accepted
    other = WireDevice(keyring, "HW-2")
    run(core, other.activation(license_key=key))
    replay = run(core, other.deactivation(license_key=key, consumptions=50,
                                          request_id=request_id))
    rejected(replay, "replay", keyring)
    assert license_info(core[0], key)["consumptions"]["total"] == 1


def test_tampered_and_unknown_files_are_rejected_with_reports(core, keyring) -> None:
    key = add_license(core[0])
    data = WireDevice(keyring, "HW-1").activation(license_key=key)
    lines = data.split(b"\n")
    middle = bytearray(lines[-4])  # inside the sealed body
    middle[10] = ord("A") if middle[10] != ord("A") else ord("B")
    lines[-4] = bytes(middle)
    rejected(run(core, b"\n".join(lines)), "bad_signature", keyring)
    rejected(run(core, b"hello"), "malformed", keyring)
    rejected(run(core, b"x" * (300 * 1024)), "too_large", keyring)
    with session_scope(core[0]) as session:
        jobs = session.exec(select(Job)).all()
        assert {j.status for j in jobs} == {"rejected"} and len(jobs) == 3


def test_poison_file_is_quarantined_after_max_attempts(core, keyring) -> None:
    engine, processor = core
    data = b"poison"
    from pipelines.ledger import Submission, register

    with session_scope(engine) as session:
        for _ in range(processor.max_attempts + 1):  # attempts that crashed before finishing
            register(session, [Submission(tenant="ACME", data=data)], now=NOW)
    outcome = run(core, data)
    assert outcome.status == "quarantined" and outcome.reason == "poison"


# --- refresh -----------------------------------------------------------------------------


def test_operator_refresh_of_all_devices_with_new_entitlements(core, keyring) -> None:
    engine, _ = core
    key = add_license(engine, license_type="time_limited", validity_days=30, max_activations=3,
                      max_consumptions=50, features=["export:consumption:9"])
    devices = [WireDevice(keyring, hw) for hw in ("A", "B")]
    for device in devices:
        run(core, device.activation(license_key=key))
    run(core, devices[0].deactivation(license_key=key, consumptions=7))
    run(core, devices[0].activation(license_key=key))
    from pipelines import catalog

    with session_scope(engine) as session:
        catalog.update_license(session=session, key=key, extend_days=365,
                               put_features=[catalog.FeatureSpec.parse("pdf")], now=NOW)
    outcome = run(core, operator_refresh(keyring, {"license": key}, reset=True), OPERATOR)
    assert outcome.accepted and len(outcome.outputs) == 2
    for name, data in outcome.outputs:
        assert name.endswith("/license_refresh.lic")
        refresh = read(keyring, data)
        assert refresh.kind is Kind.REFRESH and refresh.payload["reset_consumption"] is True
        assert {f["code"] for f in refresh.payload["features"]} == {"export", "pdf"}
        assert refresh.payload["license"]["expires_at"] > "2027-06-01"
        assert refresh.payload["license"]["consumptions"]["total"] == 0
    serials = sorted(read(keyring, d).payload["serial"] for _, d in outcome.outputs)
    assert serials == [2, 3]  # B: activation, refresh; A: activation, re-activation, refresh


def test_refresh_scopes_and_refusals(core, keyring) -> None:
    engine, _ = core
    key = add_license(engine, max_activations=2)
    other = add_license(engine, customer_code="BETA")
    sub = add_license(engine, license_type="subscription")
    device = WireDevice(keyring, "A")
    run(core, device.activation(license_key=key))
    one = run(core, operator_refresh(keyring, {"device": {"license_key": key,
                                                          "hardware_id": "A"}}))
    assert one.accepted and len(one.outputs) == 1
    many = run(core, operator_refresh(keyring, {"licenses": [key, other]}), OPERATOR)
    assert many.accepted and len(many.outputs) == 1  # BETA's license has no devices
    rejected(run(core, operator_refresh(keyring, {"licenses": [key, other]}), "ACME"),
             "wrong_tenant", keyring)
    rejected(run(core, operator_refresh(keyring, {"license": sub}), OPERATOR),
             "subscription_offline", keyring)
    own = run(core, device.refresh_request(license_key=key))
    assert own.accepted
    assert read(keyring, own.outputs[0][1]).payload["device"]["hardware_id"] == "A"
    rejected(run(core, device.refresh_request(license_key=key, reset=True)),
             "reset_not_allowed", keyring)
    stranger = WireDevice(keyring, "A")  # right hardware id, not the bound key
    rejected(run(core, stranger.refresh_request(license_key=key)), "wrong_device_key", keyring)


def test_license_show_lists_the_files_applied(core, keyring) -> None:
    key = add_license(core[0], max_activations=2)
    outcome = run(core, WireDevice(keyring, "HW-1").activation(license_key=key))
    recent = license_info(core[0], key)["recent_files"]
    assert [(r["action"], r["request_id"], r["job_id"]) for r in recent] == [
        ("device.activate", outcome.request_id, outcome.job_id)]
