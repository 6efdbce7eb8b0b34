"""Offline deactivation: release the seat, add the cached consumptions, sync variables."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, bindparam, func, insert, select, update

from models import (
    ConsumptionEvent,
    Device,
    DeviceStatus,
    FeatureKind,
    JobOutput,
    License,
    LicenseFeature,
)
from models.db import is_postgres
from pipelines.errors import Rejection
from pipelines.render import receipt, receipt_name
from pipelines.rules.common import (
    Applied,
    RuleContext,
    audit,
    check_offline_manageable,
    check_product,
    check_tenant,
)

# Plain Core statements on the tables (compiled once, cached): a deactivation is the
# hot path of the drop folder, and the ORM unit of work cost more than the SQL itself.
# Rows come back read-only; new totals are computed here and written with UPDATEs that
# run inside the job's savepoint, so a rejection rolls every one of them back.
_LICENSE, _DEVICE = License.__table__, Device.__table__
_FEATURE, _EVENT = LicenseFeature.__table__, ConsumptionEvent.__table__
# Built once: constructing a statement per call cost as much as running it.
_DEVICE_BY_HW = select(_DEVICE).where(_DEVICE.c.license_id == bindparam("lic"),
                                      _DEVICE.c.hardware_id == bindparam("hw"))
_FEATURES = select(_FEATURE).where(_FEATURE.c.license_id == bindparam("lic"))
_SET_LICENSE_TOTAL = update(_LICENSE).where(_LICENSE.c.id == bindparam("row")).values(
    total_consumptions=bindparam("total"))
_SET_FEATURE_TOTAL = update(_FEATURE).where(_FEATURE.c.id == bindparam("row")).values(
    total_consumptions=bindparam("total"))
_DEACTIVATE = update(_DEVICE).where(_DEVICE.c.id == bindparam("row")).values(
    variables=bindparam("variables"), usage_counter=bindparam("counter"),
    usage_chain_head=bindparam("head"), status=DeviceStatus.DEACTIVATED,
    deactivated_at=bindparam("at"), deactivation_job_id=bindparam("job"))
_ACTIVE_SEATS = select(func.count()).select_from(_DEVICE).where(
    _DEVICE.c.license_id == bindparam("lic"), _DEVICE.c.status == DeviceStatus.ACTIVE)


def _license_row(ctx: RuleContext, key: str) -> Row[Any]:
    """The license row, locked for the rest of the transaction (FOR UPDATE on PostgreSQL)."""
    query = select(_LICENSE).where(_LICENSE.c.key == key)
    if is_postgres(ctx.session.get_bind()):  # type: ignore[arg-type]
        query = query.with_for_update()
    lic = ctx.session.execute(query).first()
    if lic is None:
        raise Rejection("unknown_license")
    return lic


def apply_deactivation(ctx: RuleContext) -> Applied:
    payload = ctx.envelope.payload
    session = ctx.session
    lic = _license_row(ctx, payload["license_key"])
    check_tenant(ctx, lic)
    product = check_product(ctx, lic, payload["product"])
    check_offline_manageable(lic)
    device = session.execute(_DEVICE_BY_HW, {"lic": lic.id, "hw": payload["hardware_id"]}).first()
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
    events: list[dict[str, Any]] = []
    total, applied["overage"]["license"] = _consume_license(lic, usage["consumptions"],
                                                            applied, events)
    _consume_features(ctx, lic, usage["features"], applied, events)
    for event in events:
        event.update(license_id=lic.id, device_id=device.id, job_id=ctx.job.id,
                     created_at=ctx.now)
    if events:
        session.execute(insert(_EVENT), events)
    if total != lic.total_consumptions:
        session.execute(_SET_LICENSE_TOTAL, {"row": lic.id, "total": total})
    variables = dict(payload["variables"])
    session.execute(_DEACTIVATE, {"row": device.id, "variables": variables,
                                  "counter": usage["counter"], "head": usage["head"],
                                  "at": ctx.now, "job": ctx.job.id})
    active = session.execute(_ACTIVE_SEATS, {"lic": lic.id}).scalar_one()
    applied["variables"] = sorted(variables)
    applied["seats"] = {"active": active, "max": lic.max_activations}
    applied["license_totals"] = {"consumptions": total}
    audit(ctx, "device.deactivate", lic=lic, device=device, hardware_id=device.hardware_id,
          consumptions=usage["consumptions"], features=usage["features"])
    output = receipt(ctx.keyring, request_id=ctx.request_id, request_sha256=ctx.envelope.digest,
                     issued_at=ctx.now, product=product.code, license_key=lic.key,
                     hardware_id=device.hardware_id, applied=applied)
    return Applied(outputs=[(receipt_name(ctx.request_id), output)], license_ids=[lic.id],
                   summary=applied)


def _check_continuity(device: Row[Any], usage: dict[str, Any]) -> None:
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


def _consume_license(lic: Row[Any], amount: int, applied: dict[str, Any],
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


def _consume_features(ctx: RuleContext, lic: Row[Any], amounts: dict[str, int],
                      applied: dict[str, Any], events: list[dict[str, Any]]) -> None:
    if not any(amounts.values()):
        return
    features = {f.code: f for f in ctx.session.execute(_FEATURES, {"lic": lic.id})}
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
            ctx.session.execute(_SET_FEATURE_TOTAL, {"row": feature.id, "total": total})
            applied["features"][code] = amount
            limit = feature.max_consumptions
            total_over = max(0, total - limit) if limit is not None else 0
            if over:
                applied["overage"]["features"][code] = over
                if not _authorised(total_over, feature.allow_overages, feature.max_overages):
                    applied["overage_unauthorized"].append(code)
        events.append({"feature_code": code, "amount": amount, "overage": over})


def _original_receipt(ctx: RuleContext, device: Row[Any]) -> list[tuple[str, bytes]]:
    if device.deactivation_job_id is None:
        return []
    outputs = ctx.session.execute(select(JobOutput.name, JobOutput.content).where(
        JobOutput.job_id == device.deactivation_job_id).order_by(JobOutput.id)).all()
    return [(o.name, o.content) for o in outputs]
