"""The device's append-only usage log (JSONL) and its hash chain.

    head_0 = "0" * 64
    record_n = {"seq": n, "amount": int, "feature": str | null, "at": time}
    head_n = sha256(bytes.fromhex(head_{n-1}) || canonical_json(record_n)).hexdigest()

Each line of the log is canonical JSON of record_n plus its "head". The counter
is the seq of the last record (0 for an empty log). A torn last line (a crash in
the middle of a write) has no newline yet: it is ignored and overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airlock_sdk.envelope import canonical_json
from airlock_sdk.errors import DeviceError, DeviceReason
from airlock_sdk.store import fsync_dir

GENESIS_HEAD = "0" * 64
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class UsageRecord:
    """One consumption: `amount` units of the license (feature None) or of a feature."""

    seq: int
    amount: int
    feature: str | None
    at: str
    head: str

    def body(self) -> dict[str, Any]:
        """The hashed part of the record (everything but its head)."""
        return {"seq": self.seq, "amount": self.amount, "feature": self.feature, "at": self.at}

    def line(self) -> bytes:
        return canonical_json({**self.body(), "head": self.head}) + b"\n"


def next_head(head: str, body: Mapping[str, Any]) -> str:
    """The chain step: sha256(previous head bytes || canonical JSON of the record)."""
    return hashlib.sha256(bytes.fromhex(head) + canonical_json(dict(body))).hexdigest()


def make_record(counter: int, head: str, *, amount: int, feature: str | None,
                at: str) -> UsageRecord:
    """The record that follows the log tip (counter, head)."""
    record = UsageRecord(seq=counter + 1, amount=amount, feature=feature, at=at, head="")
    return UsageRecord(seq=record.seq, amount=amount, feature=feature, at=at,
                       head=next_head(head, record.body()))


def verify_chain(records: Iterable[Mapping[str, Any] | UsageRecord], *, counter: int = 0,
                 head: str = GENESIS_HEAD) -> tuple[int, str]:
    """Check that `records` continue the chain at (counter, head); return the new tip.

    Raises ValueError at the first record that does not continue it.
    """
    for raw in records:
        item = {**raw.body(), "head": raw.head} if isinstance(raw, UsageRecord) else raw
        record = _record(item)
        if record.seq != counter + 1:
            raise ValueError(f"record {record.seq} follows record {counter}")
        if next_head(head, record.body()) != record.head:
            raise ValueError(f"record {record.seq} does not match the hash chain")
        counter, head = record.seq, record.head
    return counter, head


def summarise(records: Iterable[UsageRecord], *, after: int = 0) -> tuple[int, dict[str, int]]:
    """(license units, {feature: units}) of the records with seq > `after`."""
    license_total = 0
    features: dict[str, int] = {}
    for record in records:
        if record.seq <= after:
            continue
        if record.feature is None:
            license_total += record.amount
        else:
            features[record.feature] = features.get(record.feature, 0) + record.amount
    return license_total, features


def _record(item: Mapping[str, Any]) -> UsageRecord:
    if set(item) != {"seq", "amount", "feature", "at", "head"}:
        raise ValueError("a usage record has missing or unexpected fields")
    seq, amount, feature, at, head = (item[k] for k in ("seq", "amount", "feature", "at", "head"))
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in (seq, amount)) \
            or amount <= 0 or not isinstance(at, str) \
            or not (feature is None or isinstance(feature, str)) \
            or not isinstance(head, str) or not _HEX64.fullmatch(head):
        raise ValueError("a usage record has a field of the wrong type")
    return UsageRecord(seq=seq, amount=amount, feature=feature, at=at, head=head)


class UsageLog:
    """The JSONL file. Readers say where they left off (byte offset, counter, head)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def create(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        fsync_dir(self.path.parent)

    def read(self, *, offset: int = 0, counter: int = 0,
             head: str = GENESIS_HEAD) -> tuple[list[UsageRecord], int]:
        """The complete records after byte `offset`, checked to continue (counter, head).

        Returns them with the offset just past the last complete line. Raises
        DeviceError(usage_log_corrupt) if the log is shorter than `offset` or breaks
        the chain.
        """
        try:
            with open(self.path, "rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                if size < offset:
                    raise _corrupt(f"the usage log is shorter than recorded ({size} < {offset} "
                                   "bytes)")
                handle.seek(offset)
                data = handle.read()
        except FileNotFoundError:
            raise _corrupt("the usage log is missing") from None
        complete = data[:data.rfind(b"\n") + 1]
        records: list[UsageRecord] = []
        for number, line in enumerate(complete.splitlines(), start=1):
            try:
                item = json.loads(line.decode("utf-8"))
                if not isinstance(item, dict):
                    raise ValueError("not an object")
                records.append(_record(item))
            except (UnicodeDecodeError, ValueError) as exc:
                raise _corrupt(f"line {number} after byte {offset} is unreadable: {exc}") \
                    from None
        try:
            verify_chain(records, counter=counter, head=head)
        except ValueError as exc:
            raise _corrupt(str(exc)) from None
        return records, offset + len(complete)

    def append(self, record: UsageRecord, *, offset: int) -> int:
        """Write `record` at `offset` (dropping a torn tail), fsync, return the new end."""
        line = record.line()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, offset)
            os.lseek(fd, offset, os.SEEK_SET)
            view = memoryview(line)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        return offset + len(line)


def _corrupt(message: str) -> DeviceError:
    return DeviceError(DeviceReason.USAGE_LOG_CORRUPT, message)
