"""Vendor-side administration: customers, products, policies, licenses and their features.

Keyword-only functions that take the session; errors a user can cause raise
`CatalogError` with a reason code.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, col, func, select

from models import (
    AuditEvent,
    AuthMethod,
    ConsumptionEvent,
    Customer,
    Device,
    DeviceStatus,
    FeatureKind,
    License,
    LicenseFeature,
    LicensePolicy,
    LicenseType,
    LicenseUser,
    LoginFailure,
    Product,
)
from models.types import utcnow
from pipelines.passwords import hash_password

CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
_KEY_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud over a phone


class CatalogError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class FeatureSpec:
    code: str
    kind: FeatureKind = FeatureKind.ACTIVATION
    max_consumptions: int | None = None
    allow_overages: bool = False
    max_overages: int | None = None

    @classmethod
    def parse(cls, text: str) -> FeatureSpec:
        """`CODE`, `CODE:consumption` or `CODE:consumption:MAX`."""
        parts = text.split(":")
        if not parts[0] or not CODE.match(parts[0]) or len(parts) > 3:
            raise CatalogError("invalid_feature", f"'{text}' is not CODE[:KIND[:MAX]]")
        try:
            kind = FeatureKind(parts[1]) if len(parts) > 1 else FeatureKind.ACTIVATION
            maximum = int(parts[2]) if len(parts) > 2 else None
        except ValueError:
            raise CatalogError("invalid_feature", f"'{text}': kind is activation or "
                                                  "consumption, MAX an integer") from None
        if maximum is not None and (maximum < 0 or kind is not FeatureKind.CONSUMPTION):
            raise CatalogError("invalid_feature", f"'{text}': only consumption features have "
                                                  "a non-negative MAX")
        return cls(code=parts[0], kind=kind, max_consumptions=maximum)


def _check_code(code: str, what: str) -> None:
    if not CODE.match(code):
        raise CatalogError("invalid_code", f"{what} code '{code}' must be 1-32 letters, digits, "
                                           "'-' or '_'")


def _audit(session: Session, action: str, *, actor: str = "operator", **detail: Any) -> None:
    session.add(AuditEvent(actor=actor, action=action,
                           license_id=detail.pop("license_id", None),
                           tenant=detail.pop("tenant", None), detail=detail))


def _ident(row: Customer | Product | License | LicensePolicy) -> int:
    """The id of a row that has been flushed (a row without one is a programming error)."""
    if row.id is None:
        raise RuntimeError(f"{type(row).__name__} has no id yet: flush it first")
    return row.id


def generate_license_key() -> str:
    groups = ["".join(secrets.choice(_KEY_ALPHABET) for _ in range(5)) for _ in range(5)]
    return "-".join(groups)


# --- customers and products --------------------------------------------------------------


def add_customer(*, session: Session, code: str, name: str) -> Customer:
    _check_code(code, "customer")
    if session.exec(select(Customer).where(Customer.code == code)).first():
        raise CatalogError("duplicate", f"customer '{code}' already exists")
    customer = Customer(code=code, name=name)
    session.add(customer)
    _audit(session, "customer.add", tenant=code)
    session.flush()
    return customer


def get_customer(*, session: Session, code: str) -> Customer:
    customer = session.exec(select(Customer).where(Customer.code == code)).first()
    if customer is None:
        raise CatalogError("unknown_customer", f"no customer with code '{code}'")
    return customer


def add_product(*, session: Session, code: str, name: str) -> Product:
    _check_code(code, "product")
    if session.exec(select(Product).where(Product.code == code)).first():
        raise CatalogError("duplicate", f"product '{code}' already exists")
    product = Product(code=code, name=name)
    session.add(product)
    session.flush()
    return product


def get_product(*, session: Session, code: str) -> Product:
    product = session.exec(select(Product).where(Product.code == code)).first()
    if product is None:
        raise CatalogError("unknown_product", f"no product with code '{code}'")
    return product


# --- policies -----------------------------------------------------------------------------


def add_policy(
    *,
    session: Session,
    code: str,
    name: str,
    product_code: str,
    license_type: LicenseType = LicenseType.PERPETUAL,
    max_activations: int = 1,
    validity_days: int | None = None,
    allow_offline_activation: bool = True,
    max_consumptions: int | None = None,
    allow_overages: bool = False,
    max_overages: int | None = None,
) -> LicensePolicy:
    _check_code(code, "policy")
    _check_numbers(max_activations, validity_days, max_consumptions, max_overages)
    if session.exec(select(LicensePolicy).where(LicensePolicy.code == code)).first():
        raise CatalogError("duplicate", f"policy '{code}' already exists")
    product = get_product(session=session, code=product_code)
    policy = LicensePolicy(
        code=code, name=name, product_id=_ident(product), license_type=license_type,
        max_activations=max_activations, validity_days=validity_days,
        allow_offline_activation=allow_offline_activation, max_consumptions=max_consumptions,
        allow_overages=allow_overages, max_overages=max_overages,
    )
    session.add(policy)
    session.flush()
    return policy


def _check_numbers(*values: int | None) -> None:
    if any(v is not None and v < 0 for v in values):
        raise CatalogError("invalid_number", "counts, limits and days cannot be negative")


# --- licenses -----------------------------------------------------------------------------


def add_license(
    *,
    session: Session,
    customer_code: str,
    product_code: str | None = None,
    policy_code: str | None = None,
    license_type: LicenseType | None = None,
    max_activations: int | None = None,
    validity_days: int | None = None,
    allow_offline_activation: bool | None = None,
    max_consumptions: int | None = None,
    allow_overages: bool | None = None,
    max_overages: int | None = None,
    features: list[FeatureSpec] = (),  # type: ignore[assignment]
    users: dict[str, str] | None = None,
    key: str | None = None,
    now: datetime | None = None,
) -> License:
    """Create a license; unset options come from the policy, then from the defaults.

    `users` (email -> password) makes the license user-based.
    """
    now = now or utcnow()
    customer = get_customer(session=session, code=customer_code)
    policy = None
    if policy_code:
        policy = session.exec(
            select(LicensePolicy).where(LicensePolicy.code == policy_code)).first()
        if policy is None:
            raise CatalogError("unknown_policy", f"no policy with code '{policy_code}'")
    if product_code:
        product = get_product(session=session, code=product_code)
        if policy is not None and policy.product_id != product.id:
            raise CatalogError("policy_mismatch", f"policy '{policy_code}' is for another product")
    elif policy is not None:
        product = session.get(Product, policy.product_id)  # type: ignore[assignment]
    else:
        raise CatalogError("missing_product", "give --product or --policy")

    def pick(value: Any, attr: str, default: Any) -> Any:
        if value is not None:
            return value
        return getattr(policy, attr) if policy is not None else default

    kind = LicenseType(pick(license_type, "license_type", LicenseType.PERPETUAL))
    days = pick(validity_days, "validity_days", None)
    _check_numbers(max_activations, days, max_consumptions, max_overages)
    if kind is LicenseType.TIME_LIMITED and days is None:
        raise CatalogError("missing_validity", "a time_limited license needs --validity-days")
    lic = License(
        key=key or generate_license_key(),
        customer_id=_ident(customer), product_id=_ident(product),
        policy_id=policy.id if policy else None,
        auth_method=AuthMethod.USER if users else AuthMethod.KEY,
        license_type=kind,
        max_activations=pick(max_activations, "max_activations", 1),
        allow_offline_activation=pick(allow_offline_activation, "allow_offline_activation", True),
        starts_at=now,
        expires_at=now + timedelta(days=days) if days is not None else None,
        max_consumptions=pick(max_consumptions, "max_consumptions", None),
        allow_overages=pick(allow_overages, "allow_overages", False),
        max_overages=pick(max_overages, "max_overages", None),
        created_at=now, updated_at=now,
    )
    session.add(lic)
    session.flush()
    for spec in features:
        _put_feature(session, lic, spec)
    for email, password in (users or {}).items():
        add_license_user(session=session, license=lic, email=email, password=password)
    _audit(session, "license.add", license_id=lic.id, tenant=customer.code)
    session.flush()
    return lic


def add_license_user(*, session: Session, license: License, email: str, password: str) -> None:
    if "@" not in email or len(password) < 8:
        raise CatalogError("invalid_user", "a user needs an email address and a password of "
                                           "at least 8 characters")
    session.add(LicenseUser(license_id=_ident(license), email=email.lower(),
                            password_hash=hash_password(password)))


def _put_feature(session: Session, lic: License, spec: FeatureSpec) -> LicenseFeature:
    feature = session.exec(select(LicenseFeature).where(
        LicenseFeature.license_id == lic.id, LicenseFeature.code == spec.code)).first()
    if feature is None:
        feature = LicenseFeature(license_id=lic.id, code=spec.code)  # type: ignore[arg-type]
    feature.kind = spec.kind
    feature.max_consumptions = spec.max_consumptions
    feature.allow_overages = spec.allow_overages
    feature.max_overages = spec.max_overages
    session.add(feature)
    return feature


def get_license(*, session: Session, key: str) -> License:
    lic = session.exec(select(License).where(License.key == key)).first()
    if lic is None:
        raise CatalogError("unknown_license", f"no license with key '{key}'")
    return lic


def update_license(
    *,
    session: Session,
    key: str,
    expires_at: datetime | None = None,
    extend_days: int | None = None,
    max_activations: int | None = None,
    enabled: bool | None = None,
    allow_offline_activation: bool | None = None,
    max_consumptions: int | None = None,
    put_features: list[FeatureSpec] = (),  # type: ignore[assignment]
    remove_features: list[str] = (),  # type: ignore[assignment]
    now: datetime | None = None,
    actor: str = "operator",
) -> License:
    """Change entitlements; devices learn of them through a refresh file."""
    now = now or utcnow()
    lic = get_license(session=session, key=key)
    _check_numbers(max_activations, max_consumptions, extend_days)
    if expires_at is not None:
        lic.expires_at = expires_at
    if extend_days is not None:
        lic.expires_at = max(lic.expires_at or now, now) + timedelta(days=extend_days)
    for attr, value in (("max_activations", max_activations), ("enabled", enabled),
                        ("allow_offline_activation", allow_offline_activation),
                        ("max_consumptions", max_consumptions)):
        if value is not None:
            setattr(lic, attr, value)
    for spec in put_features:
        _put_feature(session, lic, spec)
    for code in remove_features:
        feature = session.exec(select(LicenseFeature).where(
            LicenseFeature.license_id == lic.id, LicenseFeature.code == code)).first()
        if feature is None:
            raise CatalogError("unknown_feature", f"license has no feature '{code}'")
        session.delete(feature)
    lic.updated_at = now
    session.add(lic)
    _audit(session, "license.update", actor=actor, license_id=lic.id)
    session.flush()
    return lic


def release_device(*, session: Session, key: str, hardware_id: str,
                   now: datetime | None = None, actor: str = "operator") -> dict[str, Any]:
    """Free the seat of a device that will never deactivate (replaced, lost hardware).

    Usage the device had not reported is lost: the vendor accepts that by doing this,
    and the audit event says so. The hardware id may then activate with a new key."""
    now = now or utcnow()
    lic = session.exec(select(License).where(License.key == key).with_for_update()).first()
    if lic is None:
        raise CatalogError("unknown_license", f"no license with key '{key}'")
    device = session.exec(select(Device).where(Device.license_id == lic.id,
                                               Device.hardware_id == hardware_id)).first()
    if device is None:
        raise CatalogError("unknown_device", f"no device '{hardware_id}' on license '{key}'")
    if device.status != DeviceStatus.ACTIVE:
        raise CatalogError("device_not_active", f"device '{hardware_id}' is not active")
    device.status = DeviceStatus.RELEASED
    device.deactivated_at = now
    device.deactivation_job_id = None
    session.add(device)
    customer = session.get(Customer, lic.customer_id)
    _audit(session, "device.release", actor=actor, license_id=lic.id,
           tenant=customer.code if customer else None, hardware_id=hardware_id,
           usage_counter=device.usage_counter, unreported_usage="lost")
    session.flush()
    return {"license": key, "hardware_id": hardware_id, "released_at": now.isoformat(),
            "usage_recorded_to": device.usage_counter,
            "note": "usage the device had not reported is lost"}


def unlock_user(*, session: Session, key: str, email: str) -> int:
    """Lift a sign-in lockout of a license's user (its failures are forgotten)."""
    lic = get_license(session=session, key=key)
    customer = session.get(Customer, lic.customer_id)
    email = email.strip().lower()
    if session.exec(select(LicenseUser).where(LicenseUser.license_id == lic.id,
                                              LicenseUser.email == email)).first() is None:
        raise CatalogError("unknown_user", f"license '{key}' has no user '{email}'")
    code = customer.code if customer else ""
    failures = session.exec(select(LoginFailure).where(LoginFailure.tenant == code,
                                                       LoginFailure.email == email)).all()
    for failure in failures:
        session.delete(failure)
    _audit(session, "login.unlock", license_id=lic.id, tenant=code, email=email,
           failures=len(failures))
    session.flush()
    return len(failures)


def license_features(session: Session, license_id: int) -> list[LicenseFeature]:
    return list(session.exec(select(LicenseFeature).where(LicenseFeature.license_id == license_id)
                             .order_by(LicenseFeature.code)))


def describe_license(*, session: Session, key: str) -> dict[str, Any]:
    """Everything a vendor asks about one license, as plain data."""
    lic = get_license(session=session, key=key)
    customer = session.get(Customer, lic.customer_id)
    product = session.get(Product, lic.product_id)
    policy = session.get(LicensePolicy, lic.policy_id) if lic.policy_id else None
    devices = list(session.exec(select(Device).where(Device.license_id == lic.id)
                                .order_by(col(Device.id))))
    active = [d for d in devices if d.status == DeviceStatus.ACTIVE]
    users = session.exec(select(LicenseUser.email).where(LicenseUser.license_id == lic.id)).all()
    overage = session.exec(select(func.coalesce(func.sum(ConsumptionEvent.overage), 0)).where(
        ConsumptionEvent.license_id == lic.id, col(ConsumptionEvent.feature_code).is_(None))).one()
    return {
        "key": lic.key,
        "customer": customer.code if customer else None,
        "product": product.code if product else None,
        "policy": policy.code if policy else None,
        "auth_method": lic.auth_method,
        "type": lic.license_type,
        "enabled": lic.enabled,
        "allow_offline_activation": lic.allow_offline_activation,
        "max_activations": lic.max_activations,
        "active_devices": len(active),
        "starts_at": lic.starts_at.isoformat(),
        "expires_at": lic.expires_at.isoformat() if lic.expires_at else None,
        "consumptions": {"total": lic.total_consumptions, "max": lic.max_consumptions,
                         "allow_overages": lic.allow_overages, "overage": overage},
        "features": [
            {"code": f.code, "kind": f.kind, "total_consumptions": f.total_consumptions,
             "max_consumptions": f.max_consumptions, "allow_overages": f.allow_overages}
            for f in license_features(session, lic.id)  # type: ignore[arg-type]
        ],
        "users": list(users),
        "devices": [
            {"hardware_id": d.hardware_id, "status": d.status, "hostname": d.hostname,
             "os": d.os, "app_version": d.app_version,
             "activated_at": d.activated_at.isoformat(),
             "deactivated_at": d.deactivated_at.isoformat() if d.deactivated_at else None,
             "serial": d.last_serial, "variables": d.variables, "public_key": d.public_key,
             "usage": {"counter": d.usage_counter, "head": d.usage_chain_head}}
            for d in devices
        ],
        "recent_files": _recent_files(session, lic.id),  # type: ignore[arg-type]
    }


def _recent_files(session: Session, license_id: int, limit: int = 10) -> list[dict[str, Any]]:
    rows = session.exec(
        select(AuditEvent).where(AuditEvent.license_id == license_id,
                                 col(AuditEvent.job_id).is_not(None))
        .order_by(col(AuditEvent.id).desc()).limit(limit)
    ).all()
    return [{"at": r.at.isoformat(), "action": r.action, "job_id": r.job_id,
             "request_id": r.detail.get("request_id")} for r in rows]


def list_licenses(*, session: Session, customer_code: str | None = None) -> list[dict[str, Any]]:
    query = (select(License, Customer.code, Product.code)
             .join(Customer, col(Customer.id) == col(License.customer_id))
             .join(Product, col(Product.id) == col(License.product_id)))
    if customer_code:
        query = query.where(Customer.code == customer_code)
    active = dict(session.exec(
        select(Device.license_id, func.count()).where(Device.status == DeviceStatus.ACTIVE)
        .group_by(col(Device.license_id))).all())
    return [
        {"key": lic.key, "customer": cust, "product": prod, "type": lic.license_type,
         "auth_method": lic.auth_method, "enabled": lic.enabled,
         "max_activations": lic.max_activations, "active_devices": active.get(_ident(lic), 0),
         "expires_at": lic.expires_at.isoformat() if lic.expires_at else None}
        for lic, cust, prod in session.exec(query.order_by(col(License.id)))
    ]
