"""The usage log: hash chain, persistence across restarts, crash and tamper detection."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from airlock_sdk import GENESIS_HEAD, Device, DeviceError, canonical_json, verify_chain
from airlock_sdk.usage import make_record, next_head
from tests.sdk.conftest import T0

MakeDevice = Callable[..., Device]
Activate = Callable[..., dict[str, Any]]


def test_chain_step_is_the_documented_formula() -> None:
    record = {"seq": 1, "amount": 2, "feature": None, "at": "2030-01-01T12:00:00Z"}
    expected = hashlib.sha256(bytes(32) + canonical_json(record)).hexdigest()
    assert next_head(GENESIS_HEAD, record) == expected
    made = make_record(0, GENESIS_HEAD, amount=2, feature=None, at="2030-01-01T12:00:00Z")
    assert made.head == expected and made.seq == 1


def test_verify_chain_detects_changes() -> None:
    first = make_record(0, GENESIS_HEAD, amount=1, feature=None, at="2030-01-01T12:00:00Z")
    second = make_record(1, first.head, amount=5, feature="render", at="2030-01-01T12:00:01Z")
    assert verify_chain([first, second]) == (2, second.head)
    assert verify_chain([second], counter=1, head=first.head) == (2, second.head)
    altered = {**second.body(), "amount": 6, "head": second.head}
    for broken in ([second], [second, first], [first, altered]):
        with pytest.raises(ValueError):
            verify_chain(broken)


def test_consumption_survives_a_restart_and_the_chain_verifies(
        make_device: MakeDevice, activate: Activate) -> None:
    device = make_device()
    activate(device, license_type="consumption", max_consumptions=10)
    device.consume(3, now=T0)
    device.consume(2, now=T0 + timedelta(minutes=1))
    reopened = Device(device.directory)
    assert reopened.consumption_left(now=T0 + timedelta(minutes=2)) == 5
    reopened.consume(5, now=T0 + timedelta(minutes=2))
    with pytest.raises(DeviceError) as err:
        Device(device.directory).consume(1, now=T0 + timedelta(minutes=3))
    assert err.value.reason == "consumption_limit"
    lines = (device.directory / "usage.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["amount"] for r in records] == [3, 2, 5]
    counter, head = verify_chain(records)
    assert (counter, head) == Device(device.directory).verify_usage()
    assert Device(device.directory).status(now=T0 + timedelta(minutes=3)).usage["head"] == head


def test_a_record_written_before_a_crash_is_recovered(make_device: MakeDevice,
                                                      activate: Activate) -> None:
    device = make_device()
    activate(device, license_type="consumption", max_consumptions=10)
    device.consume(1, now=T0)
    state = json.loads((device.directory / "state.json").read_text())
    usage = state["usage"]
    # the log write reached the disk, the state save did not
    record = make_record(usage["counter"], usage["head"], amount=4, feature=None,
                         at="2030-01-01T12:00:00Z")
    device.usage_log.append(record, offset=usage["offset"])
    with open(device.directory / "usage.jsonl", "ab") as handle:
        handle.write(b'{"seq":3,"amo')  # a torn write of the next record
    assert Device(device.directory).consumption_left(now=T0) == 5
    device.consume(5, now=T0)
    assert device.verify_usage()[0] == 3
    assert (device.directory / "usage.jsonl").read_bytes().endswith(b"}\n")


def test_a_truncated_or_edited_log_is_detected(make_device: MakeDevice,
                                               activate: Activate) -> None:
    device = make_device()
    activate(device, license_type="consumption", max_consumptions=10)
    for _ in range(3):
        device.consume(2, now=T0)
    log = device.directory / "usage.jsonl"
    original = log.read_bytes()
    log.write_bytes(original.replace(b'"amount":2', b'"amount":1', 1))
    for action in (device.verify_usage, lambda: device.deactivate(now=T0)):
        with pytest.raises(DeviceError) as err:
            action()
        assert err.value.reason == "usage_log_corrupt"
    log.write_bytes(b"")
    with pytest.raises(DeviceError) as err:
        device.consume(1, now=T0)
    assert err.value.reason == "usage_log_corrupt"
    log.write_bytes(original)
    assert device.verify_usage()[0] == 3
