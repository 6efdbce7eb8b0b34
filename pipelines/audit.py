"""Reading the audit trail: activations, deactivations, refreshes, lockouts, releases,
retries and the operator's catalogue changes, newest first."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from models.db import reading
from models.tables import AUDIT, LICENSE


def audit_events(engine: Engine, *, license_key: str | None = None,
                 customer: str | None = None, since: datetime | None = None,
                 limit: int = 100) -> list[dict[str, Any]]:
    """The newest events first; an unknown license key has none."""
    event = AUDIT.c
    statement = (select(event.id, event.at, event.tenant, event.actor, event.action,
                        LICENSE.c.key.label("license"), event.device_id, event.job_id,
                        event.detail)
                 .select_from(AUDIT.outerjoin(LICENSE, LICENSE.c.id == event.license_id))
                 .order_by(event.id.desc()).limit(limit))
    if license_key is not None:
        statement = statement.where(LICENSE.c.key == license_key)
    if customer is not None:
        statement = statement.where(event.tenant == customer)
    if since is not None:
        statement = statement.where(event.at >= since)
    with reading(engine) as conn:
        return [dict(row._mapping) for row in conn.execute(statement)]
