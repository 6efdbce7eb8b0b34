"""Hostile JSON the strict parser refuses: repeated keys (at any depth, header or
payload, even when validly signed), NaN/Infinity, and integers outside signed 64 bits."""

from __future__ import annotations

import copy
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from nacl.public import PrivateKey
from nacl.signing import SigningKey, VerifyKey

from airlock_sdk import FormatError, Kind, PublicBundle, open_envelope, seal
from airlock_sdk.envelope import (
    MAGIC,
    Reason,
    armour,
    b64u_decode,
    canonical_json,
    strict_json_loads,
)
from airlock_sdk.license import Entitlements
from airlock_sdk.payloads import INT64_MAX, INT64_MIN, check_int64, validate

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
ENVELOPES = {v["name"]: v for v in
             json.loads((VECTORS / "envelopes.json").read_text(encoding="utf-8"))["vectors"]}
FAILURES = {v["name"]: v for v in
            json.loads((VECTORS / "failures.json").read_text(encoding="utf-8"))["vectors"]}
KEYS = json.loads((VECTORS / "keys.json").read_text(encoding="utf-8"))
VENDOR = SigningKey(b"v" * 32)
VENDOR_KID = "sig-0123456789abcdef"
HEADER = canonical_json({"alg": "Ed25519", "enc": "none", "kid": VENDOR_KID,
                         "typ": "license", "v": 1})


def resolve_verify_key(kid: str) -> VerifyKey:
    if kid != VENDOR_KID:
        raise KeyError(kid)
    return VENDOR.verify_key


def signed_file(body: bytes, header: bytes = HEADER) -> bytes:
    """A validly signed license envelope over exactly these bytes (no canonicalising)."""
    signed = MAGIC + struct.pack(">H", len(header)) + header + body
    return armour(Kind.LICENSE, signed + VENDOR.sign(signed).signature)


def refused(data: bytes) -> FormatError:
    with pytest.raises(FormatError) as err:
        open_envelope(data, resolve_verify_key=resolve_verify_key)
    return err.value


def payload(name: str) -> dict[str, Any]:
    return copy.deepcopy(ENVELOPES[name]["payload"])


# --- repeated keys ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, key", [
    ('{"a":1,"a":2}', "a"),
    ('{"a":1,"b":2,"a":1}', "a"),  # the same value twice is still a repeat
    ('{"x":{"y":[{"k":1,"k":1}]}}', "k"),  # nested in an object inside an array
    ('[{"ok":1},{"ok":1,"z":0,"z":0}]', "z"),
])
def test_strict_loader_refuses_a_repeated_key_at_any_depth(text: str, key: str) -> None:
    with pytest.raises(FormatError) as err:
        strict_json_loads(text.encode(), "payload")
    assert err.value.reason == Reason.MALFORMED
    assert f"repeats the key {key!r}" in err.value.message


def test_strict_loader_accepts_the_same_key_in_different_objects() -> None:
    assert strict_json_loads(b'{"a":{"a":1},"b":[{"a":2},{"a":3}]}') == \
        {"a": {"a": 1}, "b": [{"a": 2}, {"a": 3}]}


def test_a_long_repeated_key_is_shortened_in_the_message() -> None:
    key = "k" * 5000
    with pytest.raises(FormatError) as err:
        strict_json_loads(json.dumps({"x": 1}).replace('"x"', f'"{key}":1,"{key}"'))
    assert len(err.value.message) < 200 and "kkkk" in err.value.message


def test_signed_payload_with_a_repeated_top_level_key_is_malformed() -> None:
    body = canonical_json(payload("license"))
    assert body.endswith(b'"serial":1}')
    error = refused(signed_file(body[:-1] + b',"serial":2}'))
    assert error.reason == "malformed" and "'serial'" in error.message
    assert "payload" in error.message


def test_signed_payload_with_a_repeated_nested_key_is_malformed() -> None:
    body = canonical_json(payload("license"))
    twice = body.replace(b'"enabled":true,', b'"enabled":true,"enabled":false,')
    assert twice != body
    error = refused(signed_file(twice))
    assert error.reason == "malformed" and "'enabled'" in error.message


def test_header_with_a_repeated_key_is_malformed_naming_it() -> None:
    header = HEADER.replace(b'"typ":', b'"typ":"receipt","typ":')
    error = refused(signed_file(canonical_json(payload("license")), header))
    assert error.reason == "malformed"
    assert "header" in error.message and "'typ'" in error.message


@pytest.mark.parametrize("name, key", [("payload_duplicate_key", "serial"),
                                       ("payload_nested_duplicate_key", "enabled"),
                                       ("header_duplicate_key", "kid")])
def test_duplicate_key_vectors_are_refused_for_the_duplicate(name: str, key: str) -> None:
    vector = FAILURES[name]
    with pytest.raises(FormatError) as err:
        open_envelope(vector["armoured"].encode(vector["encoding"]),
                      resolve_verify_key=_vector_key)
    assert err.value.reason == "malformed" and f"'{key}'" in err.value.message


def _vector_key(kid: str) -> VerifyKey:
    if kid != KEYS["vendor_signing"]["kid"]:
        raise KeyError(kid)
    return VerifyKey(b64u_decode(KEYS["vendor_signing"]["public_key"]))


def test_public_bundle_with_a_repeated_key_is_refused() -> None:
    bundle = PublicBundle({VENDOR_KID: VENDOR.verify_key}, "seal-0123456789abcdef",
                          PrivateKey(b"s" * 32).public_key)
    text = bundle.to_json()
    assert PublicBundle.from_json(text.encode()).sealing_kid == "seal-0123456789abcdef"
    # the same kid twice, nested one level down: which key would a reader trust?
    doubled = text.replace(f'"{VENDOR_KID}": ',
                           f'"{VENDOR_KID}": "{"A" * 43}", "{VENDOR_KID}": ', 1)
    assert doubled != text
    with pytest.raises(ValueError, match=f"repeats the key '{VENDOR_KID}'"):
        PublicBundle.from_json(doubled)
    with pytest.raises(ValueError, match="repeats the key 'v'"):
        PublicBundle.from_json(text.replace('"v": 1', '"v": 1, "v": 1'))


# --- NaN, Infinity, huge floats --------------------------------------------------------------


@pytest.mark.parametrize("body", [b'{"a":NaN}', b'{"a":Infinity}', b'{"a":-Infinity}',
                                  b'{"a":[1,{"b":NaN}]}', b'{"a":1e400}', b'{"a":-1e400}'])
def test_non_finite_numbers_are_malformed(body: bytes) -> None:
    with pytest.raises(FormatError) as err:
        strict_json_loads(body)
    assert err.value.reason == "malformed"
    assert refused(signed_file(body)).reason == "malformed"


def test_ordinary_json_still_parses() -> None:
    assert strict_json_loads('{"a":1.5,"b":-0.0,"c":[true,null,"é"]}') == \
        {"a": 1.5, "b": -0.0, "c": [True, None, "é"]}


@pytest.mark.parametrize("raw", [b"\xff", b"{", b"", b'{"a":1} x', "9" * 5000])
def test_other_invalid_json_is_malformed(raw: bytes | str) -> None:
    with pytest.raises(FormatError) as err:
        strict_json_loads(raw)
    assert err.value.reason == "malformed"


# --- signed 64-bit integers ------------------------------------------------------------------


def deactivation(**usage: Any) -> dict[str, Any]:
    doc = payload("deactivation")
    doc["usage"].update(usage)
    return doc


@pytest.mark.parametrize("doc, path, number", [
    (deactivation(consumptions=2**63), "usage.consumptions", 2**63),
    (deactivation(features={"render": 3, "export": 2**64}), "usage.features.export", 2**64),
    (deactivation(counter=-2**63 - 1), "usage.counter", -2**63 - 1),
    ({**payload("deactivation"), "serial": 2**63}, "serial", 2**63),
    ({**payload("deactivation"), "variables": {"count": -2**63 - 1}}, "variables.count",
     -2**63 - 1),
])
def test_integers_outside_int64_are_out_of_range_with_the_field(
        doc: dict[str, Any], path: str, number: int) -> None:
    with pytest.raises(FormatError) as err:
        validate(Kind.DEACTIVATION, doc)
    assert err.value.reason == Reason.OUT_OF_RANGE == "out_of_range"
    assert err.value.message == f"{path}: {number} is outside the signed 64-bit range"


def test_out_of_range_is_checked_before_the_field_types() -> None:
    doc = deactivation(consumptions=2**63)
    del doc["product"]  # also malformed: the range check comes first
    with pytest.raises(FormatError) as err:
        validate(Kind.DEACTIVATION, doc)
    assert err.value.reason == "out_of_range"


def test_integers_in_lists_are_named_by_index() -> None:
    lic = payload("license")
    lic["features"][1]["max_consumptions"] = 2**63
    with pytest.raises(FormatError) as err:
        Entitlements.parse(Kind.LICENSE, lic)
    assert err.value.reason == "out_of_range"
    assert err.value.message.startswith("features[1].max_consumptions: ")


@pytest.mark.parametrize("number", [INT64_MAX, INT64_MIN])
def test_the_int64_bounds_themselves_are_accepted(number: int) -> None:
    assert (INT64_MIN, INT64_MAX) == (-2**63, 2**63 - 1)
    check_int64({"a": [number, {"b": number}]})
    validate(Kind.DEACTIVATION, {**payload("deactivation"),
                                 "variables": {"count": number}})
    if number >= 0:
        validate(Kind.DEACTIVATION, deactivation(consumptions=number))


def test_bool_is_not_an_integer_here() -> None:
    check_int64({"a": True, "b": [False, {"c": True}]})  # bool is no int: never out of range
    doc = payload("deactivation")
    doc["serial"] = True  # and still no int where an int is required
    with pytest.raises(FormatError) as err:
        validate(Kind.DEACTIVATION, doc)
    assert err.value.reason == "malformed"


def test_a_huge_integer_never_escapes_as_another_error() -> None:
    with pytest.raises(FormatError) as err:
        check_int64({"n": 10**5000})  # str() of it would raise ValueError
    assert err.value.reason == "out_of_range" and "bits" in err.value.message


def test_deeply_nested_integers_are_checked_without_recursion() -> None:
    deep: Any = 2**63
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(FormatError) as err:
        check_int64({"x": deep})
    assert err.value.reason == "out_of_range" and err.value.message.startswith("x[0][0]")


def test_int64_vectors() -> None:
    """The published vectors: 2**63-1 opens and validates, 2**63 is out_of_range."""
    accepted = ENVELOPES["deactivation_int64_max"]["payload"]
    assert accepted["usage"]["consumptions"] == INT64_MAX
    validate(Kind.DEACTIVATION, accepted)
    assert FAILURES["deactivation_int64_overflow"]["reason"] == "out_of_range"
    signed = seal(Kind.DEACTIVATION, deactivation(consumptions=2**63), signing_key=VENDOR,
                  kid=VENDOR_KID)
    env = open_envelope(signed, resolve_verify_key=resolve_verify_key)  # a valid envelope
    with pytest.raises(FormatError) as err:
        validate(env.kind, env.payload)
    assert err.value.message.startswith("usage.consumptions: 9223372036854775808 ")
