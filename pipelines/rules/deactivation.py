"""Offline deactivation: release the seat, add the cached consumptions, sync variables."""

from __future__ import annotations

from typing import Any

from models import DeviceStatus, FeatureKind
from pipelines.errors import Rejection
from pipelines.render import receipt, receipt_name
from pipelines.rules.common import (
    Applied,
    RuleContext,
    audit,
    check_offline_manageable,
    check_product,
    check_tenant,
    license_by_key,
)
from pipelines.workset import EVENT, Record


def apply_deactivation(ctx: RuleContext) -> Applied:
    payload = ctx.envelope.payload
    state = ctx.state
    lic = license_by_key(ctx, payload["license_key"])
    check_tenant(ctx, lic)
    product = check_product(ctx, lic, payload["product"])
    check_offline_manageable(lic)
    device = state.device(lic, payload["hardware_id"])
    if device is None:
        raise Rejection("unknown_device")
    if device.public_key != ctx.signer_public_key:
        raise Rejection("wrong_device_key")
    if device.status != DeviceStatus.ACTIVE:
        original = ([] if device.deactivation_job_id is None
                    else state.outputs_of(device.deactivation_job_id))
        raise Rejection("already_deactivated", attachments=original)
    usage = payload["usage"]
    _check_continuity(device, usage)

    # Every check has passed: from here on the file only changes rows.
    applied: dict[str, Any] = {"consumptions": usage["consumptions"], "features": {},
                               "overage": {"license": 0, "features": {}},
                               "overage_unauthorized": [], "unknown_features": {}}
    events: list[dict[str, Any]] = []
    total, applied["overage"]["license"] = _consume_license(lic, usage["consumptions"],
                                                            applied, events)
    _consume_features(ctx, lic, usage["features"], applied, events)
    for event in events:
        state.append(EVENT, license_id=lic.id, device_id=device, job_id=ctx.job_id,
                     created_at=ctx.now, **event)
    if total != lic.total_consumptions:
        state.modify(lic, total_consumptions=total)
    variables = dict(payload["variables"])
    state.modify(device, variables=variables, usage_counter=usage["counter"],
                 usage_chain_head=usage["head"], status=DeviceStatus.DEACTIVATED,
                 deactivated_at=ctx.now, deactivation_job_id=ctx.job_id)
    state.modify(lic, active_seats=lic.active_seats - 1)
    applied["variables"] = sorted(variables)
    applied["seats"] = {"active": lic.active_seats, "max": lic.max_activations}
    applied["license_totals"] = {"consumptions": total}
    audit(ctx, "device.deactivate", lic=lic, device=device, hardware_id=device.hardware_id,
          consumptions=usage["consumptions"], features=usage["features"])
    output = receipt(ctx.keyring, request_id=ctx.request_id, request_sha256=ctx.envelope.digest,
                     issued_at=ctx.now, product=product.code, license_key=lic.key,
                     hardware_id=device.hardware_id, applied=applied)
    return Applied(outputs=[(receipt_name(ctx.request_id), output)], summary=applied)


def _check_continuity(device: Record, usage: dict[str, Any]) -> None:
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


def _consume_license(lic: Record, amount: int, applied: dict[str, Any],
                     events: list[dict[str, Any]]) -> tuple[int, int]:
    """(new license total, overage of this report)."""
    if amount == 0:
        return lic.total_consumptions, 0
    over = _overage(lic.total_consumptions, amount, lic.max_consumptions)
    total = lic.total_consumptions + amount
    events.append({"feature_code": None, "amount": amount, "overage": over})
    total_over = max(0, total - (lic.max_consumptions or total))
    if over and not _authorised(total_over, lic.allow_overages, lic.max_overages):
        applied["overage_unauthorized"].append("license")
    return total, over


def _consume_features(ctx: RuleContext, lic: Record, amounts: dict[str, int],
                      applied: dict[str, Any], events: list[dict[str, Any]]) -> None:
    if not any(amounts.values()):
        return
    features = {f.code: f for f in ctx.state.features(lic)}
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
            total = feature.total_consumptions + amount
            ctx.state.modify(feature, total_consumptions=total)
            applied["features"][code] = amount
            limit = feature.max_consumptions
            total_over = max(0, total - limit) if limit is not None else 0
            if over:
                applied["overage"]["features"][code] = over
                if not _authorised(total_over, feature.allow_overages, feature.max_overages):
                    applied["overage_unauthorized"].append(code)
        events.append({"feature_code": code, "amount": amount, "overage": over})
