"""The published test vectors (tests/vectors/*.json) hold for this implementation."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from nacl.public import PrivateKey
from nacl.signing import SigningKey, VerifyKey

from airlock_sdk import (
    GENESIS_HEAD,
    FormatError,
    Kind,
    PublicBundle,
    canonical_json,
    device_key_from_kid,
    device_kid,
    open_envelope,
    seal,
    verify_chain,
)
from airlock_sdk.envelope import b64u, b64u_decode, key_id
from airlock_sdk.payloads import validate

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


KEYS = load("keys.json")
VENDOR = SigningKey(bytes.fromhex(KEYS["vendor_signing"]["seed"]))
SEALING = PrivateKey(bytes.fromhex(KEYS["vendor_sealing"]["private_key"]))
DEVICE = SigningKey(bytes.fromhex(KEYS["device"]["seed"]))


def resolve_verify_key(kid: str) -> VerifyKey:
    if kid == KEYS["vendor_signing"]["kid"]:
        return VerifyKey(b64u_decode(KEYS["vendor_signing"]["public_key"]))
    return device_key_from_kid(kid)


def resolve_unseal_key(kid: str) -> PrivateKey:
    if kid != KEYS["vendor_sealing"]["kid"]:
        raise KeyError(kid)
    return SEALING


def by_name(doc: str) -> list[Any]:
    return [pytest.param(v, id=v["name"]) for v in load(doc)["vectors"]]


def test_keys_derive_from_their_seeds() -> None:
    assert b64u(bytes(VENDOR.verify_key)) == KEYS["vendor_signing"]["public_key"]
    assert key_id("sig", bytes(VENDOR.verify_key)) == KEYS["vendor_signing"]["kid"]
    assert b64u(bytes(SEALING.public_key)) == KEYS["vendor_sealing"]["public_key"]
    assert key_id("seal", bytes(SEALING.public_key)) == KEYS["vendor_sealing"]["kid"]
    assert device_kid(DEVICE.verify_key) == KEYS["device"]["kid"]
    bundle = PublicBundle.from_json(json.dumps(KEYS["bundle"]))
    assert bundle.sealing_kid == KEYS["vendor_sealing"]["kid"]
    assert bytes(bundle.verify_key(KEYS["vendor_signing"]["kid"])) == bytes(VENDOR.verify_key)


@pytest.mark.parametrize("vector", by_name("envelopes.json"))
def test_valid_vector(vector: dict[str, Any]) -> None:
    kind = Kind(vector["kind"])
    data = vector["armoured"].encode("ascii")
    env = open_envelope(data, resolve_verify_key=resolve_verify_key,
                        resolve_unseal_key=resolve_unseal_key, kinds={kind})
    assert env.payload == vector["payload"]
    assert dict(env.header) == vector["header"]
    assert env.digest == vector["digest"]
    lines = vector["armoured"].strip().split("\n")
    assert hashlib.sha256(base64.b64decode("".join(lines[1:-1]))).hexdigest() == env.digest
    validate(kind, env.payload)
    if not vector["sealed"]:  # Ed25519 is deterministic: the exact bytes are reproducible
        assert seal(kind, vector["payload"], signing_key=VENDOR,
                    kid=KEYS["vendor_signing"]["kid"]) == data


def test_every_kind_has_a_vector() -> None:
    kinds = {v["kind"] for v in load("envelopes.json")["vectors"]}
    assert kinds == {str(k) for k in Kind}


@pytest.mark.parametrize("vector", by_name("failures.json"))
def test_failure_vector(vector: dict[str, Any]) -> None:
    options: dict[str, Any] = {}
    if vector["kinds"]:
        options["kinds"] = {Kind(k) for k in vector["kinds"]}
    if vector["max_bytes"]:
        options["max_bytes"] = vector["max_bytes"]
    with pytest.raises(FormatError) as err:  # refused when opened, or by payload validation
        env = open_envelope(vector["armoured"].encode(vector["encoding"]),
                            resolve_verify_key=resolve_verify_key,
                            resolve_unseal_key=resolve_unseal_key, **options)
        validate(env.kind, env.payload)
    assert err.value.reason == vector["reason"]


def test_usage_chain_vector() -> None:
    doc = load("usage_chain.json")
    assert doc["genesis"] == GENESIS_HEAD
    head = GENESIS_HEAD
    for step in doc["steps"]:
        assert canonical_json(step["record"]).decode() == step["canonical"]
        head = hashlib.sha256(bytes.fromhex(head) + step["canonical"].encode()).hexdigest()
        assert head == step["head"]
    records = [{**s["record"], "head": s["head"]} for s in doc["steps"]]
    assert verify_chain(records) == (doc["counter"], doc["head"])
    deactivation = next(v for v in load("envelopes.json")["vectors"]
                        if v["name"] == "deactivation")
    assert deactivation["payload"]["usage"]["head"] == doc["head"]
