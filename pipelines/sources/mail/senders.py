"""Which mail senders speak for which customer: an exact address, else its domain."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Engine, or_, select
from sqlmodel import Session, col
from sqlmodel import select as select_rows

from models import AuditEvent, MailSender
from models.db import reading
from models.tables import CUSTOMER, MAIL_SENDER
from pipelines.catalog import CatalogError, get_customer

_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


def _address(value: str) -> str:
    address = value.strip().lower()
    local, at, domain = address.rpartition("@")
    if not at or not local or len(address) > 254 or not _DOMAIN.match(domain) \
            or any(ch.isspace() or ch in "<>\"," for ch in local):
        raise CatalogError("bad_address", f"{value!r} is not a mail address")
    return address


def _domain(value: str) -> str:
    domain = value.strip().lower().lstrip("@")
    if not _DOMAIN.match(domain):
        raise CatalogError("bad_domain", f"{value!r} is not a mail domain")
    return domain


def add_sender(*, session: Session, customer: str, address: str | None = None,
               domain: str | None = None) -> MailSender:
    if (address is None) == (domain is None):
        raise CatalogError("bad_sender", "give an address or a domain")
    owner = get_customer(session=session, code=customer)
    assert owner.id is not None
    row = MailSender(customer_id=owner.id, address=_address(address) if address else None,
                     domain=_domain(domain) if domain else None)
    taken = session.exec(select_rows(MailSender).where(
        col(MailSender.address) == row.address if row.address
        else col(MailSender.domain) == row.domain)).first()
    if taken is not None:
        raise CatalogError("duplicate", f"{row.address or row.domain} is already mapped")
    session.add(row)
    session.add(AuditEvent(actor="operator", action="mail.sender.add", tenant=customer,
                           detail={"address": row.address, "domain": row.domain}))
    session.flush()
    return row


def remove_sender(*, session: Session, value: str) -> bool:
    value = value.strip().lower()
    row = session.exec(select_rows(MailSender).where(
        or_(col(MailSender.address) == value, col(MailSender.domain) == value))).first()
    if row is None:
        return False
    session.delete(row)
    session.add(AuditEvent(actor="operator", action="mail.sender.remove",
                           detail={"sender": value}))
    return True


def list_senders(engine: Engine, customer: str | None = None) -> list[dict[str, Any]]:
    statement = (select(CUSTOMER.c.code.label("customer"), MAIL_SENDER.c.address,
                        MAIL_SENDER.c.domain, MAIL_SENDER.c.created_at)
                 .join(CUSTOMER, CUSTOMER.c.id == MAIL_SENDER.c.customer_id)
                 .order_by(CUSTOMER.c.code, MAIL_SENDER.c.id))
    if customer is not None:
        statement = statement.where(CUSTOMER.c.code == customer)
    with reading(engine) as conn:
        return [dict(row._mapping) for row in conn.execute(statement)]


def customer_of(engine: Engine, address: str) -> str | None:
    """The customer `address` speaks for: its own mapping, else its domain's."""
    address = address.strip().lower()
    domain = address.rpartition("@")[2]
    with reading(engine) as conn:
        rows = conn.execute(select(CUSTOMER.c.code, MAIL_SENDER.c.address)
                            .join(CUSTOMER, CUSTOMER.c.id == MAIL_SENDER.c.customer_id)
                            .where(or_(MAIL_SENDER.c.address == address,
                                       MAIL_SENDER.c.domain == domain))).all()
    exact = [row.code for row in rows if row.address == address]
    return exact[0] if exact else (rows[0].code if rows else None)
