"""A demo vendor and a fleet of simulated devices, run through the embedded pipeline.

Everything is real: devices are SDK state folders, files are dropped into the
inbox folders, the drop-folder source and the processing core handle them, and
devices load the results from the outbox.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlmodel import select

from airlock_sdk import Device, DeviceError
from models import DeviceStatus, Job, LicenseType
from models.db import session_scope
from models.tables import CUSTOMER, DEVICE, LICENSE, PRODUCT
from models.types import utcnow
from pipelines import catalog
from pipelines.catalog import FeatureSpec
from pipelines.layout import OPERATOR
from pipelines.refresh_request import operator_refresh_request
from workers.embedded import EmbeddedRunner
from workers.runtime import Runtime

PASSWORD = "demo-password-1"


@dataclass
class DemoLicense:
    key: str
    customer: str
    product: str
    label: str
    user: str | None = None


@dataclass
class DemoDevice:
    device: Device
    license: DemoLicense
    inbox_area: str
    request_name: str = ""
    request_id: str | None = None
    notes: list[str] = field(default_factory=list)


def create_vendor(runtime: Runtime) -> list[DemoLicense]:
    """Customers, products, policies and one license of every kind."""
    out: list[DemoLicense] = []
    with session_scope(runtime.engine) as s:
        catalog.add_customer(session=s, code="ACME", name="Acme Corp")
        catalog.add_customer(session=s, code="GLOBEX", name="Globex Shipping")
        catalog.add_product(session=s, code="studio", name="Studio")
        catalog.add_product(session=s, code="analyzer", name="Analyzer")
        catalog.add_policy(session=s, code="studio-annual", name="Studio annual",
                           product_code="studio", license_type=LicenseType.TIME_LIMITED,
                           validity_days=365, max_activations=3)
        catalog.add_policy(session=s, code="online-only", name="Online only",
                           product_code="studio", max_activations=5,
                           allow_offline_activation=False)

        def add(label: str, customer: str, product: str, user: str | None = None,
                **kw: Any) -> None:
            lic = catalog.add_license(session=s, customer_code=customer, product_code=product,
                                      users={user: PASSWORD} if user else None, **kw)
            out.append(DemoLicense(lic.key, customer, product, label, user))

        add("annual (time-limited, 3 seats)", "ACME", "studio", policy_code="studio-annual")
        add("metered (consumption)", "ACME", "analyzer", license_type=LicenseType.CONSUMPTION,
            max_consumptions=1000, allow_overages=True, max_overages=100, max_activations=4,
            features=[FeatureSpec.parse("export:consumption:50"), FeatureSpec.parse("gpu")])
        add("perpetual (2 seats)", "GLOBEX", "studio", license_type=LicenseType.PERPETUAL,
            max_activations=2)
        add("user-based", "GLOBEX", "analyzer", user="captain@globex.example",
            max_activations=2)
        add("subscription", "ACME", "studio", license_type=LicenseType.SUBSCRIPTION,
            max_activations=5)
        add("online-only policy", "ACME", "studio", policy_code="online-only")
    return out


def _drop(runtime: Runtime, area: str, name: str, data: bytes) -> None:
    root = Path(runtime.settings.resolved_inbox)
    target = root / area / name
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")  # the way SFTP clients upload
    part.write_bytes(data)
    part.rename(target)


def _outbox(runtime: Runtime, area: str, name: str) -> bytes | None:
    try:
        return runtime.outbox.get(f"{area}/{name}")
    except FileNotFoundError:
        return None


def run_demo(runtime: Runtime, *, devices: int, home: Path) -> dict[str, Any]:
    licenses = create_vendor(runtime)
    bundle = runtime.keyring.public_bundle()
    fleet: list[DemoDevice] = []
    for i in range(devices):
        lic = licenses[i % len(licenses)]
        dev = Device.init(home / "devices" / f"hw-{i:03d}", f"HW-{i:03d}", bundle)
        area = lic.customer
        if i == devices - 1 and lic.customer == "ACME":
            area = "GLOBEX"  # dropped in the wrong customer's folder: wrong_tenant
        fleet.append(DemoDevice(dev, lic, area))

    # 1. activation requests from every device
    for entry in fleet:
        lic = entry.license
        kwargs: dict[str, Any] = ({"email": lic.user, "password": PASSWORD} if lic.user
                                  else {"license_key": lic.key})
        data = entry.device.request_activation(product=lic.product, hostname=entry.device
                                               .hardware_id.lower(), os_name="linux",
                                               app_version="4.2", variables={"site": "demo"},
                                               **kwargs)
        entry.request_name = f"{entry.device.hardware_id}-activation.req"
        _drop(runtime, entry.inbox_area, entry.request_name, data)
    _drop(runtime, "ACME", "tampered.req", _tamper(data))
    _drain(runtime)

    # 2. devices load their license files, use the product, some deactivate
    active = []
    for entry in fleet:
        request_id = entry.device.status().pending_request
        content = _outbox(runtime, entry.inbox_area, f"{request_id}.lic") if request_id else None
        if content is None:
            continue
        entry.device.load(content)
        active.append(entry)
    for n, entry in enumerate(active):
        for feature, amount in _usage_plan(entry, n):
            try:
                entry.device.consume(amount, feature=feature)
            except DeviceError as exc:
                entry.notes.append(exc.reason)
        if n % 3 == 1:
            _drop(runtime, entry.inbox_area, f"{entry.device.hardware_id}-deactivation.req",
                  entry.device.deactivate(variables={"runs": 10 + n}))
    # 3. the vendor extends the annual license and refreshes its devices
    annual = licenses[0]
    with session_scope(runtime.engine) as s:
        catalog.update_license(session=s, key=annual.key, extend_days=365,
                               put_features=[FeatureSpec.parse("render-farm")])
    _drop(runtime, OPERATOR, "refresh-annual.req", operator_refresh_request(
        runtime.keyring, {"license": annual.key}, now=utcnow()))
    _drain(runtime)
    refreshed = 0
    for info in runtime.outbox.list(f"{OPERATOR}/"):
        if info.key.endswith("license_refresh.lic"):
            for entry in active:
                try:
                    entry.device.load(runtime.outbox.get(info.key))
                    refreshed += 1
                except (DeviceError, Exception):  # noqa: BLE001 - a file for another device
                    continue
    return summarise(runtime, refreshed=refreshed)


def _usage_plan(entry: DemoDevice, n: int) -> list[tuple[str | None, int]]:
    if entry.license.label.startswith("metered"):
        return [(None, 40 + n), ("export", 5)]
    return []


def _tamper(data: bytes) -> bytes:
    lines = data.split(b"\n")
    line = bytearray(lines[-4])
    line[5] = ord("A") if line[5] != ord("A") else ord("B")
    lines[-4] = bytes(line)
    return b"\n".join(lines)


def _drain(runtime: Runtime) -> None:
    runner = EmbeddedRunner(runtime)
    if not runner.drain(threading.Event(), timeout=300):
        raise RuntimeError("the demo inbox did not drain")


def summarise(runtime: Runtime, *, refreshed: int) -> dict[str, Any]:
    with session_scope(runtime.engine) as s:
        jobs = s.exec(select(Job.kind, Job.status, Job.reason)).all()
        outcomes = Counter((kind or "unreadable", status, reason or "") for kind, status, reason
                           in jobs)
        lic, dev = LICENSE.c, DEVICE.c
        seats = s.execute(
            sa_select(lic.key, CUSTOMER.c.code, PRODUCT.c.code, lic.license_type,
                      lic.max_activations, lic.total_consumptions, func.count(dev.id))
            .join(CUSTOMER, CUSTOMER.c.id == lic.customer_id)
            .join(PRODUCT, PRODUCT.c.id == lic.product_id)
            .outerjoin(DEVICE, (dev.license_id == lic.id) & (dev.status == DeviceStatus.ACTIVE))
            .group_by(lic.id, CUSTOMER.c.code, PRODUCT.c.code).order_by(lic.id)).all()
    return {
        "outcomes": [{"kind": k, "status": st, "reason": r, "files": n}
                     for (k, st, r), n in sorted(outcomes.items())],
        "licenses": [{"license": key, "customer": cust, "product": prod, "type": typ,
                      "seats": f"{active}/{maximum}", "consumptions": total}
                     for key, cust, prod, typ, maximum, total, active in seats],
        "refresh_files_loaded": refreshed,
        "outbox": runtime.outbox.location,
        "outbox_files": sum(1 for _ in runtime.outbox.list("")),
    }
