"""What every rule needs: the context it runs in and the shared license checks.

Rules read and change rows through the chunk's WorkSet, never through SQL of their
own: every check comes before the first change, and whatever a rejected file did
change is undone by the WorkSet's undo log.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from airlock_sdk.envelope import Envelope, b64u, device_key_from_kid
from models import LicenseType
from pipelines.errors import Rejection, RejectReason
from pipelines.keyring import VendorKeyring
from pipelines.render import entitlements
from pipelines.workset import AUDIT, Record, WorkSet


@dataclass(frozen=True)
class Lockout:
    """Failed sign-ins of one user, seen from one area, that lock it for the window."""

    failures: int = 10
    window: timedelta = timedelta(minutes=15)


@dataclass(frozen=True)
class PasswordMatch:
    license_id: int
    user_id: int
    rehash: str | None  # a stronger hash to store, computed before the transaction


@dataclass(frozen=True)
class Credentials:
    """A user activation's password, checked before the write transaction opened
    against the users of the arriving tenant only (none: a dummy verification)."""

    email: str
    matches: tuple[PasswordMatch, ...]


@dataclass(frozen=True)
class RuleContext:
    """Collaborators of one rule application."""

    state: WorkSet
    keyring: VendorKeyring
    now: datetime
    tenant: str | None  # customer code the file arrived for; None = operator area
    job_id: int
    envelope: Envelope
    credentials: Credentials | None = None
    lockout: Lockout = field(default_factory=Lockout)

    @property
    def request_id(self) -> str:
        return self.envelope.payload["request_id"]  # type: ignore[no-any-return]

    @property
    def signer_public_key(self) -> str:
        """b64url public key of a device signer (device kids carry the key itself)."""
        return b64u(bytes(device_key_from_kid(self.envelope.kid)))


Device = tuple[str, str]  # (license key, hardware id)


@dataclass(frozen=True)
class Rule:
    """One file kind: its rule, and the rows its files name, loaded for a whole chunk
    before any rule runs."""

    apply: Callable[[RuleContext], Applied]
    license_keys: Callable[[dict[str, Any]], list[str]]
    device: Callable[[dict[str, Any]], Device | None]


@dataclass
class Applied:
    outputs: list[tuple[str, bytes]]
    summary: dict[str, Any] = field(default_factory=dict)


def tenant_license(ctx: RuleContext, key: str) -> Record:
    """The license row of the arriving tenant (locked on PostgreSQL). Checked before
    anything else about it, so a key of another tenant teaches the sender nothing:
    `wrong_tenant` is told as `unknown_license`."""
    lic = ctx.state.license_by_key(key)
    if lic is None:
        raise Rejection(RejectReason.UNKNOWN_LICENSE)
    check_tenant(ctx, lic)
    return lic


def check_tenant(ctx: RuleContext, lic: Record) -> Record:
    """The tenant comes from where the file arrived, never from the file."""
    customer = ctx.state.customer(lic.customer_id)
    if ctx.tenant is not None and customer.code != ctx.tenant:
        raise Rejection(RejectReason.WRONG_TENANT)
    return customer


def check_offline_manageable(lic: Record) -> None:
    if lic.license_type == LicenseType.SUBSCRIPTION:
        raise Rejection(RejectReason.SUBSCRIPTION_OFFLINE)


def check_product(ctx: RuleContext, lic: Record, product_code: str) -> Record:
    product = ctx.state.product(lic.product_id)
    if product.code != product_code:
        raise Rejection(RejectReason.WRONG_PRODUCT)
    return product


def device_entitlements(ctx: RuleContext, lic: Record, device: Record,
                        user_email: str | None = None) -> dict[str, Any]:
    state = ctx.state
    return entitlements(lic=lic, customer=state.customer(lic.customer_id),
                        product=state.product(lic.product_id), features=state.features(lic),
                        device=device, user_email=user_email)


def audit(ctx: RuleContext, action: str, *, lic: Record | None, device: Record | None = None,
          kept: bool = False, **detail: Any) -> None:
    """An audit row, part of the job's changes (a refused job leaves none) unless `kept`:
    failed sign-ins are recorded because the job is refused."""
    values = dict(at=ctx.now, tenant=ctx.tenant, actor=ctx.envelope.kid[:64], action=action,
                  license_id=lic.id if lic is not None else None, job_id=ctx.job_id,
                  detail={"request_id": ctx.envelope.request_id, **detail})
    if kept:
        ctx.state.keep(AUDIT, device_id=device.id if device is not None else None, **values)
    else:
        ctx.state.append(AUDIT, device_id=device, **values)
