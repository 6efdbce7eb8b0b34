"""The mail intake's tables: which senders speak for which customer, and every
message seen (the ledger that makes a message count once and be answered once)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from models.types import UTCDateTime, utcnow


def _ts() -> Column:  # type: ignore[type-arg]
    return Column(UTCDateTime(), nullable=False, default=utcnow)


class MailSender(SQLModel, table=True):
    """An address, or a whole domain, whose mail is taken for `customer_id`."""

    __tablename__ = "mail_sender"
    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    address: str | None = Field(default=None, max_length=254, unique=True)
    domain: str | None = Field(default=None, max_length=253, unique=True)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class MailStatus(StrEnum):
    """Where a message stands in the mail ledger."""

    TAKEN = "taken"  # its files were handed over; answers awaited
    ANSWERED = "answered"  # every file final; the reply is due (or not wanted)
    DONE = "done"  # replied (or no reply wanted) and moved out of the inbox folder
    REJECTED = "rejected"  # unknown sender or bad mail; moved to Airlock/Rejected


class MailMessage(SQLModel, table=True):
    __tablename__ = "mail_message"
    __table_args__ = (UniqueConstraint("mailbox", "uidvalidity", "uid"),
                      Index("ix_mail_message_id", "mailbox", "message_id"))
    id: int | None = Field(default=None, primary_key=True)
    mailbox: str = Field(max_length=300)  # user@host/folder
    uidvalidity: int = Field(sa_type=BigInteger)
    uid: int = Field(sa_type=BigInteger)
    message_id: str | None = Field(default=None, max_length=998)
    sender: str | None = Field(default=None, max_length=254)
    tenant: str | None = Field(default=None, max_length=32)
    status: str = Field(max_length=16)  # a MailStatus
    reason: str | None = Field(default=None, max_length=64)
    # [{"name": attachment name, "job": id} | {"name", "batch": id}], in mail order
    tickets: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))
    replied_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
