"""The one envelope every Airlock file uses, for both sides of the air gap.

Layout (see docs/file-formats.md for the byte-level spec):

    armour  = "-----BEGIN AIRLOCK <LABEL>-----" LF base64(blob) in 64-char lines LF
              "-----END AIRLOCK <LABEL>-----" LF
    blob    = signed || signature                (signature: 64 bytes, Ed25519)
    signed  = b"ALK1" || u16be(len(header)) || header || body
    header  = canonical JSON {alg, enc, kid, [rcp], typ, v}
    body    = canonical JSON payload, or a SealedBox of it when enc = "x25519-sealedbox"

Parsing happens in `open_envelope` only: size limit first, then armour, header,
signature, and only then the body is decrypted and read. Every failure is one
`FormatError` with a reason code.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import math
import struct
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from nacl.exceptions import BadSignatureError, CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox
from nacl.signing import SigningKey, VerifyKey

MAGIC = b"ALK1"
FORMAT_VERSION = 1
ALG = "Ed25519"
ENC_NONE = "none"
ENC_SEALED = "x25519-sealedbox"
SIGNATURE_BYTES = 64
DEFAULT_MAX_BYTES = 256 * 1024
DEVICE_KID_PREFIX = "dev:"
_HEADER_KEYS = {"alg", "enc", "kid", "typ", "v"}
_LINE = 64


class Kind(StrEnum):
    ACTIVATION_REQUEST = "activation_request"
    LICENSE = "license"
    DEACTIVATION = "deactivation"
    REFRESH_REQUEST = "refresh_request"
    REFRESH = "license_refresh"
    RECEIPT = "receipt"
    REJECTION = "rejection"


LABELS: dict[Kind, str] = {
    Kind.ACTIVATION_REQUEST: "ACTIVATION REQUEST",
    Kind.LICENSE: "LICENSE FILE",
    Kind.DEACTIVATION: "DEACTIVATION FILE",
    Kind.REFRESH_REQUEST: "REFRESH REQUEST",
    Kind.REFRESH: "REFRESH FILE",
    Kind.RECEIPT: "RECEIPT",
    Kind.REJECTION: "REJECTION REPORT",
}
_KIND_BY_LABEL = {label: kind for kind, label in LABELS.items()}


class Reason(StrEnum):
    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    WRONG_KIND = "wrong_kind"
    UNSUPPORTED_VERSION = "unsupported_version"
    TOO_LARGE = "too_large"
    UNDECRYPTABLE = "undecryptable"
    OUT_OF_RANGE = "out_of_range"


class FormatError(Exception):
    """The one public error of the format layer: a reason code and a readable sentence."""

    def __init__(self, reason: Reason | str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = str(reason)
        self.message = message


@dataclass(frozen=True)
class Envelope:
    """A verified (and, if it was sealed, decrypted) file."""

    kind: Kind
    kid: str
    header: Mapping[str, Any]
    payload: dict[str, Any]
    digest: str  # hex SHA-256 of the binary blob: stable across armour re-wrapping

    @property
    def request_id(self) -> str | None:
        value = self.payload.get("request_id")
        return value if isinstance(value, str) else None


# --- canonical JSON and key ids ------------------------------------------------------


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the only byte form that is ever signed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_decode(text: str) -> bytes:
    if not isinstance(text, str) or "=" in text:
        raise ValueError("not unpadded base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def device_kid(verify_key: VerifyKey) -> str:
    """A device signs with its own key; its kid carries the public key itself."""
    return DEVICE_KID_PREFIX + b64u(bytes(verify_key))


def device_key_from_kid(kid: str) -> VerifyKey:
    if not kid.startswith(DEVICE_KID_PREFIX):
        raise KeyError(kid)
    try:
        raw = b64u_decode(kid[len(DEVICE_KID_PREFIX):])
    except (ValueError, binascii.Error):
        raise KeyError(kid) from None
    if len(raw) != 32:
        raise KeyError(kid)
    return VerifyKey(raw)


def key_id(prefix: str, public_key: bytes) -> str:
    """Vendor key ids: a short, stable fingerprint of the public key."""
    return f"{prefix}-{hashlib.sha256(public_key).hexdigest()[:16]}"


# --- writing ---------------------------------------------------------------------------


def seal(
    kind: Kind,
    payload: Mapping[str, Any],
    *,
    signing_key: SigningKey,
    kid: str,
    recipient: PublicKey | None = None,
    recipient_kid: str | None = None,
) -> bytes:
    """Sign `payload` (sealing it to `recipient` first if given) and armour it."""
    body = canonical_json(dict(payload))
    if recipient is not None:
        if not recipient_kid:
            raise ValueError("a sealed file needs the recipient's key id")
        body = SealedBox(recipient).encrypt(body)
    header_bytes = _header_bytes(kind, kid, recipient_kid if recipient is not None else None)
    signed = MAGIC + struct.pack(">H", len(header_bytes)) + header_bytes + body
    blob = signed + signing_key.sign(signed).signature
    return armour(kind, blob)


@functools.lru_cache(maxsize=64)
def _header_bytes(kind: Kind, kid: str, recipient_kid: str | None) -> bytes:
    """The canonical header; a signer writes the same few over and over."""
    header: dict[str, Any] = {"alg": ALG, "enc": ENC_NONE, "kid": kid, "typ": str(kind),
                              "v": FORMAT_VERSION}
    if recipient_kid is not None:
        header["enc"] = ENC_SEALED
        header["rcp"] = recipient_kid
    return canonical_json(header)


def armour(kind: Kind, blob: bytes) -> bytes:
    label = LABELS[kind]
    text = base64.b64encode(blob).decode("ascii")
    lines = [text[i:i + _LINE] for i in range(0, len(text), _LINE)]
    return ("\n".join([f"-----BEGIN AIRLOCK {label}-----", *lines,
                       f"-----END AIRLOCK {label}-----"]) + "\n").encode("ascii")


# --- reading ---------------------------------------------------------------------------

VerifyKeyResolver = Callable[[str], VerifyKey]
UnsealKeyResolver = Callable[[str], PrivateKey]


def peek_kind(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Kind:
    """The kind named by the armour, before anything is verified (for routing only)."""
    return _dearmour(data, max_bytes)[0]


def open_envelope(
    data: bytes,
    *,
    resolve_verify_key: VerifyKeyResolver,
    resolve_unseal_key: UnsealKeyResolver | None = None,
    kinds: Collection[Kind] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Envelope:
    """Check size, armour, header and signature, then decrypt and read the payload."""
    kind, blob = _dearmour(data, max_bytes)
    if kinds is not None and kind not in kinds:
        expected = ", ".join(sorted(LABELS[k].lower() for k in kinds))
        raise FormatError(Reason.WRONG_KIND, f"this is a {LABELS[kind].lower()}, "
                                             f"expected: {expected}")
    header, signed, signature, body = _split(blob)
    if header["typ"] != str(kind):
        raise FormatError(Reason.MALFORMED, "the armour and the signed header disagree "
                                            "on the file kind")
    kid = header["kid"]
    try:
        verify_key = resolve_verify_key(kid)
    except KeyError:
        raise FormatError(Reason.UNKNOWN_KEY, f"the file is signed with an unknown key "
                                              f"({kid[:40]})") from None
    try:
        verify_key.verify(signed, signature)
    except BadSignatureError:
        raise FormatError(Reason.BAD_SIGNATURE, "the signature does not match the "
                                                "content: the file was altered or forged") from None
    # Only verified bytes below this line.
    if header["enc"] == ENC_SEALED:
        body = _unseal(header, body, resolve_unseal_key)
    payload = _parse_json_object(body, "payload")
    return Envelope(kind=kind, kid=kid, header=header, payload=payload,
                    digest=hashlib.sha256(blob).hexdigest())


def _dearmour(data: bytes, max_bytes: int) -> tuple[Kind, bytes]:
    if len(data) > max_bytes:
        raise FormatError(Reason.TOO_LARGE, f"the file is {len(data)} bytes; the limit is "
                                            f"{max_bytes}")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise FormatError(Reason.MALFORMED, "the file is not ASCII armoured text") from None
    lines = [line.rstrip(" \t\r") for line in text.split("\n")]
    begins = [i for i, line in enumerate(lines) if line.startswith("-----BEGIN AIRLOCK ")]
    if len(begins) != 1:
        raise FormatError(Reason.MALFORMED, "expected exactly one '-----BEGIN AIRLOCK ...' "
                                            "line")
    start = begins[0]
    begin_line = lines[start]
    if not begin_line.endswith("-----") or len(begin_line) <= len("-----BEGIN AIRLOCK -----"):
        raise FormatError(Reason.MALFORMED, "the BEGIN line is not well formed")
    label = begin_line[len("-----BEGIN AIRLOCK "):-len("-----")]
    kind = _KIND_BY_LABEL.get(label)
    if kind is None:
        raise FormatError(Reason.MALFORMED, "the BEGIN line names no known Airlock file kind")
    end_line = f"-----END AIRLOCK {label}-----"
    try:
        end = lines.index(end_line, start + 1)
    except ValueError:
        raise FormatError(Reason.MALFORMED, f"missing '{end_line}'") from None
    body_lines = lines[start + 1:end]
    if not body_lines or any(not line for line in body_lines):
        raise FormatError(Reason.MALFORMED, "the armoured body is empty or has blank lines")
    encoded = "".join(body_lines)
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise FormatError(Reason.MALFORMED, "the armoured body is not valid base64") from None
    if base64.b64encode(blob).decode("ascii") != encoded:
        # Unused low bits in the last character: one blob, one spelling.
        raise FormatError(Reason.MALFORMED, "the armoured body is not canonical base64")
    return kind, blob


def _split(blob: bytes) -> tuple[dict[str, Any], bytes, bytes, bytes]:
    if len(blob) < len(MAGIC) + 2 + SIGNATURE_BYTES or not blob.startswith(MAGIC):
        if blob[:3] == MAGIC[:3] and blob[3:4] != MAGIC[3:4]:
            raise FormatError(Reason.UNSUPPORTED_VERSION, "unsupported envelope version")
        raise FormatError(Reason.MALFORMED, "not an Airlock envelope")
    signed, signature = blob[:-SIGNATURE_BYTES], blob[-SIGNATURE_BYTES:]
    (header_len,) = struct.unpack(">H", signed[4:6])
    header_bytes = signed[6:6 + header_len]
    if len(header_bytes) != header_len:
        raise FormatError(Reason.MALFORMED, "the header length runs past the end of the file")
    header = _parse_json_object(header_bytes, "header", reencode=False)
    try:  # the canonical check re-encodes it, which also proves it can be encoded
        canonical = canonical_json(header)
    except (UnicodeError, ValueError, RecursionError):
        raise FormatError(Reason.MALFORMED, "the header is not valid JSON") from None
    if canonical != header_bytes:
        raise FormatError(Reason.MALFORMED, "the header is not canonical JSON")
    keys = set(header)
    sealed = header.get("enc") == ENC_SEALED
    if keys != (_HEADER_KEYS | {"rcp"} if sealed else _HEADER_KEYS):
        raise FormatError(Reason.MALFORMED, "the header has missing or unexpected fields")
    if header["v"] != FORMAT_VERSION or header["alg"] != ALG:
        raise FormatError(Reason.UNSUPPORTED_VERSION,
                          f"unsupported format version {header['v']!r} / algorithm "
                          f"{header['alg']!r}")
    if header["enc"] not in (ENC_NONE, ENC_SEALED):
        raise FormatError(Reason.UNSUPPORTED_VERSION, "unsupported encryption")
    if not all(isinstance(header[k], str) for k in keys - {"v"}):
        raise FormatError(Reason.MALFORMED, "header fields must be strings")
    return header, signed, signature, signed[6 + header_len:]


def _unseal(header: Mapping[str, Any], body: bytes,
            resolve_unseal_key: UnsealKeyResolver | None) -> bytes:
    if resolve_unseal_key is None:
        raise FormatError(Reason.UNKNOWN_KEY, "the file is sealed and no sealing key is "
                                              "available to open it")
    try:
        private_key = resolve_unseal_key(header["rcp"])
    except KeyError:
        raise FormatError(Reason.UNKNOWN_KEY, "the file is sealed to an unknown vendor key "
                                              f"({header['rcp'][:40]})") from None
    try:
        return SealedBox(private_key).decrypt(body)
    except CryptoError:
        raise FormatError(Reason.UNDECRYPTABLE, "the sealed content cannot be decrypted "
                                                "with the vendor key") from None


def strict_json_loads(raw: bytes | str, what: str = "JSON text") -> Any:
    """Parse untrusted JSON strictly: FormatError(malformed) for anything but one UTF-8
    JSON value that has no key repeated in any object (at any depth) and no NaN,
    Infinity or number too large for a double. `what` names the text in messages.

    Duplicate keys matter even on signed bytes: a hostile signer can sign a body
    with `{"serial":1,"serial":9}`, and two parsers that keep different copies would
    read two different files. The check runs on the bytes as parsed, never on a
    re-canonicalised copy.
    """
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else raw
        return json.loads(text, object_pairs_hook=functools.partial(_unique_keys, what),
                          parse_constant=functools.partial(_reject_constant, what),
                          parse_float=functools.partial(_finite_float, what))
    except (UnicodeError, ValueError, RecursionError):
        raise FormatError(Reason.MALFORMED, f"the {what} is not valid JSON") from None


def _unique_keys(what: str, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                shown = key if len(key) <= 40 else key[:40] + "..."
                raise FormatError(Reason.MALFORMED, f"the {what} repeats the key {shown!r} "
                                                    "in one JSON object")
            seen.add(key)
    return obj


def _reject_constant(what: str, name: str) -> Any:
    raise FormatError(Reason.MALFORMED, f"the {what} contains {name}, which is not JSON")


def _finite_float(what: str, text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise FormatError(Reason.MALFORMED, f"the {what} has a number too large for a "
                                            "double")
    return value


def _parse_json_object(raw: bytes, what: str, *, reencode: bool = True) -> dict[str, Any]:
    value = strict_json_loads(raw, what)
    # Must re-encode: no lone surrogate escapes. UTF-8 cannot carry a surrogate, so
    # only a \u escape can make one: text without any needs no second look.
    if reencode and b"\\u" in raw:
        try:
            canonical_json(value)
        except (UnicodeError, ValueError, RecursionError):
            raise FormatError(Reason.MALFORMED, f"the {what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise FormatError(Reason.MALFORMED, f"the {what} must be a JSON object")
    return value
