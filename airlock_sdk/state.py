"""The device state folder: state.json, bundle.json, device keys, the usage log, the clock.

    bundle.json          the vendor's public bundle (verify keys, sealing key)
    state.json           everything else, replaced atomically (temp file + os.replace)
    keys/<request>.key   the device signing key of one activation request, hex, 0600
    usage.jsonl          the append-only, hash-chained usage log
    deactivation.alk     the deactivation file, kept so it can be exported again
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from airlock_sdk.bundle import PublicBundle
from airlock_sdk.errors import DeviceError, DeviceReason
from airlock_sdk.payloads import format_time, parse_time
from airlock_sdk.store import write_atomic
from airlock_sdk.usage import GENESIS_HEAD, UsageLog, UsageRecord, summarise

STATE_FORMAT = "airlock-device-state"
CLOCK_TOLERANCE = timedelta(minutes=5)


class DeviceFolder:
    """Reads and writes one device state folder (callers hold `store.locked`)."""

    def __init__(self, directory: Path, clock_tolerance: timedelta = CLOCK_TOLERANCE) -> None:
        self.directory = directory
        self.clock_tolerance = clock_tolerance
        self.usage_log = UsageLog(directory / "usage.jsonl")
        self.deactivation_path = directory / "deactivation.alk"

    @classmethod
    def create(cls, directory: Path, hardware_id: str, bundle: PublicBundle) -> None:
        if (directory / "state.json").exists():
            raise DeviceError(DeviceReason.ALREADY_INITIALISED,
                              f"{directory} already holds a device state")
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        (directory / "keys").mkdir(exist_ok=True, mode=0o700)
        write_atomic(directory / "bundle.json", bundle.to_json().encode(), mode=0o644)
        usage = UsageLog(directory / "usage.jsonl")
        if not usage.path.exists():
            usage.create()
        state = {"format": STATE_FORMAT, "v": 1, "hardware_id": hardware_id,
                 "trusted_time": None, "variables": {},
                 "usage": {"counter": 0, "head": GENESIS_HEAD, "offset": 0},
                 "pending": None, "activation": None, "deactivation": None,
                 "refresh_request": None}
        write_atomic(directory / "state.json", _dump(state))

    # --- files ----------------------------------------------------------------------------

    def read_bundle(self) -> PublicBundle:
        try:
            return PublicBundle.from_json((self.directory / "bundle.json").read_bytes())
        except (OSError, ValueError) as exc:
            raise DeviceError(DeviceReason.STATE_CORRUPT, f"bundle.json: {exc}") from None

    def read(self) -> dict[str, Any]:
        try:
            state = json.loads((self.directory / "state.json").read_bytes())
        except FileNotFoundError:
            raise DeviceError(DeviceReason.NOT_INITIALISED,
                              f"{self.directory} is not a device state folder: run init "
                              "first") from None
        except (OSError, ValueError) as exc:
            raise DeviceError(DeviceReason.STATE_CORRUPT, f"state.json: {exc}") from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT \
                or state.get("v") != 1:
            raise DeviceError(DeviceReason.STATE_CORRUPT, "state.json is not a device state (v1)")
        return state

    def write(self, state: Mapping[str, Any]) -> None:
        write_atomic(self.directory / "state.json", _dump(state))

    def key_path(self, request_id: str) -> Path:
        return self.directory / "keys" / f"{request_id}.key"

    def write_key(self, request_id: str, key: SigningKey) -> None:
        write_atomic(self.key_path(request_id), bytes(key).hex().encode(), mode=0o600)

    def read_key(self, request_id: str) -> SigningKey:
        try:
            return SigningKey(bytes.fromhex(self.key_path(request_id).read_text().strip()))
        except (OSError, ValueError) as exc:
            raise DeviceError(DeviceReason.STATE_CORRUPT,
                              f"the device key is missing or unreadable: {exc}") from None

    def drop_key(self, request_id: str) -> None:
        self.key_path(request_id).unlink(missing_ok=True)

    # --- clock and usage ------------------------------------------------------------------

    def observe(self, state: dict[str, Any], moment: datetime, *, strict: bool) -> bool:
        """Track the highest trusted time; True (DeviceError if strict) on a clock rollback."""
        trusted = parse_time(state["trusted_time"])
        if trusted is not None and moment < trusted - self.clock_tolerance:
            if strict:
                raise DeviceError(DeviceReason.CLOCK_ROLLBACK,
                                  f"the clock ({format_time(moment)}) is behind a time this "
                                  f"device already saw ({state['trusted_time']})")
            return True
        if trusted is None or moment > trusted:
            state["trusted_time"] = format_time(moment)
        return False

    def sync_usage(self, state: dict[str, Any]) -> tuple[int, str]:
        """Apply log records written after the state was last saved (crash recovery)."""
        usage = state["usage"]
        records, offset = self.usage_log.read(offset=usage["offset"], counter=usage["counter"],
                                              head=usage["head"])
        apply_usage(state, records, offset)
        return state["usage"]["counter"], state["usage"]["head"]

    def append_usage(self, state: dict[str, Any], record: UsageRecord) -> None:
        offset = self.usage_log.append(record, offset=state["usage"]["offset"])
        apply_usage(state, [record], offset)

    def full_log(self, state: Mapping[str, Any]) -> list[UsageRecord]:
        """Every record, the whole chain checked, and it must reach the state's tip."""
        records, _ = self.usage_log.read()
        if tip(records)[0] < state["usage"]["counter"]:
            raise DeviceError(DeviceReason.USAGE_LOG_CORRUPT,
                              "the usage log is shorter than this device recorded")
        return records


def apply_usage(state: dict[str, Any], records: list[UsageRecord], offset: int) -> None:
    """Move the state's usage tip (and the current period's totals) past `records`."""
    if records:
        state["usage"].update(counter=records[-1].seq, head=records[-1].head)
    state["usage"]["offset"] = offset
    activation = state["activation"]
    if activation is None:
        return
    period = activation["period"]
    units, features = summarise(records, after=period["start"])
    period["license"] += units
    for code, amount in features.items():
        period["features"][code] = period["features"].get(code, 0) + amount


def tip(records: list[UsageRecord]) -> tuple[int, str]:
    """(counter, head) after `records` (a complete log)."""
    return (records[-1].seq, records[-1].head) if records else (0, GENESIS_HEAD)


def head_at(records: list[UsageRecord], counter: int) -> str | None:
    """The chain head after record `counter` of a complete log (None if there is none)."""
    if counter == 0:
        return GENESIS_HEAD
    return records[counter - 1].head if counter <= len(records) else None


def _dump(state: Mapping[str, Any]) -> bytes:
    return (json.dumps(state, indent=1, sort_keys=True) + "\n").encode()
