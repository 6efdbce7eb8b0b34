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
