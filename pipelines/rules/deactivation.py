"""Offline deactivation: release the seat, add the cached consumptions, sync variables."""

from __future__ import annotations

from typing import Any

from sqlmodel import select

from models import ConsumptionEvent, Device, DeviceStatus, FeatureKind, JobOutput, License
from pipelines.errors import Rejection
from pipelines.render import receipt, receipt_name
from pipelines.rules.common import (
    Applied,
    RuleContext,
    audit,
    check_offline_manageable,
    check_product,
    check_tenant,
    features_of,
    license_by_key,
)


def apply_deactivation(ctx: RuleContext) -> Applied:
    payload = ctx.envelope.payload
    lic = license_by_key(ctx, payload["license_key"])
    check_tenant(ctx, lic)
    product = check_product(ctx, lic, payload["product"])
    check_offline_manageable(lic)
    device = ctx.session.exec(select(Device).where(
        Device.license_id == lic.id, Device.hardware_id == payload["hardware_id"])).first()
    if device is None:
        raise Rejection("unknown_device")
    if device.public_key != ctx.signer_public_key:
        raise Rejection("wrong_device_key")
    if device.status != DeviceStatus.ACTIVE:
        raise Rejection("already_deactivated", attachments=_original_receipt(ctx, device))
    usage = payload["usage"]
    _check_continuity(device, usage)

    applied: dict[str, Any] = {"consumptions": usage["consumptions"], "features": {},
                               "overage": {"license": 0, "features": {}},
                               "overage_unauthorized": [], "unknown_features": {}}
    applied["overage"]["license"] = _consume_license(ctx, lic, device, usage["consumptions"],
                                                     applied)
    _consume_features(ctx, lic, device, usage["features"], applied)

    device.variables = dict(payload["variables"])
    device.usage_counter = usage["counter"]
    device.usage_chain_head = usage["head"]
    device.status = DeviceStatus.DEACTIVATED
    device.deactivated_at = ctx.now
    device.deactivation_job_id = ctx.job.id
    ctx.session.add(device)
    ctx.session.add(lic)
    ctx.session.flush()
    active = len(ctx.session.exec(select(Device.id).where(
        Device.license_id == lic.id, Device.status == DeviceStatus.ACTIVE)).all())
    applied["variables"] = sorted(device.variables)
    applied["seats"] = {"active": active, "max": lic.max_activations}
    applied["license_totals"] = {"consumptions": lic.total_consumptions}
    audit(ctx, "device.deactivate", lic=lic, device=device, hardware_id=device.hardware_id,
          consumptions=usage["consumptions"], features=usage["features"])
    output = receipt(ctx.keyring, request_id=ctx.request_id, request_sha256=ctx.envelope.digest,
                     issued_at=ctx.now, product=product.code, license_key=lic.key,
                     hardware_id=device.hardware_id, applied=applied)
    return Applied(outputs=[(receipt_name(ctx.request_id), output)], license_ids=[lic.id],
                   summary=applied)


def _check_continuity(device: Device, usage: dict[str, Any]) -> None:
    """The device's usage chain must continue exactly where it was last reported."""
    continues = (usage["since_counter"] == device.usage_counter
                 and usage["since_head"] == device.usage_chain_head
                 and usage["counter"] >= usage["since_counter"])
    empty = usage["consumptions"] == 0 and not any(usage["features"].values())
    if usage["counter"] == usage["since_counter"]:
        continues = continues and usage["head"] == usage["since_head"] and empty
    if not continues:
        raise Rejection("usage_discontinuity")


def _overage(old_total: int, added: int, maximum: int | None) -> int:
    """Units of `added` beyond `maximum` (units already over it are not counted again)."""
    if maximum is None:
        return 0
    return max(0, old_total + added - maximum) - max(0, old_total - maximum)


def _authorised(overage_total: int, allow: bool, max_overages: int | None) -> bool:
    return overage_total == 0 or (allow and (max_overages is None
                                             or overage_total <= max_overages))


def _consume_license(ctx: RuleContext, lic: License, device: Device, amount: int,
                     applied: dict[str, Any]) -> int:
    if amount == 0:
        return 0
    over = _overage(lic.total_consumptions, amount, lic.max_consumptions)
    lic.total_consumptions += amount
    ctx.session.add(ConsumptionEvent(license_id=lic.id, device_id=device.id, job_id=ctx.job.id,
                                     amount=amount, overage=over, created_at=ctx.now))
    total_over = max(0, lic.total_consumptions - (lic.max_consumptions or lic.total_consumptions))
    if over and not _authorised(total_over, lic.allow_overages, lic.max_overages):
        applied["overage_unauthorized"].append("license")
    return over


def _consume_features(ctx: RuleContext, lic: License, device: Device, amounts: dict[str, int],
                      applied: dict[str, Any]) -> None:
    features = {f.code: f for f in features_of(ctx, lic)}
    for code, amount in sorted(amounts.items()):
        if amount == 0:
            continue
        feature = features.get(code)
        over = 0
        if feature is None or feature.kind != FeatureKind.CONSUMPTION:
            # The usage happened offline: keep it on record even if the feature is gone.
            applied["unknown_features"][code] = amount
        else:
            over = _overage(feature.total_consumptions, amount, feature.max_consumptions)
            feature.total_consumptions += amount
            ctx.session.add(feature)
            applied["features"][code] = amount
            limit = feature.max_consumptions
            total_over = max(0, feature.total_consumptions - limit) if limit is not None else 0
            if over:
                applied["overage"]["features"][code] = over
                if not _authorised(total_over, feature.allow_overages, feature.max_overages):
                    applied["overage_unauthorized"].append(code)
        ctx.session.add(ConsumptionEvent(license_id=lic.id, device_id=device.id,
                                         job_id=ctx.job.id, feature_code=code, amount=amount,
                                         overage=over, created_at=ctx.now))


def _original_receipt(ctx: RuleContext, device: Device) -> list[tuple[str, bytes]]:
    if device.deactivation_job_id is None:
        return []
    outputs = ctx.session.exec(select(JobOutput).where(
        JobOutput.job_id == device.deactivation_job_id)).all()
    return [(o.name, o.content) for o in outputs]
