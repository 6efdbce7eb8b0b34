"""Payloads of the files a device writes (activation, deactivation, refresh request)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from airlock_sdk.envelope import DEFAULT_MAX_BYTES, _dearmour


def armoured_digest(data: bytes) -> str:
    """Hex SHA-256 of the binary blob inside an armoured file (Envelope.digest).

    Vendor answers carry it as request_sha256; it does not depend on line wrapping.
    Raises FormatError (malformed) if `data` is not armoured.
    """
    return hashlib.sha256(_dearmour(data, max(len(data), DEFAULT_MAX_BYTES))[1]).hexdigest()


def activation_payload(
    *, request_id: str, created_at: str, product: str, auth: Mapping[str, str],
    hardware_id: str, public_key: str, hostname: str | None, os_name: str | None,
    app_version: str | None, variables: Mapping[str, Any], synced: Mapping[str, Any],
    counter: int, head: str, consumptions: int = 0, features: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """`synced` is the tip the vendor last recorded as far as the device knows; the usage
    since then is reported exactly as a deactivation reports it."""
    return {
        "request_id": request_id, "created_at": created_at, "product": product,
        "auth": dict(auth), "hardware_id": hardware_id, "device_public_key": public_key,
        "hostname": hostname, "os": os_name, "app_version": app_version,
        "variables": dict(variables),
        "usage": _usage(synced, counter, head, consumptions, features or {}),
    }


def _usage(synced: Mapping[str, Any], counter: int, head: str, consumptions: int,
           features: Mapping[str, int]) -> dict[str, Any]:
    return {"since_counter": synced["counter"], "since_head": synced["head"],
            "counter": counter, "head": head, "consumptions": consumptions,
            "features": dict(sorted(features.items()))}


def deactivation_payload(
    *, request_id: str, created_at: str, product: str, license_key: str, hardware_id: str,
    serial: int, synced: Mapping[str, Any], counter: int, head: str, consumptions: int,
    features: Mapping[str, int], variables: Mapping[str, Any],
) -> dict[str, Any]:
    return {
        "request_id": request_id, "created_at": created_at, "product": product,
        "license_key": license_key, "hardware_id": hardware_id, "serial": serial,
        "usage": _usage(synced, counter, head, consumptions, features),
        "variables": dict(variables),
    }


def refresh_request_payload(*, request_id: str, created_at: str, license_key: str,
                            hardware_id: str) -> dict[str, Any]:
    """A device asks for its own refresh only, and may not reset consumption."""
    return {"request_id": request_id, "created_at": created_at,
            "scope": {"device": {"license_key": license_key, "hardware_id": hardware_id}},
            "reset_consumption": False}
