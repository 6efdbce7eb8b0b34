"""Offline deactivation: release the seat, add the cached consumptions, sync variables."""

from __future__ import annotations

from models import DeviceStatus
from pipelines.errors import Rejection, RejectReason
from pipelines.render import receipt, receipt_name
from pipelines.rules.common import (
    Applied,
    Rule,
    RuleContext,
    audit,
    check_offline_manageable,
    check_product,
    tenant_license,
)
from pipelines.rules.usage import Segment, bill, recorded_tip


def apply_deactivation(ctx: RuleContext) -> Applied:
    payload = ctx.envelope.payload
    state = ctx.state
    lic = tenant_license(ctx, payload["license_key"])
    product = check_product(ctx, lic, payload["product"])
    check_offline_manageable(lic)
    device = state.device(lic, payload["hardware_id"])
    if device is None:
        raise Rejection(RejectReason.UNKNOWN_DEVICE)
    if device.public_key != ctx.signer_public_key:
        raise Rejection(RejectReason.WRONG_DEVICE_KEY)
    usage = payload["usage"]
    segment = Segment.of(usage)
    active = device.status == DeviceStatus.ACTIVE
    late = (device.status == DeviceStatus.RELEASED and not segment.empty
            and segment.since == recorded_tip(device))
    if not active and not late:
        original = ([] if device.deactivation_job_id is None
                    else state.outputs_of(device.deactivation_job_id))
        raise Rejection(RejectReason.ALREADY_DEACTIVATED, attachments=original)
    # Exactly from the recorded tip: a deactivation whose usage a later activation of
    # the same device already carried is stale, and releasing the seat would free it
    # under a device that is active again.
    if segment.since != recorded_tip(device):
        raise Rejection(RejectReason.USAGE_DISCONTINUITY)

    # Every check has passed: from here on the file only changes rows. A device whose
    # binding was released by the vendor may still report the usage it had: it is
    # billed, and the seat (freed already) is not released twice.
    applied = bill(ctx, lic, device, segment)
    variables = dict(payload["variables"])
    state.modify(device, variables=variables, usage_counter=usage["counter"],
                 usage_chain_head=usage["head"], status=DeviceStatus.DEACTIVATED,
                 deactivated_at=device.deactivated_at if not active else ctx.now,
                 deactivation_job_id=ctx.job_id)
    if active:
        state.modify(lic, active_seats=lic.active_seats - 1)
    applied["late"] = late
    applied["variables"] = sorted(variables)
    applied["seats"] = {"active": lic.active_seats, "max": lic.max_activations}
    audit(ctx, "device.deactivate", lic=lic, device=device, hardware_id=device.hardware_id,
          consumptions=usage["consumptions"], features=usage["features"])
    output = receipt(ctx.keyring, request_id=ctx.request_id, request_sha256=ctx.envelope.digest,
                     issued_at=ctx.now, product=product.code, license_key=lic.key,
                     hardware_id=device.hardware_id, applied=applied)
    return Applied(outputs=[(receipt_name(ctx.request_id), output)], summary=applied)


DEACTIVATION = Rule(apply=apply_deactivation,
                    license_keys=lambda payload: [payload["license_key"]],
                    device=lambda payload: (payload["license_key"], payload["hardware_id"]))
