"""Billing the usage a device reports, and where its usage chain may continue.

A device reports usage as a segment of its hash-chained log: from the tip the vendor
recorded (`since`) to its current tip, with the units in between. Deactivations and
activations of a known device report it the same way and are billed by the same code,
so re-activating is never a way around billing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from airlock_sdk.payloads import INT64_MAX
from models import FeatureKind
from pipelines.errors import Rejection, RejectReason
from pipelines.rules.common import RuleContext
from pipelines.workset import EVENT, Record


class Continuation(StrEnum):
    """How a reported segment relates to the tip the vendor recorded for the device."""

    CONTINUES = "continues"  # starts at the recorded tip: bill it, move the tip
    RECORDED = "recorded"  # ends at the recorded tip: billed before, nothing to do
    NEW_CHAIN = "new_chain"  # no usage, no earlier tip to continue (or all billed)


@dataclass(frozen=True)
class Segment:
    since: tuple[int, str]
    tip: tuple[int, str]
    consumptions: int
    features: dict[str, int]

    @classmethod
    def of(cls, usage: dict[str, Any]) -> Segment:
        segment = cls(since=(usage["since_counter"], usage["since_head"]),
                      tip=(usage["counter"], usage["head"]),
                      consumptions=usage["consumptions"], features=dict(usage["features"]))
        if segment.tip[0] < segment.since[0] or (
                segment.tip[0] == segment.since[0]
                and (segment.tip != segment.since or not segment.empty)):
            raise Rejection(RejectReason.USAGE_DISCONTINUITY)
        return segment

    @property
    def empty(self) -> bool:
        return self.consumptions == 0 and not any(self.features.values())


def recorded_tip(device: Record) -> tuple[int, str]:
    return device.usage_counter, device.usage_chain_head


def continuation(device: Record | None, segment: Segment, *,
                 binding_open: bool) -> Continuation:
    """Where `segment` stands against the device's recorded tip, or usage_discontinuity.

    While a binding is open the chain must go on from the recorded tip (a fork, a
    restored snapshot or a wiped log is refused); a new chain may only start where
    everything before it was billed: a device never seen, or one whose deactivation
    was recorded.
    """
    if device is None:
        if segment.empty:
            return Continuation.NEW_CHAIN
        # Units reported against no earlier tip of this license: the SDK sends usage only
        # when re-activating a license it was active on; a first binding carries none.
        raise Rejection(RejectReason.USAGE_DISCONTINUITY)
    tip = recorded_tip(device)
    if segment.tip == tip:
        return Continuation.RECORDED
    if segment.since == tip:
        return Continuation.CONTINUES
    if not binding_open and segment.empty:
        return Continuation.NEW_CHAIN
    raise Rejection(RejectReason.USAGE_DISCONTINUITY)


def bill(ctx: RuleContext, lic: Record, device: Record, segment: Segment) -> dict[str, Any]:
    """Add the segment's units to the license and its features; record the events.
    Every check (totals within 64 bits) comes before the first change."""
    applied: dict[str, Any] = {"consumptions": segment.consumptions, "features": {},
                               "overage": {"license": 0, "features": {}},
                               "overage_unauthorized": [], "unknown_features": {}}
    features = {f.code: f for f in ctx.state.features(lic)}
    _check_total("total_consumptions", lic.total_consumptions, segment.consumptions)
    for code, amount in segment.features.items():
        feature = features.get(code)
        if feature is not None and feature.kind == FeatureKind.CONSUMPTION:
            _check_total(f"features.{code}.total_consumptions", feature.total_consumptions,
                         amount)
    events: list[dict[str, Any]] = []
    total, applied["overage"]["license"] = _consume_license(lic, segment.consumptions,
                                                            applied, events)
    _consume_features(ctx, features, segment.features, applied, events)
    for event in events:
        ctx.state.append(EVENT, license_id=lic.id, device_id=device, job_id=ctx.job_id,
                         created_at=ctx.now, **event)
    if total != lic.total_consumptions:
        ctx.state.modify(lic, total_consumptions=total)
    applied["license_totals"] = {"consumptions": total}
    return applied


def _check_total(field: str, total: int, amount: int) -> None:
    if total + amount > INT64_MAX:
        raise Rejection(RejectReason.OUT_OF_RANGE, f"{field}: adding {amount} to {total} "
                        "would exceed the signed 64-bit range")


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


def _consume_features(ctx: RuleContext, features: dict[str, Record], amounts: dict[str, int],
                      applied: dict[str, Any], events: list[dict[str, Any]]) -> None:
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
