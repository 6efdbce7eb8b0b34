"""Builders for tests: a vendor catalogue and a minimal device that writes request files.

The device here speaks the wire format directly (through the envelope), so the
processing core is tested independently of the SDK's own state handling.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from nacl.public import SealedBox
from nacl.signing import SigningKey
from sqlalchemy import Engine

from airlock_sdk.envelope import Kind, armour, b64u, canonical_json, device_kid, seal
from airlock_sdk.payloads import format_time
from models import LicenseType
from models.db import session_scope
from pipelines import catalog
from pipelines.keyring import VendorKeyring

GENESIS = "0" * 64
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def vendor(engine: Engine) -> None:
    with session_scope(engine) as session:
        for code in ("ACME", "BETA"):
            catalog.add_customer(session=session, code=code, name=code.title())
        catalog.add_product(session=session, code="pro", name="Pro")
        catalog.add_product(session=session, code="lite", name="Lite")


def add_license(engine: Engine, **kwargs: Any) -> str:
    kwargs.setdefault("customer_code", "ACME")
    kwargs.setdefault("product_code", "pro")
    kwargs.setdefault("now", NOW)
    features = [catalog.FeatureSpec.parse(f) for f in kwargs.pop("features", [])]
    with session_scope(engine) as session:
        return catalog.add_license(session=session, features=features, **kwargs).key


def license_info(engine: Engine, key: str) -> dict[str, Any]:
    with session_scope(engine) as session:
        return catalog.describe_license(session=session, key=key)


@dataclass
class WireDevice:
    """A device that builds sealed, signed request files by hand."""

    keyring: VendorKeyring
    hardware_id: str
    key: SigningKey = field(default_factory=SigningKey.generate)
    counter: int = 0
    head: str = GENESIS
    synced_counter: int = 0
    synced_head: str = GENESIS

    @property
    def kid(self) -> str:
        return device_kid(self.key.verify_key)

    def _seal(self, kind: Kind, payload: dict[str, Any], key: SigningKey | None = None) -> bytes:
        signer = key or self.key
        bundle = self.keyring.public_bundle()
        return seal(kind, payload, signing_key=signer, kid=device_kid(signer.verify_key),
                    recipient=bundle.sealing_key, recipient_kid=bundle.sealing_kid)

    def seal_raw(self, kind: Kind, body: bytes) -> bytes:
        """Sign and seal `body` as it is: bytes no honest encoder would write."""
        bundle = self.keyring.public_bundle()
        header = canonical_json({"alg": "Ed25519", "enc": "x25519-sealedbox", "kid": self.kid,
                                 "rcp": bundle.sealing_kid, "typ": str(kind), "v": 1})
        signed = (b"ALK1" + struct.pack(">H", len(header)) + header
                  + SealedBox(bundle.sealing_key).encrypt(body))
        return armour(kind, signed + self.key.sign(signed).signature)

    def activation(self, *, license_key: str | None = None, email: str | None = None,
                   password: str | None = None, product: str = "pro",
                   request_id: str | None = None, **extra: Any) -> bytes:
        self.synced_counter, self.synced_head = self.counter, self.head
        auth = ({"method": "key", "key": license_key} if license_key is not None
                else {"method": "user", "email": email, "password": password})
        payload = {
            "request_id": request_id or uuid.uuid4().hex, "created_at": format_time(NOW),
            "product": product, "auth": auth, "hardware_id": self.hardware_id,
            "device_public_key": b64u(bytes(self.key.verify_key)), "hostname": "host-1",
            "os": "linux", "app_version": "1.0", "variables": {"site": "lab"},
            "usage": {"counter": self.counter, "head": self.head},
        }
        payload.update(extra)
        return self._seal(Kind.ACTIVATION_REQUEST, payload)

    def consume(self, amount: int, feature: str | None = None) -> None:
        self.counter += 1
        record = {"seq": self.counter, "amount": amount, "feature": feature,
                  "at": format_time(NOW)}
        self.head = hashlib.sha256(bytes.fromhex(self.head) + canonical_json(record)).hexdigest()

    def deactivation(self, *, license_key: str, consumptions: int = 0,
                     features: dict[str, int] | None = None, product: str = "pro",
                     request_id: str | None = None, signer: SigningKey | None = None,
                     variables: dict[str, Any] | None = None, **usage_overrides: Any) -> bytes:
        for _ in range(1 if consumptions or features else 0):
            self.consume(consumptions)
        usage = {"since_counter": self.synced_counter, "since_head": self.synced_head,
                 "counter": self.counter, "head": self.head, "consumptions": consumptions,
                 "features": features or {}}
        usage.update(usage_overrides)
        payload = {
            "request_id": request_id or uuid.uuid4().hex, "created_at": format_time(NOW),
            "product": product, "license_key": license_key, "hardware_id": self.hardware_id,
            "serial": 1, "usage": usage, "variables": variables or {"site": "lab", "runs": 3},
        }
        return self._seal(Kind.DEACTIVATION, payload, signer)

    def refresh_request(self, *, license_key: str, reset: bool = False) -> bytes:
        payload = {"request_id": uuid.uuid4().hex, "created_at": format_time(NOW),
                   "scope": {"device": {"license_key": license_key,
                                        "hardware_id": self.hardware_id}},
                   "reset_consumption": reset}
        return self._seal(Kind.REFRESH_REQUEST, payload)


def operator_refresh(keyring: VendorKeyring, scope: dict[str, Any], *,
                     reset: bool = False, expires_at: datetime | None = None,
                     request_id: str | None = None) -> bytes:
    payload = {"request_id": request_id or uuid.uuid4().hex, "created_at": format_time(NOW),
               "scope": scope, "reset_consumption": reset,
               "expires_at": format_time(expires_at or NOW + timedelta(days=7))}
    return seal(Kind.REFRESH_REQUEST, payload, signing_key=keyring.signing_key,
                kid=keyring.current_signing)


__all__ = ["LicenseType", "NOW", "WireDevice", "add_license", "license_info",
           "operator_refresh", "vendor"]


def make_rule_raise(monkeypatch: Any, hardware_id: str = "BOOM") -> None:
    """Make applying any file of device `hardware_id` raise (a bug that file triggers)."""
    from pipelines import process

    real = process.apply

    def apply(state: Any, envelope: Any, **kwargs: Any) -> Any:
        if envelope.payload.get("hardware_id") == hardware_id:
            raise ZeroDivisionError("a bug this file triggers")
        return real(state, envelope, **kwargs)

    monkeypatch.setattr(process, "apply", apply)
