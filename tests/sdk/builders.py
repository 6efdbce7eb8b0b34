"""Vendor-side stand-ins for SDK tests: open device requests, issue license files."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from airlock_sdk.envelope import Envelope, Kind, open_envelope, seal
from airlock_sdk.payloads import format_time, validate
from pipelines.keyring import VendorKeyring


def open_request(keyring: VendorKeyring, data: bytes, kind: Kind | None = None) -> Envelope:
    """Open a device file the way the vendor does, and validate its payload."""
    env = open_envelope(data, resolve_verify_key=keyring.any_verify_key,
                        resolve_unseal_key=keyring.unseal_key,
                        kinds={kind} if kind else None)
    validate(env.kind, env.payload)
    return env


def feature(code: str, *, kind: str = "consumption", max_consumptions: int | None = None,
            total: int = 0, allow_overages: bool = False, max_overages: int | None = None,
            expires_at: datetime | None = None) -> dict[str, Any]:
    return {"code": code, "kind": kind, "max_consumptions": max_consumptions,
            "total_consumptions": total, "allow_overages": allow_overages,
            "max_overages": max_overages,
            "expires_at": format_time(expires_at) if expires_at else None}


def license_payload(
    request: Envelope, *, issued_at: datetime, serial: int = 1, customer: str = "ACME",
    product: str | None = None, hardware_id: str | None = None, public_key: str | None = None,
    license_type: str = "perpetual", starts_at: datetime | None = None,
    expires_at: datetime | None = None, not_after: datetime | None = None,
    enabled: bool = True, max_consumptions: int | None = None, total: int = 0,
    allow_overages: bool = False, max_overages: int | None = None,
    features: Sequence[dict[str, Any]] = (), license_key: str | None = None,
) -> dict[str, Any]:
    """A license payload answering the activation request `request` (per the contract)."""
    req = request.payload
    auth = req["auth"]
    return {
        "request_id": req["request_id"], "request_sha256": request.digest,
        "issued_at": format_time(issued_at),
        "not_after": format_time(not_after) if not_after else None,
        "serial": serial, "customer": customer, "product": product or req["product"],
        "device": {"hardware_id": hardware_id or req["hardware_id"],
                   "public_key": public_key or req["device_public_key"]},
        "license": {
            "key": license_key or auth.get("key") or "USER-LICENSE-0001",
            "auth_method": auth["method"],
            "user": auth.get("email"), "type": license_type,
            "starts_at": format_time(starts_at or issued_at),
            "expires_at": format_time(expires_at) if expires_at else None,
            "max_activations": 2, "enabled": enabled,
            "consumptions": {"max": max_consumptions, "total": total,
                             "allow_overages": allow_overages, "max_overages": max_overages},
        },
        "features": list(features),
    }


def refresh_payload(base: dict[str, Any], *, issued_at: datetime, serial: int,
                    reset_consumption: bool = False, **changes: Any) -> dict[str, Any]:
    """A refresh of the license payload `base`; `changes` patch the "license" object."""
    payload = copy.deepcopy(base)
    payload.update(request_id=uuid.uuid4().hex, request_sha256="ab" * 32,
                   issued_at=format_time(issued_at), serial=serial,
                   reset_consumption=reset_consumption)
    features = changes.pop("features", None)
    if features is not None:
        payload["features"] = list(features)
    payload["license"].update(changes)
    return payload


def issue(keyring: VendorKeyring, kind: Kind, payload: dict[str, Any]) -> bytes:
    return seal(kind, payload, signing_key=keyring.signing_key, kid=keyring.current_signing)
