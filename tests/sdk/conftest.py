"""Fixtures for the device SDK tests: a vendor bundle, devices, a pinned clock."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from airlock_sdk import Device, Kind, PublicBundle
from pipelines.keyring import VendorKeyring
from tests.sdk.builders import issue, license_payload, open_request

T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def bundle(keyring: VendorKeyring) -> PublicBundle:
    return keyring.public_bundle()


@pytest.fixture
def make_device(tmp_path: Path, bundle: PublicBundle) -> Callable[..., Device]:
    def make(hardware_id: str = "HW-A", name: str | None = None) -> Device:
        return Device.init(tmp_path / (name or hardware_id), hardware_id, bundle)
    return make


@pytest.fixture
def activate(keyring: VendorKeyring) -> Callable[..., dict[str, Any]]:
    """Request activation on `device`, issue a license per `options`, load it."""
    def run(device: Device, *, key: str = "KEY-0001", product: str = "cad", **options: Any
            ) -> dict[str, Any]:
        request = device.request_activation(product=product, license_key=key, now=T0)
        env = open_request(keyring, request, Kind.ACTIVATION_REQUEST)
        options.setdefault("issued_at", T0)
        payload = license_payload(env, **options)
        device.load(issue(keyring, Kind.LICENSE, payload), now=T0)
        return payload
    return run
