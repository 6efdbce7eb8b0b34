"""The customer API against the real app on uvicorn: upload, answer, tenancy, limits."""

from __future__ import annotations

import io
import json
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from sqlalchemy import func, select

from airlock_sdk.envelope import Kind, open_envelope
from models.db import reading, session_scope
from models.tables import DEVICE, IDEMPOTENT, JOB
from pipelines.tokens import revoke_token
from tests.factories import NOW, license_info
from tests.web.conftest import Served


def _active_devices(served: Served, key: str) -> int:
    return int(license_info(served.engine, key)["active_devices"])


def _upload(client: object, data: bytes, name: str = "device.req", **headers: str) -> object:
    return client.post("/api/v1/files", params={"name": name}, content=data,  # type: ignore[attr-defined]
                       headers={"Content-Type": "application/octet-stream", **headers})


def test_upload_answers_with_a_license_the_device_loads(served: Served) -> None:
    key = served.license(max_activations=1)
    device = served.device()
    with served.client(served.token()) as client:
        response = _upload(client, device.activation(license_key=key))
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["type"] == "job" and answer["final"] and answer["accepted"]
        assert answer["kind"] == "activation_request"
        (result,) = answer["results"]
        download = client.get(result["url"])
        assert download.status_code == 200
        assert "attachment" in download.headers["content-disposition"]
        again = client.get(f"/api/v1/jobs/{answer['id']}").json()
    lic = open_envelope(download.content,
                        resolve_verify_key=served.keyring.any_verify_key)
    assert lic.kind is Kind.LICENSE
    assert lic.payload["license"]["key"] == key
    assert again["status"] == "done" and again["results"] == answer["results"]
    assert _active_devices(served, key) == 1
    # archived like any arrival: nothing left in hand
    inbox = served.settings.home / "inbox"
    assert not list((inbox / "_processing").rglob("*.req"))
    assert len(list((inbox / "_processed" / "ACME").glob("upload-*-device.req"))) == 1


def test_a_refused_file_gets_its_public_reason_and_rejection(served: Served) -> None:
    key = served.license(max_activations=1)
    with served.client(served.token()) as client:
        first = _upload(client, served.device("HW-1").activation(license_key=key)).json()
        second = _upload(client, served.device("HW-2").activation(license_key=key)).json()
    assert first["accepted"]
    assert second["final"] and not second["accepted"]
    assert second["reason"] == "no_seats_left"
    assert second["message"].startswith("Every seat")
    assert [r["name"] for r in second["results"]][0].endswith(".rejection")
    assert _active_devices(served, key) == 1


def test_another_customers_jobs_and_results_are_404(served: Served) -> None:
    key = served.license(max_activations=2)
    with served.client(served.token("ACME")) as acme, served.client(served.token("BETA")) as beta:
        answer = _upload(acme, served.device().activation(license_key=key)).json()
        job, url = answer["id"], answer["results"][0]["url"]
        assert beta.get(f"/api/v1/jobs/{job}").status_code == 404
        assert beta.get(url).status_code == 404
        missing = acme.get(f"/api/v1/jobs/{job + 1000}")
        assert missing.status_code == 404
        assert beta.get(f"/api/v1/jobs/{job}").json() == missing.json()  # no difference
        # BETA sending ACME's key: refused as an unknown license, nothing bound
        other = _upload(beta, served.device("HW-9").activation(license_key=key)).json()
        assert other["reason"] == "unknown_license"
        outbox = beta.get("/api/v1/outbox", params={"since": "2000-01-01T00:00:00Z"}).json()
    assert [entry["job_id"] for entry in outbox] == [other["id"]]
    assert _active_devices(served, key) == 1


def test_tokens_unknown_malformed_and_revoked_are_refused(served: Served) -> None:
    token = served.token()
    data = served.device().activation(license_key=served.license())
    for bad in (None, "alk_x", token[:-2] + "xx", "Basic abc", token + "x"):
        with served.client(bad) as client:
            response = _upload(client, data)
            assert response.status_code == 401, bad
            assert response.headers["www-authenticate"] == "Bearer"
    with session_scope(served.engine) as session:
        assert revoke_token(session=session, prefix=token.split("_")[1], now=NOW)
    with served.client(token) as client:
        assert _upload(client, data).status_code == 401
        assert client.get("/api/v1/jobs/1").status_code == 401
    with reading(served.engine) as conn:
        assert conn.execute(select(func.count()).select_from(JOB)).scalar() == 0


def test_idempotent_retry_returns_the_first_answer(served: Served) -> None:
    key = served.license(max_activations=5)
    data = served.device().activation(license_key=key)
    with served.client(served.token()) as client:
        first = _upload(client, data, **{"Idempotency-Key": "k-1"})
        retry = _upload(client, data, **{"Idempotency-Key": "k-1"})
        other = _upload(client, served.device("HW-2").activation(license_key=key),
                        **{"Idempotency-Key": "k-1"})
    assert first.status_code == retry.status_code == 200
    assert retry.json() == first.json()
    assert other.status_code == 409 and other.json()["reason"] == \
        "idempotency_key_reused"
    assert _active_devices(served, key) == 1
    with reading(served.engine) as conn:
        assert conn.execute(select(func.count()).select_from(IDEMPOTENT)).scalar() == 1
        assert conn.execute(select(func.count()).select_from(DEVICE)).scalar() == 1


def test_a_key_raced_by_two_different_files_processes_only_one(served: Served) -> None:
    key = served.license(max_activations=10)
    files = [served.device(f"HW-{n}").activation(license_key=key) for n in range(6)]
    token = served.token()

    def send(data: bytes) -> int:
        with served.client(token) as client:
            return int(_upload(client, data, **{"Idempotency-Key": "race"}).status_code)

    with ThreadPoolExecutor(len(files)) as pool:
        codes = sorted(pool.map(send, files))
    assert codes == [200] + [409] * 5
    assert _active_devices(served, key) == 1
    with reading(served.engine) as conn:
        assert conn.execute(select(func.count()).select_from(JOB)).scalar() == 1


def test_oversized_upload_is_refused_while_streaming(served: Served) -> None:
    limit = served.settings.max_file_bytes
    sent = 0

    def chunks():  # no Content-Length: the server must count as it reads
        nonlocal sent
        for _ in range(64):
            sent += 64 * 1024
            yield b"x" * (64 * 1024)

    with served.client(served.token()) as client:
        response = client.post("/api/v1/files", params={"name": "big.req"}, content=chunks())
        declared = _upload(client, b"x" * (limit + 1))
    assert response.status_code == 413 and response.json()["reason"] == "too_large"
    assert declared.status_code == 413
    with reading(served.engine) as conn:
        assert conn.execute(select(func.count()).select_from(JOB)).scalar() == 0
    assert not list((served.settings.home / "inbox").rglob("upload-*"))


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_bulk_archive_upload_gives_a_batch_and_its_report(served: Served) -> None:
    key = served.license(max_activations=3)
    members = {f"dev{n}.req": served.device(f"HW-{n}").activation(license_key=key)
               for n in range(4)}
    with served.client(served.token()) as client:
        response = _upload(client, _zip(members), name="site.zip")
        assert response.status_code in (200, 202), response.text
        batch = response.json()
        assert batch["type"] == "batch"
        deadline = time.monotonic() + 30
        while not batch["final"] and time.monotonic() < deadline:
            time.sleep(0.02)
            batch = client.get(f"/api/v1/batches/{batch['id']}").json()
        assert batch["final"], batch
        assert batch["total"] == 4 and batch["finished"] == 4
        report = next(r for r in batch["results"] if r["name"].endswith(".json"))
        body = json.loads(client.get(report["url"]).content)
    assert _active_devices(served, key) == 3
    assert body["member_count"] == 4
    assert sorted(m["status"] for m in body["members"]) == ["done", "done", "done", "rejected"]
    assert [m["reason"] for m in body["members"] if m["status"] == "rejected"] == \
        ["no_seats_left"]


def test_outbox_lists_results_since_a_time(served: Served) -> None:
    key = served.license(max_activations=2)
    with served.client(served.token()) as client:
        answer = _upload(client, served.device().activation(license_key=key)).json()
        finished = client.get(f"/api/v1/jobs/{answer['id']}").json()["finished_at"]
        listed = client.get("/api/v1/outbox", params={"since": finished}).json()
        later = client.get("/api/v1/outbox",
                           params={"since": (NOW + timedelta(days=3650)).isoformat()}).json()
        naive = client.get("/api/v1/outbox", params={"since": "2026-01-01T00:00:00"})
    assert [entry["job_id"] for entry in listed] == [answer["id"]]
    assert later == []
    assert naive.status_code == 422


def test_hostile_names_times_and_links_get_clear_refusals(served: Served) -> None:
    limit = served.settings.max_file_bytes
    with served.client(served.token()) as client:
        # ".zip" loses its dot when stored: it is a single file, held to the file limit
        dotted = _upload(client, b"x" * (limit + 1), name=".zip")
        traversal = _upload(client, b"junk", name="../../etc/passwd").json()
        far = client.get("/api/v1/outbox", params={"since": "9999-12-31T23:59:59-23:59"})
        early = client.get("/api/v1/outbox", params={"since": "0001-01-01T00:00:00+23:59"})
    assert dotted.status_code == 413
    assert traversal["final"] and traversal["reason"] == "malformed"
    assert far.status_code == 422 and early.status_code == 422
    assert far.json()["reason"] == "invalid_request"
    assert list((served.settings.home / "inbox" / "_rejected" / "ACME").glob("upload-*-passwd"))
    with served.client() as anonymous:
        forged = anonymous.get("/portal/results/1/99999999999/%C3%A9/license.lic")
    assert forged.status_code == 404
