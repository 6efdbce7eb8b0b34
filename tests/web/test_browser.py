"""The portal and the console in a real browser: Debian's Chromium driven by Playwright.

Screenshots are kept in ``test-artifacts/`` (or AIRLOCK_TEST_ARTIFACTS) for a person to
look at; the assertions are on the page and on what the device makes of the downloads.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airlock_sdk.device import Device
from models.db import session_scope
from pipelines.operators import add_operator
from tests.conftest import service_unavailable
from tests.factories import license_info
from tests.web.conftest import Served, serving

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("AIRLOCK_TEST_ARTIFACTS",
                                Path(__file__).resolve().parents[2] / "test-artifacts"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        service_unavailable("Playwright", exc)
    if not Path(CHROMIUM).exists():
        service_unavailable("Chromium", FileNotFoundError(CHROMIUM))
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM,
                                              args=["--no-sandbox", "--disable-gpu"])
        try:
            yield launched
        finally:
            launched.close()


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _device(served: Served, tmp_path: Path, hardware_id: str = "HW-1") -> Device:
    return Device.init(tmp_path / hardware_id, hardware_id, served.keyring.public_bundle())


def test_public_page_uploads_a_request_and_downloads_the_license(
        served: Served, browser: Any, tmp_path: Path) -> None:
    key = served.license(max_activations=1)
    device = _device(served, tmp_path)
    request = tmp_path / "activation.req"
    request.write_bytes(device.request_activation(product="pro", license_key=key))
    page = browser.new_page(accept_downloads=True)
    page.goto(served.base_url + "/")
    page.set_input_files("#file", str(request))
    page.click("#send")
    page.wait_for_selector("#outcome")
    assert page.inner_text("#outcome") == "Accepted"
    _shot(page, "portal-accepted")
    with page.expect_download() as download_info:
        page.click("a.download")
    download = download_info.value
    assert download.suggested_filename == "license.lic"
    saved = tmp_path / "license.lic"
    download.save_as(str(saved))
    assert device.load(saved.read_bytes()).license_key == key
    assert license_info(served.engine, key)["active_devices"] == 1
    page.close()


def test_console_devices_tab_downloads_a_refresh_file(served: Served, browser: Any,
                                                      tmp_path: Path) -> None:
    key = served.license(max_activations=2)
    device = _device(served, tmp_path)
    with served.client() as client:
        answer = client.post("/", files={"file": (
            "a.req", device.request_activation(product="pro", license_key=key))})
        (link,) = re.findall(r'href="(/portal/results/[^"]+)"', answer.text)
        device.load(client.get(link).content)
    with session_scope(served.engine) as session:
        add_operator(session=session, name="alice", password="correct horse battery")
    page = browser.new_page(accept_downloads=True)
    page.goto(served.base_url + "/console")
    page.fill("#name", "alice")
    page.fill("#password", "correct horse battery")
    page.click("#sign-in")
    page.wait_for_selector("#licenses")
    page.fill("#q", key)
    page.click("#search")
    page.click(f"text={key}")
    page.click("#devices-tab")
    row = page.locator("tr.device[data-hardware-id='HW-1']")
    assert row.is_visible()
    _shot(page, "console-devices")
    with page.expect_download() as download_info:
        row.locator("button.refresh").click()
    download = download_info.value
    assert download.suggested_filename == "license_refresh.lic"
    saved = tmp_path / "license_refresh.lic"
    download.save_as(str(saved))
    assert device.load(saved.read_bytes()).license_key == key
    page.close()


def test_white_label_title_and_colour_appear(browser: Any, tmp_path: Path) -> None:
    from config.settings import Settings

    settings = Settings(home=tmp_path / "var", portal_title="Contoso Licensing",
                        portal_accent="#c0392b", portal_support="help@contoso.example")
    with serving(settings) as served:
        page = browser.new_page()
        page.goto(served.base_url + "/")
        assert page.title() == "Contoso Licensing"
        assert page.inner_text("#title") == "Contoso Licensing"
        colour = page.eval_on_selector("header.bar", "e => getComputedStyle(e).backgroundColor")
        assert colour == "rgb(192, 57, 43)"
        assert "help@contoso.example" in page.inner_text("footer")
        _shot(page, "portal-white-label")
        page.close()
