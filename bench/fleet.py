"""Generated benchmark data: many licenses, active devices, and their real signed files.

Devices are inserted as rows (activating 100,000 devices first would measure setup,
not the scenario); every file a scenario processes is a real sealed, device-signed
envelope built with the SDK's payload builders.
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
from sqlalchemy import Engine, insert
from sqlmodel import select

from airlock_sdk.bundle import PublicBundle
from airlock_sdk.envelope import Kind, b64u, device_kid, seal
from airlock_sdk.payloads import format_time
from airlock_sdk.requests import activation_payload, deactivation_payload
from airlock_sdk.usage import GENESIS_HEAD
from models import Device, DeviceStatus, License, LicenseType
from models.db import session_scope
from pipelines import catalog

CUSTOMER = "BENCH"
PRODUCT = "bench-pro"
DEVICES_PER_LICENSE = 50


@dataclass
class BenchDevice:
    hardware_id: str
    key: SigningKey
    license_key: str


def create_catalogue(engine: Engine, licenses: int, *, seats: int = DEVICES_PER_LICENSE,
                     now: datetime) -> list[str]:
    with session_scope(engine) as session:
        catalog.add_customer(session=session, code=CUSTOMER, name="Benchmark customer")
        catalog.add_product(session=session, code=PRODUCT, name="Benchmark product")
        return [catalog.add_license(
            session=session, customer_code=CUSTOMER, product_code=PRODUCT,
            license_type=LicenseType.CONSUMPTION, max_consumptions=10**12,
            max_activations=seats, features=[catalog.FeatureSpec.parse("export:consumption")],
            now=now).key for _ in range(licenses)]


def active_fleet(engine: Engine, count: int, *, now: datetime) -> list[BenchDevice]:
    """`count` devices already active on ceil(count / 50) licenses."""
    keys = create_catalogue(engine, -(-count // DEVICES_PER_LICENSE), now=now)
    with session_scope(engine) as session:
        ids = dict(session.exec(select(License.key, License.id)).all())  # type: ignore[arg-type]
    devices = [BenchDevice(f"BENCH-HW-{i:07d}", SigningKey.generate(),
                           keys[i // DEVICES_PER_LICENSE]) for i in range(count)]
    rows = [{"license_id": ids[d.license_key], "hardware_id": d.hardware_id,
             "public_key": b64u(bytes(d.key.verify_key)), "status": DeviceStatus.ACTIVE,
             "activated_at": now, "variables": {}, "last_serial": 1, "usage_counter": 0,
             "usage_chain_head": GENESIS_HEAD} for d in devices]
    with engine.begin() as conn:
        for start in range(0, len(rows), 5000):
            conn.execute(insert(Device), rows[start:start + 5000])
    return devices


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
    # Fresh interpreters: a forked copy would inherit (and try to tidy) whatever
    # connections the benchmark holds at that moment.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1, mp_context=context) as pool:
        yield from pool.map(build, items, chunksize=500)


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
        app_version="1.0", variables={}, counter=0, head=GENESIS_HEAD)
    return _seal(Kind.ACTIVATION_REQUEST, payload, key, bundle)


def _seal(kind: Kind, payload: dict, key: SigningKey, bundle: PublicBundle) -> bytes:  # type: ignore[type-arg]
    return seal(kind, payload, signing_key=key, kid=device_kid(key.verify_key),
                recipient=bundle.sealing_key, recipient_kid=bundle.sealing_kid)
