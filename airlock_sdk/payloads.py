"""The payload fields of each file kind, and their strict validation.

A payload is checked after its signature: a missing or mistyped field is
`malformed`, never a KeyError or TypeError further down.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from airlock_sdk.envelope import FormatError, Kind, Reason

NoneType = type(None)
_INT = (int,)  # bool is excluded below
Scalar = (str, int, float, bool, NoneType)
REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
# Every integer in a payload is a signed 64-bit integer (what a database column or
# another implementation's parser holds); beyond it: out_of_range, the field named.
INT64_MIN = -2**63
INT64_MAX = 2**63 - 1

# field -> accepted types (a tuple); every listed field is required.
_SCHEMAS: dict[Kind, dict[str, tuple[type, ...]]] = {
    Kind.ACTIVATION_REQUEST: {
        "request_id": (str,), "created_at": (str,), "product": (str,), "auth": (dict,),
        "hardware_id": (str,), "device_public_key": (str,), "hostname": (str, NoneType),
        "os": (str, NoneType), "app_version": (str, NoneType), "variables": (dict,),
        "usage": (dict,),
    },
    Kind.DEACTIVATION: {
        "request_id": (str,), "created_at": (str,), "product": (str,), "license_key": (str,),
        "hardware_id": (str,), "serial": _INT, "usage": (dict,), "variables": (dict,),
    },
    Kind.REFRESH_REQUEST: {
        "request_id": (str,), "created_at": (str,), "scope": (dict,),
        "reset_consumption": (bool,),
    },
    Kind.LICENSE: {
        "request_id": (str,), "request_sha256": (str,), "issued_at": (str,),
        "not_after": (str, NoneType), "serial": _INT, "customer": (str,), "product": (str,),
        "device": (dict,), "license": (dict,), "features": (list,),
    },
    Kind.RECEIPT: {
        "request_id": (str,), "request_sha256": (str,), "issued_at": (str,),
        "product": (str,), "license_key": (str,), "hardware_id": (str,), "applied": (dict,),
    },
    Kind.REJECTION: {
        "request_id": (str, NoneType), "request_sha256": (str,), "issued_at": (str,),
        "reason": (str,), "message": (str,),
    },
}
_SCHEMAS[Kind.REFRESH] = {**_SCHEMAS[Kind.LICENSE], "reset_consumption": (bool,)}

_USAGE = {"since_counter": _INT, "since_head": (str,), "counter": _INT, "head": (str,),
          "consumptions": _INT, "features": (dict,)}
# Optional fields: (types). A vendor-signed refresh request must carry expires_at.
_OPTIONAL: dict[Kind, dict[str, tuple[type, ...]]] = {
    Kind.REFRESH_REQUEST: {"expires_at": (str, NoneType)},
}


def validate(kind: Kind, payload: Mapping[str, Any]) -> None:
    """Raise FormatError(malformed) unless `payload` has every field of `kind`
    (out_of_range first if any integer in it is outside the signed 64-bit range)."""
    check_int64(payload)
    _check_fields(payload, _SCHEMAS[kind], str(kind))
    optional = _OPTIONAL.get(kind, {})
    _check_fields(payload, {k: t for k, t in optional.items() if k in payload}, str(kind))
    request_id = payload["request_id"]
    if request_id is not None and not REQUEST_ID.fullmatch(request_id):
        raise FormatError(Reason.MALFORMED, "request_id must be 32 lowercase hex digits")
    if kind is Kind.ACTIVATION_REQUEST:
        _check_auth(payload["auth"])
        _check_usage(payload["usage"], full=set(payload["usage"]) != {"counter", "head"})
        _check_variables(payload["variables"])
    elif kind is Kind.DEACTIVATION:
        _check_usage(payload["usage"], full=True)
        _check_variables(payload["variables"])
    elif kind is Kind.REFRESH_REQUEST:
        _check_scope(payload["scope"])
        parse_time(payload.get("expires_at"))
    if kind in _REQUEST_KINDS:
        _check_lengths(payload)


# The longest text a request field may hold: what the vendor's columns store. Refused
# here as malformed, a longer value never reaches (and fails) a database write.
_MAX_CHARS = {"product": 64, "hardware_id": 256, "hostname": 256, "os": 128,
              "app_version": 64, "license_key": 64, "device_public_key": 64, "key": 64,
              "email": 254, "password": 1024, "created_at": 32, "expires_at": 32,
              "license": 64, "licenses": 64}
_MAX_FEATURE_CODE = 64
_MAX_LICENSES = 10_000
_HEX64 = re.compile(r"[0-9a-f]{64}")
_REQUEST_KINDS = frozenset({Kind.ACTIVATION_REQUEST, Kind.DEACTIVATION, Kind.REFRESH_REQUEST})


def _check_lengths(payload: Mapping[str, Any]) -> None:
    """Every text of a request within what the vendor stores (field named if not)."""
    auth, scope = payload.get("auth", {}), payload.get("scope", {})
    texts = [(name, payload.get(name)) for name in _MAX_CHARS]
    texts += [(f"auth.{name}", auth.get(name)) for name in ("key", "email", "password")]
    if isinstance(scope.get("device"), dict):
        texts += [(f"scope.device.{name}", scope["device"][name])
                  for name in ("license_key", "hardware_id")]
    texts.append(("scope.license", scope.get("license")))
    texts += [("scope.licenses", key) for key in scope.get("licenses", [])]
    for field, value in texts:
        limit = _MAX_CHARS[field.rsplit(".", 1)[-1]]
        if isinstance(value, str) and len(value) > limit:
            raise FormatError(Reason.MALFORMED, f"{field} is longer than {limit} characters")
    if len(scope.get("licenses", [])) > _MAX_LICENSES:
        raise FormatError(Reason.MALFORMED, f"scope.licenses names more than {_MAX_LICENSES}")
    usage = payload.get("usage", {})
    for name in ("since_head", "head"):
        if name in usage and not _HEX64.fullmatch(usage[name]):
            raise FormatError(Reason.MALFORMED, f"usage.{name} must be 64 lowercase hex digits")
    for code in usage.get("features", {}):
        if len(code) > _MAX_FEATURE_CODE:
            raise FormatError(Reason.MALFORMED, f"usage.features: a feature code is longer "
                                                f"than {_MAX_FEATURE_CODE} characters")


def usage_report(usage: Mapping[str, Any]) -> dict[str, Any]:
    """An activation's or deactivation's usage block in its full form.

    An activation may carry the short form {counter, head} (what earlier devices
    send): a report of no usage, since = the tip itself.
    """
    if set(usage) == {"counter", "head"}:
        return {"since_counter": usage["counter"], "since_head": usage["head"],
                "counter": usage["counter"], "head": usage["head"], "consumptions": 0,
                "features": {}}
    return dict(usage)


def check_int64(value: Any) -> None:
    """FormatError(out_of_range) naming the field ("usage.features.export",
    "features[1].max_consumptions") of the first integer, at any depth, outside
    INT64_MIN..INT64_MAX. Booleans are not integers here. Iterative: a payload nests as
    deep as the JSON parser allows."""
    if _all_int64(value):
        return  # the common case, without building a path for every value
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, bool):
            continue
        if isinstance(item, int):
            if not INT64_MIN <= item <= INT64_MAX:
                raise FormatError(Reason.OUT_OF_RANGE, f"{_path(path)}: {_number(item)} is "
                                                       "outside the signed 64-bit range")
        elif isinstance(item, Mapping):
            stack.extend((child, (*path, str(key))) for key, child in
                         reversed(list(item.items())))
        elif isinstance(item, list | tuple):
            stack.extend((child, (*path, index)) for index, child in
                         reversed(list(enumerate(item))))


def _all_int64(value: Any) -> bool:
    """No integer in `value` outside INT64_MIN..INT64_MAX (`check_int64` names one)."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is int:
            if not INT64_MIN <= item <= INT64_MAX:
                return False
        elif kind is dict:
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        elif kind not in (str, bool, float, type(None)):
            return False  # anything else: the careful walk decides
    return True


def _path(path: tuple[str | int, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    if len(text) > 200:  # a hostile file's keys can be long
        text = text[:200] + "..."
    return text or "(payload)"


def _number(n: int) -> str:
    # str() of an integer over 4300 digits raises ValueError; no message needs that many.
    return str(n) if n.bit_length() <= 256 else f"an integer of {n.bit_length()} bits"


def _check_fields(payload: Mapping[str, Any], schema: Mapping[str, tuple[type, ...]],
                  what: str) -> None:
    for name, types in schema.items():
        if name not in payload:
            raise FormatError(Reason.MALFORMED, f"{what}: missing field '{name}'")
        value = payload[name]
        if isinstance(value, bool) and bool not in types:
            raise FormatError(Reason.MALFORMED, f"{what}: field '{name}' has the wrong type")
        if not isinstance(value, types):
            raise FormatError(Reason.MALFORMED, f"{what}: field '{name}' has the wrong type")


def _check_auth(auth: Mapping[str, Any]) -> None:
    method = auth.get("method")
    if method == "key":
        _check_fields(auth, {"key": (str,)}, "auth")
    elif method == "user":
        _check_fields(auth, {"email": (str,), "password": (str,)}, "auth")
    else:
        raise FormatError(Reason.MALFORMED, "auth.method must be 'key' or 'user'")


def _check_usage(usage: Mapping[str, Any], *, full: bool) -> None:
    fields = _USAGE if full else {"counter": _INT, "head": (str,)}
    _check_fields(usage, fields, "usage")
    numbers = [usage["counter"]]
    if full:
        numbers += [usage["since_counter"], usage["consumptions"]]
        for code, amount in usage["features"].items():
            if not isinstance(code, str) or isinstance(amount, bool) \
                    or not isinstance(amount, int):
                raise FormatError(Reason.MALFORMED, "usage.features maps codes to integers")
            numbers.append(amount)
    if any(n < 0 for n in numbers):
        raise FormatError(Reason.MALFORMED, "usage counters and amounts cannot be negative")


def _check_variables(variables: Mapping[str, Any]) -> None:
    if len(variables) > 256:
        raise FormatError(Reason.MALFORMED, "too many device variables (at most 256)")
    for name, value in variables.items():
        if not isinstance(value, Scalar) or len(name) > 128:
            raise FormatError(Reason.MALFORMED, "device variables map names to scalars")
        if isinstance(value, str) and len(value) > 4096:
            raise FormatError(Reason.MALFORMED, f"device variable '{name}' is too long")


def _check_scope(scope: Mapping[str, Any]) -> None:
    if set(scope) == {"device"}:
        _check_fields(scope["device"], {"license_key": (str,), "hardware_id": (str,)},
                      "scope.device") if isinstance(scope["device"], dict) else _bad_scope()
    elif set(scope) == {"license"}:
        _check_fields(scope, {"license": (str,)}, "scope")
    elif set(scope) == {"licenses"}:
        keys = scope["licenses"]
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            _bad_scope()
    else:
        _bad_scope()


def _bad_scope() -> None:
    raise FormatError(Reason.MALFORMED, "scope must be one of {device: {license_key, "
                                        "hardware_id}}, {license: KEY}, {licenses: [KEY, ...]}")


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with a Z, to the second: the only time form in payloads."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except (TypeError, ValueError):
        raise FormatError(Reason.MALFORMED, f"not an RFC 3339 UTC time: {text!r}") from None
