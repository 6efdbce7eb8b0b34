"""The public portal on the real app: upload a device's file, download what it loads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import func, select

from airlock_sdk.device import Device
from models.db import reading
from models.tables import DEVICE, JOB
from tests.factories import license_info
from tests.web.conftest import Served, serving


def _sdk_device(served: Served, tmp_path: Path, hardware_id: str = "HW-1") -> Device:
    return Device.init(tmp_path / hardware_id, hardware_id, served.keyring.public_bundle())


def _links(page: str) -> list[str]:
    return re.findall(r'href="(/portal/results/[^"]+)"', page)


def _jobs(served: Served) -> int:
    with reading(served.engine) as conn:
        return int(conn.execute(select(func.count()).select_from(JOB)).scalar() or 0)


def test_upload_a_file_and_the_device_loads_the_answer(served: Served, tmp_path: Path) -> None:
    key = served.license(max_activations=1)
    device = _sdk_device(served, tmp_path)
    request = device.request_activation(product="pro", license_key=key)
    with served.client() as client:
        form = client.get("/")
        assert form.status_code == 200 and 'enctype="multipart/form-data"' in form.text
        page = client.post("/", files={"file": ("activation.req", request)})
        assert page.status_code == 200, page.text
        assert 'id="outcome" class="accepted"' in page.text
        (link,) = _links(page.text)
        download = client.get(link)
    assert download.status_code == 200
    assert 'filename="license.lic"' in download.headers["content-disposition"]
    entitlements = device.load(download.content)
    assert entitlements.license_key == key
    assert license_info(served.engine, key)["active_devices"] == 1


def test_pasted_text_works_like_a_file(served: Served, tmp_path: Path) -> None:
    key = served.license()
    request = _sdk_device(served, tmp_path).request_activation(product="pro", license_key=key)
    with served.client() as client:
        page = client.post("/", data={"text": request.decode()})
    assert 'class="accepted"' in page.text
    assert license_info(served.engine, key)["active_devices"] == 1


def test_forged_and_unknown_files_are_refused_with_the_public_sentence(
        served: Served, tmp_path: Path) -> None:
    key = served.license()
    request = bytearray(served.device().activation(license_key=key))
    middle = len(request) // 2
    request[middle] = ord("A") if request[middle] != ord("A") else ord("B")
    with served.client() as client:
        tampered = client.post("/", files={"file": ("a.req", bytes(request))})
        unknown = client.post("/", files={"file": (
            "b.req", served.device("HW-2").activation(license_key="NOPE-NOPE"))})
        empty = client.post("/", files={"file": ("c.req", b"")})
        garbage = client.post("/", files={"file": ("d.req", b"\x00" * 100)})
    assert tampered.status_code == 422 and 'class="refused"' in tampered.text
    assert re.search(r'id="reason">(bad_signature|malformed)<', tampered.text)
    assert unknown.status_code == 422 and 'id="reason">unknown_license<' in unknown.text
    assert "another customer" not in unknown.text.lower()
    assert empty.status_code == 400
    assert garbage.status_code == 422
    assert _jobs(served) == 0
    with reading(served.engine) as conn:
        assert conn.execute(select(func.count()).select_from(DEVICE)).scalar() == 0


def test_download_links_are_signed_and_scoped(served: Served, tmp_path: Path) -> None:
    key = served.license()
    request = _sdk_device(served, tmp_path).request_activation(product="pro", license_key=key)
    with served.client() as client:
        (link,) = _links(client.post("/", files={"file": ("a.req", request)}).text)
        job, expires, signature, name = link.split("/")[3:7]
        forged = [
            f"/portal/results/{job}/{expires}/{'0' * 32}/{name}",
            f"/portal/results/{int(job) + 1}/{expires}/{signature}/{name}",
            f"/portal/results/{job}/{int(expires) + 1}/{signature}/{name}",
            f"/portal/results/{job}/1/{served.services.links.sign(int(job), name, 1)}/{name}",
        ]
        assert client.get(link).status_code == 200
        assert [client.get(url).status_code for url in forged] == [404] * 4


def test_oversized_form_is_refused_while_streaming(served: Served) -> None:
    big = b"x" * (served.settings.max_file_bytes + 128 * 1024)
    with served.client() as client:
        response = client.post("/", files={"file": ("big.req", big)})
    assert response.status_code == 413
    assert _jobs(served) == 0


def test_security_headers_and_rate_limit(tmp_path: Path) -> None:
    with serving(_settings(tmp_path, portal_uploads_per_minute=2)) as served, \
            served.client() as client:
        page = client.get("/")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["x-frame-options"] == "DENY"
        codes = [client.post("/", files={"file": ("a.req", b"junk")}).status_code
                 for _ in range(3)]
    assert codes == [422, 422, 429]


def test_the_public_portal_can_be_turned_off(tmp_path: Path) -> None:
    with serving(_settings(tmp_path, portal_public=False)) as served, \
            served.client() as client:
        assert client.get("/").status_code == 404
        assert client.post("/", files={"file": ("a.req", b"x")}).status_code == 404
        assert client.get("/api/v1/jobs/1").status_code == 401  # the API stays


def test_white_label_settings_and_template_override(tmp_path: Path) -> None:
    templates = tmp_path / "brand"
    templates.mkdir()
    (templates / "portal.html").write_text(
        '{% extends "base.html" %}{% block main %}<p id="custom">Our own page</p>'
        '{% endblock %}')
    settings = _settings(tmp_path, portal_title="Contoso Licensing", portal_accent="#c0392b",
                         portal_support="help@contoso.example", portal_footer="Contoso Ltd",
                         portal_templates=templates)
    with serving(settings) as served, served.client() as client:
        page = client.get("/").text
        theme = client.get("/theme.css").text
    assert "<title>Contoso Licensing</title>" in page
    assert 'id="custom">Our own page' in page
    assert "help@contoso.example" in page and "Contoso Ltd" in page
    assert "--accent: #c0392b" in theme


def test_a_bad_accent_colour_is_a_settings_error() -> None:
    from config.settings import SettingsError, load_settings

    try:
        load_settings(portal_accent="red; } body { display:none")
    except SettingsError as exc:
        assert "AIRLOCK_PORTAL_ACCENT" in str(exc)
    else:
        raise AssertionError("accepted a style sheet as a colour")


def _uploads_from(client, *addresses: str) -> list[int]:  # type: ignore[no-untyped-def]
    return [client.post("/", files={"file": ("a.req", b"junk")},
                        headers={"X-Forwarded-For": address}).status_code
            for address in addresses]


def test_the_client_address_comes_from_a_trusted_proxy_only(tmp_path: Path) -> None:
    # Behind a proxy every request comes from the proxy: one client would spend
    # everyone's allowance. The proxy's word is taken when it is listed, never otherwise
    # (a client could then pick a fresh address for every try).
    proxied = _settings(tmp_path / "proxied", portal_uploads_per_minute=1,
                        trusted_proxies="127.0.0.0/8, ::1")
    with serving(proxied) as served, served.client() as client:
        assert _uploads_from(client, "203.0.113.5", "203.0.113.5", "198.51.100.7") == \
            [422, 429, 422]
        login = client.get("/console/login", headers={"X-Forwarded-Proto": "https"})
        assert "secure" in login.headers["set-cookie"].lower()
    direct = _settings(tmp_path / "direct", portal_uploads_per_minute=1)
    with serving(direct) as served, served.client() as client:
        assert _uploads_from(client, "203.0.113.5", "198.51.100.7") == [422, 429]
        login = client.get("/console/login", headers={"X-Forwarded-Proto": "https"})
        assert "secure" not in login.headers["set-cookie"].lower()


def test_a_trusted_proxy_that_is_not_an_address_is_a_settings_error() -> None:
    from config.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="AIRLOCK_TRUSTED_PROXIES"):
        load_settings(trusted_proxies="10.0.0.0/8, *")
    with pytest.raises(SettingsError, match="host bits"):
        load_settings(trusted_proxies="10.0.0.1/8")
    assert load_settings(trusted_proxies=" 10.0.0.0/8 ,::1,").trusted_proxies == "10.0.0.0/8,::1"


def _settings(tmp_path: Path, **overrides: object):  # type: ignore[no-untyped-def]
    from config.settings import Settings

    return Settings(home=tmp_path / "var", **overrides)  # type: ignore[arg-type]



def test_a_user_activation_and_a_deactivation_find_their_customer(
        served: Served, tmp_path: Path) -> None:
    key = served.license(max_activations=1, users={"ana@beta.example": "s3cret-pass"},
                         customer_code="BETA")
    device = _sdk_device(served, tmp_path)
    request = device.request_activation(product="pro", email="ana@beta.example",
                                        password="s3cret-pass")
    with served.client() as client:
        page = client.post("/", files={"file": ("user.req", request)})
        assert 'class="accepted"' in page.text, page.text
        (link,) = _links(page.text)
        device.load(client.get(link).content)
        assert license_info(served.engine, key)["active_devices"] == 1
        deactivation = device.deactivate()
        off = client.post("/", files={"file": ("off.req", deactivation)})
    assert 'class="accepted"' in off.text, off.text
    assert license_info(served.engine, key)["active_devices"] == 0
    with reading(served.engine) as conn:
        tenants = set(conn.execute(select(JOB.c.tenant)).scalars())
    assert tenants == {"BETA"}  # the license's owner, from the verified file


def test_a_user_known_to_two_customers_is_refused_like_a_wrong_password(
        served: Served, tmp_path: Path) -> None:
    for customer in ("ACME", "BETA"):
        served.license(users={"same@example.com": "pass-" + customer}, customer_code=customer)
    request = _sdk_device(served, tmp_path).request_activation(
        product="pro", email="same@example.com", password="pass-ACME")
    wrong = _sdk_device(served, tmp_path, "HW-2").request_activation(
        product="pro", email="nobody@example.com", password="x")
    with served.client() as client:
        ambiguous = client.post("/", files={"file": ("a.req", request)})
        unknown = client.post("/", files={"file": ("b.req", wrong)})
    for page_ in (ambiguous, unknown):
        assert page_.status_code == 422 and 'id="reason">bad_credentials<' in page_.text
    assert _jobs(served) == 0


def test_a_logo_file_is_served_and_a_logo_url_is_allowed_by_the_policy(tmp_path: Path) -> None:
    png = tmp_path / "logo.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16)
    with serving(_settings(tmp_path, portal_logo=str(png))) as served, \
            served.client() as client:
        page = client.get("/").text
        logo = client.get("/brand/logo")
    assert 'src="/brand/logo"' in page
    assert logo.status_code == 200 and logo.headers["content-type"] == "image/png"
    assert logo.content == png.read_bytes()
    with serving(_settings(tmp_path / "b", portal_logo="https://cdn.contoso.example/l.svg")
                 ) as served, served.client() as client:
        page = client.get("/")
        assert client.get("/brand/logo").status_code == 404
    assert 'src="https://cdn.contoso.example/l.svg"' in page.text
    assert "img-src 'self' data: https://cdn.contoso.example;" in \
        page.headers["content-security-policy"]


def test_a_portal_upload_is_one_file_whatever_its_name(served: Served, tmp_path: Path) -> None:
    key = served.license()
    request = _sdk_device(served, tmp_path).request_activation(product="pro", license_key=key)
    with served.client() as client:
        page_ = client.post("/", files={"file": ("site.zip", request)})
    assert page_.status_code == 200 and 'class="accepted"' in page_.text
    inbox = served.settings.home / "inbox"
    assert list(inbox.glob("_processed/ACME/upload-*-portal.req"))
    assert not list(inbox.glob("_batches/**/*"))


def test_a_wrong_password_reads_the_same_for_a_known_and_an_unknown_user(
        served: Served, tmp_path: Path) -> None:
    served.license(users={"ana@acme.example": "right-password"})
    known = _sdk_device(served, tmp_path, "HW-1").request_activation(
        product="pro", email="ana@acme.example", password="wrong")
    unknown = _sdk_device(served, tmp_path, "HW-2").request_activation(
        product="pro", email="nobody@acme.example", password="wrong")
    with served.client() as client:
        pages = [client.post("/", files={"file": ("a.req", data)}) for data in (known, unknown)]
    assert [p.status_code for p in pages] == [422, 422]
    for answer in pages:
        assert 'id="reason">bad_credentials<' in answer.text
        assert _links(answer.text) == []
    shown = [re.sub(r"\s+", " ", re.search(r'<p id="message">(.*?)</p>', p.text, re.S)[1])  # type: ignore[index]
             for p in pages]
    assert shown[0] == shown[1]
