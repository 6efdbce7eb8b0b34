"""Injected S3 failures (botocore event hooks): retried when brief, TransientStorageError
when they outlast the retry budget, never mistaken for a missing object."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import urllib3.exceptions
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from pipelines.storage import S3Store, StorageError, TransientStorageError
from tests.s3fixtures import MotoEndpoint, make_s3_store, moto_server, no_backoff  # noqa: F401

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")
ACCESS_DENIED = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
                 b"<Message>Access Denied</Message></Error>")


class _Raw:
    """Just enough of a urllib3 response for botocore to read an injected error body."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[bytes]:
        yield self.body


def error_response(request: Any, status: int, body: bytes) -> AWSResponse:
    headers = {"Content-Type": "application/xml", "Content-Length": str(len(body))}
    return AWSResponse(request.url, status, headers, _Raw(body))


class Faults:
    """Counts the attempts of one operation and fails the first `times` of them."""

    def __init__(self, fail: Callable[[Any], Any], times: int) -> None:
        self.fail, self.times, self.attempts = fail, times, 0

    def __call__(self, request: Any, **kwargs: Any) -> Any:
        self.attempts += 1
        if self.attempts <= self.times:
            return self.fail(request)
        return None  # let the real request through


def slow_down(request: Any) -> AWSResponse:
    return error_response(request, 503, SLOW_DOWN)


def read_timeout(request: Any) -> None:
    raise ReadTimeoutError(endpoint_url=request.url, error="injected read timeout")


def inject(store: S3Store, operation: str, fail: Callable[[Any], Any], times: int) -> Faults:
    faults = Faults(fail, times)
    store.client.meta.events.register(f"before-send.s3.{operation}", faults)
    return faults



@pytest.fixture
def store(moto_server: MotoEndpoint) -> S3Store:  # noqa: F811
    store = make_s3_store(moto_server, prefix="inbox")
    store.put("ACME/a.req", b"payload")
    return store


def test_brief_slow_down_is_retried(store: S3Store) -> None:
    faults = inject(store, "GetObject", slow_down, times=3)
    assert store.get("ACME/a.req") == b"payload"
    assert faults.attempts == 4


def test_a_read_timeout_is_retried(store: S3Store) -> None:
    faults = inject(store, "GetObject", read_timeout, times=1)
    assert store.get("ACME/a.req") == b"payload"
    assert faults.attempts == 2


def test_persistent_slow_down_becomes_transient_error(store: S3Store) -> None:
    faults = inject(store, "GetObject", slow_down, times=100)
    with pytest.raises(TransientStorageError) as caught:
        store.get("ACME/a.req")
    # botocore's Config(retries={"max_attempts": 5}) counts retries: 1 + 5 attempts.
    assert faults.attempts == 6
    assert not isinstance(caught.value, FileNotFoundError)
    assert isinstance(caught.value.cause, ClientError)
    assert caught.value.__cause__ is caught.value.cause
    assert "SlowDown" in str(caught.value)


def test_persistent_read_timeouts_become_transient_error(store: S3Store) -> None:
    faults = inject(store, "HeadObject", read_timeout, times=100)
    with pytest.raises(TransientStorageError) as caught:
        store.head("ACME/a.req")
    assert faults.attempts == 6
    assert isinstance(caught.value.cause, ReadTimeoutError)
    with pytest.raises(TransientStorageError):
        store.exists("ACME/a.req")  # "don't know" is not "absent"


def test_put_is_retried_with_the_full_body(store: S3Store) -> None:
    faults = inject(store, "PutObject", slow_down, times=2)
    store.put("ACME/b.req", b"complete body")
    assert faults.attempts == 3
    assert store.get("ACME/b.req") == b"complete body"


def test_listing_failures_are_transient(store: S3Store) -> None:
    inject(store, "ListObjectsV2", slow_down, times=100)
    with pytest.raises(TransientStorageError):
        list(store.list())


def test_copy_failure_during_move_keeps_the_source(store: S3Store) -> None:
    inject(store, "CopyObject", slow_down, times=100)
    with pytest.raises(TransientStorageError):
        store.move("ACME/a.req", "_processed/ACME/a.req")
    assert store.get("ACME/a.req") == b"payload"


def test_access_denied_is_permission_error_and_not_retried(store: S3Store) -> None:
    faults = inject(store, "GetObject",
                    lambda request: error_response(request, 403, ACCESS_DENIED), times=100)
    with pytest.raises(PermissionError):
        store.get("ACME/a.req")
    assert faults.attempts == 1


def test_missing_bucket_is_not_a_missing_object(moto_server: MotoEndpoint) -> None:  # noqa: F811
    store = make_s3_store(moto_server, bucket="no-such-bucket-here", prefix="inbox")
    with pytest.raises(StorageError) as caught:
        store.get("ACME/a.req")
    assert not isinstance(caught.value, (FileNotFoundError, TransientStorageError))


def test_unreachable_endpoint_is_transient(moto_server: MotoEndpoint) -> None:  # noqa: F811
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = moto_server.client("s3", endpoint_url=f"http://127.0.0.1:{port}",
                                connect_timeout=0.5)
    store = S3Store("bucket", "inbox", client=client)
    with pytest.raises(TransientStorageError) as caught:
        store.get("ACME/a.req")
    assert isinstance(caught.value.cause, EndpointConnectionError)


class _BrokenStream:
    """A response body that times out half-way, the way a stalled socket does."""

    def __init__(self, url: str) -> None:
        self.url = url

    def read(self, *args: Any, **kwargs: Any) -> bytes:
        raise urllib3.exceptions.ReadTimeoutError(None, self.url, "injected stall")  # type: ignore[arg-type]

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[bytes]:
        raise urllib3.exceptions.ReadTimeoutError(None, self.url, "injected stall")  # type: ignore[arg-type]

    def close(self) -> None:
        pass


def broken_body(request: Any) -> AWSResponse:
    headers = {"Content-Length": "7", "Content-Type": "application/octet-stream",
               "ETag": '"x"', "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"}
    return AWSResponse(request.url, 200, headers, _BrokenStream(request.url))


def test_a_body_that_stalls_mid_read_is_read_again(store: S3Store) -> None:
    """botocore's retries end when the headers arrive; the store re-reads a broken body."""
    faults = inject(store, "GetObject", broken_body, times=2)
    assert store.get("ACME/a.req") == b"payload"
    assert faults.attempts == 3


def test_a_body_that_always_stalls_is_transient(store: S3Store) -> None:
    inject(store, "GetObject", broken_body, times=100)
    with pytest.raises(TransientStorageError):
        store.get("ACME/a.req")
