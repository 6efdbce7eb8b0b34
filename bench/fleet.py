"""Generated benchmark data: many licenses and active devices (files: `bench.files`).

Devices are inserted as rows (activating 100,000 devices first would measure setup,
not the scenario); every file a scenario processes is a real sealed, device-signed
envelope built with the SDK's payload builders.
"""

from __future__ import annotations

from datetime import datetime

from nacl.signing import SigningKey
from sqlalchemy import Engine, insert
from sqlmodel import select

from airlock_sdk.envelope import b64u
from airlock_sdk.usage import GENESIS_HEAD
from bench.files import (
    DEVICES_PER_LICENSE,
    PRODUCT,
    BenchDevice,
    activation_files,
    deactivation_file,
    deactivation_files,
)
from models import (
    AuthMethod,
    Device,
    DeviceStatus,
    FeatureKind,
    License,
    LicenseFeature,
    LicenseType,
)
from models.db import session_scope
from pipelines import catalog

CUSTOMER = "BENCH"
__all__ = ["CUSTOMER", "PRODUCT", "BenchDevice", "activation_files", "active_fleet",
           "create_catalogue", "deactivation_file", "deactivation_files"]


def create_catalogue(engine: Engine, licenses: int, *, seats: int = DEVICES_PER_LICENSE,
                     now: datetime, keys: list[str] | None = None) -> list[str]:
    """A customer, a product and `licenses` consumption licenses with one consumption
    feature each, inserted as rows (the admin path, one license at a time, would add
    seconds of setup per scenario); `keys`: the licenses' keys, new ones if not given."""
    with session_scope(engine) as session:
        customer = catalog.add_customer(session=session, code=CUSTOMER,
                                        name="Benchmark customer")
        product = catalog.add_product(session=session, code=PRODUCT, name="Benchmark product")
    if keys is None:
        keys = list(dict.fromkeys(catalog.generate_license_key() for _ in range(licenses)))
    with engine.begin() as conn:
        conn.execute(insert(License), [{
            "key": key, "customer_id": customer.id, "product_id": product.id,
            "auth_method": AuthMethod.KEY, "license_type": LicenseType.CONSUMPTION,
            "enabled": True, "allow_offline_activation": True, "max_activations": seats,
            "starts_at": now, "max_consumptions": 10**12, "total_consumptions": 0,
            "allow_overages": False, "created_at": now, "updated_at": now} for key in keys])
        ids: dict[str, int] = dict(conn.execute(  # type: ignore[arg-type]
            select(License.key, License.id)).all())
        conn.execute(insert(LicenseFeature), [{
            "license_id": ids[key], "code": "export", "kind": FeatureKind.CONSUMPTION,
            "total_consumptions": 0, "allow_overages": False} for key in keys])
    return keys


def active_fleet(engine: Engine, count: int, *, now: datetime,
                 like: list[BenchDevice] | None = None) -> list[BenchDevice]:
    """`count` devices already active on ceil(count / 50) licenses; with `like`, those
    devices and their licenses (made for another scenario's database) instead of new ones."""
    given = None if like is None else list(dict.fromkeys(d.license_key for d in like))
    keys = create_catalogue(engine, -(-count // DEVICES_PER_LICENSE), now=now, keys=given)
    with session_scope(engine) as session:
        ids: dict[str, int] = dict(session.exec(  # type: ignore[arg-type]
            select(License.key, License.id)).all())
    devices = like if like is not None else [
        BenchDevice(f"BENCH-HW-{i:07d}", SigningKey.generate(), keys[i // DEVICES_PER_LICENSE])
        for i in range(count)]
    rows: list[dict[str, object]] = [{
             "license_id": ids[d.license_key], "hardware_id": d.hardware_id,
             "public_key": b64u(bytes(d.key.verify_key)), "status": DeviceStatus.ACTIVE,
             "activated_at": now, "variables": {}, "last_serial": 1, "usage_counter": 0,
             "usage_chain_head": GENESIS_HEAD} for d in devices]
    with engine.begin() as conn:
        for start in range(0, len(rows), 5000):
            conn.execute(insert(Device), rows[start:start + 5000])
    return devices
