"""Deliver files dropped into an ``s3://`` inbox to a callback.

The poller is the authority: every `poll_interval` it lists the tenant and operator
areas and hands every arrival still present to `on_batch`, one object at a time. The
callback processes and archives (copy + delete) the object once its own job has
committed, so an object still present on the next poll is simply handed over again
and the caller's ledger (a unique row) drops the duplicate. An object whose
hand-over failed is tried again on a later poll, with the backoff of
`pipelines.outage`; while the callback's dependency is down only those retries run.
S3 event notifications through SQS only make delivery quicker; they may be late,
duplicated or missing.

An object that cannot be processed as it is ends once, like any file
(`pipelines.sources.refusals`): one over its size limit is refused ``too_large``
from the listed size (or a HEAD), never downloaded; one whose key no store accepts
(a control character, too long for its archive keys) is moved to a stand-in key in
its area first and refused ``bad_name``. Either is handed over as
`layout.Arrival.refused`, and the callback archives it to the rejected prefix with
its report.
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

from pipelines.errors import RejectReason
from pipelines.layout import Arrival, is_area, is_temporary_name, make_arrival
from pipelines.outage import Backoff, Dependency, Outage, Retries
from pipelines.sources import refusals
from pipelines.sources.base import OnBatch
from pipelines.sources.refusals import SizeLimits, escaped
from pipelines.sources.sqs import created_keys
from pipelines.storage.base import ObjectInfo, ObjectTooLarge, TransientStorageError
from pipelines.storage.s3 import S3Store, translate

log = logging.getLogger(__name__)

MAX_BATCHES_PER_DRAIN = 10  # 10 × 10 messages, then let the poller have a turn


class _Outcome(enum.Enum):
    DELIVERED = "delivered"
    SKIPPED = "skipped"  # not an arrival, gone already, or too young: nothing to retry
    RETRY = "retry"  # a transient failure or a failing callback: try again later
    WAITING = "waiting"  # failed before, its retry is not due yet


class S3Source:
    """Polls an `S3Store` inbox (and optionally an SQS queue of S3 events).

    `min_age` (seconds) leaves objects younger than that for a later poll.
    `notification_wait` caps an SQS long poll inside `run`, bounding how long a stop
    request can wait. `backoff` spaces the retries of failed hand-overs. `limits`:
    the largest object read (larger ones are refused from their listed size).
    """

    def __init__(
        self,
        store: S3Store,
        *,
        on_batch: OnBatch,
        poll_interval: float,
        sqs_client: Any = None,
        queue_url: str | None = None,
        min_age: float = 0,
        notification_wait: int = 2,
        clock: Callable[[], float] = time.time,
        backoff: Backoff | None = None,
        limits: SizeLimits | None = None,
    ) -> None:
        if (sqs_client is None) != (queue_url is None):
            raise ValueError("notifications need both sqs_client and queue_url")
        self.store = store
        self.on_batch = on_batch
        self.poll_interval = poll_interval
        self.sqs_client = sqs_client
        self.queue_url = queue_url
        self.min_age = min_age
        self.limits = limits or SizeLimits()
        self.notification_wait = max(0, min(int(notification_wait), 20))
        self._clock = clock
        self._stop: threading.Event | None = None
        self._retries: Retries[str] = Retries(backoff, clock=clock)
        self._outage = Outage(log, clock=clock)
        self._step_failures = 0

    @property
    def notifications_enabled(self) -> bool:
        """True when an SQS queue of S3 events is configured."""
        return self.sqs_client is not None

    def _stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    # --- one object ---------------------------------------------------------------------

    def _handle(self, key: str, info: ObjectInfo | None = None) -> _Outcome:
        """Read inbox `key` (as listed: maybe not a valid store key) and hand it to
        `on_batch`, or hand it over refused without reading it; never raises."""
        area, _, name = key.partition("/")
        if not is_area(area) or not _is_candidate(name):
            return _Outcome.SKIPPED
        if self._retries.is_waiting(key):
            return _Outcome.WAITING
        where = f"{self.store.location}/{escaped(key)}"
        try:
            problem = refusals.name_problem(area, name)
            if problem and refusals.is_stand_in(name):
                problem = None  # renamed here before: refused below
            if problem is None and info is None:  # a notification: the size from a HEAD
                info = self.store.head(key)
            if info is not None and self.min_age > 0 \
                    and self._clock() - info.modified.timestamp() < self.min_age:
                return _Outcome.SKIPPED
            arrival = self._refused(area, name, key, info, problem) or self._read(
                key, self.limits.for_name(area, name))
        except FileNotFoundError:
            log.debug("%s is gone (archived by someone else)", where)
            self._retries.forget(key)
            return _Outcome.SKIPPED
        except TransientStorageError as exc:
            self._retries.failed(key)
            log.warning("reading %s failed for now, will retry: %s", where, exc)
            return _Outcome.RETRY
        except Exception:
            self._retries.failed(key)
            log.exception("reading %s failed, will retry", where)
            return _Outcome.RETRY
        try:
            left = self.on_batch([arrival])
        except Exception as exc:  # noqa: BLE001 - retried with backoff, logged once
            self._outage.failed(exc, where, first=self._retries.failed(key) == 1)
            return _Outcome.RETRY
        if self._outage.recovered():
            self._retries.hurry()  # the objects that waited for it go on this poll
        if left:  # the handler logged why; the core quarantines it in the end
            self._retries.failed(key)
            return _Outcome.RETRY
        self._retries.forget(key)
        return _Outcome.DELIVERED

    def _refused(self, area: str, name: str, key: str, info: ObjectInfo | None,
                 problem: str | None) -> Arrival | None:
        """The refusal of an object that must not be read; None for one to read."""
        if problem is not None:  # moved aside to a key every store accepts, then refused
            stand_in = f"{area}/{refusals.stand_in(name)}"
            self.store.rescue(key, stand_in)
            log.warning("%s: key %s; moved to %s", escaped(key), problem, stand_in)
            info = self.store.head(stand_in)
            return self._refusal(area, info, RejectReason.BAD_NAME,
                                 refusals.bad_name_detail(name, problem))
        assert info is not None
        if refusals.is_stand_in(name):
            return self._refusal(area, info, RejectReason.BAD_NAME, refusals.RENAMED)
        limit = self.limits.for_name(area, name)
        if info.size > limit:
            return self._refusal(area, info, RejectReason.TOO_LARGE,
                                 refusals.too_large_detail(info.size, limit))
        return None

    def _refusal(self, area: str, info: ObjectInfo, reason: RejectReason,
                 detail: str) -> Arrival:
        log.info("%s/%s refused unread: %s (%s)", self.store.location, info.key, reason,
                 detail)
        return Arrival.refused(area=area, name=info.key.partition("/")[2], key=info.key,
                               reason=reason, size=info.size,
                               identity=f"size {info.size} modified "
                                        f"{info.modified.isoformat()}", detail=detail)

    def _read(self, key: str, limit: int) -> Arrival:
        """The object's bytes, at most `limit` (refused if it grew past it since listed)."""
        try:
            with self.store.open(key, limit=limit) as handle:
                return make_arrival(key, handle.read())
        except ObjectTooLarge as exc:
            info = self.store.head(key)
            return self._refusal(key.partition("/")[0], info, RejectReason.TOO_LARGE,
                                 refusals.too_large_detail(exc.size, limit))

    # --- polling ------------------------------------------------------------------------

    def areas(self) -> list[str]:
        """The tenant folders and the operator folder present at the inbox root."""
        return sorted(name for name in self.store.list_folders() if is_area(name))

    def poll_once(self) -> int:
        """List every arrival and hand each over once; the number delivered.

        Reserved areas (``_processed/`` and friends) are never listed. Listing errors
        propagate; a failure on one object is logged and retried on a later poll.
        """
        delivered = 0
        listed: list[str] = []
        areas = self.areas()
        self._outage.recovered(Dependency.STORAGE)
        for area in areas:
            for info in self.store.list_raw(f"{area}/"):
                if self._stopping():
                    return delivered
                listed.append(info.key)
                if self._holding_back() and info.key not in self._retries:
                    continue  # the dependency is down: only the retries find out when
                if self._handle(info.key, info) is _Outcome.DELIVERED:
                    delivered += 1
        self._retries.keep_only(listed)  # the others were archived by someone else
        return delivered

    def _holding_back(self) -> bool:
        return self._outage.down and len(self._retries) > 0

    # --- the Source protocol --------------------------------------------------------------

    def recover(self) -> int:
        """Nothing to do: objects are never claimed, so every poll hands over again
        whatever a dead or failed run left in the inbox."""
        return 0

    def drain(self, timeout: float, stop: threading.Event | None = None) -> bool:
        """Poll until a poll hands nothing over: True if nothing waits for a retry
        then. False after `timeout` seconds, on `stop`, or when a dependency is down."""
        deadline = time.monotonic() + timeout
        self._stop = stop
        try:
            while True:
                delivered = self.poll_once()
                if self._outage.down:
                    return False
                if delivered == 0:
                    return len(self._retries) == 0
                if time.monotonic() >= deadline or self._stopping():
                    return False
        finally:
            self._stop = None

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
        except Exception as exc:  # noqa: BLE001 - the loop goes on; logged once
            self._step_failures += 1
            self._outage.failed(exc, f"{what} {self.store.location}",
                                first=self._step_failures == 1)
            if self._stop is not None:
                self._stop.wait(min(1.0, self.poll_interval))
            return
        self._step_failures = 0
        self._outage.recovered(Dependency.STORAGE)


def _is_candidate(name: str) -> bool:
    """An object to hand over: not a folder marker, temporary, or in a hidden folder
    (what `layout.parse_arrival_key` judges, for a key that may not be valid)."""
    return bool(name) and not name.endswith("/") and not is_temporary_name(name) \
        and not any(segment.startswith(".") for segment in name.split("/"))
