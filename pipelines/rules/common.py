"""What every rule needs: the context it runs in and the shared license checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Row, insert
from sqlmodel import Session, select

from airlock_sdk.envelope import Envelope, b64u, device_key_from_kid
from models import AuditEvent, Customer, Device, Job, License, LicenseFeature, LicenseType, Product
from models.db import is_postgres
from pipelines.errors import Rejection
from pipelines.keyring import VendorKeyring
from pipelines.render import entitlements


@dataclass(frozen=True)
class RuleContext:
    """Collaborators of one rule application; the session is inside an open transaction."""

    session: Session
    keyring: VendorKeyring
    now: datetime
    tenant: str | None  # customer code the file arrived for; None = operator area
    job: Job
    envelope: Envelope

    @property
    def request_id(self) -> str:
        return self.envelope.payload["request_id"]  # type: ignore[no-any-return]

    @property
    def signer_public_key(self) -> str:
        """b64url public key of a device signer (device kids carry the key itself)."""
        return b64u(bytes(device_key_from_kid(self.envelope.kid)))


@dataclass
class Applied:
    outputs: list[tuple[str, bytes]]
    license_ids: list[int] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def license_by_key(ctx: RuleContext, key: str, *, lock: bool = True) -> License:
    """The license row, locked for the rest of the transaction (FOR UPDATE on PostgreSQL)."""
    query = select(License).where(License.key == key)
    if lock and is_postgres(ctx.session.get_bind()):  # type: ignore[arg-type]
        query = query.with_for_update()
    lic = ctx.session.exec(query).first()
    if lic is None:
        raise Rejection("unknown_license")
    return lic


def lock_license(ctx: RuleContext, license_id: int) -> License:
    query = select(License).where(License.id == license_id)
    if is_postgres(ctx.session.get_bind()):  # type: ignore[arg-type]
        query = query.with_for_update()
    return ctx.session.exec(query).one()


def _pinned(ctx: RuleContext, model: type[Any], ident: int) -> Any:
    """Customers and products, loaded once per session: the identity map only holds
    weak references, so without a pin every file of a chunk would select them again."""
    pins = ctx.session.info.setdefault("airlock.pins", {})
    obj = pins.get((model, ident))
    if obj is None:
        obj = pins[(model, ident)] = ctx.session.get(model, ident)
    return obj


def customer_of(ctx: RuleContext, lic: License | Row[Any]) -> Customer:
    return _pinned(ctx, Customer, lic.customer_id)  # type: ignore[no-any-return]


def product_of(ctx: RuleContext, lic: License | Row[Any]) -> Product:
    return _pinned(ctx, Product, lic.product_id)  # type: ignore[no-any-return]


def check_tenant(ctx: RuleContext, lic: License | Row[Any]) -> Customer:
    """The tenant comes from where the file arrived, never from the file."""
    customer = customer_of(ctx, lic)
    if ctx.tenant is not None and customer.code != ctx.tenant:
        raise Rejection("wrong_tenant")
    return customer


def check_offline_manageable(lic: License | Row[Any]) -> None:
    if lic.license_type == LicenseType.SUBSCRIPTION:
        raise Rejection("subscription_offline")


def check_product(ctx: RuleContext, lic: License | Row[Any], product_code: str) -> Product:
    product = product_of(ctx, lic)
    if product.code != product_code:
        raise Rejection("wrong_product")
    return product


def features_of(ctx: RuleContext, lic: License) -> list[LicenseFeature]:
    return list(ctx.session.exec(select(LicenseFeature).where(
        LicenseFeature.license_id == lic.id).order_by(LicenseFeature.code)))


def device_entitlements(ctx: RuleContext, lic: License, device: Device,
                        user_email: str | None = None) -> dict[str, Any]:
    return entitlements(lic=lic, customer=customer_of(ctx, lic), product=product_of(ctx, lic),
                        features=features_of(ctx, lic), device=device, user_email=user_email)


_AUDIT_INSERT = insert(AuditEvent.__table__)  # type: ignore[arg-type]  # built once


def audit(ctx: RuleContext, action: str, *, lic: License | Row[Any],
          device: Device | Row[Any] | None = None, **detail: Any) -> None:
    # A plain INSERT (compiled once, cached): no unit-of-work flush per file. It runs in
    # the job's savepoint, so a rejected job leaves no audit row.
    ctx.session.execute(_AUDIT_INSERT, {
        "at": ctx.now, "tenant": ctx.tenant, "actor": ctx.envelope.kid[:64], "action": action,
        "license_id": lic.id, "device_id": device.id if device else None,
        "job_id": ctx.job.id, "detail": {"request_id": ctx.envelope.request_id, **detail},
    })
