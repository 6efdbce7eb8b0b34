"""The benchmark's device files: real sealed, device-signed envelopes built with the SDK.

Only the SDK is imported here, so the processes that build files in parallel start in
a moment.
"""

from __future__ import annotations

import multiprocessing
import os
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from nacl.signing import SigningKey

from airlock_sdk.bundle import PublicBundle
from airlock_sdk.envelope import Kind, b64u, device_kid, seal
from airlock_sdk.payloads import format_time
from airlock_sdk.requests import activation_payload, deactivation_payload
from airlock_sdk.usage import GENESIS_HEAD

PRODUCT = "bench-pro"
DEVICES_PER_LICENSE = 50


@dataclass
class BenchDevice:
    hardware_id: str
    key: SigningKey
    license_key: str


def deactivation_files(fleet: list[BenchDevice], bundle: PublicBundle, *,
                       now: datetime) -> Iterator[bytes]:
    """Every device's deactivation file, in order, built on all cores (sealing and
    signing 100,000 files on one core would take longer than processing them)."""
    items = [(bytes(d.key), d.hardware_id, d.license_key) for d in fleet]
    yield from _on_all_cores(partial(_deactivation_blob, bundle.to_json(), now), items)


def activation_files(license_keys: list[str], count: int, bundle: PublicBundle, *,
                     now: datetime) -> list[bytes]:
    """`count` key-based activation requests, DEVICES_PER_LICENSE to a license."""
    items = [(f"ACT-{i:07d}", license_keys[i // DEVICES_PER_LICENSE]) for i in range(count)]
    return list(_on_all_cores(partial(_activation_blob, bundle.to_json(), now), items))


def _on_all_cores(build: Callable[[Any], bytes], items: list[Any]) -> Iterator[bytes]:
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1, mp_context=clean_context()
                             ) as pool:
        yield from pool.map(build, items, chunksize=500)


def clean_context() -> Any:
    """Processes forked from a fresh server process: a fork of the benchmark itself
    would inherit (and try to tidy) whatever connections it holds at that moment, and
    spawning a new interpreter per pool costs a second or more of imports."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["bench.files"])
    return context


def _activation_blob(bundle_json: str, now: datetime, item: tuple[str, str]) -> bytes:
    hardware_id, license_key = item
    return activation_file(hardware_id, license_key, PublicBundle.from_json(bundle_json),
                           now=now)


def _deactivation_blob(bundle_json: str, now: datetime, item: tuple[bytes, str, str]) -> bytes:
    seed, hardware_id, license_key = item
    device = BenchDevice(hardware_id, SigningKey(seed), license_key)
    return deactivation_file(device, PublicBundle.from_json(bundle_json), now=now)


def deactivation_file(device: BenchDevice, bundle: PublicBundle, *, now: datetime,
                      amount: int = 3) -> bytes:
    payload = deactivation_payload(
        request_id=uuid.uuid4().hex, created_at=format_time(now), product=PRODUCT,
        license_key=device.license_key, hardware_id=device.hardware_id, serial=1,
        synced={"counter": 0, "head": GENESIS_HEAD}, counter=1, head="ab" * 32,
        consumptions=amount, features={"export": 1}, variables={"site": "bench"})
    return _seal(Kind.DEACTIVATION, payload, device.key, bundle)


def activation_file(hardware_id: str, license_key: str, bundle: PublicBundle, *,
                    now: datetime) -> bytes:
    key = SigningKey.generate()
    payload = activation_payload(
        request_id=uuid.uuid4().hex, created_at=format_time(now), product=PRODUCT,
        auth={"method": "key", "key": license_key}, hardware_id=hardware_id,
        public_key=b64u(bytes(key.verify_key)), hostname="bench", os_name="linux",
        app_version="1.0", variables={}, synced={"counter": 0, "head": GENESIS_HEAD},
        counter=0, head=GENESIS_HEAD)
    return _seal(Kind.ACTIVATION_REQUEST, payload, key, bundle)


def _seal(kind: Kind, payload: dict, key: SigningKey, bundle: PublicBundle) -> bytes:  # type: ignore[type-arg]
    return seal(kind, payload, signing_key=key, kid=device_kid(key.verify_key),
                recipient=bundle.sealing_key, recipient_kid=bundle.sealing_kid)
