"""Where files live inside the inbox and outbox stores: pure functions over keys.

Inbox store root::

    <TENANT>/<name...>                       arrivals from a customer
    _operator/<name...>                      vendor-issued files (refresh requests)
    _processing/<TENANT|_operator>/<name>    claimed, in hand
    _processed/<TENANT|_operator>/<name>     archived after success
    _rejected/<TENANT|_operator>/<name>      + <name>.error.json
    _quarantine/<TENANT|_operator>/<name>    + <name>.error.json

Tenant codes never start with "_", so the reserved areas cannot collide with a
customer. Outbox store root: ``<TENANT>/<result name>``.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum

from models.ledger import JobStatus
from pipelines.catalog import CODE
from pipelines.storage.base import InvalidKey, check_key

OPERATOR = "_operator"
PROCESSING = "_processing"


class Disposition(StrEnum):
    """Where a finished file is archived in the inbox: ``_<disposition>/<area>/<name>``."""

    PROCESSED = "processed"
    REJECTED = "rejected"
    QUARANTINE = "quarantine"

    @property
    def folder(self) -> str:
        return f"_{self.value}"

    @classmethod
    def of(cls, status: str) -> Disposition:
        """The disposition of a finished job status (done, rejected, quarantined)."""
        return _BY_STATUS[JobStatus(status)]


_BY_STATUS = {JobStatus.DONE: Disposition.PROCESSED, JobStatus.REJECTED: Disposition.REJECTED,
              JobStatus.QUARANTINED: Disposition.QUARANTINE}
ERROR_SUFFIX = ".error.json"

_TEMP_SUFFIXES = (".part", ".partial", ".tmp", ".filepart", ".crdownload", ERROR_SUFFIX)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Arrival:
    """One file read from the inbox: who it is for, its name, and its exact bytes.

    `area` is a tenant code or `OPERATOR`; `key` is the inbox key the bytes were read
    from; `sha256` is computed from `data` (an S3 ETag is not a content hash) by
    whoever reads it: the intake registers the job under it without hashing again.
    """

    area: str
    name: str
    key: str
    data: bytes = field(repr=False)
    sha256: str
    size: int
    # Refused before its content was read (too large, not a regular file, a bad name,
    # unreadable): `data` is empty and `sha256` an identity of the entry, not of content.
    refusal: str | None = None
    detail: str | None = None  # for the report: e.g. the original name, escaped
    # Claimed just now from its arrival folder, so no earlier run can have opened it:
    # the intake may verify it before its attempt is counted (see `Intake`).
    first_try: bool = False

    @classmethod
    def refused(cls, *, area: str, name: str, key: str, reason: str, size: int,
                identity: str, detail: str | None = None) -> Arrival:
        """An arrival refused from what was seen of it (`identity`: e.g. its inode,
        size and mtime), so handing it over again finds the same job."""
        digest = hashlib.sha256(f"unread\0{key}\0{identity}".encode("utf-8",
                                                                     "backslashreplace"))
        return cls(area=area, name=name, key=key, data=b"", sha256=digest.hexdigest(),
                   size=size, refusal=reason, detail=detail)


def make_arrival(key: str, data: bytes) -> Arrival:
    """Build the `Arrival` for bytes read from inbox `key`; ValueError if not an arrival key."""
    parsed = parse_arrival_key(key)
    if parsed is None:
        raise ValueError(f"{key!r} is not an arrival key")
    area, name = parsed
    return Arrival(area, name, key, data, hashlib.sha256(data).hexdigest(), len(data))


def is_temporary_name(name: str) -> bool:
    """True for names that are not (yet) a finished file, judged by the last segment.

    In-flight uploads (``*.part``, ``*.partial``, ``*.tmp``, ``*.filepart``,
    ``*.crdownload``), dotfiles (including rsync's ``.name.XXXXXX``), ``~`` backups and
    ``~$`` lock files, and our own ``*.error.json`` reports.
    """
    base = name.rsplit("/", 1)[-1]
    if not base or base.startswith((".", "~$")) or base.endswith("~"):
        return True
    return base.lower().endswith(_TEMP_SUFFIXES)


def is_area(area: str) -> bool:
    """True for a tenant code or `OPERATOR`."""
    return area == OPERATOR or CODE.fullmatch(area) is not None


def _check_area(area: str) -> str:
    if not is_area(area):
        raise InvalidKey(f"{area!r} is neither a tenant code nor {OPERATOR!r}")
    return area


def parse_arrival_key(key: str) -> tuple[str, str] | None:
    """(tenant or `OPERATOR`, name) for an arrival key; None for anything else.

    None for: invalid keys, files at the root, reserved areas, first segments that are
    not tenant codes, temporary names and anything inside a hidden folder.
    """
    try:
        check_key(key)
    except InvalidKey:
        return None
    area, sep, name = key.partition("/")
    if not sep or not is_area(area):
        return None
    if is_temporary_name(name) or any(seg.startswith(".") for seg in name.split("/")):
        return None
    return area, name


def processing_key(area: str, name: str) -> str:
    """``_processing/<area>/<name>``: where a claimed file sits while in hand."""
    return check_key(f"{PROCESSING}/{_check_area(area)}/{check_key(name)}")


def parse_processing_key(key: str) -> tuple[str, str] | None:
    """(area, name) for a ``_processing/`` key (e.g. to recover after a crash), else None."""
    try:
        check_key(key)
    except InvalidKey:
        return None
    head, _, rest = key.partition("/")
    area, sep, name = rest.partition("/")
    if head != PROCESSING or not sep or not is_area(area):
        return None
    return area, name


def archive_key(disposition: str, area: str, name: str) -> str:
    """``_<disposition>/<area>/<name>`` for disposition processed, rejected or quarantine."""
    try:
        folder = Disposition(disposition).folder
    except ValueError:
        raise ValueError(f"unknown disposition {disposition!r}; "
                         f"expected one of {sorted(Disposition)}") from None
    return check_key(f"{folder}/{_check_area(area)}/{check_key(name)}")


def error_report_key(archived_key: str) -> str:
    """The ``.error.json`` report that sits beside an archived (rejected/quarantined) file."""
    return check_key(check_key(archived_key) + ERROR_SUFFIX)


def archive_key_candidates(disposition: str, area: str, name: str,
                           sha256: str) -> Iterator[str]:
    """The archive keys to try in order: the plain one, ``<name>.<sha12>``, then
    ``<name>.<sha12>.<n>`` (n = 2, 3, ...). An archiver that moves without replacing
    tries them in turn, without looking first."""
    if not _SHA256.match(sha256):
        raise ValueError(f"{sha256!r} is not a lowercase hex SHA-256")
    base = archive_key(disposition, area, name)
    yield base
    yield check_key(f"{base}.{sha256[:12]}")
    for counter in itertools.count(2):
        yield check_key(f"{base}.{sha256[:12]}.{counter}")


def outbox_key(tenant: str, result_name: str) -> str:
    """``<TENANT>/<result name>`` in the outbox store (``_operator/...`` for vendor files)."""
    if tenant != OPERATOR and CODE.fullmatch(tenant) is None:
        raise InvalidKey(f"{tenant!r} is not a tenant code")
    return check_key(f"{tenant}/{check_key(result_name)}")
