"""S3 event notifications delivered through SQS: the client factory and message parsing."""

from __future__ import annotations

import json
from urllib.parse import unquote_plus

from pipelines.storage.s3 import make_sqs_client

__all__ = ["created_keys", "make_sqs_client"]


def created_keys(body: str, *, bucket: str | None = None) -> list[str]:
    """Object keys an S3 event message reports as created, URL-decoded, in order.

    Accepts the S3 event JSON directly or wrapped in an SNS envelope. A ``s3:TestEvent``
    message, and records for other buckets or non-creation events, yield nothing.
    Raises ValueError for a body that is not an S3 event message.
    """
    try:
        message = json.loads(body)
    except (TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if isinstance(message, dict) and message.get("Type") == "Notification" \
            and isinstance(message.get("Message"), str):
        return created_keys(message["Message"], bucket=bucket)
    if not isinstance(message, dict):
        raise ValueError("not an S3 event message")
    if message.get("Event") == "s3:TestEvent":
        return []
    records = message.get("Records")
    if not isinstance(records, list):
        raise ValueError("not an S3 event message: no Records")
    keys: list[str] = []
    for record in records:
        try:
            event = str(record.get("eventName", ""))
            s3 = record["s3"]
            record_bucket = s3["bucket"]["name"]
            raw_key = s3["object"]["key"]
        except (AttributeError, KeyError, TypeError):
            raise ValueError("malformed S3 event record") from None
        if not event.startswith("ObjectCreated"):
            continue
        if bucket is not None and record_bucket != bucket:
            continue
        keys.append(unquote_plus(str(raw_key)))
    return keys
