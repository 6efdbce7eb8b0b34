"""A batch report (JSON and CSV) written row by row into temp files, so a report of
100,000 members costs no more memory than one of ten.

The JSON is byte for byte what ``json.dumps(document, indent=2)`` gives for the whole
document, with the ``summary`` and ``member_count`` that are only known at the end
still ahead of the ``members`` list.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
from typing import IO, Any

from pipelines.storage.base import Store

CSV_COLUMNS = ["member", "status", "reason", "request_id", "results", "message"]
_SPOOL_BYTES = 1024 * 1024  # smaller reports never touch the disk


class ReportWriter:
    """Collects rows (dicts with the `CSV_COLUMNS` keys, `results` a list) and writes
    the finished report to a store. A context manager: the temp files go on exit."""

    def __init__(self) -> None:
        self.count = 0
        self.summary: dict[str, int] = {}
        self._members = tempfile.SpooledTemporaryFile(_SPOOL_BYTES, mode="w+b")
        self._csv_file = tempfile.SpooledTemporaryFile(_SPOOL_BYTES, mode="w+b")
        self._csv_text = io.TextIOWrapper(self._csv_file, encoding="utf-8", newline="")
        self._csv = csv.writer(self._csv_text, lineterminator="\n")
        self._csv.writerow(CSV_COLUMNS)

    def __enter__(self) -> ReportWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._members.close()
        self._csv_text.close()  # closes the file under it too

    def add(self, row: dict[str, Any]) -> None:
        status = row["status"]
        self.summary[status] = self.summary.get(status, 0) + 1
        text = json.dumps(row, indent=2).replace("\n", "\n    ")
        self._members.write(((",\n    " if self.count else "\n    ") + text).encode())
        self.count += 1
        self._csv.writerow([row["member"], status, row["reason"] or "",
                            row["request_id"] or "", ";".join(row["results"]),
                            row["message"] or ""])

    def publish(self, store: Store, json_key: str, csv_key: str,
                header: dict[str, Any]) -> None:
        """Put the JSON document (`header`'s fields, then ``member_count``, ``summary``
        and ``members``) and the CSV under their keys."""
        document = {**header, "member_count": self.count,
                    "summary": dict(sorted(self.summary.items())), "members": []}
        opening = json.dumps(document, indent=2)
        assert opening.endswith('"members": []\n}')
        with tempfile.SpooledTemporaryFile(_SPOOL_BYTES, mode="w+b") as whole:
            if self.count == 0:
                whole.write((opening + "\n").encode())
            else:
                whole.write(opening[:-len("]\n}")].encode())
                self._copy(self._members, whole)
                whole.write(b"\n  ]\n}\n")
            whole.seek(0)
            store.put_file(json_key, whole)  # type: ignore[arg-type]
        self._csv_text.flush()
        self._csv_file.seek(0)
        store.put_file(csv_key, self._csv_file)  # type: ignore[arg-type]

    @staticmethod
    def _copy(source: IO[bytes], target: IO[bytes]) -> None:
        source.seek(0)
        shutil.copyfileobj(source, target, 1024 * 1024)
