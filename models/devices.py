"""Devices bound to licenses through offline activation."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from models.types import UTCDateTime, utcnow


class DeviceStatus(StrEnum):
    ACTIVE = "active"
    DEACTIVATED = "deactivated"
    RELEASED = "released"  # freed by the vendor; the device may still report its usage


class Device(SQLModel, table=True):
    """One hardware id on one license; re-activation reuses the row with a new key."""

    __tablename__ = "device"
    __table_args__ = (UniqueConstraint("license_id", "hardware_id"),)
    id: int | None = Field(default=None, primary_key=True)
    license_id: int = Field(foreign_key="license.id", index=True)
    hardware_id: str = Field(max_length=256)
    public_key: str = Field(max_length=64, index=True)
    status: str = Field(default=DeviceStatus.ACTIVE, max_length=16)
    activated_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime()))
    deactivated_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    hostname: str | None = Field(default=None, max_length=256)
    os: str | None = Field(default=None, max_length=128)
    app_version: str | None = Field(default=None, max_length=64)
    user_email: str | None = Field(default=None, max_length=254)
    variables: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    last_serial: int = Field(default=0, sa_type=BigInteger)
    usage_counter: int = Field(default=0, sa_type=BigInteger)
    usage_chain_head: str = Field(default="", max_length=64)
    activation_job_id: int | None = None
    deactivation_job_id: int | None = None
