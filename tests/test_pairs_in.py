"""`pairs_in`: the exact pairs, found through the (a, b) index rather than a table scan."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, insert, select, text, update

from models import Job
from models.db import pairs_in

JOB = Job.__table__  # type: ignore[attr-defined]
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def add_jobs(engine: Engine, keys: list[tuple[str, str]]) -> None:
    with engine.begin() as conn:
        conn.execute(insert(JOB), [{"tenant": t, "sha256": s, "source": "", "size": 0,
                                    "payload": b"", "status": "pending", "attempts": 0,
                                    "created_at": NOW, "updated_at": NOW} for t, s in keys])


def test_matches_exactly_the_pairs_asked_for(engine: Engine) -> None:
    # ("B", "s1") and ("A", "s3") are in the cross product of the asked tenants and
    # digests but were not asked for: they must not match.
    add_jobs(engine, [("A", "s1"), ("A", "s2"), ("A", "s3"), ("B", "s1"), ("B", "s3"),
                      ("C", "s1")])
    asked = [("A", "s1"), ("A", "s2"), ("B", "s3"), ("A", "nope")]
    with engine.begin() as conn:
        found = conn.execute(select(JOB.c.tenant, JOB.c.sha256).where(
            pairs_in(JOB.c.tenant, JOB.c.sha256, asked))).all()
        conn.execute(update(JOB).where(pairs_in(JOB.c.tenant, JOB.c.sha256, asked))
                     .values(attempts=JOB.c.attempts + 1))
        bumped = conn.execute(select(JOB.c.tenant, JOB.c.sha256)
                              .where(JOB.c.attempts == 1)).all()
        nothing = conn.execute(select(JOB.c.id).where(
            pairs_in(JOB.c.tenant, JOB.c.sha256, []))).all()
    assert sorted(map(tuple, found)) == [("A", "s1"), ("A", "s2"), ("B", "s3")]
    assert sorted(map(tuple, bumped)) == [("A", "s1"), ("A", "s2"), ("B", "s3")]
    assert nothing == []


def test_sqlite_searches_the_index_instead_of_scanning(sqlite_engine: Engine) -> None:
    query = select(JOB.c.id).where(pairs_in(JOB.c.tenant, JOB.c.sha256,
                                            [("A", "s1"), ("A", "s2"), ("B", "s9")]))
    compiled = query.compile(sqlite_engine, compile_kwargs={"literal_binds": True})
    with sqlite_engine.connect() as conn:
        plan = " / ".join(row[-1] for row in conn.execute(text(f"EXPLAIN QUERY PLAN {compiled}")))
    assert "SEARCH job USING" in plan and "(tenant=? AND sha256=?)" in plan, plan
    assert "SCAN job" not in plan, plan
