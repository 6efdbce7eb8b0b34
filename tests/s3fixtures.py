"""Shared S3/SQS test fixtures: one moto server over real HTTP for the whole session.

Import the fixtures you use into a test module (pytest finds fixtures by name)::

    from tests.s3fixtures import moto_server, s3_bucket  # noqa: F401

`moto_server` starts `ThreadedMotoServer` on 127.0.0.1 and a free port, and sets fake
AWS credentials for the session so nothing can reach a real account. Each test gets
its own bucket (`s3_bucket` or `create_bucket`), so tests never see each other's data.
Don't combine these with moto's in-process `mock_aws` in one test: it intercepts
botocore and resets the same in-memory backends this server serves from.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import botocore.retries.standard
import pytest
from moto.server import ThreadedMotoServer

from config.settings import Settings
from pipelines.storage.s3 import S3ClientParams, S3Store, make_client

REGION = "us-east-1"
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


@dataclass(frozen=True)
class MotoEndpoint:
    """A running moto server: its URL and helpers to build clients against it."""

    url: str
    region: str = REGION

    def params(self, **overrides: Any) -> S3ClientParams:
        """Client parameters for this endpoint (short timeouts, fake credentials)."""
        values: dict[str, Any] = {
            "endpoint_url": self.url, "region": self.region, "connect_timeout": 2.0,
            "read_timeout": 10.0, "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
        }
        values.update(overrides)
        return S3ClientParams(**values)

    def client(self, service: str = "s3", **overrides: Any) -> Any:
        """A fresh boto3 client for `service` ("s3", "sqs") talking to this server."""
        return make_client(service, self.params(**overrides))

    def settings(self, **overrides: Any) -> Settings:
        """`Settings` pointing the S3 endpoint at this server (plus `overrides`)."""
        values: dict[str, Any] = {
            "s3_endpoint_url": self.url, "s3_region": self.region,
            "s3_connect_timeout": 2.0, "s3_read_timeout": 10.0,
        }
        values.update(overrides)
        return Settings(**values)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoEndpoint]:
    """One moto server for the test session, on 127.0.0.1 and a free port."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in FAKE_CREDENTIALS.items():
            mp.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
            mp.delenv(name, raising=False)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield MotoEndpoint(url=f"http://{host}:{port}")
        finally:
            server.stop()


def unique_name(stem: str = "t") -> str:
    """A bucket or queue name no other test uses."""
    return f"{stem}-{uuid.uuid4().hex[:16]}"


def create_bucket(endpoint: MotoEndpoint, name: str | None = None) -> str:
    """Create a bucket (a fresh unique name unless given) and return its name."""
    name = name or unique_name("bucket")
    endpoint.client("s3").create_bucket(Bucket=name)
    return name


def make_s3_store(endpoint: MotoEndpoint, bucket: str | None = None, prefix: str = "",
                  *, client: Any = None, page_size: int = 1000,
                  **client_overrides: Any) -> S3Store:
    """An `S3Store` on `bucket` (a new bucket unless given) under `prefix`."""
    bucket = bucket or create_bucket(endpoint)
    client = client or endpoint.client("s3", **client_overrides)
    return S3Store(bucket, prefix, client=client, page_size=page_size)


@pytest.fixture
def s3_client(moto_server: MotoEndpoint) -> Any:
    """A fresh S3 client on the moto server."""
    return moto_server.client("s3")


@pytest.fixture
def s3_bucket(moto_server: MotoEndpoint) -> str:
    """A new empty bucket for this test."""
    return create_bucket(moto_server)


def seed_objects(endpoint: MotoEndpoint, bucket: str, keys: list[str] | tuple[str, ...],
                 data: bytes = b"x") -> None:
    """Write many objects straight into the in-process moto backend (no HTTP per object).

    For volume tests only (e.g. > 1000 keys for pagination); reads still go over HTTP.
    """
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for key in keys:
        backend.put_object(bucket, key, data)


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep botocore's retry decisions but skip its (up to 15 s of) sleeping; active in
    every test module that imports it."""
    monkeypatch.setattr(botocore.retries.standard.ExponentialBackoff, "delay_amount",
                        lambda self, context: 0.0)
