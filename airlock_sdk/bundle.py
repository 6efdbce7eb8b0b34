"""The vendor's public bundle: what an application embeds to verify vendor files
offline and to seal its requests to the vendor."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from nacl.public import PublicKey
from nacl.signing import VerifyKey

from airlock_sdk.envelope import FormatError, b64u, b64u_decode, strict_json_loads

BUNDLE_FORMAT = "airlock-public-bundle"


@dataclass(frozen=True)
class PublicBundle:
    signing_keys: dict[str, VerifyKey]  # every vendor key that may have signed a file
    sealing_kid: str
    sealing_key: PublicKey  # the current key requests are sealed to

    def verify_key(self, kid: str) -> VerifyKey:
        """Raise KeyError for a kid the vendor never published."""
        return self.signing_keys[kid]

    def to_json(self) -> str:
        doc = {
            "format": BUNDLE_FORMAT,
            "v": 1,
            "signing_keys": {kid: b64u(bytes(key)) for kid, key in self.signing_keys.items()},
            "sealing_key": {"kid": self.sealing_kid, "public_key": b64u(bytes(self.sealing_key))},
        }
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> PublicBundle:
        if isinstance(text, bytes | bytearray):  # as json.loads reads bytes (a BOM, UTF-16)
            try:
                text = bytes(text).decode(json.detect_encoding(text))
            except UnicodeError:
                raise ValueError("invalid public bundle: not JSON text") from None
        try:
            doc: dict[str, Any] = strict_json_loads(text, "public bundle")
            if doc.get("format") != BUNDLE_FORMAT or doc.get("v") != 1:
                raise ValueError("not an Airlock public bundle (v1)")
            signing = {kid: VerifyKey(b64u_decode(raw))
                       for kid, raw in doc["signing_keys"].items()}
            sealing = doc["sealing_key"]
            return cls(signing_keys=signing, sealing_kid=sealing["kid"],
                       sealing_key=PublicKey(b64u_decode(sealing["public_key"])))
        except FormatError as exc:  # not JSON, a repeated key, NaN: a plain ValueError here
            raise ValueError(f"invalid public bundle: {exc.message}") from None
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"invalid public bundle: {exc}") from None
