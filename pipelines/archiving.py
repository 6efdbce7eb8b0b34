"""Moving a handled source out of the inbox: the one way every mode archives a file.

A file is archived only once its results are durable in the outbox. The target name
is the plain ``_<disposition>/<area>/<name>`` if free, else one carrying the content
hash (`layout.archive_key_candidates`); several archivers may share an inbox (`airlock run
--processes`, Celery workers), so the error report's name is taken with an exclusive
create and the file is moved without replacing: a name another archiver took a moment
ago makes this one try the next name, and nothing ever overwrites another archive.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pipelines.layout import Disposition, archive_key_candidates, error_report_key
from pipelines.storage.base import Store

_TRIES = 100_000  # names found taken before giving up (the same file resent)


class InboxFile(Protocol):
    """The inbox file to archive: its key now, and the area, name and hash it arrived
    with (a `layout.Arrival` is one)."""

    @property
    def key(self) -> str: ...
    @property
    def area(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def sha256(self) -> str: ...


@dataclass(frozen=True)
class StoredFile:
    """An `InboxFile` known by its key and hash only (a bulk archive's source)."""

    key: str
    area: str
    name: str
    sha256: str


def archive(inbox: Store, source: InboxFile, disposition: Disposition,
            report: Mapping[str, Any] | None = None, *, durable: bool = True) -> str | None:
    """Move `source` to `disposition` (with `report` beside it as ``.error.json``);
    the key it got, or None if another archiver moved it already. `durable=False`
    leaves the flush to one `inbox.sync()` for a whole batch."""
    content = (json.dumps(report, indent=2) + "\n").encode() if report is not None else None
    races = 0
    for target in archive_key_candidates(disposition, source.area, source.name,
                                         source.sha256):
        if content is not None and inbox.exists(target):
            continue  # taken: skip writing a report for it (a plain move just tries)
        report_key = error_report_key(target)
        if content is not None and not inbox.put_if_absent(report_key, content,
                                                            durable=durable):
            continue  # another archiver's report has that name
        try:
            inbox.move(source.key, target, durable=durable, replace=False)
        except (FileExistsError, FileNotFoundError) as exc:
            if content is not None:
                inbox.delete(report_key)  # ours, written for a name we did not get
            if isinstance(exc, FileNotFoundError):
                return None  # another archiver moved the source already
            races += 1
            if races > _TRIES:
                break
            continue  # that name is taken (perhaps a moment ago): the next one
        return target
    raise RuntimeError(f"no free archive name for {source.key}")


__all__ = ["InboxFile", "StoredFile", "archive"]
