"""Who may reach the API: customer tokens, and the answers kept for idempotent retries."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from models.types import UTCDateTime, utcnow


def _created() -> Column:  # type: ignore[type-arg]
    return Column(UTCDateTime(), nullable=False, default=utcnow)


class ApiToken(SQLModel, table=True):
    """A customer's bearer token. Only its SHA-256 is kept (tokens are random, so a
    fast hash suffices); `prefix` finds the row without scanning every hash."""

    __tablename__ = "api_token"
    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    name: str = Field(max_length=100)
    prefix: str = Field(max_length=16, unique=True, index=True)
    token_hash: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_created())
    last_used_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    revoked_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))


class IdempotentUpload(SQLModel, table=True):
    """The first answer to an upload sent with an ``Idempotency-Key``: a retry with
    the same key and bytes is given it again; other bytes under that key are refused."""

    __tablename__ = "idempotent_upload"
    __table_args__ = (UniqueConstraint("tenant", "key"),)
    id: int | None = Field(default=None, primary_key=True)
    tenant: str = Field(max_length=32)
    key: str = Field(max_length=200)
    sha256: str = Field(max_length=64)
    job_id: int | None = Field(default=None, foreign_key="job.id")
    batch_id: int | None = Field(default=None, foreign_key="batch.id")
    created_at: datetime = Field(default_factory=utcnow, sa_column=_created())


class Operator(SQLModel, table=True):
    """A vendor employee who may use the console; the password is kept as argon2id."""

    __tablename__ = "operator"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True, index=True)
    password_hash: str = Field(max_length=256)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_created())
    last_login_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))


class OperatorSession(SQLModel, table=True):
    """A signed-in console session: the cookie holds the token, the row its hash and the
    CSRF token the session's forms must carry."""

    __tablename__ = "operator_session"
    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(max_length=64, unique=True, index=True)
    operator_id: int = Field(foreign_key="operator.id", index=True)
    csrf: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_created())
    expires_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
