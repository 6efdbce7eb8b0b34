"""Vendor keyring: creation, file permissions, rotation, and the public bundle."""

from __future__ import annotations

from pathlib import Path

import pytest

from airlock_sdk.bundle import PublicBundle
from airlock_sdk.envelope import Kind, open_envelope, seal
from pipelines.keyring import KeyringError, init_keyring, load_keyring, rotate_keyring


def test_init_is_idempotent_and_secret_files_are_0600(tmp_path: Path) -> None:
    ring, created = init_keyring(tmp_path / "keys")
    again, created_again = init_keyring(tmp_path / "keys")
    assert created and not created_again
    assert again.current_signing == ring.current_signing
    for path in (tmp_path / "keys").rglob("*.key"):
        assert path.stat().st_mode & 0o777 == 0o600


def test_rotation_keeps_old_keys_working(tmp_path: Path) -> None:
    old, _ = init_keyring(tmp_path / "keys")
    old_bundle = old.public_bundle()
    signed_before = seal(Kind.RECEIPT, {"x": 1}, signing_key=old.signing_key,
                         kid=old.current_signing)
    sealed_before = seal(Kind.DEACTIVATION, {"y": 2}, signing_key=old.signing_key,
                         kid=old.current_signing, recipient=old_bundle.sealing_key,
                         recipient_kid=old_bundle.sealing_kid)
    new = rotate_keyring(tmp_path / "keys")
    assert new.current_signing != old.current_signing
    assert new.current_sealing != old.current_sealing
    assert set(new.signing) == {old.current_signing, new.current_signing}
    opened = open_envelope(signed_before, resolve_verify_key=new.vendor_verify_key)
    assert opened.payload == {"x": 1}
    unsealed = open_envelope(sealed_before, resolve_verify_key=new.vendor_verify_key,
                             resolve_unseal_key=new.unseal_key)
    assert unsealed.payload == {"y": 2}
    bundle = PublicBundle.from_json(new.public_bundle().to_json())
    assert set(bundle.signing_keys) == set(new.signing)
    assert bundle.sealing_kid == new.current_sealing
    assert "seed" not in new.public_bundle().to_json()


def test_missing_keys_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="airlock init"):
        load_keyring(tmp_path / "nothing")
