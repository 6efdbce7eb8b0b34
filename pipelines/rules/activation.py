"""Offline activation: bind a device to a license and return a signed license file."""

from __future__ import annotations

from typing import Any

from airlock_sdk.payloads import parse_time, usage_report
from models import AuthMethod, DeviceStatus
from pipelines.errors import Rejection, RejectReason
from pipelines.render import license_file, license_name
from pipelines.rules.common import (
    Applied,
    Device,
    Rule,
    RuleContext,
    audit,
    check_offline_manageable,
    device_entitlements,
    tenant_license,
)
from pipelines.rules.usage import Continuation, Segment, bill, continuation
from pipelines.workset import Record


def apply_activation(ctx: RuleContext) -> Applied:
    payload = ctx.envelope.payload
    if payload["device_public_key"] != ctx.signer_public_key:
        raise Rejection(RejectReason.KEY_MISMATCH)
    product = ctx.state.product_by_code(payload["product"])
    if product is None:
        raise Rejection(RejectReason.UNKNOWN_PRODUCT)
    auth = payload["auth"]
    user_email: str | None = None
    if auth["method"] == "key":
        lic = tenant_license(ctx, auth["key"])
        if lic.product_id != product.id:
            raise Rejection(RejectReason.WRONG_PRODUCT)
        if lic.auth_method != AuthMethod.KEY:
            raise Rejection(RejectReason.BAD_CREDENTIALS, "This license is user-based: "
                            "activate it with a user name and password.")
    else:
        lic, user_email = _sign_in(ctx)
    _check_activatable(ctx, lic)
    device, billed = _bind(ctx, lic, payload, user_email)
    body = device_entitlements(ctx, lic, device, user_email)
    output = license_file(ctx.keyring, request_id=ctx.request_id,
                          request_sha256=ctx.envelope.digest, issued_at=ctx.now, body=body)
    audit(ctx, "device.activate", lic=lic, device=device, hardware_id=device.hardware_id,
          serial=device.last_serial, billed=billed)
    return Applied(outputs=[(license_name(ctx.request_id), output)],
                   summary={"license": lic.key, "hardware_id": device.hardware_id})


def _license_keys(payload: dict[str, Any]) -> list[str]:
    return [payload["auth"]["key"]] if payload["auth"]["method"] == "key" else []


def _device(payload: dict[str, Any]) -> Device | None:
    if payload["auth"]["method"] != "key":
        return None  # the license is known only once the user has signed in
    return payload["auth"]["key"], payload["hardware_id"]


ACTIVATION = Rule(apply=apply_activation, license_keys=_license_keys, device=_device)


def _sign_in(ctx: RuleContext) -> tuple[Record, str]:
    """The user's license, or bad_credentials. The password was verified before the
    transaction (`ctx.credentials`); here the lockout is applied and failures counted.

    Unknown user, wrong password, another tenant's user and a locked-out user are
    told the same reason after the same work; the job keeps which one it was."""
    credentials = ctx.credentials
    if credentials is None or ctx.tenant is None:
        raise RuntimeError("a user activation needs its credentials checked first")
    state, email, lockout = ctx.state, credentials.email, ctx.lockout
    failures = state.login_failures(ctx.tenant, email, ctx.now - lockout.window)
    if failures >= lockout.failures:
        audit(ctx, "login.locked_out", lic=None, kept=True, email=email)
        raise Rejection(RejectReason.LOCKED_OUT)
    if not credentials.matches:
        state.record_login_failure(ctx.tenant, email, ctx.now, ctx.job_id)
        audit(ctx, "login.failure", lic=None, kept=True, email=email, failures=failures + 1)
        if failures + 1 >= lockout.failures:
            audit(ctx, "login.lockout", lic=None, kept=True, email=email,
                  window_seconds=int(lockout.window.total_seconds()))
        raise Rejection(RejectReason.BAD_CREDENTIALS)
    # A success does not clear the failures: the same email may be a user of several
    # licenses, and one known password must not reset the guesses against another.
    for match in credentials.matches:
        if match.rehash is not None:
            state.replace_password_hash(match.user_id, match.rehash)
    return state.license_by_id(credentials.matches[0].license_id), email


def _check_activatable(ctx: RuleContext, lic: Record) -> None:
    if not lic.enabled:
        raise Rejection(RejectReason.LICENSE_DISABLED)
    check_offline_manageable(lic)
    if not lic.allow_offline_activation:
        raise Rejection(RejectReason.OFFLINE_NOT_ALLOWED)
    if lic.expires_at is not None and lic.expires_at <= ctx.now:
        raise Rejection(RejectReason.LICENSE_EXPIRED)


def _bind(ctx: RuleContext, lic: Record, payload: dict[str, Any],
          user_email: str | None) -> tuple[Record, dict[str, Any] | None]:
    """Create the binding, re-open a released one, or re-issue an active one to the
    device key that holds it; bill the usage the request reports since the recorded tip.
    Returns the device and what was billed (None: nothing)."""
    state = ctx.state
    device = state.device(lic, payload["hardware_id"])
    active = device is not None and device.status == DeviceStatus.ACTIVE
    if active and device.public_key != payload["device_public_key"]:  # type: ignore[union-attr]
        raise Rejection(RejectReason.DEVICE_ALREADY_ACTIVE)
    if not active and lic.active_seats >= lic.max_activations:
        raise Rejection(RejectReason.NO_SEATS_LEFT)
    parse_time(payload["created_at"])  # validated; the server's clock is what counts
    segment = Segment.of(usage_report(payload["usage"]))
    how = continuation(device, segment, binding_open=active)
    if device is None:
        device = state.add_device(lic, {
            "hardware_id": payload["hardware_id"], "public_key": payload["device_public_key"],
            "status": DeviceStatus.ACTIVE, "activated_at": ctx.now, "variables": {},
            "last_serial": 0, "usage_counter": 0, "usage_chain_head": "",
            "deactivated_at": None, "hostname": None, "os": None, "app_version": None,
            "user_email": None, "activation_job_id": None, "deactivation_job_id": None})
    billed = bill(ctx, lic, device, segment) if how is Continuation.CONTINUES else None
    if how is not Continuation.RECORDED:
        state.modify(device, usage_counter=segment.tip[0], usage_chain_head=segment.tip[1])
    state.modify(device, public_key=payload["device_public_key"], status=DeviceStatus.ACTIVE,
                 activated_at=device.activated_at if active else ctx.now, deactivated_at=None,
                 hostname=payload["hostname"], os=payload["os"],
                 app_version=payload["app_version"], user_email=user_email,
                 variables=dict(payload["variables"]), last_serial=device.last_serial + 1,
                 activation_job_id=ctx.job_id,
                 deactivation_job_id=device.deactivation_job_id if active else None)
    if not active:
        state.modify(lic, active_seats=lic.active_seats + 1)
    return device, billed
