"""Offline activation: bind a device to a license and return a signed license file."""

from __future__ import annotations

from sqlmodel import select

from airlock_sdk.payloads import parse_time
from models import AuthMethod, Device, DeviceStatus, License, LicenseUser, Product
from pipelines.errors import Rejection
from pipelines.passwords import verify_password
from pipelines.render import license_file, license_name
from pipelines.rules.common import (
    Applied,
    RuleContext,
    audit,
    check_offline_manageable,
    check_tenant,
    customer_of,
    device_entitlements,
    license_by_key,
    lock_license,
)


def apply_activation(ctx: RuleContext) -> Applied:
    payload = ctx.envelope.payload
    if payload["device_public_key"] != ctx.signer_public_key:
        raise Rejection("key_mismatch")
    product = ctx.session.exec(select(Product).where(Product.code == payload["product"])).first()
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
    return Applied(outputs=[(license_name(ctx.request_id), output)], license_ids=[lic.id],
                   summary={"license": lic.key, "hardware_id": device.hardware_id})


def _license_for_user(ctx: RuleContext, product: Product, email: str,
                      password: str) -> tuple[License, str]:
    """The user's license for this product; unknown user and wrong password look the same."""
    rows = ctx.session.exec(
        select(LicenseUser, License).join(License, License.id == LicenseUser.license_id)
        .where(LicenseUser.email == email.lower(), License.product_id == product.id,
               License.auth_method == AuthMethod.USER)
        .order_by(License.id)
    ).all()
    matches = [lic for user, lic in rows if verify_password(password, user.password_hash)]
    if not matches:
        raise Rejection("bad_credentials")
    if ctx.tenant is not None:
        own = [lic for lic in matches if customer_of(ctx, lic).code == ctx.tenant]
        if not own:
            raise Rejection("wrong_tenant")
        matches = own
    return lock_license(ctx, matches[0].id), email.lower()  # type: ignore[arg-type]


def _check_activatable(ctx: RuleContext, lic: License) -> None:
    if not lic.enabled:
        raise Rejection("license_disabled")
    check_offline_manageable(lic)
    if not lic.allow_offline_activation:
        raise Rejection("offline_not_allowed")
    if lic.expires_at is not None and lic.expires_at <= ctx.now:
        raise Rejection("license_expired")


def _bind(ctx: RuleContext, lic: License, payload: dict,  # type: ignore[type-arg]
          user_email: str | None) -> Device:
    """Create the binding, or re-issue an existing one for the same hardware id."""
    device = ctx.session.exec(select(Device).where(
        Device.license_id == lic.id, Device.hardware_id == payload["hardware_id"])).first()
    if device is None or device.status != DeviceStatus.ACTIVE:
        active = ctx.session.exec(select(Device.id).where(
            Device.license_id == lic.id, Device.status == DeviceStatus.ACTIVE)).all()
        if len(active) >= lic.max_activations:
            raise Rejection("no_seats_left")
    if device is None:
        device = Device(license_id=lic.id, hardware_id=payload["hardware_id"],  # type: ignore[arg-type]
                        public_key=payload["device_public_key"])
    device.public_key = payload["device_public_key"]  # a re-issue binds the new device key
    device.status = DeviceStatus.ACTIVE
    parse_time(payload["created_at"])  # validated; the server's clock is what counts
    device.activated_at = ctx.now
    device.deactivated_at = None
    device.hostname = payload["hostname"]
    device.os = payload["os"]
    device.app_version = payload["app_version"]
    device.user_email = user_email
    device.variables = dict(payload["variables"])
    device.usage_counter = payload["usage"]["counter"]
    device.usage_chain_head = payload["usage"]["head"]
    device.last_serial += 1
    device.activation_job_id = ctx.job.id
    ctx.session.add(device)
    ctx.session.flush()
    return device
