"""A vendor and real SDK devices, on SQLite and PostgreSQL, for the hostile-customer tests.

Every test here drives the processing core with files the stock SDK makes, or with
hand-made files sealed to the vendor key (tests.factories.WireDevice), and then
looks at the database: totals, seats and bindings, not only the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import select

from airlock_sdk import Device
from models import AuditEvent, Job
from models.db import session_scope
from pipelines.keyring import VendorKeyring
from pipelines.process import Outcome, Processor, process
from pipelines.rules.common import Lockout
from tests.factories import NOW, add_license, license_info, vendor


@dataclass
class Vendor:
    engine: Engine
    keyring: VendorKeyring
    folder: Path
    now: datetime = NOW
    lockout: Lockout = field(default_factory=lambda: Lockout(failures=3))

    @property
    def processor(self) -> Processor:
        return Processor(keyring=self.keyring, clock=lambda: self.now, lockout=self.lockout)

    def send(self, data: bytes, tenant: str = "ACME") -> Outcome:
        return process(data, engine=self.engine, tenant=tenant, processor=self.processor)

    def license(self, **kwargs: Any) -> str:
        return add_license(self.engine, **kwargs)

    def info(self, key: str) -> dict[str, Any]:
        return license_info(self.engine, key)

    def device_row(self, key: str, hardware_id: str) -> dict[str, Any]:
        (row,) = [d for d in self.info(key)["devices"] if d["hardware_id"] == hardware_id]
        return row

    def billed(self, key: str) -> int:
        return int(self.info(key)["consumptions"]["total"])

    def device(self, hardware_id: str, name: str | None = None) -> Device:
        return Device.init(self.folder / (name or hardware_id), hardware_id,
                           self.keyring.public_bundle())

    def activate(self, device: Device, key: str, tenant: str = "ACME", **kw: Any) -> Outcome:
        """An SDK activation through the vendor, and the license file loaded."""
        outcome = self.send(device.request_activation(product="pro", license_key=key,
                                                      now=self.now, **kw), tenant)
        if outcome.accepted:
            device.load(outcome.outputs[0][1], now=self.now)
        return outcome

    def job(self, job_id: int) -> Job:
        with session_scope(self.engine) as session:
            job = session.get(Job, job_id)
            assert job is not None
            return job

    def audit(self, action: str) -> list[AuditEvent]:
        with session_scope(self.engine) as session:
            return list(session.exec(select(AuditEvent).where(AuditEvent.action == action)))


@pytest.fixture
def make_vendor(engine: Engine, keyring: VendorKeyring,
                tmp_path: Path) -> Callable[[], Vendor]:
    def make() -> Vendor:
        vendor(engine)
        return Vendor(engine=engine, keyring=keyring, folder=tmp_path / "devices")
    return make


@pytest.fixture
def airlock(make_vendor: Callable[[], Vendor]) -> Vendor:
    return make_vendor()


def refused(outcome: Outcome, reason: str, public: str | None = None) -> None:
    """Refused for `reason` (kept on the job), told as `public` (default: the same)."""
    assert outcome.status == "rejected", outcome
    assert outcome.reason == reason, outcome
    assert outcome.public_reason == (public or reason), outcome
