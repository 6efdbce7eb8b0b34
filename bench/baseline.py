"""What this machine can do without Airlock: a framework-free loop over the same files.

Per file, in one process: read it, base64-decode the armour, parse the header, verify
the device's Ed25519 signature, open the sealed box with the vendor key, parse the
payload, one SQLite transaction (upsert the device row, insert an event), sign a
receipt and write it to an outbox (temp file + rename), move the input to a
processed folder. No checks beyond the crypto, no ORM, no queue, no watcher.

It is the yardstick the embedded figure is read against: the same crypto and the same
file-system costs (on some disks creating a file costs more than the crypto).
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import struct
import time
from pathlib import Path
from typing import Any

from nacl.public import SealedBox

from airlock_sdk.envelope import SIGNATURE_BYTES, device_key_from_kid
from pipelines.keyring import VendorKeyring


def framework_free(home: Path, blobs: list[bytes], keyring: VendorKeyring) -> dict[str, Any]:
    inbox, outbox, done = home / "ff-inbox", home / "ff-outbox", home / "ff-processed"
    for folder in (inbox, outbox, done):
        folder.mkdir()
    for i, blob in enumerate(blobs):
        (inbox / f"d{i:07d}.req").write_bytes(blob)
    db = sqlite3.connect(home / "ff.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE device (kid TEXT PRIMARY KEY, active INTEGER, seen TEXT)")
    db.execute("CREATE TABLE event (id INTEGER PRIMARY KEY, kid TEXT, request TEXT)")
    unseal = {kid: SealedBox(key) for kid, key in keyring.sealing.items()}
    signer = keyring.signing_key
    names = sorted(os.listdir(inbox))
    began, cpu_began = time.perf_counter(), time.process_time()
    for name in names:
        with open(inbox / name, "rb") as handle:
            armoured = handle.read()
        blob = base64.b64decode(b"".join(armoured.split(b"\n")[1:-2]))
        signed, signature = blob[:-SIGNATURE_BYTES], blob[-SIGNATURE_BYTES:]
        (length,) = struct.unpack(">H", signed[4:6])
        header = json.loads(signed[6:6 + length])
        device_key_from_kid(header["kid"]).verify(signed, signature)
        body = signed[6 + length:]
        payload = json.loads(unseal[header["rcp"]].decrypt(body) if "rcp" in header else body)
        request_id = payload.get("request_id", name)
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO device VALUES (?, 0, ?) ON CONFLICT(kid) DO UPDATE "
                   "SET active = 0, seen = excluded.seen", (header["kid"], request_id))
        db.execute("INSERT INTO event (kid, request) VALUES (?, ?)",
                   (header["kid"], request_id))
        db.execute("COMMIT")
        receipt = signer.sign(json.dumps({"request_id": request_id, "status": "released"},
                                         sort_keys=True).encode())
        temp = outbox / f".{name}.tmp"
        with open(temp, "wb") as handle:
            handle.write(receipt)
        os.replace(temp, outbox / f"{name}.receipt")
        os.replace(inbox / name, done / name)
    seconds = time.perf_counter() - began
    cpu = time.process_time() - cpu_began
    db.close()
    return {"files": len(names), "seconds": round(seconds, 3),
            "files_per_s": round(len(names) / seconds, 1),
            "cpu_ms_per_file": round(1000 * cpu / len(names), 3)}
