"""With a broker, an API upload is queued to a real Celery worker and answered."""

from __future__ import annotations

import httpx
import pytest

from airlock_sdk.envelope import Kind, open_envelope
from config.broker import BrokerKind
from models.db import session_scope
from pipelines.tokens import issue_token
from tests.distributed.conftest import Deployment
from tests.factories import NOW, WireDevice, add_license, license_info
from tests.web.conftest import running_app


@pytest.mark.parametrize("broker_kind", [BrokerKind.REDIS], ids=str)
def test_api_upload_is_processed_by_a_worker(deployment: Deployment) -> None:
    deployment.overrides["answer_wait_seconds"] = 30
    key = add_license(deployment.engine, max_activations=1)
    with session_scope(deployment.engine) as session:
        token = issue_token(session=session, customer="ACME", name="ci", now=NOW)[1]
    deployment.worker()
    device = WireDevice(deployment.keyring, "HW-1")
    with running_app(deployment.settings) as (url, _services), \
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"},
                         timeout=60) as client:
        answer = client.post("/api/v1/files", params={"name": "a.req"},
                             content=device.activation(license_key=key)).json()
        assert answer["final"] and answer["accepted"], answer
        license_file = client.get(answer["results"][0]["url"]).content
    assert open_envelope(license_file,
                         resolve_verify_key=deployment.keyring.any_verify_key).kind is Kind.LICENSE
    assert license_info(deployment.engine, key)["active_devices"] == 1
    assert "upload-" in deployment.logs()  # the worker handled the uploaded file
    assert not list((deployment.root / "inbox" / "_processing").rglob("upload-*"))
