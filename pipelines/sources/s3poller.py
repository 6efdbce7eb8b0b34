"""Deliver files dropped into an ``s3://`` inbox to a callback.

The poller is the authority: every `poll_interval` it lists the tenant and operator
areas and hands every arrival still present to `on_arrival`. The callback processes
and archives (copy + delete) the object once its own job has committed, so an
object still present on the next poll is simply handed over again and the caller's
ledger (a unique row) drops the duplicate. S3 event notifications through SQS only
make delivery quicker; they may be late, duplicated or missing.
"""

from __future__ import annotations

import enum
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from pipelines.layout import Arrival, is_area, make_arrival, parse_arrival_key
from pipelines.sources.sqs import created_keys
from pipelines.storage.base import ObjectInfo, TransientStorageError
from pipelines.storage.s3 import S3Store, translate

log = logging.getLogger(__name__)

MAX_BATCHES_PER_DRAIN = 10  # 10 × 10 messages, then let the poller have a turn


class _Outcome(enum.Enum):
    DELIVERED = "delivered"
    SKIPPED = "skipped"  # not an arrival, gone already, or too young: nothing to retry
    RETRY = "retry"  # a transient failure or a failing callback: try again later


class S3Source:
    """Polls an `S3Store` inbox (and optionally an SQS queue of S3 events).

    `min_age` (seconds) leaves objects younger than that for a later poll.
    `notification_wait` caps an SQS long poll inside `run`, bounding how long a stop
    request can wait.
    """

    def __init__(
        self,
        store: S3Store,
        *,
        on_arrival: Callable[[Arrival], None],
        poll_interval: float,
        sqs_client: Any = None,
        queue_url: str | None = None,
        min_age: float = 0,
        notification_wait: int = 2,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if (sqs_client is None) != (queue_url is None):
            raise ValueError("notifications need both sqs_client and queue_url")
        self.store = store
        self.on_arrival = on_arrival
        self.poll_interval = poll_interval
        self.sqs_client = sqs_client
        self.queue_url = queue_url
        self.min_age = min_age
        self.notification_wait = max(0, min(int(notification_wait), 20))
        self._clock = clock
        self._stop: threading.Event | None = None

    @property
    def notifications_enabled(self) -> bool:
        """True when an SQS queue of S3 events is configured."""
        return self.sqs_client is not None

    def _stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    # --- one object ---------------------------------------------------------------------

    def _handle(self, key: str, info: ObjectInfo | None = None) -> _Outcome:
        """Read inbox `key` and hand it to `on_arrival`; never raises."""
        if parse_arrival_key(key) is None:
            return _Outcome.SKIPPED
        where = f"{self.store.location}/{key}"
        try:
            if self.min_age > 0:
                info = info or self.store.head(key)
                if self._clock() - info.modified.timestamp() < self.min_age:
                    return _Outcome.SKIPPED
            data = self.store.get(key)
        except FileNotFoundError:
            log.debug("%s is gone (archived by someone else)", where)
            return _Outcome.SKIPPED
        except TransientStorageError as exc:
            log.warning("reading %s failed for now, will retry: %s", where, exc)
            return _Outcome.RETRY
        except Exception:
            log.exception("reading %s failed, will retry", where)
            return _Outcome.RETRY
        try:
            self.on_arrival(make_arrival(key, data))
        except Exception:
            log.exception("handling %s failed; it stays in the inbox for the next poll", where)
            return _Outcome.RETRY
        return _Outcome.DELIVERED

    # --- polling ------------------------------------------------------------------------

    def areas(self) -> list[str]:
        """The tenant folders and the operator folder present at the inbox root."""
        return sorted(name for name in self.store.list_folders() if is_area(name))

    def poll_once(self) -> int:
        """List every arrival and hand each over once; the number delivered.

        Reserved areas (``_processed/`` and friends) are never listed. Listing errors
        propagate; a failure on one object is logged and retried on the next poll.
        """
        delivered = 0
        for area in self.areas():
            for info in self.store.list(f"{area}/"):
                if self._stopping():
                    return delivered
                if self._handle(info.key, info) is _Outcome.DELIVERED:
                    delivered += 1
        return delivered

    # --- notifications ------------------------------------------------------------------

    def drain_notifications(self, wait_seconds: int = 0) -> int:
        """Handle queued S3 event messages until the queue is empty; the number delivered.

        A message is deleted once all its keys are handled (or turn out to be gone or
        not arrivals); on a transient failure it is left to come back. Malformed
        messages and ``s3:TestEvent`` are deleted.
        """
        if not self.notifications_enabled:
            return 0
        delivered = 0
        wait = wait_seconds
        for _ in range(MAX_BATCHES_PER_DRAIN):
            messages = self._receive(wait)
            if not messages:
                break
            wait = 0
            for message in messages:
                if self._stopping():
                    return delivered
                done, count = self._handle_message(message)
                delivered += count
                if done:
                    self._delete_message(message["ReceiptHandle"])
        return delivered

    def _receive(self, wait_seconds: int) -> list[dict[str, Any]]:
        try:
            response = self.sqs_client.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_seconds,
            )
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"receiving from {self.queue_url}") from exc
        return list(response.get("Messages", ()))

    def _delete_message(self, receipt_handle: str) -> None:
        try:
            self.sqs_client.delete_message(QueueUrl=self.queue_url, ReceiptHandle=receipt_handle)
        except (ClientError, BotoCoreError) as exc:
            # Not fatal: the message comes back and the duplicate is harmless.
            log.warning("could not delete a message from %s: %s", self.queue_url, exc)

    def _handle_message(self, message: dict[str, Any]) -> tuple[bool, int]:
        """(may delete the message, arrivals delivered)."""
        try:
            object_keys = created_keys(message.get("Body", ""), bucket=self.store.bucket)
        except ValueError as exc:
            log.warning("dropping an unreadable message from %s: %s", self.queue_url, exc)
            return True, 0
        done, delivered = True, 0
        for object_key in object_keys:
            key = self.store.store_key(object_key)
            if key is None:
                continue
            outcome = self._handle(key)
            delivered += outcome is _Outcome.DELIVERED
            done = done and outcome is not _Outcome.RETRY
        return done, delivered

    # --- the loop -----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Poll every `poll_interval` and drain notifications in between, until `stop`
        is set; the object in hand is finished first."""
        self._stop = stop
        log.info("watching %s (%s)", self.store.location,
                 "polling + notifications" if self.notifications_enabled else "polling")
        next_poll = 0.0
        try:
            while not stop.is_set():
                if time.monotonic() >= next_poll:
                    self._guarded(self.poll_once, "polling")
                    next_poll = time.monotonic() + self.poll_interval
                remaining = next_poll - time.monotonic()
                wait = min(int(remaining), self.notification_wait)
                if self.notifications_enabled and wait >= 1:
                    self._guarded(functools.partial(self.drain_notifications, wait),
                                  "notifications")
                elif remaining > 0:
                    if self.notifications_enabled:
                        self._guarded(self.drain_notifications, "notifications")
                    stop.wait(max(0.0, next_poll - time.monotonic()))
        finally:
            self._stop = None

    def _guarded(self, step: Callable[[], int], what: str) -> None:
        try:
            step()
        except TransientStorageError as exc:
            log.warning("%s %s failed for now: %s", what, self.store.location, exc)
            if self._stop is not None:
                self._stop.wait(min(1.0, self.poll_interval))
        except Exception:
            log.exception("%s %s failed", what, self.store.location)
            if self._stop is not None:
                self._stop.wait(min(1.0, self.poll_interval))
