"""Inbox → processing → outbox on S3 (moto's real HTTP server), with duplicates and faults."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import Engine

from pipelines.intake import Intake
from pipelines.keyring import VendorKeyring
from pipelines.layout import Arrival, make_arrival
from pipelines.process import Processor, process
from pipelines.sources.s3poller import S3Source
from pipelines.storage import S3Store
from tests.factories import NOW, WireDevice, add_license, license_info, vendor
from tests.s3fixtures import MotoEndpoint, create_bucket, moto_server, no_backoff  # noqa: F401
from tests.storage.test_s3_faults import inject, read_timeout, slow_down


def intake_batch(intake: Intake) -> Any:
    """The embedded runner's on_batch, without the runner: those left come back."""
    def on_batch(arrivals: list[Arrival]) -> list[Arrival]:
        intake.handle_many(arrivals)
        left = intake.inbox.which_exist([a.key for a in arrivals])
        return [a for a in arrivals if a.key in left]

    return on_batch


@pytest.fixture
def s3(moto_server: MotoEndpoint, sqlite_engine: Engine,  # noqa: F811
       keyring: VendorKeyring) -> dict[str, Any]:
    bucket = create_bucket(moto_server)
    client = moto_server.client()
    inbox, outbox = S3Store(bucket, "inbox", client=client), S3Store(bucket, "outbox",
                                                                       client=client)
    vendor(sqlite_engine)
    intake = Intake(engine=sqlite_engine, processor=Processor(keyring=keyring,
                                                              clock=lambda: NOW),
                    inbox=inbox, outbox=outbox)
    source = S3Source(inbox, on_batch=intake_batch(intake), poll_interval=0.1)
    return {"bucket": bucket, "client": client, "inbox": inbox, "outbox": outbox,
            "intake": intake, "source": source, "engine": sqlite_engine}


def keys(store: S3Store) -> list[str]:
    return sorted(info.key for info in store.list())


def test_round_trip_through_the_bucket(s3: dict[str, Any], keyring: VendorKeyring) -> None:
    key = add_license(s3["engine"])
    data = WireDevice(keyring, "HW-1").activation(license_key=key)
    s3["client"].put_object(Bucket=s3["bucket"], Key="inbox/ACME/hw1.req", Body=data)
    s3["client"].put_object(Bucket=s3["bucket"], Key="inbox/ACME/junk.req", Body=b"junk")
    assert s3["source"].poll_once() == 2
    outbox = keys(s3["outbox"])
    assert len([k for k in outbox if k.endswith(".lic")]) == 1
    assert len([k for k in outbox if k.endswith(".rejection")]) == 1
    assert keys(s3["inbox"]) == ["_processed/ACME/hw1.req", "_rejected/ACME/junk.req",
                                 "_rejected/ACME/junk.req.error.json"]
    report = json.loads(s3["inbox"].get("_rejected/ACME/junk.req.error.json"))
    assert report["reason"] == "malformed"
    assert s3["source"].poll_once() == 0  # nothing left to take
    assert license_info(s3["engine"], key)["active_devices"] == 1


def test_duplicate_notifications_and_poller_have_one_effect(
        s3: dict[str, Any], moto_server: MotoEndpoint, keyring: VendorKeyring) -> None:  # noqa: F811
    key = add_license(s3["engine"], license_type="consumption", max_consumptions=100)
    device = WireDevice(keyring, "HW-1")
    sqs = moto_server.client("sqs")
    queue_url = sqs.create_queue(QueueName=f"q-{s3['bucket']}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url,
                                   AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3["client"].put_bucket_notification_configuration(
        Bucket=s3["bucket"], NotificationConfiguration={"QueueConfigurations": [
            {"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]})
    source = S3Source(s3["inbox"], on_batch=intake_batch(s3["intake"]), poll_interval=0.1,
                      sqs_client=sqs, queue_url=queue_url)
    process(device.activation(license_key=key), engine=s3["engine"], tenant="ACME",
            processor=s3["intake"].processor)
    data = device.deactivation(license_key=key, consumptions=11)
    for name in ("off.req", "off-copy.req"):  # the same file uploaded twice
        s3["client"].put_object(Bucket=s3["bucket"], Key=f"inbox/ACME/{name}", Body=data)
    # The same object handed over twice before it is archived (a poller and a late
    # notification racing): the ledger makes the second pass a no-op.
    arrival = s3["inbox"].get("ACME/off.req")
    first = s3["intake"].handle(make_arrival("ACME/off.req", arrival))
    second = s3["intake"].handle(make_arrival("ACME/off.req", arrival))
    assert first.accepted and second.accepted and second.duplicate
    source.drain_notifications()
    source.poll_once()
    source.drain_notifications()
    assert license_info(s3["engine"], key)["consumptions"]["total"] == 11
    assert len([k for k in keys(s3["outbox"]) if k.endswith(".receipt")]) == 1
    inbox = keys(s3["inbox"])
    assert [k for k in inbox if not k.startswith("_")] == []
    assert len([k for k in inbox if k.startswith("_processed/")]) == 2


def test_injected_s3_errors_are_retried_not_rejected(s3: dict[str, Any],
                                                     keyring: VendorKeyring) -> None:
    key = add_license(s3["engine"])
    data = WireDevice(keyring, "HW-1").activation(license_key=key)
    s3["client"].put_object(Bucket=s3["bucket"], Key="inbox/ACME/a.req", Body=data)
    gets = inject(s3["inbox"], "GetObject", slow_down, times=2)
    puts = inject(s3["outbox"], "PutObject", read_timeout, times=1)
    assert s3["source"].poll_once() == 1
    assert gets.attempts >= 3 and puts.attempts >= 2
    assert keys(s3["inbox"]) == ["_processed/ACME/a.req"]
    assert license_info(s3["engine"], key)["active_devices"] == 1
