"""Customer API tokens: issued once, stored hashed, scoped to one customer, revocable.

A token reads ``alk_<prefix>_<secret>``: the prefix finds its row, the SHA-256 of the
whole token is compared in constant time. The plain token exists only in the answer to
`issue_token`; nothing else can show it again.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select, update
from sqlmodel import Session, col
from sqlmodel import select as select_rows

from models import ApiToken, AuditEvent
from models.db import reading, session_scope
from models.tables import API_TOKEN, CUSTOMER
from pipelines.catalog import CatalogError, get_customer

_PREFIX = "alk_"
# A token used again within this long does not rewrite its last-use time: one write a
# minute per token, not one per request.
LAST_USE_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class Caller:
    """Who a valid token speaks for."""

    tenant: str
    token_id: int


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def issue_token(*, session: Session, customer: str, name: str,
                now: datetime) -> tuple[ApiToken, str]:
    """A new token for `customer`: its row and the plain token (shown once)."""
    if not name.strip() or len(name) > 100:
        raise CatalogError("bad_name", "a token needs a name of 1 to 100 characters")
    owner = get_customer(session=session, code=customer)
    assert owner.id is not None
    prefix = secrets.token_hex(6)
    token = f"{_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiToken(customer_id=owner.id, name=name.strip(), prefix=prefix,
                   token_hash=_digest(token), created_at=now)
    session.add(row)
    session.add(AuditEvent(actor="operator", action="token.add", tenant=customer,
                           detail={"token": prefix, "name": row.name}))
    session.flush()
    return row, token


def list_tokens(engine: Engine, customer: str | None = None) -> list[dict[str, Any]]:
    """Every token (never its secret): prefix, name, customer, created, last used, revoked."""
    statement = (select(API_TOKEN.c.prefix, API_TOKEN.c.name, CUSTOMER.c.code.label("customer"),
                        API_TOKEN.c.created_at, API_TOKEN.c.last_used_at,
                        API_TOKEN.c.revoked_at)
                 .join(CUSTOMER, CUSTOMER.c.id == API_TOKEN.c.customer_id)
                 .order_by(CUSTOMER.c.code, API_TOKEN.c.id))
    if customer is not None:
        statement = statement.where(CUSTOMER.c.code == customer)
    with reading(engine) as conn:
        return [dict(row._mapping) for row in conn.execute(statement)]


def revoke_token(*, session: Session, prefix: str, now: datetime) -> bool:
    """Revoke the token with `prefix` (the ``alk_`` form is accepted too); False if
    there is none. Revoking twice keeps the first time."""
    prefix = prefix.removeprefix(_PREFIX).split("_", 1)[0]
    token = session.exec(select_rows(ApiToken).where(col(ApiToken.prefix) == prefix)).first()
    if token is None:
        return False
    if token.revoked_at is None:
        token.revoked_at = now
        session.add(AuditEvent(actor="operator", action="token.revoke", detail={"token": prefix}))
    return True


def authenticate(engine: Engine, token: str, *, now: datetime) -> Caller | None:
    """The caller `token` speaks for; None for an unknown, malformed or revoked token
    (one answer for all, after the same comparison)."""
    prefix, secret = _split(token)
    with reading(engine) as conn:
        row = conn.execute(
            select(API_TOKEN.c.id, API_TOKEN.c.token_hash, API_TOKEN.c.revoked_at,
                   API_TOKEN.c.last_used_at, CUSTOMER.c.code)
            .join(CUSTOMER, CUSTOMER.c.id == API_TOKEN.c.customer_id)
            .where(API_TOKEN.c.prefix == prefix)).first() if secret else None
    expected = row.token_hash if row is not None else _digest("")
    matches = hmac.compare_digest(_digest(token), expected)
    if row is None or not matches or row.revoked_at is not None:
        return None
    if row.last_used_at is None or now - row.last_used_at >= LAST_USE_RESOLUTION:
        with session_scope(engine) as session:
            session.connection().execute(update(API_TOKEN).where(API_TOKEN.c.id == row.id)
                                         .values(last_used_at=now))
    return Caller(tenant=row.code, token_id=row.id)


def _split(token: str) -> tuple[str, str]:
    if not token.startswith(_PREFIX) or len(token) > 200:
        return "", ""
    prefix, _, secret = token[len(_PREFIX):].partition("_")
    return prefix, secret
