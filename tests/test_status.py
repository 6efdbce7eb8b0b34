"""The per-customer status picture: inbox backlog, files in hand, outcomes by window."""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine, update

from models.db import session_scope
from models.tables import JOB
from pipelines.intake import Intake
from pipelines.keyring import VendorKeyring
from pipelines.layout import Arrival, processing_key
from pipelines.process import Processor
from pipelines.status import customer_status
from pipelines.storage.local import LocalStore
from tests.factories import NOW, WireDevice, add_license, vendor


def test_status_counts_backlog_in_hand_and_outcomes(engine: Engine, keyring: VendorKeyring,
                                                    tmp_path: Path) -> None:
    inbox = LocalStore(tmp_path / "inbox")
    intake = Intake(engine=engine, processor=Processor(keyring=keyring, clock=lambda: NOW),
                    inbox=inbox, outbox=LocalStore(tmp_path / "outbox"))
    vendor(engine)  # ACME and BETA
    key = add_license(engine, max_activations=1)  # ACME
    done, refused = (WireDevice(keyring, hw).activation(license_key=key) for hw in "AB")
    for name, data in (("a.req", done), ("b.req", refused), ("junk.req", b"junk")):
        held = processing_key("ACME", name)
        inbox.put(held, data)
        intake.handle(Arrival(area="ACME", name=name, key=held, data=data,
                              sha256=hashlib.sha256(data).hexdigest(), size=len(data)))
    for name in ("w1.req", "w2.req", ".hidden", "upload.part"):
        inbox.put(f"ACME/{name}", b"x")
    old = (NOW - timedelta(minutes=10)).timestamp()
    os.utime(inbox.path_for("ACME/w1.req"), (old, old))
    inbox.put(processing_key("ACME", "held.req"), b"x")
    with session_scope(engine) as session:  # one refusal finished two hours ago
        session.execute(update(JOB).where(JOB.c.source == processing_key("ACME", "junk.req"))
                        .values(finished_at=NOW - timedelta(hours=2)))

    acme, beta = customer_status(engine, inbox, now=NOW)
    assert (acme.code, acme.waiting, acme.in_hand) == ("ACME", 2, 1)
    assert acme.oldest_waiting_seconds is not None and 599 <= acme.oldest_waiting_seconds <= 601
    assert acme.finished["hour"].done == 1
    assert acme.finished["hour"].rejected == {"no_seats_left": 1}
    assert acme.finished["day"].rejected == {"no_seats_left": 1, "malformed": 1}
    assert (beta.waiting, beta.in_hand, beta.finished["day"].done) == (0, 0, 0)
    assert beta.oldest_waiting_seconds is None
    [only] = customer_status(engine, inbox, now=NOW, customers=["BETA"])
    assert only.code == "BETA"
