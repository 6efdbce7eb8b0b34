"""Password hashing for user-based licenses: argon2id in PHC string form.

Parameters are OWASP's minimum for argon2id (m=19 MiB, t=2, p=1). Hashes made by
earlier versions (scrypt, N=2^14) still verify; `check_password` says when a stored
hash should be replaced, so it is upgraded on the next successful sign-in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1, hash_len=32,
                         salt_len=16)
# Verified when there is no user, so an unknown user costs what a wrong password costs.
_DUMMY_HASH = _HASHER.hash("airlock: no such user")


@dataclass(frozen=True)
class PasswordCheck:
    ok: bool
    rehash: str | None = None  # a new hash to store (only when ok and the old one is weak)


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def check_password(password: str, stored: str | None) -> PasswordCheck:
    """Verify `password` against `stored` (None: no such user, a dummy verification)."""
    if stored is None:
        _verify_argon2(password, _DUMMY_HASH)
        return PasswordCheck(ok=False)
    if stored.startswith("scrypt$"):
        ok = _verify_scrypt(password, stored)
        return PasswordCheck(ok=ok, rehash=hash_password(password) if ok else None)
    ok = _verify_argon2(password, stored)
    rehash = hash_password(password) if ok and _HASHER.check_needs_rehash(stored) else None
    return PasswordCheck(ok=ok, rehash=rehash)


def _verify_argon2(password: str, stored: str) -> bool:
    try:
        return _HASHER.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _verify_scrypt(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n),
                                r=int(r), p=int(p), dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)
