"""Refresh: render a license_refresh.lic with the current entitlements for devices."""

from __future__ import annotations

from typing import Any

from airlock_sdk.envelope import DEVICE_KID_PREFIX
from models import DeviceStatus, FeatureKind, LicenseType
from pipelines.errors import Rejection, RejectReason
from pipelines.render import refresh_file, refresh_name
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
from pipelines.workset import Record


def apply_refresh(ctx: RuleContext) -> Applied:
    payload = ctx.envelope.payload
    scope = payload["scope"]
    from_device = ctx.envelope.kid.startswith(DEVICE_KID_PREFIX)
    reset = bool(payload["reset_consumption"])
    if from_device and (reset or "device" not in scope):
        raise Rejection(RejectReason.RESET_NOT_ALLOWED if reset else "malformed",
                        None if reset else "A device may only request its own refresh.")
    targets = _targets(ctx, scope, from_device)  # every check before the first change
    outputs: list[tuple[str, bytes]] = []
    for lic, devices in targets:
        if reset:
            _reset_consumption(ctx, lic)
        for device in devices:
            ctx.state.modify(device, last_serial=device.last_serial + 1)
            body = device_entitlements(ctx, lic, device, device.user_email)
            outputs.append((
                refresh_name(ctx.request_id, lic.key, device.hardware_id),
                refresh_file(ctx.keyring, request_id=ctx.request_id,
                             request_sha256=ctx.envelope.digest, issued_at=ctx.now, body=body,
                             reset_consumption=reset),
            ))
            audit(ctx, "device.refresh", lic=lic, device=device, serial=device.last_serial,
                  reset_consumption=reset)
    return Applied(outputs=outputs, summary={"devices": len(outputs)})


def _targets(ctx: RuleContext, scope: dict[str, Any], from_device: bool
             ) -> list[tuple[Record, list[Record]]]:
    if "device" in scope:
        lic = _refreshable(ctx, scope["device"]["license_key"])
        device = ctx.state.device(lic, scope["device"]["hardware_id"])
        if device is None:
            raise Rejection(RejectReason.UNKNOWN_DEVICE)
        if from_device and device.public_key != ctx.signer_public_key:
            raise Rejection(RejectReason.WRONG_DEVICE_KEY)
        if device.status != DeviceStatus.ACTIVE:
            raise Rejection(RejectReason.DEVICE_NOT_ACTIVE)
        return [(lic, [device])]
    keys = [scope["license"]] if "license" in scope else list(dict.fromkeys(scope["licenses"]))
    targets = []
    for key in sorted(keys):  # a fixed lock order: no deadlock between bulk refreshes
        lic = _refreshable(ctx, key)
        targets.append((lic, ctx.state.active_devices(lic)))
    return targets


def _refreshable(ctx: RuleContext, key: str) -> Record:
    lic = tenant_license(ctx, key)
    check_offline_manageable(lic)
    return lic


def _reset_consumption(ctx: RuleContext, lic: Record) -> None:
    """A new consumption period: totals restart at zero (the history stays in the events)."""
    if lic.license_type == LicenseType.CONSUMPTION or lic.max_consumptions is not None:
        ctx.state.modify(lic, total_consumptions=0)
    for feature in ctx.state.features(lic):
        if feature.kind == FeatureKind.CONSUMPTION:
            ctx.state.modify(feature, total_consumptions=0)


def _license_keys(payload: dict[str, Any]) -> list[str]:
    scope = payload["scope"]
    if "device" in scope:
        return [scope["device"]["license_key"]]
    return [scope["license"]] if "license" in scope else list(scope["licenses"])


def _device(payload: dict[str, Any]) -> Device | None:
    device = payload["scope"].get("device")
    return (device["license_key"], device["hardware_id"]) if device else None


REFRESH = Rule(apply=apply_refresh, license_keys=_license_keys, device=_device)
