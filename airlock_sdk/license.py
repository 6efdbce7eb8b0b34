"""A loaded license or refresh file, read for offline checks.

`Entitlements.parse` validates the whole payload (nested fields included), so the
checks below never meet a missing or mistyped field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from airlock_sdk.envelope import FormatError, Kind, Reason
from airlock_sdk.payloads import parse_time, validate

NoneType = type(None)
LICENSE_TYPES = ("perpetual", "time_limited", "consumption", "subscription")
FEATURE_KINDS = ("activation", "consumption")
_INT = (int,)
_OPT_INT = (int, NoneType)
_OPT_STR = (str, NoneType)

_DEVICE = {"hardware_id": (str,), "public_key": (str,)}
_LICENSE = {"key": (str,), "auth_method": (str,), "user": _OPT_STR, "type": (str,),
            "starts_at": _OPT_STR, "expires_at": _OPT_STR, "max_activations": _INT,
            "enabled": (bool,), "consumptions": (dict,)}
_CONSUMPTIONS = {"max": _OPT_INT, "total": _INT, "allow_overages": (bool,),
                 "max_overages": _OPT_INT}
_FEATURE = {"code": (str,), "kind": (str,), "max_consumptions": _OPT_INT,
            "total_consumptions": _INT, "allow_overages": (bool,), "max_overages": _OPT_INT,
            "expires_at": _OPT_STR}


class State(StrEnum):
    """What a device may do right now."""

    VALID = "valid"
    EXPIRED = "expired"
    DISABLED = "disabled"
    NOT_STARTED = "not_started"
    NOT_ACTIVATED = "not_activated"
    DEACTIVATED = "deactivated"
    CLOCK_ROLLBACK = "clock_rollback"


@dataclass(frozen=True)
class Limit:
    """A consumption limit as the vendor saw it when the file was issued."""

    max: int | None
    total: int  # the vendor's total at issue (usage other devices reported)
    allow_overages: bool
    max_overages: int | None

    @property
    def allowance(self) -> int | None:
        """Units allowed in all, overages included; None = no limit."""
        if self.max is None:
            return None
        if not self.allow_overages:
            return self.max
        return None if self.max_overages is None else self.max + self.max_overages

    def left(self, used: int) -> int | None:
        """Units still allowed after `used` local units; None = no limit."""
        allowance = self.allowance
        return None if allowance is None else max(0, allowance - self.total - used)


@dataclass(frozen=True)
class Feature:
    code: str
    kind: str  # "activation" (on/off) or "consumption" (counted)
    limit: Limit
    expires_at: datetime | None

    def active(self, now: datetime) -> bool:
        return self.expires_at is None or now < self.expires_at


@dataclass(frozen=True)
class Entitlements:
    """The verified payload of a license (or refresh) file."""

    kind: Kind
    payload: Mapping[str, Any]

    @classmethod
    def parse(cls, kind: Kind, payload: Mapping[str, Any]) -> Entitlements:
        """Validate every field (FormatError malformed otherwise) and wrap the payload."""
        if kind not in (Kind.LICENSE, Kind.REFRESH):
            raise FormatError(Reason.WRONG_KIND, f"{kind} is not a license file")
        validate(kind, payload)
        check_entitlements(payload)
        return cls(kind=kind, payload=payload)

    # --- fields ---------------------------------------------------------------------------

    @property
    def license(self) -> Mapping[str, Any]:
        return self.payload["license"]  # type: ignore[no-any-return]

    @property
    def license_key(self) -> str:
        return self.license["key"]  # type: ignore[no-any-return]

    @property
    def product(self) -> str:
        return self.payload["product"]  # type: ignore[no-any-return]

    @property
    def serial(self) -> int:
        return self.payload["serial"]  # type: ignore[no-any-return]

    @property
    def issued_at(self) -> datetime:
        return parse_time(self.payload["issued_at"])  # type: ignore[return-value]

    @property
    def expires_at(self) -> datetime | None:
        return parse_time(self.license["expires_at"])

    @property
    def not_after(self) -> datetime | None:
        return parse_time(self.payload["not_after"])

    @property
    def starts_at(self) -> datetime | None:
        return parse_time(self.license["starts_at"])

    @property
    def reset_consumption(self) -> bool:
        return bool(self.payload.get("reset_consumption", False))

    @property
    def limit(self) -> Limit:
        c = self.license["consumptions"]
        return Limit(c["max"], c["total"], c["allow_overages"], c["max_overages"])

    @property
    def features(self) -> dict[str, Feature]:
        return {f["code"]: Feature(
            code=f["code"], kind=f["kind"],
            limit=Limit(f["max_consumptions"], f["total_consumptions"], f["allow_overages"],
                        f["max_overages"]),
            expires_at=parse_time(f["expires_at"]),
        ) for f in self.payload["features"]}

    # --- checks ---------------------------------------------------------------------------

    def state(self, now: datetime) -> State:
        """valid, disabled, expired (license end or file not_after) or not_started."""
        if not self.license["enabled"]:
            return State.DISABLED
        ends = [t for t in (self.expires_at, self.not_after) if t is not None]
        if ends and now >= min(ends):
            return State.EXPIRED
        starts = self.starts_at
        if starts is not None and now < starts:
            return State.NOT_STARTED
        return State.VALID


def check_entitlements(payload: Mapping[str, Any]) -> None:
    """The nested fields of a license/refresh payload (the top level is payloads.validate)."""
    _fields(payload["device"], _DEVICE, "device")
    lic = payload["license"]
    _fields(lic, _LICENSE, "license")
    _fields(lic["consumptions"], _CONSUMPTIONS, "license.consumptions")
    if lic["auth_method"] not in ("key", "user"):
        raise _malformed("license.auth_method must be 'key' or 'user'")
    if lic["type"] not in LICENSE_TYPES:
        raise _malformed(f"license.type must be one of {', '.join(LICENSE_TYPES)}")
    times = [payload["issued_at"], payload["not_after"], lic["starts_at"], lic["expires_at"]]
    codes = set()
    for feature in payload["features"]:
        if not isinstance(feature, dict):
            raise _malformed("features must be objects")
        _fields(feature, _FEATURE, "feature")
        if feature["kind"] not in FEATURE_KINDS:
            raise _malformed("feature.kind must be 'activation' or 'consumption'")
        if feature["code"] in codes:
            raise _malformed(f"feature '{feature['code']}' is listed twice")
        codes.add(feature["code"])
        times.append(feature["expires_at"])
    for text in times:
        parse_time(text)


def _fields(obj: Any, schema: Mapping[str, tuple[type, ...]], what: str) -> None:
    if not isinstance(obj, dict):
        raise _malformed(f"{what} must be an object")
    for name, types in schema.items():
        if name not in obj:
            raise _malformed(f"{what}: missing field '{name}'")
        value = obj[name]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise _malformed(f"{what}: field '{name}' has the wrong type")


def _malformed(message: str) -> FormatError:
    return FormatError(Reason.MALFORMED, message)
