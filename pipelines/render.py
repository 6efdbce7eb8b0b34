"""Render signed responses: license and refresh files, receipts, rejection reports."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from airlock_sdk.envelope import Kind, seal
from airlock_sdk.payloads import format_time
from pipelines.keyring import VendorKeyring

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _time(value: datetime | None) -> str | None:
    return format_time(value) if value is not None else None


def sign(keyring: VendorKeyring, kind: Kind, payload: dict[str, Any]) -> bytes:
    return seal(kind, payload, signing_key=keyring.signing_key, kid=keyring.current_signing)


def entitlements(
    *,
    lic: Any,
    customer: Any,
    product: Any,
    features: Sequence[Any],
    device: Any,
    user_email: str | None,
) -> dict[str, Any]:
    """The part of a license/refresh file that describes what the device may do (the
    arguments are rows, read by attribute)."""
    return {
        "not_after": _time(lic.expires_at),
        "serial": device.last_serial,
        "customer": customer.code,
        "product": product.code,
        "device": {"hardware_id": device.hardware_id, "public_key": device.public_key},
        "license": {
            "key": lic.key,
            "auth_method": lic.auth_method,
            "user": user_email,
            "type": lic.license_type,
            "starts_at": _time(lic.starts_at),
            "expires_at": _time(lic.expires_at),
            "max_activations": lic.max_activations,
            "enabled": lic.enabled,
            "consumptions": {
                "max": lic.max_consumptions,
                "total": lic.total_consumptions,
                "allow_overages": lic.allow_overages,
                "max_overages": lic.max_overages,
            },
        },
        "features": [
            {
                "code": f.code,
                "kind": f.kind,
                "max_consumptions": f.max_consumptions,
                "total_consumptions": f.total_consumptions,
                "allow_overages": f.allow_overages,
                "max_overages": f.max_overages,
                "expires_at": _time(f.expires_at),
            }
            for f in features
        ],
    }


def license_file(keyring: VendorKeyring, *, request_id: str, request_sha256: str,
                 issued_at: datetime, body: dict[str, Any]) -> bytes:
    payload = {"request_id": request_id, "request_sha256": request_sha256,
               "issued_at": format_time(issued_at), **body}
    return sign(keyring, Kind.LICENSE, payload)


def refresh_file(keyring: VendorKeyring, *, request_id: str, request_sha256: str,
                 issued_at: datetime, body: dict[str, Any], reset_consumption: bool) -> bytes:
    payload = {"request_id": request_id, "request_sha256": request_sha256,
               "issued_at": format_time(issued_at), "reset_consumption": reset_consumption,
               **body}
    return sign(keyring, Kind.REFRESH, payload)


def receipt(keyring: VendorKeyring, *, request_id: str, request_sha256: str,
            issued_at: datetime, product: str, license_key: str, hardware_id: str,
            applied: dict[str, Any]) -> bytes:
    return sign(keyring, Kind.RECEIPT, {
        "request_id": request_id, "request_sha256": request_sha256,
        "issued_at": format_time(issued_at), "product": product, "license_key": license_key,
        "hardware_id": hardware_id, "applied": applied,
    })


def rejection_report(keyring: VendorKeyring, *, request_id: str | None, request_sha256: str,
                     issued_at: datetime, reason: str, message: str) -> bytes:
    return sign(keyring, Kind.REJECTION, {
        "request_id": request_id, "request_sha256": request_sha256,
        "issued_at": format_time(issued_at), "reason": reason, "message": message,
    })


# --- deterministic output names (a retry overwrites the same outbox object) ----------------


def license_name(request_id: str) -> str:
    return f"{request_id}.lic"


def receipt_name(request_id: str) -> str:
    return f"{request_id}.receipt"


def rejection_name(request_id: str | None, sha256: str) -> str:
    return f"{request_id or sha256[:32]}.rejection"


def refresh_name(request_id: str, license_key: str, hardware_id: str) -> str:
    slug = _SAFE.sub("_", hardware_id)[:48].strip("._") or "device"
    tag = hashlib.sha256(f"{license_key}\0{hardware_id}".encode()).hexdigest()[:8]
    return f"{request_id}/{slug}-{tag}/license_refresh.lic"


def device_file_name(result_name: str) -> str:
    """The name a device looks for when it is handed `result_name` (portal downloads):
    ``license.lic``, ``license_refresh.lic``; receipts and rejections keep their names."""
    base = result_name.rsplit("/", 1)[-1]
    if base == "license_refresh.lic" or not base.endswith(".lic"):
        return base
    return "license.lic"
