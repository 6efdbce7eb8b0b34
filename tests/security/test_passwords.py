"""Passwords resist guessing: lockout, one answer for every failure, argon2id, no oracle."""

from __future__ import annotations

import base64
import hashlib
import sqlite3
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from airlock_sdk.envelope import open_envelope
from models import LicenseUser, LoginFailure
from models.db import session_scope
from pipelines import catalog, process
from pipelines.errors import MESSAGES, RejectReason
from pipelines.ledger import Submission
from pipelines.passwords import check_password
from pipelines.process import process_many
from tests.factories import WireDevice, vendor
from tests.security.conftest import Vendor, refused

RIGHT, WRONG = "correct horse", "wrong horse"
ANA = "ana@acme.example"


def _user_license(airlock: Vendor, customer: str = "ACME", email: str = ANA) -> str:
    return airlock.license(customer_code=customer, users={email: RIGHT}, max_activations=5)


def _sign_in(airlock: Vendor, password: str, *, tenant: str = "ACME", email: str = ANA,
             hardware_id: str = "HW-1"):  # noqa: ANN202
    device = WireDevice(airlock.keyring, hardware_id)
    return airlock.send(device.activation(email=email, password=password), tenant)


def _failures(airlock: Vendor, tenant: str = "ACME") -> int:
    with session_scope(airlock.engine) as session:
        return session.execute(select(func.count()).select_from(LoginFailure).where(
            LoginFailure.tenant == tenant)).scalar_one()


def test_lockout_after_failures_then_unlock(airlock: Vendor) -> None:
    key = _user_license(airlock)
    for _ in range(3):
        refused(_sign_in(airlock, WRONG), "bad_credentials")
    locked = _sign_in(airlock, RIGHT)  # the right password, too late
    refused(locked, "locked_out", "bad_credentials")
    assert airlock.info(key)["active_devices"] == 0
    assert _failures(airlock) == 3
    assert len(airlock.audit("login.failure")) == 3
    assert len(airlock.audit("login.lockout")) == 1
    assert len(airlock.audit("login.locked_out")) == 1
    with session_scope(airlock.engine) as session:
        assert catalog.unlock_user(session=session, key=key, email=ANA.upper()) == 3
    assert len(airlock.audit("login.unlock")) == 1
    assert _sign_in(airlock, RIGHT).accepted
    assert airlock.info(key)["active_devices"] == 1


def test_lockout_ends_when_the_window_passes(airlock: Vendor) -> None:
    key = _user_license(airlock)
    for _ in range(3):
        refused(_sign_in(airlock, WRONG), "bad_credentials")
    refused(_sign_in(airlock, RIGHT), "locked_out", "bad_credentials")
    airlock.now += airlock.lockout.window + timedelta(seconds=1)
    assert _sign_in(airlock, RIGHT).accepted
    assert airlock.info(key)["active_devices"] == 1


def test_a_known_password_on_one_license_does_not_reset_guesses_on_another(
        airlock: Vendor) -> None:
    """The same email on a cheap license (password known) and a dear one (guessed)."""
    cheap = airlock.license(product_code="lite", users={ANA: RIGHT}, max_activations=50)
    dear = airlock.license(users={ANA: "the dear one"}, max_activations=5)
    device = WireDevice(airlock.keyring, "HW-1")
    for n in range(4):
        for _ in range(2):
            _sign_in(airlock, f"guess {n}")  # against "pro"
        known = device.activation(email=ANA, password=RIGHT, product="lite")
        airlock.send(known)
    refused(_sign_in(airlock, "the dear one"), "locked_out", "bad_credentials")
    assert airlock.info(dear)["active_devices"] == 0
    assert airlock.info(cheap)["active_devices"] <= 1


def test_concurrent_chunks_share_one_allowance(airlock: Vendor) -> None:
    """Two workers guessing at once: on PostgreSQL the count is locked per user."""
    _user_license(airlock)
    files = [[WireDevice(airlock.keyring, f"HW-{w}{n}").activation(email=ANA,
                                                                  password=f"w{w}-{n}")
              for n in range(3)] for w in range(2)]
    barrier = threading.Barrier(2)
    results: list[list[str]] = []

    def worker(batch: list[bytes]) -> None:
        barrier.wait()
        outcomes = process_many([Submission(tenant="ACME", data=d) for d in batch],
                                engine=airlock.engine, processor=airlock.processor)
        results.append([o.reason or "" for o in outcomes])

    threads = [threading.Thread(target=worker, args=(batch,)) for batch in files]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    reasons = sorted(r for chunk in results for r in chunk)
    assert reasons == ["bad_credentials"] * 3 + ["locked_out"] * 3
    assert _failures(airlock) == 3


def test_every_failure_looks_the_same_and_costs_one_verification(
        airlock: Vendor, monkeypatch: pytest.MonkeyPatch) -> None:
    _user_license(airlock)
    _user_license(airlock, customer="BETA", email="bob@beta.example")
    calls: list[str | None] = []

    def counting(password: str, stored: str | None):  # noqa: ANN202
        calls.append(stored)
        return check_password(password, stored)

    monkeypatch.setattr(process, "check_password", counting)
    cases = {
        "unknown user": dict(email="nobody@acme.example", password=RIGHT),
        "wrong password": dict(email=ANA, password=WRONG),
        "another tenant's user, right password": dict(email="bob@beta.example",
                                                      password=RIGHT),
    }
    reports = set()
    for name, auth in cases.items():
        calls.clear()
        outcome = _sign_in(airlock, auth["password"], email=auth["email"])
        assert len(calls) == 1, name  # one argon2 verification, dummy or real
        assert outcome.public_reason == "bad_credentials", name
        reports.add(_told(airlock, outcome))
    for _ in range(2):
        _sign_in(airlock, WRONG)
    calls.clear()
    locked = _sign_in(airlock, RIGHT)
    assert len(calls) == 1  # verified before the lockout is looked at: the same work
    refused(locked, "locked_out", "bad_credentials")
    reports.add(_told(airlock, locked))
    assert reports == {("bad_credentials", MESSAGES[RejectReason.BAD_CREDENTIALS])}


def _told(airlock: Vendor, outcome) -> tuple[str, str]:  # noqa: ANN001
    """(reason, message) of the signed rejection report the sender gets."""
    payload = open_envelope(outcome.outputs[0][1],
                            resolve_verify_key=airlock.keyring.vendor_verify_key).payload
    return payload["reason"], payload["message"]


def test_guessing_from_another_tenant_learns_nothing_and_locks_nothing(airlock: Vendor) -> None:
    key = _user_license(airlock)
    right_from_beta = _sign_in(airlock, RIGHT, tenant="BETA")
    wrong_from_beta = _sign_in(airlock, WRONG, tenant="BETA", hardware_id="HW-2")
    assert right_from_beta.public_reason == wrong_from_beta.public_reason == "bad_credentials"
    assert right_from_beta.reason == wrong_from_beta.reason == "bad_credentials"
    for n in range(5):
        _sign_in(airlock, WRONG, tenant="BETA", hardware_id=f"HW-B{n}")
    assert _failures(airlock, "ACME") == 0
    assert _sign_in(airlock, RIGHT).accepted  # ACME's own area is not locked
    assert airlock.info(key)["active_devices"] == 1


def test_old_scrypt_hashes_verify_and_are_upgraded(airlock: Vendor) -> None:
    key = _user_license(airlock)
    salt = b"0123456789abcdef"
    digest = hashlib.scrypt(RIGHT.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    old = "$".join(["scrypt", "16384", "8", "1", base64.b64encode(salt).decode(),
                    base64.b64encode(digest).decode()])
    with session_scope(airlock.engine) as session:
        session.execute(update(LicenseUser).values(password_hash=old))
    refused(_sign_in(airlock, WRONG), "bad_credentials")
    assert _stored_hash(airlock) == old  # a failure upgrades nothing
    assert _sign_in(airlock, RIGHT).accepted
    upgraded = _stored_hash(airlock)
    assert upgraded.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert check_password(RIGHT, upgraded).ok
    assert airlock.info(key)["active_devices"] == 1


def _stored_hash(airlock: Vendor) -> str:
    with session_scope(airlock.engine) as session:
        return session.execute(select(LicenseUser.password_hash)).scalar_one()


def test_passwords_are_verified_outside_the_write_transaction(
        sqlite_engine, keyring, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """SQLite's write lock (one writer for every process) is free while argon2 runs."""
    vendor(sqlite_engine)
    airlock = Vendor(engine=sqlite_engine, keyring=keyring, folder=tmp_path)
    _user_license(airlock)
    database = airlock.engine.url.database
    free: list[bool] = []

    def probing(password: str, stored: str | None):  # noqa: ANN202
        other = sqlite3.connect(str(database), timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # fails at once if a writer holds the lock
            other.execute("ROLLBACK")
            free.append(True)
        except sqlite3.OperationalError:
            free.append(False)
        finally:
            other.close()
        return check_password(password, stored)

    monkeypatch.setattr(process, "check_password", probing)
    assert _sign_in(airlock, RIGHT).accepted
    assert free == [True]
