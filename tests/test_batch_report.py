"""The streamed batch report: the same bytes as dumping the whole document at once."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest

from pipelines.batch_report import ReportWriter
from pipelines.storage.local import LocalStore

HEADER = {"batch_id": 3, "tenant": "ACME", "archive": "a.zip", "reason": None}


def row(n: int, status: str = "done", results: int = 1) -> dict[str, Any]:
    return {"member": f"m-{n}.req", "status": status, "reason": "bad" if status != "done"
            else None, "message": 'says "no", twice\nover lines' if status != "done" else None,
            "request_id": f"r-{n}" if status == "done" else None,
            "results": [f"ACME/r-{n}.{k}" for k in range(results)]}


@pytest.mark.parametrize("rows", [
    [],
    [row(1)],
    [row(1), row(2, "rejected", results=0), row(3, results=2), row(4, "missing", 0)],
], ids=["empty", "one", "mixed"])
def test_json_is_what_dumping_the_whole_document_gives(tmp_path, rows) -> None:
    store = LocalStore(tmp_path)
    with ReportWriter() as writer:
        for one in rows:
            writer.add(one)
        writer.publish(store, "ACME/r.json", "ACME/r.csv", HEADER)
    summary: dict[str, int] = {}
    for one in rows:
        summary[one["status"]] = summary.get(one["status"], 0) + 1
    expected = {**HEADER, "member_count": len(rows), "summary": dict(sorted(summary.items())),
                "members": rows}
    assert store.get("ACME/r.json").decode() == json.dumps(expected, indent=2) + "\n"
    parsed = list(csv.reader(io.StringIO(store.get("ACME/r.csv").decode())))
    assert parsed[0] == ["member", "status", "reason", "request_id", "results", "message"]
    assert [line[0] for line in parsed[1:]] == [one["member"] for one in rows]
    assert [line[4] for line in parsed[1:]] == [";".join(one["results"]) for one in rows]
    assert [line[5] for line in parsed[1:]] == [one["message"] or "" for one in rows]
