"""Download links for the public portal's answers: signed, scoped to one result, expiring.

The portal has no accounts, so the link itself is the permission: an HMAC over the
job, the result name and the expiry, keyed from the vendor's current signing key (every
`airlock serve` process derives the same key; rotating the keyring ends old links).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from pipelines.keyring import VendorKeyring

LINK_SECONDS = 3600
_HEX32 = re.compile(r"[0-9a-f]{32}")


def link_key(keyring: VendorKeyring) -> bytes:
    return hashlib.blake2b(bytes(keyring.signing_key), digest_size=32,
                           person=b"airlock-portal").digest()


@dataclass(frozen=True)
class Links:
    key: bytes

    def sign(self, job_id: int, name: str, expires: int) -> str:
        message = f"{job_id}\0{name}\0{expires}".encode("utf-8", "surrogateescape")
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()[:32]

    def path(self, job_id: int, name: str, *, now: float) -> str:
        expires = int(now) + LINK_SECONDS
        return f"/portal/results/{job_id}/{expires}/{self.sign(job_id, name, expires)}/{name}"

    def valid(self, job_id: int, name: str, expires: int, signature: str, *, now: float) -> bool:
        if expires < now or not _HEX32.fullmatch(signature):
            return False
        return hmac.compare_digest(self.sign(job_id, name, expires).encode(), signature.encode())
