"""Envelope round trips, single-byte tampering of every kind, and fuzzing: the only
exception that ever leaves open_envelope / validate / Device.load is the documented one."""

from __future__ import annotations

import copy
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey, SealedBox
from nacl.signing import SigningKey, VerifyKey

from airlock_sdk import (
    Device,
    DeviceError,
    Entitlements,
    Envelope,
    FormatError,
    Kind,
    PublicBundle,
    open_envelope,
    seal,
)
from airlock_sdk.envelope import LABELS, MAGIC, armour, canonical_json, device_kid
from airlock_sdk.payloads import validate

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "envelopes.json")
                     .read_text())["vectors"]
VENDOR = SigningKey(b"v" * 32)
VENDOR_KID = "sig-0123456789abcdef"
SEALING = PrivateKey(b"s" * 32)
SEALING_KID = "seal-0123456789abcdef"
DEVICE = SigningKey(b"d" * 32)
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def resolve_verify_key(kid: str) -> VerifyKey:
    if kid == VENDOR_KID:
        return VENDOR.verify_key
    if kid == device_kid(DEVICE.verify_key):
        return DEVICE.verify_key
    raise KeyError(kid)


def resolve_unseal_key(kid: str) -> PrivateKey:
    if kid != SEALING_KID:
        raise KeyError(kid)
    return SEALING


def open_any(data: bytes, **options: Any) -> Envelope:
    return open_envelope(data, resolve_verify_key=resolve_verify_key,
                         resolve_unseal_key=resolve_unseal_key, **options)


def make_file(vector: dict[str, Any]) -> bytes:
    """The vector's payload, sealed/signed as its kind is in real use."""
    kind = Kind(vector["kind"])
    if vector["signer"] == "device":
        return seal(kind, vector["payload"], signing_key=DEVICE,
                    kid=device_kid(DEVICE.verify_key), recipient=SEALING.public_key,
                    recipient_kid=SEALING_KID)
    if vector["sealed"]:
        return seal(kind, vector["payload"], signing_key=VENDOR, kid=VENDOR_KID,
                    recipient=SEALING.public_key, recipient_kid=SEALING_KID)
    return seal(kind, vector["payload"], signing_key=VENDOR, kid=VENDOR_KID)


FILES = {v["name"]: make_file(v) for v in VECTORS}
ORIGINAL = {name: open_any(data).digest for name, data in FILES.items()}
NAMES = sorted(FILES)


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
@pytest.mark.parametrize("sealed", [False, True])
def test_round_trip_every_kind(vector: dict[str, Any], sealed: bool) -> None:
    kind = Kind(vector["kind"])
    recipient = {"recipient": SEALING.public_key, "recipient_kid": SEALING_KID} if sealed else {}
    data = seal(kind, vector["payload"], signing_key=VENDOR, kid=VENDOR_KID, **recipient)
    env = open_any(data, kinds={kind})
    assert (env.kind, env.kid, env.payload) == (kind, VENDOR_KID, vector["payload"])
    assert env.header["enc"] == ("x25519-sealedbox" if sealed else "none")
    validate(kind, env.payload)
    if sealed:
        with pytest.raises(FormatError) as err:  # without the vendor's private key
            open_envelope(data, resolve_verify_key=resolve_verify_key)
        assert err.value.reason == "unknown_key"


def test_rewrapped_armour_keeps_the_digest() -> None:
    data = FILES["license"]
    lines = data.decode().strip().split("\n")
    joined = "\n".join([lines[0], "".join(lines[1:-1]), lines[-1]]).replace("\n", "\r\n")
    env = open_any(joined.encode())
    assert env.digest == ORIGINAL["license"]


# --- tampering --------------------------------------------------------------------------------


def _body_positions(data: bytes) -> list[int]:
    text = data.decode()
    start = text.index("\n") + 1
    end = text.index("-----END")
    return [i for i in range(start, end) if text[i] in B64]


def _check_tampered(name: str, tampered: bytes) -> None:
    """Refused with a FormatError, or (armour whitespace only) the very same signed blob."""
    try:
        env = open_any(tampered)
    except FormatError:
        return
    assert env.digest == ORIGINAL[name], "a changed file opened as a different one"


@pytest.mark.parametrize("name", NAMES)
def test_every_base64_character_flipped_is_refused(name: str) -> None:
    data = FILES[name]
    reasons = set()
    for i in _body_positions(data):
        replacement = B64[(B64.index(chr(data[i])) + 1) % 64]
        with pytest.raises(FormatError) as err:
            open_any(data[:i] + replacement.encode() + data[i + 1:])
        reasons.add(err.value.reason)
    assert "bad_signature" in reasons
    assert reasons <= {"bad_signature", "malformed", "unsupported_version", "unknown_key",
                       "wrong_kind", "undecryptable"}


@pytest.mark.parametrize("name", NAMES)
def test_every_byte_changed_never_escapes(name: str) -> None:
    data = FILES[name]
    for i in range(len(data)):
        for mask in (0x01, 0x20):
            _check_tampered(name, data[:i] + bytes([data[i] ^ mask]) + data[i + 1:])
    _check_tampered(name, data[:-1])
    _check_tampered(name, data[1:])


@FUZZ
@given(name=st.sampled_from(NAMES), data=st.data())
def test_random_base64_substitution_is_refused(name: str, data: st.DataObject) -> None:
    original = FILES[name]
    i = data.draw(st.sampled_from(_body_positions(original)))
    char = data.draw(st.sampled_from([c for c in B64 if ord(c) != original[i]]))
    with pytest.raises(FormatError):
        open_any(original[:i] + char.encode() + original[i + 1:])


@FUZZ
@given(name=st.sampled_from(NAMES), data=st.data())
def test_random_byte_substitution_never_escapes(name: str, data: st.DataObject) -> None:
    original = FILES[name]
    i = data.draw(st.integers(0, len(original) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != original[i]))
    _check_tampered(name, original[:i] + bytes([byte]) + original[i + 1:])


# --- fuzzing ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20)


def _opens_or_format_error(data: bytes, **options: Any) -> None:
    try:
        env = open_any(data, **options)
    except FormatError as exc:
        assert exc.reason and exc.message
        return
    assert isinstance(env.payload, dict)


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(data: bytes) -> None:
    _opens_or_format_error(data)


@FUZZ
@given(st.text(max_size=2048))
def test_arbitrary_text(text: str) -> None:
    _opens_or_format_error(text.encode("utf-8", "surrogatepass"))


@FUZZ
@given(label=st.sampled_from(sorted(LABELS.values())), blob=st.binary(max_size=1024),
       magic=st.booleans())
def test_armoured_random_blobs(label: str, blob: bytes, magic: bool) -> None:
    kind = next(k for k, v in LABELS.items() if v == label)
    _opens_or_format_error(armour(kind, (MAGIC + blob) if magic else blob))


header_values = st.one_of(json_values, st.sampled_from(
    ["Ed25519", "none", "x25519-sealedbox", VENDOR_KID, SEALING_KID, 1, "license"]))


@FUZZ
@given(kind=st.sampled_from(list(Kind)),
       header=st.dictionaries(st.sampled_from(["alg", "enc", "kid", "rcp", "typ", "v", "x"]),
                              header_values, max_size=7),
       body=st.one_of(st.binary(max_size=256),
                      json_values.map(lambda v: json.dumps(v).encode()),
                      st.dictionaries(st.text(max_size=8), json_values)
                      .map(lambda v: json.dumps(v).encode())),
       validly_signed=st.booleans())
def test_signed_random_headers_and_bodies(kind: Kind, header: dict[str, Any], body: bytes,
                                          validly_signed: bool) -> None:
    """Correct signatures over random content reach the header and payload parsers."""
    header_bytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    signed = MAGIC + struct.pack(">H", len(header_bytes)) + header_bytes + body
    signature = VENDOR.sign(signed).signature if validly_signed else bytes(64)
    _opens_or_format_error(armour(kind, signed + signature))
    _opens_or_format_error(armour(kind, signed + signature), kinds={Kind.RECEIPT})


@FUZZ
@given(kind=st.sampled_from(list(Kind)), sealed=st.booleans(),
       body=st.one_of(st.binary(max_size=256),
                      json_values.map(lambda v: json.dumps(v).encode()),
                      st.dictionaries(st.text(max_size=8), json_values)
                      .map(lambda v: json.dumps(v).encode())),
       encrypt=st.booleans())
def test_valid_headers_with_random_bodies(kind: Kind, sealed: bool, body: bytes,
                                          encrypt: bool) -> None:
    """A correctly signed header over any body: the payload parser and unsealing only
    ever fail with FormatError."""
    header = {"alg": "Ed25519", "enc": "none", "kid": VENDOR_KID, "typ": str(kind), "v": 1}
    if sealed:
        header.update(enc="x25519-sealedbox", rcp=SEALING_KID)
        if encrypt:
            body = SealedBox(SEALING.public_key).encrypt(body)
    header_bytes = canonical_json(header)
    signed = MAGIC + struct.pack(">H", len(header_bytes)) + header_bytes + body
    _opens_or_format_error(armour(kind, signed + VENDOR.sign(signed).signature))


def _mutations(payload: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A valid payload with one value (at any depth) replaced by junk, or one key removed."""
    paths: list[tuple[Any, ...]] = []

    def walk(value: Any, path: tuple[Any, ...]) -> None:
        items = value.items() if isinstance(value, dict) else enumerate(value) \
            if isinstance(value, list) else ()
        for key, child in items:
            paths.append((*path, key))
            walk(child, (*path, key))

    walk(payload, ())

    def mutate(path: tuple[Any, ...], junk: Any, delete: bool) -> dict[str, Any]:
        copied = copy.deepcopy(payload)
        parent = copied
        for key in path[:-1]:
            parent = parent[key]
        if delete and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = junk
        return copied

    return st.builds(mutate, st.sampled_from(paths), json_values, st.booleans())


@FUZZ
@given(data=st.data(), vector=st.sampled_from(VECTORS))
def test_payload_validation_only_raises_format_error(data: st.DataObject,
                                                     vector: dict[str, Any]) -> None:
    kind = Kind(vector["kind"])
    payload = data.draw(_mutations(vector["payload"]))
    try:
        validate(kind, payload)
        if kind in (Kind.LICENSE, Kind.REFRESH):
            Entitlements.parse(kind, payload)
    except FormatError as exc:  # out_of_range: json_values draws unbounded integers
        assert exc.reason in ("malformed", "out_of_range")


@FUZZ
@given(junk=st.binary(max_size=1024))
def test_device_load_only_raises_device_error(tmp_path_factory: pytest.TempPathFactory,
                                              junk: bytes) -> None:
    folder = tmp_path_factory.mktemp("dev")
    bundle = PublicBundle({VENDOR_KID: VENDOR.verify_key}, SEALING_KID, SEALING.public_key)
    device = Device.init(folder, "HW-0001", bundle)
    for data in (junk, armour(Kind.LICENSE, MAGIC + junk)):
        with pytest.raises(DeviceError):
            device.load(data)


def test_device_load_of_signed_junk_payloads(tmp_path: Path) -> None:
    bundle = PublicBundle({VENDOR_KID: VENDOR.verify_key}, SEALING_KID, SEALING.public_key)
    device = Device.init(tmp_path / "d", "HW-0001", bundle)
    license_vector = next(v for v in VECTORS if v["name"] == "license")
    for junk in ({}, {"request_id": 1}, {**license_vector["payload"], "features": [1]},
                 {**license_vector["payload"], "license": {"key": "x"}},
                 {**license_vector["payload"], "issued_at": "yesterday"}):
        with pytest.raises(DeviceError) as err:
            device.load(seal(Kind.LICENSE, junk, signing_key=VENDOR, kid=VENDOR_KID))
        assert err.value.reason == "malformed"
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()
