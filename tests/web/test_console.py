"""The vendor console on the real app: sign-in, CSRF, devices tab, refresh, release."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from airlock_sdk.device import Device
from models.db import reading, session_scope
from models.tables import AUDIT, OPERATOR_SESSION
from pipelines.operators import add_operator
from tests.factories import license_info
from tests.web.conftest import Served

PASSWORD = "correct horse battery"


def _operator(served: Served, name: str = "alice") -> None:
    with session_scope(served.engine) as session:
        add_operator(session=session, name=name, password=PASSWORD)


def _sign_in(client: httpx.Client, name: str = "alice", password: str = PASSWORD
             ) -> httpx.Response:
    form = client.get("/console/login")
    token = re.search(r'name="token" value="([^"]+)"', form.text)
    assert token is not None
    return client.post("/console/login", data={"name": name, "password": password,
                                               "token": token[1]})


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None
    return found[1]


def _activated(served: Served, tmp_path: Path, key: str, hardware_id: str = "HW-1") -> Device:
    device = Device.init(tmp_path / hardware_id, hardware_id, served.keyring.public_bundle())
    with served.client(served.token()) as api:
        answer = api.post("/api/v1/files", params={"name": "a.req"},
                          content=device.request_activation(product="pro",
                                                            license_key=key)).json()
        device.load(api.get(answer["results"][0]["url"]).content)
    return device


@pytest.fixture
def console(served: Served) -> httpx.Client:
    _operator(served)
    client = served.client()
    assert _sign_in(client).status_code == 303
    return client


def test_sign_in_is_required_and_wrong_passwords_are_refused(served: Served) -> None:
    _operator(served)
    with served.client() as client:
        anonymous = client.get("/console/licenses")
        assert anonymous.status_code == 303
        assert anonymous.headers["location"] == "/console/login"
        assert client.post("/console/jobs/1/retry", data={"csrf": "x"}).status_code == 401
        assert _sign_in(client, password="wrong password!").status_code == 401
        assert _sign_in(client, name="mallory").status_code == 401
        stale = client.post("/console/login", data={"name": "alice", "password": PASSWORD,
                                                    "token": "forged"})
        assert stale.status_code == 403
        signed = _sign_in(client)
        assert signed.status_code == 303
        cookie = signed.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert client.get("/console/licenses").status_code == 200
        page = client.get("/console/licenses").text
        client.post("/console/logout", data={"csrf": _csrf(page)})
        assert client.get("/console/licenses").status_code == 303
    with reading(served.engine) as conn:
        assert conn.execute(select(OPERATOR_SESSION.c.id)).first() is None


def test_devices_tab_downloads_a_refresh_file_the_device_loads(
        served: Served, console: httpx.Client, tmp_path: Path) -> None:
    key = served.license(max_activations=2)
    device = _activated(served, tmp_path, key)
    found = console.get("/console/licenses", params={"q": key[:5]}).text
    assert key in found
    page = console.get(f"/console/licenses/{key}").text
    assert 'id="devices"' in page and "HW-1" in page and "Download license refresh file" in page
    change = console.post(f"/console/licenses/{key}/entitlements",
                          data={"csrf": _csrf(page), "extend_days": "30",
                                "feature": "export:consumption:50"})
    assert change.status_code == 303
    refresh = console.post(f"/console/licenses/{key}/devices/HW-1/refresh",
                           data={"csrf": _csrf(page)})
    assert refresh.status_code == 200, refresh.text
    assert 'filename="license_refresh.lic"' in refresh.headers["content-disposition"]
    entitlements = device.load(refresh.content)
    assert "export" in entitlements.features
    with reading(served.engine) as conn:
        actors = set(conn.execute(select(AUDIT.c.actor).where(
            AUDIT.c.action == "license.update")).scalars())
    assert actors == {"operator:alice"}


def test_release_frees_the_seat_and_is_audited(served: Served, console: httpx.Client,
                                               tmp_path: Path) -> None:
    key = served.license(max_activations=1)
    _activated(served, tmp_path, key)
    page = console.get(f"/console/licenses/{key}").text
    forged = console.post(f"/console/licenses/{key}/devices/HW-1/release",
                          data={"csrf": "not-the-token"})
    assert forged.status_code == 403
    assert license_info(served.engine, key)["active_devices"] == 1
    released = console.post(f"/console/licenses/{key}/devices/HW-1/release",
                            data={"csrf": _csrf(page)})
    assert released.status_code == 303
    assert license_info(served.engine, key)["active_devices"] == 0
    with reading(served.engine) as conn:
        (actor,) = conn.execute(select(AUDIT.c.actor).where(
            AUDIT.c.action == "device.release")).scalars()
    assert actor == "operator:alice"
    again = console.post(f"/console/licenses/{key}/devices/HW-1/release",
                         data={"csrf": _csrf(page)}, follow_redirects=True)
    assert "not active" in again.text


def test_jobs_and_status_views(served: Served, console: httpx.Client, tmp_path: Path) -> None:
    key = served.license(max_activations=1)
    _activated(served, tmp_path, key)
    jobs = console.get("/console/jobs", params={"status": "done"}).text
    (job_id,) = re.findall(r'href="/console/jobs/(\d+)"', jobs)
    job = console.get(f"/console/jobs/{job_id}").text
    assert "activation_request" in job
    assert console.get("/console/jobs/999999").status_code == 404
    status = console.get("/console/status").text
    assert '<svg id="hourly-chart"' in status
    assert re.search(r'<rect class="bar done"[^>]*><title>[^<]*: 1 done', status)
    assert "ACME" in status


def test_a_note_in_a_crafted_link_is_not_shown(served: Served, console: httpx.Client,
                                               tmp_path: Path) -> None:
    # Someone else's link to the console carries text the page would show under its
    # own address ("call this number"); only notes this session's actions signed show.
    key = served.license(max_activations=1)
    _activated(served, tmp_path, key)
    crafted = "Your license was revoked: call +1 555 0100"
    for path in (f"/console/licenses/{key}", "/console/jobs/1"):
        shown = console.get(path, params={"message": crafted, "error": crafted})
        assert shown.status_code == 200
        assert crafted not in shown.text and 'id="message"' not in shown.text
        forged = console.get(path, params={"message": crafted, "sig": "0" * 64}).text
        assert crafted not in forged
    page = console.get(f"/console/licenses/{key}").text
    released = console.post(f"/console/licenses/{key}/devices/HW-1/release",
                            data={"csrf": _csrf(page)})
    assert released.status_code == 303
    location = released.headers["location"]
    shown = console.get(location).text
    assert "Released HW-1: its seat is free." in shown
    # The same signed link in another operator's session shows nothing either.
    _operator(served, "bob")
    with served.client() as other:
        assert _sign_in(other, "bob").status_code == 303
        assert "Released HW-1" not in other.get(location).text
    tampered = location.replace("Released", "Revoked")
    assert "Revoked" not in console.get(tampered).text
    # Signed for one page, the note shows on no other.
    other_key = served.license(max_activations=1)
    moved = location.replace(f"/licenses/{key}", f"/licenses/{other_key}")
    assert moved != location and "Released HW-1" not in console.get(moved).text
