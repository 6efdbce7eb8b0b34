"""Inbox → processing → outbox on S3 (moto's real HTTP server), with duplicates and faults."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from sqlalchemy import Engine, select

from models.db import reading
from models.tables import JOB
from pipelines.intake import Intake
from pipelines.keyring import VendorKeyring
from pipelines.layout import Arrival, make_arrival
from pipelines.process import Processor, process
from pipelines.sources.refusals import SizeLimits
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


# --- objects that cannot be processed as they are -----------------------------------------


def _get_objects(client: Any) -> list[str]:
    """Records the key of every GetObject `client` sends from now on."""
    sent: list[str] = []
    client.meta.events.register("before-call.s3.GetObject",
                                lambda params, **_: sent.append(params["url_path"]))
    return sent


def test_objects_over_the_limit_are_refused_from_the_listing_never_downloaded(
        s3: dict[str, Any]) -> None:
    source = S3Source(s3["inbox"], on_batch=intake_batch(s3["intake"]), poll_interval=0.1,
                      limits=SizeLimits(file=1000, archive=2000))
    put = s3["client"].put_object
    put(Bucket=s3["bucket"], Key="inbox/ACME/big.req", Body=b"x" * 1001)
    put(Bucket=s3["bucket"], Key="inbox/ACME/fits.req", Body=b"x" * 1000)
    gets = _get_objects(s3["client"])
    assert source.poll_once() == 2
    assert [path.rsplit("/", 1)[-1] for path in gets] == ["fits.req"]
    assert keys(s3["inbox"]) == ["_rejected/ACME/big.req", "_rejected/ACME/big.req.error.json",
                                 "_rejected/ACME/fits.req", "_rejected/ACME/fits.req.error.json"]
    report = json.loads(s3["inbox"].get("_rejected/ACME/big.req.error.json"))
    assert report["reason"] == "too_large" and report["size"] == 1001
    with reading(s3["engine"]) as conn:
        rows = dict(conn.execute(select(JOB.c.size, JOB.c.payload)).all())
    assert rows[1001] is None


def test_keys_no_store_accepts_are_moved_aside_with_a_report_once(
        s3: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    long_name = "d" * 200 + "/" + "f" * 805 + ".req"  # a 1,015-byte arrival key
    bad = ["ACME/bell\x07.req", "ACME//empty-segment.req", f"ACME/{long_name}"]
    for key in bad:
        s3["client"].put_object(Bucket=s3["bucket"], Key=f"inbox/{key}", Body=b"bytes")
    source = s3["source"]
    assert source.poll_once() == 3
    archived = keys(s3["inbox"])
    reports = [k for k in archived if k.endswith(".error.json")]
    assert len(archived) == 6 and len(reports) == 3
    assert all(k.startswith("_rejected/ACME/") and ".bad-name-" in k for k in archived)
    details = sorted(json.loads(s3["inbox"].get(k))["detail"] for k in reports)
    assert details[0].startswith("original name '/empty-segment.req'")
    assert details[1] == "original name 'bell\\x07.req': holds a control character"
    assert "1015 bytes long" in details[2]
    listed = [info.key for info in s3["inbox"].list_raw("ACME/")]
    assert listed == []  # nothing left behind under the bad keys
    caplog.clear()
    assert source.poll_once() == 0  # once: nothing is tried again
    assert keys(s3["inbox"]) == archived
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
