"""Operator-signed refresh requests: the vendor asking for current entitlements."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from airlock_sdk.envelope import Kind
from airlock_sdk.payloads import format_time
from pipelines.keyring import VendorKeyring
from pipelines.render import sign


def refresh_scope(license_keys: list[str], hardware_id: str | None) -> dict[str, Any]:
    """One device (a key and a hardware id), one license, or a list of licenses."""
    if not license_keys:
        raise ValueError("name at least one license")
    if hardware_id is not None:
        if len(license_keys) != 1:
            raise ValueError("--hardware-id needs exactly one license")
        return {"device": {"license_key": license_keys[0], "hardware_id": hardware_id}}
    if len(license_keys) == 1:
        return {"license": license_keys[0]}
    return {"licenses": list(license_keys)}


DEFAULT_VALIDITY = timedelta(days=7)


def operator_refresh_request(keyring: VendorKeyring, scope: dict[str, Any], *, now: datetime,
                             reset_consumption: bool = False,
                             valid_for: timedelta = DEFAULT_VALIDITY) -> bytes:
    """A vendor-signed request; it applies once, in one area, before `now + valid_for`."""
    return sign(keyring, Kind.REFRESH_REQUEST, {
        "request_id": uuid.uuid4().hex, "created_at": format_time(now), "scope": scope,
        "reset_consumption": reset_consumption, "expires_at": format_time(now + valid_for),
    })
