"""Offline activation: bind a device to a license and return a signed license file."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from airlock_sdk.payloads import parse_time
from models import AuthMethod, DeviceStatus, LicenseUser
from pipelines.errors import Rejection
from pipelines.passwords import verify_password
from pipelines.render import license_file, license_name
from pipelines.rules.common import (
    Applied,
    RuleContext,
    audit,
    check_offline_manageable,
    check_tenant,
    device_entitlements,
    license_by_key,
)
from pipelines.workset import LICENSE, Record

_USER = LicenseUser.__table__  # type: ignore[attr-defined]


def apply_activation(ctx: RuleContext) -> Applied:
    payload = ctx.envelope.payload
    if payload["device_public_key"] != ctx.signer_public_key:
        raise Rejection("key_mismatch")
    product = ctx.state.product_by_code(payload["product"])
    if product is None:
        raise Rejection("unknown_product")
    auth = payload["auth"]
    user_email: str | None = None
    if auth["method"] == "key":
        lic = license_by_key(ctx, auth["key"])
        if lic.product_id != product.id:
            raise Rejection("wrong_product")
        if lic.auth_method != AuthMethod.KEY:
            raise Rejection("bad_credentials", "This license is user-based: activate it with "
                                               "a user name and password.")
    else:
        lic, user_email = _license_for_user(ctx, product, auth["email"], auth["password"])
    check_tenant(ctx, lic)
    _check_activatable(ctx, lic)
    device = _bind(ctx, lic, payload, user_email)
    body = device_entitlements(ctx, lic, device, user_email)
    output = license_file(ctx.keyring, request_id=ctx.request_id,
                          request_sha256=ctx.envelope.digest, issued_at=ctx.now, body=body)
    audit(ctx, "device.activate", lic=lic, device=device, hardware_id=device.hardware_id,
          serial=device.last_serial)
    return Applied(outputs=[(license_name(ctx.request_id), output)],
                   summary={"license": lic.key, "hardware_id": device.hardware_id})


def _license_for_user(ctx: RuleContext, product: Record, email: str,
                      password: str) -> tuple[Record, str]:
    """The user's license for this product; unknown user and wrong password look the same."""
    rows = ctx.state.conn.execute(
        select(_USER.c.password_hash, LICENSE.c.id, LICENSE.c.customer_id)
        .join(LICENSE, LICENSE.c.id == _USER.c.license_id)
        .where(_USER.c.email == email.lower(), LICENSE.c.product_id == product.id,
               LICENSE.c.auth_method == AuthMethod.USER)
        .order_by(LICENSE.c.id)
    ).all()
    matches = [row for row in rows if verify_password(password, row.password_hash)]
    if not matches:
        raise Rejection("bad_credentials")
    if ctx.tenant is not None:
        own = [row for row in matches if ctx.state.customer(row.customer_id).code == ctx.tenant]
        if not own:
            raise Rejection("wrong_tenant")
        matches = own
    return ctx.state.license_by_id(matches[0].id), email.lower()


def _check_activatable(ctx: RuleContext, lic: Record) -> None:
    if not lic.enabled:
        raise Rejection("license_disabled")
    check_offline_manageable(lic)
    if not lic.allow_offline_activation:
        raise Rejection("offline_not_allowed")
    if lic.expires_at is not None and lic.expires_at <= ctx.now:
        raise Rejection("license_expired")


def _bind(ctx: RuleContext, lic: Record, payload: dict[str, Any],
          user_email: str | None) -> Record:
    """Create the binding, or re-issue an existing one for the same hardware id."""
    state = ctx.state
    device = state.device(lic, payload["hardware_id"])
    takes_seat = device is None or device.status != DeviceStatus.ACTIVE
    if takes_seat and lic.active_seats >= lic.max_activations:
        raise Rejection("no_seats_left")
    parse_time(payload["created_at"])  # validated; the server's clock is what counts
    if device is None:
        device = state.add_device(lic, {
            "hardware_id": payload["hardware_id"], "public_key": payload["device_public_key"],
            "status": DeviceStatus.ACTIVE, "activated_at": ctx.now, "variables": {},
            "last_serial": 0, "usage_counter": 0, "usage_chain_head": "",
            "deactivated_at": None, "hostname": None, "os": None, "app_version": None,
            "user_email": None, "activation_job_id": None, "deactivation_job_id": None})
    state.modify(device, public_key=payload["device_public_key"],  # a re-issue: the new key
                 status=DeviceStatus.ACTIVE, activated_at=ctx.now, deactivated_at=None,
                 hostname=payload["hostname"], os=payload["os"],
                 app_version=payload["app_version"], user_email=user_email,
                 variables=dict(payload["variables"]), usage_counter=payload["usage"]["counter"],
                 usage_chain_head=payload["usage"]["head"], last_serial=device.last_serial + 1,
                 activation_job_id=ctx.job_id)
    if takes_seat:
        state.modify(lic, active_seats=lic.active_seats + 1)
    return device
