"""The vendor keyring: Ed25519 signing keys and X25519 sealing keys, with rotation.

Layout of the keys folder (every secret file is created 0600, never overwritten):

    signing/<kid>.key   32-byte seed, hex
    sealing/<kid>.key   32-byte private key, hex
    current.json        {"signing": kid, "sealing": kid}

Old keys stay: files signed or sealed with them still verify and open.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from nacl.public import PrivateKey
from nacl.signing import SigningKey, VerifyKey

from airlock_sdk.bundle import PublicBundle
from airlock_sdk.envelope import device_key_from_kid, key_id


class KeyringError(Exception):
    """The keys folder is missing, incomplete or unreadable."""


@dataclass
class VendorKeyring:
    signing: dict[str, SigningKey]
    sealing: dict[str, PrivateKey]
    current_signing: str
    current_sealing: str

    @property
    def signing_key(self) -> SigningKey:
        return self.signing[self.current_signing]

    def vendor_verify_key(self, kid: str) -> VerifyKey:
        """Raise KeyError for a kid that is not one of the vendor's."""
        return self.signing[kid].verify_key

    def any_verify_key(self, kid: str) -> VerifyKey:
        """Vendor kids from the keyring; device kids carry their own public key."""
        if kid in self.signing:
            return self.signing[kid].verify_key
        return device_key_from_kid(kid)

    def unseal_key(self, kid: str) -> PrivateKey:
        return self.sealing[kid]

    def public_bundle(self) -> PublicBundle:
        return PublicBundle(
            signing_keys={kid: key.verify_key for kid, key in self.signing.items()},
            sealing_kid=self.current_sealing,
            sealing_key=self.sealing[self.current_sealing].public_key,
        )


def _write_secret(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(data)


def _write_current(keys_dir: Path, signing: str, sealing: str) -> None:
    tmp = keys_dir / "current.json.tmp"
    tmp.write_text(json.dumps({"signing": signing, "sealing": sealing}) + "\n")
    os.replace(tmp, keys_dir / "current.json")


def _new_keys(keys_dir: Path) -> tuple[str, str]:
    signing = SigningKey.generate()
    sealing = PrivateKey.generate()
    signing_kid = key_id("sig", bytes(signing.verify_key))
    sealing_kid = key_id("seal", bytes(sealing.public_key))
    _write_secret(keys_dir / "signing" / f"{signing_kid}.key", bytes(signing).hex())
    _write_secret(keys_dir / "sealing" / f"{sealing_kid}.key", bytes(sealing).hex())
    return signing_kid, sealing_kid


def init_keyring(keys_dir: Path) -> tuple[VendorKeyring, bool]:
    """Load the keyring, creating it first if the folder has none. Returns (ring, created)."""
    if (keys_dir / "current.json").exists():
        return load_keyring(keys_dir), False
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_current(keys_dir, *_new_keys(keys_dir))
    return load_keyring(keys_dir), True


def rotate_keyring(keys_dir: Path) -> VendorKeyring:
    """Add a new current signing and sealing key; the old ones keep working."""
    load_keyring(keys_dir)
    _write_current(keys_dir, *_new_keys(keys_dir))
    return load_keyring(keys_dir)


def load_keyring(keys_dir: Path) -> VendorKeyring:
    try:
        current = json.loads((keys_dir / "current.json").read_text())
        signing = {p.stem: SigningKey(bytes.fromhex(p.read_text().strip()))
                   for p in sorted((keys_dir / "signing").glob("*.key"))}
        sealing = {p.stem: PrivateKey(bytes.fromhex(p.read_text().strip()))
                   for p in sorted((keys_dir / "sealing").glob("*.key"))}
        ring = VendorKeyring(signing, sealing, current["signing"], current["sealing"])
    except FileNotFoundError:
        raise KeyringError(f"no vendor keys in {keys_dir}: run 'airlock init'") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyringError(f"the vendor keys in {keys_dir} are unreadable: "
                           f"{type(exc).__name__}") from None
    if ring.current_signing not in signing or ring.current_sealing not in sealing:
        raise KeyringError(f"current.json in {keys_dir} names a key that is not there")
    return ring
