"""Licensing domain: tenants (customers), products, policies, licenses, features, users."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from models.types import UTCDateTime, utcnow


class LicenseType(StrEnum):
    PERPETUAL = "perpetual"
    TIME_LIMITED = "time_limited"
    CONSUMPTION = "consumption"
    SUBSCRIPTION = "subscription"


class AuthMethod(StrEnum):
    KEY = "key"
    USER = "user"


class FeatureKind(StrEnum):
    ACTIVATION = "activation"
    CONSUMPTION = "consumption"


def _created() -> Column:  # type: ignore[type-arg]
    return Column(UTCDateTime(), nullable=False, default=utcnow)


class Customer(SQLModel, table=True):
    """The tenant: an enterprise customer; its code names its inbox/outbox folders."""

    __tablename__ = "customer"
    id: int | None = Field(default=None, primary_key=True)
    code: str = Field(max_length=32, unique=True, index=True)
    name: str = Field(max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_created())


class Product(SQLModel, table=True):
    __tablename__ = "product"
    id: int | None = Field(default=None, primary_key=True)
    code: str = Field(max_length=64, unique=True, index=True)
    name: str = Field(max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_created())


class LicensePolicy(SQLModel, table=True):
    """Defaults copied onto a license created from it (`allow_offline_activation` included)."""

    __tablename__ = "license_policy"
    id: int | None = Field(default=None, primary_key=True)
    code: str = Field(max_length=64, unique=True, index=True)
    name: str = Field(max_length=200)
    product_id: int = Field(foreign_key="product.id", index=True)
    license_type: str = Field(default=LicenseType.PERPETUAL, max_length=16)
    max_activations: int = Field(default=1, ge=0)
    validity_days: int | None = None
    allow_offline_activation: bool = True
    max_consumptions: int | None = Field(default=None, sa_type=BigInteger)
    allow_overages: bool = False
    max_overages: int | None = Field(default=None, sa_type=BigInteger)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_created())


class License(SQLModel, table=True):
    """A key-based or user-based entitlement of one customer to one product.

    Every license has a key: it names the license for the vendor; for key-based
    licenses it is also what the end user types in.
    """

    __tablename__ = "license"
    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=64, unique=True, index=True)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    product_id: int = Field(foreign_key="product.id", index=True)
    policy_id: int | None = Field(default=None, foreign_key="license_policy.id")
    auth_method: str = Field(default=AuthMethod.KEY, max_length=8)
    license_type: str = Field(default=LicenseType.PERPETUAL, max_length=16)
    enabled: bool = True
    allow_offline_activation: bool = True
    max_activations: int = Field(default=1, ge=0)
    starts_at: datetime = Field(default_factory=utcnow, sa_column=_created())
    expires_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    max_consumptions: int | None = Field(default=None, sa_type=BigInteger)
    total_consumptions: int = Field(default=0, sa_type=BigInteger)
    allow_overages: bool = False
    max_overages: int | None = Field(default=None, sa_type=BigInteger)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_created())
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_created())


class LicenseFeature(SQLModel, table=True):
    __tablename__ = "license_feature"
    __table_args__ = (UniqueConstraint("license_id", "code"),)
    id: int | None = Field(default=None, primary_key=True)
    license_id: int = Field(foreign_key="license.id", index=True)
    code: str = Field(max_length=64)
    kind: str = Field(default=FeatureKind.ACTIVATION, max_length=16)
    max_consumptions: int | None = Field(default=None, sa_type=BigInteger)
    total_consumptions: int = Field(default=0, sa_type=BigInteger)
    allow_overages: bool = False
    max_overages: int | None = Field(default=None, sa_type=BigInteger)
    expires_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))


class LicenseUser(SQLModel, table=True):
    """A user assigned to a user-based license; only a password hash is stored."""

    __tablename__ = "license_user"
    __table_args__ = (UniqueConstraint("license_id", "email"),)
    id: int | None = Field(default=None, primary_key=True)
    license_id: int = Field(foreign_key="license.id", index=True)
    email: str = Field(max_length=254, index=True)
    password_hash: str = Field(max_length=256)
