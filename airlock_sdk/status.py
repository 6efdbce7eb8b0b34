"""The offline answer to "what may this device do now?"."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from airlock_sdk.envelope import Kind
from airlock_sdk.license import Entitlements, Limit, State
from airlock_sdk.payloads import format_time

STATE_MESSAGES = {
    State.VALID: "the license is valid",
    State.EXPIRED: "the license has expired",
    State.DISABLED: "the vendor has disabled the license",
    State.NOT_STARTED: "the license period has not started yet",
    State.NOT_ACTIVATED: "the device is not activated",
    State.DEACTIVATED: "the device has been deactivated",
    State.CLOCK_ROLLBACK: "the clock is behind a time this device already saw: set it right",
}


@dataclass(frozen=True)
class Status:
    """A snapshot: the state, the license summary, limits and usage."""

    state: State
    message: str
    hardware_id: str
    checked_at: str
    kid: str | None = None
    license_key: str | None = None
    product: str | None = None
    customer: str | None = None
    license_type: str | None = None
    user: str | None = None
    expires_at: str | None = None
    not_after: str | None = None
    issued_at: str | None = None
    serial: int | None = None
    consumption: dict[str, Any] | None = None
    features: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)
    pending_request: str | None = None
    deactivation_request: str | None = None
    refresh_request: str | None = None
    trusted_time: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = str(self.state)
        return data


def build_status(state: dict[str, Any], hardware_id: str, now: datetime, *, rollback: bool,
                 kid: str | None) -> Status:
    """Read a device state (as saved in state.json) at `now`."""
    activation = state["activation"]
    usage = {"counter": state["usage"]["counter"], "head": state["usage"]["head"]}
    common: dict[str, Any] = {
        "hardware_id": hardware_id, "checked_at": format_time(now), "kid": kid,
        "usage": usage, "trusted_time": state["trusted_time"],
        "pending_request": (state["pending"] or {}).get("request_id"),
        "deactivation_request": (state["deactivation"] or {}).get("request_id"),
        "refresh_request": (state["refresh_request"] or {}).get("request_id"),
    }
    if activation is None:
        return Status(state=State.NOT_ACTIVATED, message=STATE_MESSAGES[State.NOT_ACTIVATED],
                      **common)
    ent = Entitlements(kind=Kind(activation["kind"]), payload=activation["license"])
    if state["deactivation"]:
        current = State.DEACTIVATED
    elif rollback:
        current = State.CLOCK_ROLLBACK
    else:
        current = ent.state(now)
    usage.update(since_counter=activation["synced"]["counter"],
                 since_head=activation["synced"]["head"])
    period = activation["period"]
    lic = ent.license
    return Status(
        state=current, message=STATE_MESSAGES[current], license_key=ent.license_key,
        product=ent.product, customer=ent.payload["customer"], license_type=lic["type"],
        user=lic["user"], expires_at=lic["expires_at"], not_after=ent.payload["not_after"],
        issued_at=ent.payload["issued_at"], serial=ent.serial,
        consumption=_limit(ent.limit, period["license"]),
        features=[{"code": f.code, "kind": f.kind, "enabled": f.active(now),
                   "expires_at": format_time(f.expires_at) if f.expires_at else None,
                   **_limit(f.limit, period["features"].get(f.code, 0))}
                  for f in ent.features.values()],
        **common,
    )


def _limit(limit: Limit, used: int) -> dict[str, Any]:
    return {"max": limit.max, "total": limit.total, "used": used, "left": limit.left(used),
            "allow_overages": limit.allow_overages, "max_overages": limit.max_overages}
