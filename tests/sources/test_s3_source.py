"""The S3 inbox poller (and its SQS notifications) against a moto server over HTTP."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from typing import Any

import pytest

from pipelines.layout import Arrival, archive_key
from pipelines.outage import Backoff
from pipelines.sources.s3poller import S3Source
from pipelines.sources.sqs import created_keys, make_sqs_client
from pipelines.storage import S3Store
from tests.s3fixtures import (  # noqa: F401
    MotoEndpoint,
    make_s3_store,
    moto_server,
    no_backoff,
    unique_name,
)

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


def each(handle: Any) -> Any:
    """An on_batch calling `handle` per arrival; every arrival is taken."""
    def on_batch(arrivals: list[Arrival]) -> list[Arrival]:
        for arrival in arrivals:
            handle(arrival)
        return []

    return on_batch


class Recorder:
    """An on_batch that records every hand-over."""

    def __init__(self) -> None:
        self.arrivals: list[Arrival] = []

    def __call__(self, arrivals: list[Arrival]) -> list[Arrival]:
        self.arrivals.extend(arrivals)
        return []

    @property
    def keys(self) -> list[str]:
        return [a.key for a in self.arrivals]


class Ledger:
    """An on_batch (per arrival) doing what the real one does: claim a unique row, then archive.

    A second hand-over of the same object (duplicate notification, or a poll before
    the archive) finds the claim taken and has no further effect.
    """

    def __init__(self, store: S3Store) -> None:
        self.store = store
        self.calls = 0
        self.claims: dict[tuple[str, str, str], int] = {}
        self.effects: list[str] = []

    def __call__(self, arrival: Arrival) -> None:
        self.calls += 1
        claim = (arrival.area, arrival.name, arrival.sha256)
        if claim in self.claims:  # the unique constraint fires: a duplicate
            self.claims[claim] += 1
            return
        self.claims[claim] = 1
        self.effects.append(arrival.key)



@pytest.fixture
def store(moto_server: MotoEndpoint) -> S3Store:  # noqa: F811
    return make_s3_store(moto_server, prefix="drop/inbox")


def upload(store: S3Store, key: str, data: bytes | None = None) -> bytes:
    """Upload as a device-side tool would: straight to the bucket, not via the store."""
    data = key.encode() if data is None else data
    store.client.put_object(Bucket=store.bucket, Key=f"{store.prefix}/{key}", Body=data)
    return data


def source(store: S3Store, on_batch: Any, **kwargs: Any) -> S3Source:
    kwargs.setdefault("poll_interval", 0.05)
    return S3Source(store, on_batch=on_batch, **kwargs)


# --- polling ------------------------------------------------------------------------------


def test_arrivals_are_delivered_with_tenant_and_sha256(store: S3Store) -> None:
    payloads = {key: upload(store, key, f"bytes of {key}".encode() * 50) for key in
                ("ACME/a.req", "ACME/sub/b.req", "BETA/c.zip", "_operator/refresh.req")}
    seen = Recorder()
    assert source(store, seen).poll_once() == 4
    by_key = {a.key: a for a in seen.arrivals}
    assert sorted(by_key) == sorted(payloads)
    a = by_key["ACME/sub/b.req"]
    assert (a.area, a.name) == ("ACME", "sub/b.req")
    assert a.data == payloads["ACME/sub/b.req"]
    assert a.sha256 == hashlib.sha256(payloads["ACME/sub/b.req"]).hexdigest()
    assert a.size == len(payloads["ACME/sub/b.req"])
    assert by_key["_operator/refresh.req"].area == "_operator"


def test_reserved_areas_temp_names_and_strays_are_not_delivered(store: S3Store) -> None:
    ignored = ["_processing/ACME/x.req", "_processed/ACME/x.req", "_rejected/ACME/x.req",
               "_rejected/ACME/x.req.error.json", "_quarantine/ACME/y.req", "_other/z",
               "ACME/x.req.part", "ACME/x.req.tmp", "ACME/.x.req.Zq81Lp", "ACME/x.req~",
               "ACME/x.req.filepart", "ACME/x.req.crdownload", "ACME/r.error.json",
               "ACME/.staging/x.req", "loose.req", "not a code/x.req", "-ACME/x.req"]
    for key in ignored:
        upload(store, key)
    store.client.put_object(Bucket=store.bucket, Key=f"{store.prefix}/ACME/", Body=b"")
    store.client.put_object(Bucket=store.bucket, Key="drop/inbox-2/ACME/x.req", Body=b"x")
    store.client.put_object(Bucket=store.bucket, Key="elsewhere/ACME/x.req", Body=b"x")
    upload(store, "ACME/real.req")
    seen = Recorder()
    assert source(store, seen).poll_once() == 1
    assert seen.keys == ["ACME/real.req"]


def test_pagination_delivers_each_object_once_per_poll(moto_server: MotoEndpoint) -> None:  # noqa: F811
    store = make_s3_store(moto_server, prefix="inbox", page_size=7)
    wanted = sorted(upload(store, f"{t}/{i:03d}.req").decode()
                    for t in ("ACME", "BETA") for i in range(20))
    lists: list[str] = []
    store.client.meta.events.register("before-call.s3.ListObjectsV2",
                                      lambda **kw: lists.append("call"))
    seen = Recorder()
    poller = source(store, seen)
    assert poller.poll_once() == 40
    assert seen.keys == wanted
    assert len(lists) == 1 + 3 + 3  # the area listing, then 7 + 7 + 6 per tenant
    assert poller.poll_once() == 40  # still present (not archived): handed over again
    assert seen.keys == wanted + wanted


def test_archived_objects_are_not_handed_over_again(store: S3Store) -> None:
    upload(store, "ACME/a.req")

    def process_and_archive(arrival: Arrival) -> None:
        store.move(arrival.key, archive_key("processed", arrival.area, arrival.name))

    poller = source(store, each(process_and_archive))
    assert poller.poll_once() == 1
    assert poller.poll_once() == 0
    assert [i.key for i in store.list()] == ["_processed/ACME/a.req"]


def test_min_age_leaves_young_objects_for_later(store: S3Store) -> None:
    upload(store, "ACME/a.req")
    seen = Recorder()
    assert source(store, seen, min_age=3600).poll_once() == 0
    later = source(store, seen, min_age=30, clock=lambda: time.time() + 60)
    assert later.poll_once() == 1


# --- failures -----------------------------------------------------------------------------


class SlowDown:
    """A before-send hook answering 503 SlowDown to the first `times` GetObject attempts."""

    def __init__(self, times: int) -> None:
        self.times, self.attempts = times, 0

    def __call__(self, request: Any, **kwargs: Any) -> Any:
        from botocore.awsrequest import AWSResponse

        self.attempts += 1
        if self.attempts > self.times:
            return None

        class Raw:
            def stream(self, *a: Any, **k: Any) -> Any:
                yield SLOW_DOWN

        return AWSResponse(request.url, 503, {"Content-Type": "application/xml"}, Raw())


def test_a_brief_503_is_retried_within_the_poll(store: S3Store) -> None:
    upload(store, "ACME/a.req")
    fault = SlowDown(times=2)
    store.client.meta.events.register("before-send.s3.GetObject", fault)
    seen = Recorder()
    assert source(store, seen).poll_once() == 1
    assert fault.attempts == 3


def test_a_lasting_503_leaves_the_object_for_the_next_poll(
        store: S3Store, caplog: pytest.LogCaptureFixture) -> None:
    upload(store, "ACME/a.req")
    upload(store, "BETA/b.req")
    fault = SlowDown(times=6)  # outlasts the first read's retry budget (1 + 5)
    store.client.meta.events.register("before-send.s3.GetObject", fault)
    seen = Recorder()
    poller = source(store, seen, backoff=Backoff(first=0))  # retried on the very next poll
    assert poller.poll_once() == 1  # BETA still delivered; ACME neither lost nor rejected
    assert seen.keys == ["BETA/b.req"]
    assert "will retry" in caplog.text
    assert store.exists("ACME/a.req")
    assert poller.poll_once() == 2
    assert seen.keys == ["BETA/b.req", "ACME/a.req", "BETA/b.req"]


def test_an_object_archived_between_list_and_get_is_skipped(store: S3Store) -> None:
    upload(store, "ACME/a.req")
    upload(store, "ACME/b.req")

    def someone_else_archives(params: dict[str, Any], **kwargs: Any) -> None:
        if params["Key"].endswith("ACME/a.req"):
            store.client.delete_object(Bucket=store.bucket, Key=params["Key"])

    store.client.meta.events.register("before-parameter-build.s3.GetObject",
                                      someone_else_archives)
    seen = Recorder()
    assert source(store, seen).poll_once() == 1
    assert seen.keys == ["ACME/b.req"]


def test_a_failing_callback_does_not_stop_the_poll(store: S3Store) -> None:
    upload(store, "ACME/a.req")
    upload(store, "ACME/b.req")
    seen = Recorder()

    def flaky(arrivals: list[Arrival]) -> list[Arrival]:
        if arrivals[0].name == "a.req":
            raise RuntimeError("a bug")
        return seen(arrivals)

    assert source(store, flaky).poll_once() == 1
    assert seen.keys == ["ACME/b.req"]


def test_a_failed_hand_over_waits_for_its_backoff_then_is_retried(store: S3Store) -> None:
    upload(store, "ACME/a.req")
    now = [1000.0]
    seen = Recorder()
    tries: list[str] = []

    def not_finished_once(arrivals: list[Arrival]) -> list[Arrival]:
        tries.append(arrivals[0].key)
        return arrivals if len(tries) == 1 else seen(arrivals)

    poller = source(store, not_finished_once, clock=lambda: now[0])
    assert poller.poll_once() == 0
    assert poller.poll_once() == 0  # its retry is not due yet
    now[0] += Backoff().first
    assert poller.poll_once() == 1
    assert tries == ["ACME/a.req"] * 2 and seen.keys == ["ACME/a.req"]


def test_while_the_callback_dependency_is_down_only_retries_run(
        store: S3Store, caplog: pytest.LogCaptureFixture) -> None:
    from sqlalchemy.exc import OperationalError

    for name in ("a", "b", "c"):
        upload(store, f"ACME/{name}.req")
    now = [1000.0]
    down = [True]
    tries: list[str] = []

    def database(arrivals: list[Arrival]) -> list[Arrival]:
        tries.append(arrivals[0].name)
        if down[0]:
            raise OperationalError("SELECT 1", {}, ConnectionRefusedError("refused"))
        store.move(arrivals[0].key, archive_key("processed", "ACME", arrivals[0].name))
        return []

    poller = source(store, database, clock=lambda: now[0])
    assert poller.poll_once() == 0
    assert tries == ["a.req"]  # b and c wait: they would fail the same way
    assert poller.drain(timeout=60) is False  # nothing can be handed over now
    down[0] = False
    now[0] += Backoff().first
    assert poller.drain(timeout=60) is True
    assert tries == ["a.req", "a.req", "b.req", "c.req"]
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert lines[0] == "database unreachable: refused; retrying"
    assert lines[1].startswith("database reachable again after ") and len(lines) == 2


# --- notifications ------------------------------------------------------------------------


@pytest.fixture
def queue(moto_server: MotoEndpoint, store: S3Store) -> tuple[Any, str]:  # noqa: F811
    """An SQS queue receiving the bucket's ObjectCreated events."""
    sqs = make_sqs_client(moto_server.params())
    url = sqs.create_queue(QueueName=unique_name("events"))["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    store.client.put_bucket_notification_configuration(
        Bucket=store.bucket,
        NotificationConfiguration={"QueueConfigurations": [{
            "QueueArn": arn["Attributes"]["QueueArn"], "Events": ["s3:ObjectCreated:*"],
        }]},
    )
    return sqs, url


def queue_depth(sqs: Any, url: str) -> int:
    attrs = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
    return sum(int(v) for v in attrs["Attributes"].values())


def test_a_notification_triggers_delivery(store: S3Store, queue: tuple[Any, str]) -> None:
    sqs, url = queue
    data = upload(store, "ACME/with space+plus&.req")
    upload(store, "_processed/ACME/old.req")  # notified too, but not an arrival
    seen = Recorder()
    poller = source(store, seen, sqs_client=sqs, queue_url=url)
    assert poller.drain_notifications() == 1  # the s3:TestEvent is ignored
    assert seen.keys == ["ACME/with space+plus&.req"]
    assert seen.arrivals[0].sha256 == hashlib.sha256(data).hexdigest()
    assert queue_depth(sqs, url) == 0  # handled messages (and the test event) are deleted
    assert poller.drain_notifications() == 0


def test_duplicates_reach_the_callback_but_have_one_effect(store: S3Store,
                                                            queue: tuple[Any, str]) -> None:
    sqs, url = queue
    upload(store, "ACME/a.req")
    [message] = [m for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
                 if "Records" in json.loads(m["Body"])]
    sqs.send_message(QueueUrl=url, MessageBody=message["Body"])  # a duplicate notification
    ledger = Ledger(store)
    poller = source(store, each(ledger), sqs_client=sqs, queue_url=url)
    poller.poll_once()
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"],
                                  VisibilityTimeout=0)
    poller.drain_notifications()
    assert ledger.calls == 3  # poll + the notification + its duplicate
    assert ledger.effects == ["ACME/a.req"]
    assert list(ledger.claims.values()) == [3]


def test_notifications_for_vanished_objects_are_dropped(store: S3Store,
                                                        queue: tuple[Any, str]) -> None:
    sqs, url = queue
    upload(store, "ACME/a.req")
    store.delete("ACME/a.req")
    seen = Recorder()
    assert source(store, seen, sqs_client=sqs, queue_url=url).drain_notifications() == 0
    assert seen.arrivals == []
    assert queue_depth(sqs, url) == 0


def test_unreadable_messages_are_dropped(store: S3Store, queue: tuple[Any, str]) -> None:
    sqs, url = queue
    sqs.send_message(QueueUrl=url, MessageBody="not json")
    sqs.send_message(QueueUrl=url, MessageBody='{"Records": "nope"}')
    seen = Recorder()
    assert source(store, seen, sqs_client=sqs, queue_url=url).drain_notifications() == 0
    assert queue_depth(sqs, url) == 0


def test_a_transient_failure_keeps_the_message(store: S3Store, queue: tuple[Any, str]) -> None:
    sqs, url = queue
    upload(store, "ACME/a.req")
    store.client.meta.events.register("before-send.s3.GetObject", SlowDown(times=100))
    poller = source(store, Recorder(), sqs_client=sqs, queue_url=url)
    assert poller.drain_notifications() == 0
    assert queue_depth(sqs, url) == 1  # in flight, comes back after the visibility timeout


# --- the loop -----------------------------------------------------------------------------


def test_run_polls_until_stopped(store: S3Store, queue: tuple[Any, str]) -> None:
    sqs, url = queue
    seen = Recorder()
    stop = threading.Event()
    poller = source(store, seen, poll_interval=0.2, sqs_client=sqs, queue_url=url,
                    notification_wait=1)
    thread = threading.Thread(target=poller.run, args=(stop,))
    thread.start()
    try:
        upload(store, "ACME/a.req")
        deadline = time.monotonic() + 10
        while "ACME/a.req" not in seen.keys and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "ACME/a.req" in seen.keys
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_stop_finishes_the_object_in_hand_then_returns(store: S3Store) -> None:
    for name in ("a", "b", "c"):
        upload(store, f"ACME/{name}.req")
    stop = threading.Event()
    seen = Recorder()

    def stop_after_first(arrivals: list[Arrival]) -> list[Arrival]:
        stop.set()
        return seen(arrivals)

    poller = source(store, stop_after_first, poll_interval=60)
    thread = threading.Thread(target=poller.run, args=(stop,))
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert seen.keys == ["ACME/a.req"]


def test_run_survives_listing_failures(store: S3Store) -> None:
    calls: list[int] = []

    def fail_listing(request: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return SlowDown(times=100)(request)

    store.client.meta.events.register("before-send.s3.ListObjectsV2", fail_listing)
    stop = threading.Event()
    thread = threading.Thread(target=source(store, Recorder(), poll_interval=0.01).run,
                              args=(stop,))
    thread.start()
    time.sleep(0.3)
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(calls) >= 6  # at least one full retry budget, and the loop kept going


def test_an_s3_inbox_gets_the_poller_from_the_settings(store: S3Store) -> None:
    from config.settings import Settings
    from pipelines.sources import make_source

    settings = Settings(inbox=f"s3://{store.bucket}/{store.prefix}", scan_interval_seconds=3)
    poller = make_source(settings, store, Recorder())
    assert isinstance(poller, S3Source)
    assert (poller.store, poller.poll_interval, poller.notifications_enabled) == (store, 3,
                                                                                  False)


def test_notifications_need_client_and_queue(store: S3Store) -> None:
    with pytest.raises(ValueError):
        S3Source(store, on_batch=Recorder(), poll_interval=1, queue_url="http://q")


# --- message parsing ----------------------------------------------------------------------


def _event(key: str, bucket: str = "b", event: str = "ObjectCreated:Put") -> dict[str, Any]:
    return {"eventName": event, "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}


@pytest.mark.parametrize(("body", "expected"), [
    ({"Records": [_event("drop/ACME/a+b%2Bc%26.req")]}, ["drop/ACME/a b+c&.req"]),
    ({"Records": [_event("x"), _event("y", bucket="other"),
                  _event("z", event="ObjectRemoved:Delete")]}, ["x"]),
    ({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"}, []),
    ({"Type": "Notification", "Message": json.dumps({"Records": [_event("%C3%A9")]})}, ["é"]),
    ({"Records": []}, []),
])
def test_created_keys(body: dict[str, Any], expected: list[str]) -> None:
    assert created_keys(json.dumps(body), bucket="b") == expected


@pytest.mark.parametrize("body", ["", "nope", "[]", '{"Records": 1}', '{"Records": [{}]}',
                                  '{"Records": [{"s3": {"bucket": {}}}]}'])
def test_created_keys_rejects_garbage(body: str) -> None:
    with pytest.raises(ValueError):
        created_keys(body, bucket="b")
