"""`RowWriter`: many rows through the driver store exactly what SQLAlchemy would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, bindparam, insert, select, text, update

from models.fastrows import RowWriter
from models.tables import AUDIT

_KEYS = ["at", "tenant", "actor", "action", "license_id", "detail"]
_EAST = timezone(timedelta(hours=5, minutes=30))


def _rows(actor: str) -> list[dict[str, object]]:
    base = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    return [{"at": base.astimezone(_EAST) if i % 2 else base, "tenant": None if i == 2 else "ACME",
             "actor": actor, "action": "device.bound", "license_id": i,
             "detail": {"n": i, "name": "é"} if i else None} for i in range(4)]


def _stored(engine: Engine, actor: str) -> list[tuple[object, ...]]:
    """The rows as the database holds them, not as SQLAlchemy reads them back."""
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(
            "SELECT at, tenant, action, license_id, detail FROM audit_event "
            "WHERE actor = :actor ORDER BY license_id"), {"actor": actor})]


def test_rows_are_stored_as_sqlalchemy_stores_them(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(insert(AUDIT), _rows("orm"))
        RowWriter(insert(AUDIT), _KEYS).run(conn, _rows("driver"))
    driver = _stored(engine, "driver")
    assert driver == _stored(engine, "orm") and len(driver) == 4
    with engine.connect() as conn:
        back = conn.execute(select(AUDIT.c.at, AUDIT.c.detail).where(AUDIT.c.actor == "driver")
                            .order_by(AUDIT.c.license_id)).all()
    assert {row.at for row in back} == {datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)}
    assert [row.detail for row in back][1:] == [{"n": i, "name": "é"} for i in (1, 2, 3)]


def test_an_update_by_named_parameters(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(insert(AUDIT), _rows("a"))
        ids = list(conn.execute(select(AUDIT.c.id).order_by(AUDIT.c.id)).scalars())
        writer = RowWriter(update(AUDIT).where(AUDIT.c.id == bindparam("row"))
                           .values(action=bindparam("v_action")), ["row", "v_action"])
        writer.run(conn, [{"row": ids[1], "v_action": "one"}, {"row": ids[3], "v_action": "3"}])
    with engine.connect() as conn:
        actions = list(conn.execute(select(AUDIT.c.action).order_by(AUDIT.c.id)).scalars())
    assert actions == ["device.bound", "one", "device.bound", "3"]


def test_a_naive_datetime_is_refused_as_before(engine: Engine) -> None:
    row = {**_rows("x")[0], "at": datetime(2026, 3, 1, 12, 0)}
    with pytest.raises(Exception, match="naive datetime"), engine.begin() as conn:
        RowWriter(insert(AUDIT), _KEYS).run(conn, [row])
    assert _stored(engine, "x") == []


def test_keys_that_are_not_the_statements_parameters_are_refused(
        sqlite_engine: Engine) -> None:
    """A parameter the rows do not name (here the new value) would be sent as None."""
    statement = update(AUDIT).where(AUDIT.c.id == bindparam("row")).values(
        action=bindparam("v_action"))
    with pytest.raises(ValueError, match="parameters"), sqlite_engine.begin() as conn:
        RowWriter(statement, ["row"]).run(conn, [{"row": 1}])


def test_no_rows_run_nothing(sqlite_engine: Engine) -> None:
    with sqlite_engine.begin() as conn:
        RowWriter(insert(AUDIT), _KEYS).run(conn, [])
        assert conn.execute(select(AUDIT.c.id)).all() == []
