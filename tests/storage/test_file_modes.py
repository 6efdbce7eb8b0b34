"""Files at rest are not world-readable: a LocalStore writes (and archives) its files
with its `file_mode` (0640 by default, AIRLOCK_FILE_MODE) and its folders 0750,
whatever the umask."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from config.settings import SettingsError, load_settings
from pipelines.storage import LocalStore, open_store
from pipelines.storage.base import InvalidKey
from tests.conftest import file_mode

pytestmark = pytest.mark.usefixtures("permissive_umask")


def _mode(path: Path) -> int:
    return file_mode(path)


def _write_everything(store: LocalStore) -> list[str]:
    store.put("ACME/put.lic", b"put")
    store.put_many([("ACME/many-1.lic", b"1"), ("OTHER/deep/many-2.lic", b"2")])
    assert store.put_if_absent("ACME/absent.json", b"{}")
    assert store.put_if_absent("ACME/absent-lazy.json", b"{}", durable=False)
    store.put_file("ACME/report.csv", io.BytesIO(b"a,b\n" * 1000))
    store.put("ACME/to-move.req", b"req")
    store.move("ACME/to-move.req", "processed/ACME/moved.req")
    return ["ACME/put.lic", "ACME/many-1.lic", "OTHER/deep/many-2.lic", "ACME/absent.json",
            "ACME/absent-lazy.json", "ACME/report.csv", "processed/ACME/moved.req"]


@pytest.mark.parametrize("configured,expected", [(None, 0o640), (0o600, 0o600)])
def test_every_file_written_gets_the_file_mode(tmp_path: Path, configured: int | None,
                                               expected: int) -> None:
    root = tmp_path / "outbox"
    store = LocalStore(root) if configured is None else LocalStore(root, file_mode=configured)
    for key in _write_everything(store):
        assert _mode(root / key) == expected, f"{key}: {_mode(root / key):o}"
    # The folders it made (the root too), whatever the umask: owner and group only.
    for folder in (root, root / "ACME", root / "OTHER", root / "OTHER" / "deep",
                   root / "processed", root / "processed" / "ACME"):
        assert _mode(folder) == 0o750, f"{folder}: {_mode(folder):o}"
    assert not [p for p in root.rglob("*.tmp")]


def test_the_mode_holds_under_a_strict_umask_too(tmp_path: Path) -> None:
    os.umask(0o077)  # the fixture restores it
    store = LocalStore(tmp_path / "root")
    store.put("a/b.lic", b"x")
    assert _mode(tmp_path / "root" / "a" / "b.lic") == 0o640
    assert _mode(tmp_path / "root" / "a") == 0o750


def test_the_exclusive_create_fallback_gets_the_file_mode(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: object, dst: object) -> None:
        raise PermissionError(1, "hard links not supported")
    monkeypatch.setattr(os, "link", no_links)
    store = LocalStore(tmp_path, file_mode=0o600)
    assert store.put_if_absent("ACME/report.json", b"{}")
    assert not store.put_if_absent("ACME/report.json", b"{}")
    assert _mode(tmp_path / "ACME" / "report.json") == 0o600


def test_an_overwrite_replaces_a_loose_mode(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    (tmp_path / "old.lic").write_bytes(b"old")
    (tmp_path / "old.lic").chmod(0o666)
    store.put("old.lic", b"new")
    assert _mode(tmp_path / "old.lic") == 0o640
    assert store.get("old.lic") == b"new"


@pytest.mark.parametrize("archive", ["processed", "rejected", "quarantine"])
def test_an_archived_upload_keeps_its_content_and_ends_0640(tmp_path: Path,
                                                            archive: str) -> None:
    """A customer upload arrives with whatever mode the uploader gave it."""
    store = LocalStore(tmp_path)
    upload = tmp_path / "ACME" / "device.req"
    upload.parent.mkdir()
    upload.write_bytes(b"request bytes")
    upload.chmod(0o666)
    store.move("ACME/device.req", f"{archive}/ACME/device.req", replace=False)
    moved = tmp_path / archive / "ACME" / "device.req"
    assert moved.read_bytes() == b"request bytes"
    assert _mode(moved) == 0o640
    assert _mode(moved.parent) == 0o750


def test_a_move_does_not_chmod_through_a_symlink(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    target = tmp_path / "target.bin"
    target.write_bytes(b"t")
    target.chmod(0o644)
    (tmp_path / "link.bin").symlink_to(target)
    store.move("link.bin", "processed/link.bin")
    assert (tmp_path / "processed" / "link.bin").is_symlink()
    assert _mode(target) == 0o644  # the link has no mode of its own; its target is not ours


def test_a_file_mode_that_is_not_permission_bits_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="file_mode"):
        LocalStore(tmp_path, file_mode=0o4640)


# --- AIRLOCK_FILE_MODE -----------------------------------------------------------------


def test_the_setting_defaults_to_0640(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRLOCK_FILE_MODE", raising=False)
    assert load_settings().file_mode == 0o640


@pytest.mark.parametrize("text,mode", [("600", 0o600), ("640", 0o640), ("0640", 0o640),
                                       ("660", 0o660), ("644", 0o644)])
def test_the_setting_is_read_as_octal(monkeypatch: pytest.MonkeyPatch, text: str,
                                      mode: int) -> None:
    monkeypatch.setenv("AIRLOCK_FILE_MODE", text)
    assert load_settings().file_mode == mode


@pytest.mark.parametrize("text", ["666", "602", "0777", "abc", "64", "06400", "649", "",
                                  "4640", "0x1a0", "-640", "440"])
def test_a_malformed_setting_is_refused_with_its_name(monkeypatch: pytest.MonkeyPatch,
                                                      text: str) -> None:
    monkeypatch.setenv("AIRLOCK_FILE_MODE", text)
    with pytest.raises(SettingsError, match="AIRLOCK_FILE_MODE"):
        load_settings()


def test_stores_opened_from_settings_use_the_setting(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRLOCK_FILE_MODE", "600")
    settings = load_settings(home=tmp_path)
    store = open_store(settings.resolved_outbox, settings)
    assert isinstance(store, LocalStore)
    store.put("ACME/x.lic", b"x")
    assert _mode(Path(settings.resolved_outbox) / "ACME" / "x.lic") == 0o600
    default = open_store(str(tmp_path / "plain"))
    assert isinstance(default, LocalStore) and default.file_mode == 0o640


def test_make_folder_makes_a_customer_folder_and_refuses_unsafe_names(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "inbox")
    store.make_folder("ACME")
    assert (tmp_path / "inbox" / "ACME").is_dir()
    assert _mode(tmp_path / "inbox" / "ACME") == 0o750
    store.make_folder("ACME")  # again: nothing changes
    for unsafe in ("../escape", "/abs", ""):
        with pytest.raises(InvalidKey):
            store.make_folder(unsafe)
    assert not (tmp_path / "escape").exists()
