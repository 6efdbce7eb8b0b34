"""Console operators: argon2id passwords, server-side sessions, a CSRF token per session.

A session cookie holds a random token; the database keeps its SHA-256, so a copy of
the database signs nobody in. Unknown names cost a password verification like known
ones, so the login answer says nothing about which names exist.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, select, update
from sqlmodel import Session, col
from sqlmodel import select as select_rows

from models import AuditEvent, Operator
from models.db import reading, session_scope
from models.tables import OPERATOR, OPERATOR_SESSION
from pipelines.catalog import CatalogError
from pipelines.passwords import check_password, hash_password

SESSION_LIFETIME = timedelta(hours=8)
MIN_PASSWORD = 12
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-@")


@dataclass(frozen=True)
class SignedIn:
    """The operator a session cookie belongs to, and the token its forms must carry."""

    name: str
    csrf: str
    session_id: int

    @property
    def actor(self) -> str:
        return f"operator:{self.name}"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def add_operator(*, session: Session, name: str, password: str) -> Operator:
    name = name.strip().lower()
    if not name or len(name) > 64 or not set(name) <= _NAME_CHARS:
        raise CatalogError("bad_name", "an operator name is 1-64 of a-z 0-9 . _ - @")
    if len(password) < MIN_PASSWORD:
        raise CatalogError("weak_password",
                           f"the password needs at least {MIN_PASSWORD} characters")
    if session.exec(select_rows(Operator).where(col(Operator.name) == name)).first():
        raise CatalogError("duplicate", f"operator '{name}' already exists")
    operator = Operator(name=name, password_hash=hash_password(password))
    session.add(operator)
    session.add(AuditEvent(actor="operator", action="operator.add", detail={"name": name}))
    session.flush()
    return operator


def remove_operator(*, session: Session, name: str) -> bool:
    operator = session.exec(select_rows(Operator).where(col(Operator.name) == name)).first()
    if operator is None:
        return False
    session.connection().execute(delete(OPERATOR_SESSION)
                                 .where(OPERATOR_SESSION.c.operator_id == operator.id))
    session.delete(operator)
    session.add(AuditEvent(actor="operator", action="operator.remove", detail={"name": name}))
    return True


def list_operators(engine: Engine) -> list[dict[str, Any]]:
    with reading(engine) as conn:
        return [dict(row._mapping) for row in conn.execute(
            select(OPERATOR.c.name, OPERATOR.c.created_at, OPERATOR.c.last_login_at)
            .order_by(OPERATOR.c.name))]


def sign_in(engine: Engine, name: str, password: str, *,
            now: datetime) -> tuple[str, SignedIn] | None:
    """A new session (its cookie token and who it is) if the password is right; None
    otherwise, after the same work."""
    with reading(engine) as conn:
        row = conn.execute(select(OPERATOR.c.id, OPERATOR.c.name, OPERATOR.c.password_hash)
                           .where(OPERATOR.c.name == name.strip().lower()[:64])).first()
    checked = check_password(password, row.password_hash if row is not None else None)
    if row is None or not checked.ok:
        return None
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    with session_scope(engine) as session:
        conn = session.connection()
        if checked.rehash:
            conn.execute(update(OPERATOR).where(OPERATOR.c.id == row.id)
                         .values(password_hash=checked.rehash))
        conn.execute(update(OPERATOR).where(OPERATOR.c.id == row.id).values(last_login_at=now))
        conn.execute(delete(OPERATOR_SESSION).where(OPERATOR_SESSION.c.expires_at < now))
        session_id = conn.execute(OPERATOR_SESSION.insert().values(
            token_hash=_digest(token), operator_id=row.id, csrf=csrf, created_at=now,
            expires_at=now + SESSION_LIFETIME)).inserted_primary_key[0]  # type: ignore[index]
        session.add(AuditEvent(actor=f"operator:{row.name}", action="operator.sign_in",
                               detail={}))
    return token, SignedIn(name=row.name, csrf=csrf, session_id=int(session_id))


def signed_in(engine: Engine, token: str, *, now: datetime) -> SignedIn | None:
    """Who the session cookie `token` belongs to; None when unknown or expired."""
    if not token or len(token) > 100:
        return None
    with reading(engine) as conn:
        row = conn.execute(
            select(OPERATOR_SESSION.c.id, OPERATOR_SESSION.c.csrf,
                   OPERATOR_SESSION.c.expires_at, OPERATOR.c.name)
            .join(OPERATOR, OPERATOR.c.id == OPERATOR_SESSION.c.operator_id)
            .where(OPERATOR_SESSION.c.token_hash == _digest(token))).first()
    if row is None or row.expires_at <= now:
        return None
    return SignedIn(name=row.name, csrf=row.csrf, session_id=row.id)


def sign_out(engine: Engine, who: SignedIn) -> None:
    with session_scope(engine) as session:
        session.connection().execute(delete(OPERATOR_SESSION)
                                     .where(OPERATOR_SESSION.c.id == who.session_id))
