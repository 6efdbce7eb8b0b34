"""The rows a chunk of jobs reads and writes: loaded in sets, changed in memory, written
back in sets.

Per-file SQL, not the SQL itself, was what bounded throughput (about fourteen
statements per deactivation, each paying the ORM and driver round trip). A WorkSet
reads everything a chunk's files name in a handful of queries, lets the rules change
those rows in memory in file order, and writes the result with one executemany per
table. A job's changes are recorded in an undo log, so a rejected file is rolled back
in memory exactly as a savepoint would have done, and nothing of it is ever written.

Isolation is the caller's transaction: on PostgreSQL the license rows are locked
FOR UPDATE (in id order when loaded together) and every device, feature and seat
change happens under its license's lock; on SQLite the transaction holds the write
lock from BEGIN IMMEDIATE. A request id claimed concurrently by another worker makes
the final insert fail, and the caller runs the chunk again.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, bindparam, func, insert, select, update
from sqlalchemy.sql import Executable

from models import DeviceStatus
from models.db import is_postgres, pairs_in
from models.fastrows import RowWriter
from models.tables import (
    APPLIED,
    AUDIT,
    CUSTOMER,
    DEVICE,
    EVENT,
    FEATURE,
    LICENSE,
    LOGIN_FAILURE,
    OUTPUT,
    PRODUCT,
    USER,
)

_IN_CHUNK = 500  # keys per IN (...) list


class Record:
    """One row held in memory: attribute access to its columns (and derived values)."""

    __slots__ = ("table", "values", "dirty")

    def __init__(self, table: Table, values: dict[str, Any]) -> None:
        self.table = table
        self.values = values
        self.dirty: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def is_new(self) -> bool:
        return self.values.get("id") is None


class WorkSet:
    """Loads, tracks and writes back the rows of one chunk (see the module docstring)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = is_postgres(conn.engine)
        self._license_by_key: dict[str, Record | None] = {}
        self._license_by_id: dict[int, Record] = {}
        self._devices: dict[tuple[int, str], Record | None] = {}
        self._features: dict[int, list[Record]] = {}
        self._customers: dict[int, Record] = {}
        self._products: dict[int, Record] = {}
        self._product_by_code: dict[str, Record | None] = {}
        self._claims: dict[tuple[str, str], tuple[str, int] | None] = {}
        self._outputs: dict[int, list[tuple[str, bytes]]] = {}
        self._touched: list[Record] = []  # records with unwritten changes, in first-change order
        self._new_devices: list[Record] = []
        self._rows: dict[str, list[dict[str, Any]]] = defaultdict(list)  # appended inserts
        self._undo: list[tuple[str, Any]] | None = None
        # Changes that stand even when their job is refused (a failed sign-in is counted
        # precisely because the job fails), written in order at flush.
        self._kept: list[Executable] = []
        self._failures: dict[tuple[str, str], int] = {}

    # --- loading -------------------------------------------------------------------------

    def prefetch(self, *, license_keys: Iterable[str], devices: Iterable[tuple[str, str]],
                 claims: Iterable[tuple[str, str]]) -> None:
        """Load in sets what a chunk's files name: licenses (locked, in id order), their
        seat counts and features, the named devices, and earlier claims of the request ids."""
        keys = sorted({k for k in license_keys if k not in self._license_by_key})
        for part in _parts(keys):
            query = select(LICENSE).where(LICENSE.c.key.in_(part)).order_by(LICENSE.c.id)
            self._add_licenses(self._run(query, lock=True))
        for key in keys:
            self._license_by_key.setdefault(key, None)
        wanted = [(lic.id, hw) for key, hw in dict.fromkeys(devices)
                  if (lic := self._license_by_key.get(key)) is not None
                  and (lic.id, hw) not in self._devices]
        for part in _parts(wanted):
            for row in self.conn.execute(select(DEVICE).where(
                    pairs_in(DEVICE.c.license_id, DEVICE.c.hardware_id, part))):
                self._devices[(row.license_id, row.hardware_id)] = Record(DEVICE, row._asdict())
        for pair in wanted:
            self._devices.setdefault(pair, None)
        pending = [c for c in dict.fromkeys(claims) if c not in self._claims]
        for part in _parts(pending):
            for row in self.conn.execute(select(APPLIED.c.tenant, APPLIED.c.request_id,
                                                APPLIED.c.sha256, APPLIED.c.job_id).where(
                    pairs_in(APPLIED.c.tenant, APPLIED.c.request_id, part))):
                self._claims[(row.tenant, row.request_id)] = (row.sha256, row.job_id)
        for claim in pending:
            self._claims.setdefault(claim, None)

    def _run(self, query: Any, *, lock: bool = False) -> Any:
        if lock and self.lock:
            query = query.with_for_update()
        return self.conn.execute(query)

    def _add_licenses(self, rows: Iterable[Any]) -> list[Record]:
        """Cache license rows with their active seat count and features."""
        records = [Record(LICENSE, row._asdict()) for row in rows]
        ids = [r.id for r in records]
        for r in records:
            r.values["active_seats"] = 0
            self._license_by_key[r.key] = self._license_by_id[r.id] = r
            self._features[r.id] = []
        for part in _parts(ids):
            for lic_id, count in self.conn.execute(
                    select(DEVICE.c.license_id, func.count()).where(
                        DEVICE.c.license_id.in_(part), DEVICE.c.status == DeviceStatus.ACTIVE)
                    .group_by(DEVICE.c.license_id)):
                self._license_by_id[lic_id].values["active_seats"] = count
            for row in self.conn.execute(select(FEATURE).where(FEATURE.c.license_id.in_(part))
                                         .order_by(FEATURE.c.code)):
                self._features[row.license_id].append(Record(FEATURE, row._asdict()))
        return records

    def license_by_key(self, key: str) -> Record | None:
        if key not in self._license_by_key:
            self.prefetch(license_keys=[key], devices=(), claims=())
        return self._license_by_key[key]

    def license_by_id(self, license_id: int) -> Record:
        lic = self._license_by_id.get(license_id)
        if lic is None:
            query = select(LICENSE).where(LICENSE.c.id == license_id)
            (lic,) = self._add_licenses(self._run(query, lock=True))
        return lic

    def device(self, lic: Record, hardware_id: str) -> Record | None:
        pair = (lic.id, hardware_id)
        if pair not in self._devices:
            row = self.conn.execute(select(DEVICE).where(DEVICE.c.license_id == lic.id,
                                                         DEVICE.c.hardware_id == hardware_id)
                                    ).first()
            self._devices[pair] = Record(DEVICE, row._asdict()) if row is not None else None
        return self._devices[pair]

    def active_devices(self, lic: Record) -> list[Record]:
        """The license's devices that are active as of this point of the chunk, by id."""
        for row in self.conn.execute(select(DEVICE).where(DEVICE.c.license_id == lic.id)):
            if self._devices.get((lic.id, row.hardware_id)) is None:
                self._devices[(lic.id, row.hardware_id)] = Record(DEVICE, row._asdict())
        mine = [d for (owner, _), d in self._devices.items()
                if owner == lic.id and d is not None and d.status == DeviceStatus.ACTIVE]
        return sorted(mine, key=lambda d: (d.is_new, d.id or 0))

    def features(self, lic: Record) -> list[Record]:
        return self._features[lic.id]

    def customer(self, customer_id: int) -> Record:
        return self._pinned(self._customers, CUSTOMER, customer_id)

    def product(self, product_id: int) -> Record:
        return self._pinned(self._products, PRODUCT, product_id)

    def product_by_code(self, code: str) -> Record | None:
        if code not in self._product_by_code:
            row = self.conn.execute(select(PRODUCT).where(PRODUCT.c.code == code)).first()
            self._product_by_code[code] = Record(PRODUCT, row._asdict()) if row else None
        return self._product_by_code[code]

    def _pinned(self, cache: dict[int, Record], table: Table, ident: int) -> Record:
        record = cache.get(ident)
        if record is None:
            row = self.conn.execute(select(table).where(table.c.id == ident)).one()
            record = cache[ident] = Record(table, row._asdict())
        return record

    def claim_of(self, tenant: str, request_id: str) -> tuple[str, int] | None:
        """(sha256, job id) of the job that applied this request id, if any."""
        key = (tenant, request_id)
        if key not in self._claims:
            self.prefetch(license_keys=(), devices=(), claims=[key])
        return self._claims[key]

    def outputs_of(self, job_id: int) -> list[tuple[str, bytes]]:
        if job_id in self._outputs:
            return list(self._outputs[job_id])
        rows = self.conn.execute(select(OUTPUT.c.name, OUTPUT.c.content).where(
            OUTPUT.c.job_id == job_id).order_by(OUTPUT.c.id))
        return [(name, content) for name, content in rows]

    def login_failures(self, tenant: str, email: str, since: datetime) -> int:
        """Failed sign-ins of `email` seen from `tenant` since `since` (this chunk's too).

        On PostgreSQL the (tenant, email) pair is locked for the transaction first, so
        concurrent chunks count each other's failures instead of each getting the
        whole allowance (SQLite's single writer serialises them anyway)."""
        key = (tenant, email)
        if key not in self._failures:
            if self.lock:
                self.conn.execute(select(func.pg_advisory_xact_lock(
                    func.hashtextextended(f"airlock-login:{tenant}/{email}", 0))))
            self._failures[key] = self.conn.execute(
                select(func.count()).select_from(LOGIN_FAILURE).where(
                    LOGIN_FAILURE.c.tenant == tenant, LOGIN_FAILURE.c.email == email,
                    LOGIN_FAILURE.c.at > since)).scalar_one()
        return self._failures[key]

    # --- kept changes (they stand when the job is refused) -------------------------------

    def record_login_failure(self, tenant: str, email: str, at: datetime, job_id: int) -> None:
        self._failures[(tenant, email)] = self._failures.get((tenant, email), 0) + 1
        self._kept.append(insert(LOGIN_FAILURE).values(tenant=tenant, email=email, at=at,
                                                       job_id=job_id))

    def replace_password_hash(self, user_id: int, password_hash: str) -> None:
        self._kept.append(update(USER).where(USER.c.id == user_id)
                          .values(password_hash=password_hash))

    def keep(self, table: Table, **values: Any) -> None:
        """A row to insert whatever becomes of the current job (plain values only)."""
        self._kept.append(insert(table).values(**values))

    # --- changing (inside a job) ---------------------------------------------------------

    def begin_job(self) -> None:
        self._undo = []

    def modify(self, record: Record, **changes: Any) -> None:
        undo = self._journal()
        undo.append(("set", (record, {k: record.values[k] for k in changes}, set(record.dirty))))
        if not record.dirty and not record.is_new:
            self._touched.append(record)
        record.values.update(changes)
        record.dirty.update(k for k in changes if k in record.table.c)

    def add_device(self, lic: Record, values: dict[str, Any]) -> Record:
        record = Record(DEVICE, {"id": None, "license_id": lic.id, **values})
        key = (lic.id, record.hardware_id)
        self._journal().append(("device", (key, self._devices.get(key))))
        self._devices[key] = record
        self._new_devices.append(record)
        return record

    def claim(self, tenant: str, request_id: str, sha256: str, job_id: int,
              applied_at: datetime) -> None:
        key = (tenant, request_id)
        self._journal().append(("claim", (key, self._claims.get(key))))
        self._claims[key] = (sha256, job_id)
        self.append(APPLIED, tenant=tenant, request_id=request_id, sha256=sha256,
                    job_id=job_id, applied_at=applied_at)

    def append(self, table: Table, **values: Any) -> None:
        """A row to insert (a Record as a value stands for that row's id)."""
        rows = self._rows[table.name]
        self._journal().append(("row", (rows, len(rows))))
        rows.append(values)

    def commit_job(self, job_id: int, outputs: list[tuple[str, bytes]]) -> None:
        self._undo = None
        self._outputs[job_id] = list(outputs)

    def rollback_job(self) -> None:
        """Undo every change of the current job, newest first."""
        for what, data in reversed(self._undo or []):
            if what == "set":
                record, old, dirty = data
                record.values.update(old)
                record.dirty = dirty
            elif what == "device":
                key, previous = data
                self._new_devices.remove(self._devices[key])  # type: ignore[arg-type]
                self._devices[key] = previous
            elif what == "claim":
                key, previous = data
                self._claims[key] = previous
            else:
                rows, length = data
                del rows[length:]
        self._undo = None

    def _journal(self) -> list[tuple[str, Any]]:
        if self._undo is None:
            raise RuntimeError("a change outside begin_job/commit_job")
        return self._undo

    # --- writing -------------------------------------------------------------------------

    def flush(self) -> None:
        """Write every committed change: new devices first (their ids are referenced),
        then claims, updates, events, audit rows."""
        if self._undo is not None:
            raise RuntimeError("flush inside an open job")
        self._insert_devices()
        self._insert(APPLIED)
        self._write_updates()
        self._insert(EVENT)
        self._insert(AUDIT)
        for statement in self._kept:
            self.conn.execute(statement)
        self._kept = []

    def _insert_devices(self) -> None:
        if not self._new_devices:
            return
        columns = [c.name for c in DEVICE.c if c.name != "id"]
        rows = [{c: d.values.get(c) for c in columns} for d in self._new_devices]
        result = self.conn.execute(insert(DEVICE).returning(
            DEVICE.c.id, sort_by_parameter_order=True), rows)
        for device, (new_id,) in zip(self._new_devices, result, strict=True):
            device.values["id"] = new_id
            device.dirty.clear()
        self._new_devices = []

    def _write_updates(self) -> None:
        groups: dict[tuple[Table, tuple[str, ...]], list[dict[str, Any]]] = defaultdict(list)
        for record in self._touched:
            if record.dirty:
                fields = tuple(sorted(record.dirty))
                params = {f"v_{f}": record.values[f] for f in fields}
                params["row_id"] = record.id
                groups[(record.table, fields)].append(params)
                record.dirty = set()
        self._touched = []
        for (table, fields), rows in groups.items():
            _updater(table, fields).run(self.conn, rows)

    def _insert(self, table: Table) -> None:
        rows = self._rows.pop(table.name, [])
        by_keys: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
        for row in rows:  # rules may leave out columns that have defaults
            by_keys[tuple(row)].append(
                {k: (v.id if isinstance(v, Record) else v) for k, v in row.items()})
        for keys, resolved in by_keys.items():
            _inserter(table, keys).run(self.conn, resolved)


@functools.cache
def _updater(table: Table, fields: tuple[str, ...]) -> RowWriter:
    """The UPDATE by id of `fields` (bound as ``v_<field>``; the id as ``row_id``)."""
    statement = update(table).where(table.c.id == bindparam("row_id")).values(
        {f: bindparam(f"v_{f}") for f in fields})
    return RowWriter(statement, ["row_id", *(f"v_{f}" for f in fields)])


@functools.cache
def _inserter(table: Table, keys: tuple[str, ...]) -> RowWriter:
    return RowWriter(insert(table), keys)


def _parts(items: list[Any]) -> Iterable[list[Any]]:
    for start in range(0, len(items), _IN_CHUNK):
        yield items[start:start + _IN_CHUNK]

