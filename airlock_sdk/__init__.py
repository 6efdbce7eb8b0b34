"""Airlock device SDK: offline activation, license checks, usage and deactivation.

Depends on PyNaCl only. The envelope format is specified in docs/file-formats.md.
"""

from airlock_sdk.bundle import PublicBundle
from airlock_sdk.device import Device
from airlock_sdk.envelope import (
    Envelope,
    FormatError,
    Kind,
    Reason,
    canonical_json,
    device_key_from_kid,
    device_kid,
    open_envelope,
    peek_kind,
    seal,
)
from airlock_sdk.errors import DeviceError, DeviceReason
from airlock_sdk.license import Entitlements, Feature, Limit, State
from airlock_sdk.requests import armoured_digest
from airlock_sdk.state import CLOCK_TOLERANCE
from airlock_sdk.status import Status
from airlock_sdk.usage import GENESIS_HEAD, UsageLog, UsageRecord, next_head, verify_chain

__all__ = [
    "CLOCK_TOLERANCE", "GENESIS_HEAD", "Device", "DeviceError", "DeviceReason", "Entitlements",
    "Envelope", "Feature", "FormatError", "Kind", "Limit", "PublicBundle", "Reason", "State",
    "Status", "UsageLog", "UsageRecord", "armoured_digest", "canonical_json",
    "device_key_from_kid", "device_kid", "next_head", "open_envelope", "peek_kind", "seal",
    "verify_chain",
]
