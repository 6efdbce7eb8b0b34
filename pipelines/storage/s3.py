"""A `Store` over an S3 (or S3-compatible) bucket prefix, and the client factory.

Every key lives at ``<prefix>/<key>`` in the bucket. botocore retries transient
failures itself (standard mode, 5 attempts); what is still failing afterwards is
raised as `TransientStorageError`. S3 error codes become built-in exceptions:
NoSuchKey/404 → `FileNotFoundError`, AccessDenied/403 → `PermissionError`.
"""

from __future__ import annotations

import errno
import logging
import tempfile
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC
from typing import IO, TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from pipelines.storage.base import (
    InvalidKey,
    ObjectInfo,
    ObjectTooLarge,
    StorageError,
    TransientStorageError,
    check_key,
    check_prefix,
)

if TYPE_CHECKING:
    import boto3

    from config.settings import Settings

log = logging.getLogger(__name__)

_MISSING_CODES = {"NoSuchKey", "NotFound", "404"}
_DENIED_CODES = {"AccessDenied", "403", "Forbidden"}
_TRANSIENT_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
    "InternalError", "ServiceUnavailable", "RequestLimitExceeded", "TooManyRequests",
    "ConditionalRequestConflict", "OperationAborted", "PriorRequestNotComplete",
}
_UNSUPPORTED_CODES = {"NotImplemented", "501"}
_HEAD_THREADS = 8  # concurrent HEADs in which_exist; below botocore's 10 pooled connections


@dataclass(frozen=True)
class S3ClientParams:
    """How to reach the S3 (or SQS) endpoint; `from_settings` reads `Settings`.

    `max_attempts` is passed to botocore as is, where it counts retries: 5 means one
    request plus up to five retries.
    """

    endpoint_url: str | None = None
    region: str = "us-east-1"
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_attempts: int = 5
    addressing_style: str = "auto"
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> S3ClientParams:
        """Endpoint, region and timeouts from the `AIRLOCK_S3_*` settings."""
        return cls(
            endpoint_url=settings.s3_endpoint_url or None,
            region=settings.s3_region,
            connect_timeout=settings.s3_connect_timeout,
            read_timeout=settings.s3_read_timeout,
        )


def _params(source: Settings | S3ClientParams | None) -> S3ClientParams:
    if source is None:
        return S3ClientParams()
    if isinstance(source, S3ClientParams):
        return source
    return S3ClientParams.from_settings(source)


_SESSION_LOCK = threading.Lock()
_SESSION: boto3.session.Session | None = None


def _session() -> boto3.session.Session:
    """One boto3 session per process, so service models are loaded only once. boto3
    is imported here, when a client is first made: a drop-folder runner never needs it,
    and it was a tenth of every process's start-up."""
    import boto3

    global _SESSION
    if _SESSION is None:
        _SESSION = boto3.session.Session()
    return _SESSION


def make_client(service: str, source: Settings | S3ClientParams | None = None) -> Any:
    """A boto3 client for `service` with standard-mode retries and explicit timeouts.

    Credentials come from the usual boto3 chain unless `S3ClientParams` names them.
    """
    from botocore.config import Config

    params = _params(source)
    config = Config(
        region_name=params.region,
        retries={"mode": "standard", "max_attempts": params.max_attempts},
        connect_timeout=params.connect_timeout,
        read_timeout=params.read_timeout,
        s3={"addressing_style": params.addressing_style},
    )
    with _SESSION_LOCK:  # creating clients from one session is not thread-safe
        return _session().client(
            service,
            endpoint_url=params.endpoint_url,
            region_name=params.region,
            config=config,
            aws_access_key_id=params.aws_access_key_id,
            aws_secret_access_key=params.aws_secret_access_key,
        )


def make_s3_client(source: Settings | S3ClientParams | None = None) -> Any:
    """A boto3 S3 client built from `Settings` or `S3ClientParams` (see `make_client`)."""
    return make_client("s3", source)


def make_sqs_client(source: Settings | S3ClientParams | None = None) -> Any:
    """A boto3 SQS client (for S3 event notifications) with the same endpoint, region,
    timeouts and retries as S3."""
    return make_client("sqs", source)


def parse_s3_url(location: str) -> tuple[str, str]:
    """Split ``s3://bucket/prefix`` into (bucket, prefix); the prefix may be empty."""
    if not location.startswith("s3://"):
        raise ValueError(f"{location!r} is not an s3:// location")
    bucket, _, prefix = location[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"{location!r} names no bucket")
    return bucket, prefix.strip("/")


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def translate(exc: Exception, what: str) -> Exception:
    """The built-in (or storage) exception for a botocore error raised while doing `what`."""
    if isinstance(exc, ClientError):
        code, status = _error_code(exc), _status(exc)
        if code in _MISSING_CODES or (status == 404 and code != "NoSuchBucket"):
            return FileNotFoundError(errno.ENOENT, "no such object", what)
        if code in _DENIED_CODES or status == 403:
            return PermissionError(errno.EACCES, f"access denied ({code})", what)
        if code in _TRANSIENT_CODES or status in (429,) or status >= 500:
            return TransientStorageError(f"{what}: {code or status} after retries", exc)
        return StorageError(f"{what}: {code or status}: {exc}")
    if isinstance(exc, (HTTPClientError, BotoConnectionError)):
        return TransientStorageError(f"{what}: {exc}", exc)
    return StorageError(f"{what}: {exc}")


class S3Store:
    """Objects under ``s3://bucket/prefix``; `page_size` bounds each listing request."""

    def __init__(self, bucket: str, prefix: str = "", *, client: Any,
                 page_size: int = 1000) -> None:
        prefix = prefix.strip("/")
        if prefix:
            check_key(prefix)
        self.bucket = bucket
        self.prefix = prefix
        self.client = client
        self.page_size = page_size
        self.location = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self._base = f"{prefix}/" if prefix else ""

    def __repr__(self) -> str:
        return f"S3Store({self.location!r})"

    def object_key(self, key: str) -> str:
        """The full bucket key for a store key."""
        return self._base + check_key(key)

    def store_key(self, object_key: str) -> str | None:
        """The store key for a full bucket key; None if outside the prefix or unsafe."""
        if not object_key.startswith(self._base):
            return None
        key = object_key[len(self._base):]
        try:
            return check_key(key)
        except InvalidKey:
            return None

    def _call(self, what: str, method: str, **kwargs: Any) -> Any:
        try:
            return getattr(self.client, method)(Bucket=self.bucket, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, what) from exc

    def _describe(self, key: str) -> str:
        return f"{self.location}/{key}"

    # --- writing ----------------------------------------------------------------------

    def put_many(self, items: Iterable[tuple[str, bytes]], *, durable: bool = True) -> None:
        """A PutObject each: every one is durable once S3 answers (so is `durable`)."""
        for key, data in items:
            self.put(key, data)

    def put(self, key: str, data: bytes) -> None:
        """A single PutObject: S3 makes it visible whole or not at all."""
        full = self.object_key(key)
        self._call(self._describe(key), "put_object", Key=full, Body=data)

    def put_file(self, key: str, fileobj: IO[bytes]) -> None:
        """One PutObject streaming from `fileobj` (seekable: botocore sizes it)."""
        self._call(self._describe(key), "put_object", Key=self.object_key(key), Body=fileobj)

    def sync(self) -> None:
        """Nothing to do: every write is durable once S3 answers."""

    def put_if_absent(self, key: str, data: bytes, *, durable: bool = True) -> bool:
        """PutObject with ``If-None-Match: *``; False if the object already exists.

        Endpoints that do not implement conditional writes get HEAD then PUT (racy).
        If a successful write's response is lost and botocore retries it, the retry
        sees our own object and reports False: compare the content when that matters.
        """
        full = self.object_key(key)
        try:
            self.client.put_object(Bucket=self.bucket, Key=full, Body=data, IfNoneMatch="*")
        except ClientError as exc:
            code, status = _error_code(exc), _status(exc)
            if code == "PreconditionFailed" or status == 412:
                return False
            if code in _UNSUPPORTED_CODES or status == 501:
                if self.exists(key):
                    return False
                self.put(key, data)
                return True
            raise translate(exc, self._describe(key)) from exc
        except BotoCoreError as exc:
            raise translate(exc, self._describe(key)) from exc
        return True

    # --- reading ----------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        """The object's bytes. A body read that breaks off mid-way is retried as a whole."""
        full = self.object_key(key)
        what = self._describe(key)
        retries = self.client.meta.config.retries or {}
        attempts = max(1, int(retries.get("max_attempts", 5)))
        last: Exception | None = None
        for _ in range(attempts):
            response = self._call(what, "get_object", Key=full)
            body = response["Body"]
            try:
                return body.read()
            except BotoCoreError as exc:  # ReadTimeout, ResponseStreaming, IncompleteRead
                log.info("reading %s broke off (%s); reading it again", what, exc)
                last = exc
            finally:
                body.close()
        raise TransientStorageError(f"{what}: body read kept failing: {last}", last) from last

    @contextmanager
    def open(self, key: str, *, limit: int | None = None) -> Iterator[IO[bytes]]:
        """The object spooled to a temp file a block at a time (refused from the listed
        size, and again while reading, if over `limit`)."""
        what = self._describe(key)
        response = self._call(what, "get_object", Key=self.object_key(key))
        body = response["Body"]
        try:
            size = int(response.get("ContentLength", 0))
            if limit is not None and size > limit:
                raise ObjectTooLarge(key, size, limit)
            with tempfile.TemporaryFile(prefix="airlock-object-") as spool:
                written = 0
                try:
                    for block in body.iter_chunks(1024 * 1024):
                        written += len(block)
                        if limit is not None and written > limit:
                            raise ObjectTooLarge(key, written, limit)
                        spool.write(block)
                except BotoCoreError as exc:
                    raise translate(exc, what) from exc
                spool.seek(0)
                yield spool
        finally:
            body.close()

    def head(self, key: str) -> ObjectInfo:
        """Size and LastModified (UTC); `FileNotFoundError` if missing."""
        full = self.object_key(key)
        response = self._call(self._describe(key), "head_object", Key=full)
        modified = response["LastModified"].astimezone(UTC)
        return ObjectInfo(key, int(response["ContentLength"]), modified)

    def exists(self, key: str) -> bool:
        """True if the object exists (a HEAD request)."""
        try:
            self.head(key)
        except FileNotFoundError:
            return False
        return True

    def which_exist(self, keys: Iterable[str]) -> set[str]:
        """A HEAD per key, a few at a time: a batch's results are a tiny part of a
        bucket that keeps every result ever written, so listing would cost more."""
        keys = list(keys)
        with ThreadPoolExecutor(max_workers=_HEAD_THREADS) as pool:
            found = pool.map(self.exists, keys)
            return {key for key, there in zip(keys, found, strict=True) if there}

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """ListObjectsV2 pages (S3 returns keys in UTF-8 byte order, i.e. sorted).

        Keys that are not valid store keys (folder markers like ``ACME/``, ``a//b``)
        are skipped.
        """
        check_prefix(prefix)
        return self._list(prefix)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        for info in self.list_raw(prefix):
            if self.store_key(self._base + info.key) is None:
                if not info.key.endswith("/"):
                    log.warning("skipping unusable object key %r in %s", info.key,
                                self.location)
                continue
            yield info

    def list_raw(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """`list` with every object under `prefix`, its key as it is in the bucket
        (below the store prefix), whether or not it is a valid store key: a source
        must see the keys it cannot process to move them aside (`rescue`)."""
        check_prefix(prefix)
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket, Prefix=self._base + prefix,
            PaginationConfig={"PageSize": self.page_size},
        )
        try:
            for page in pages:
                for item in page.get("Contents", ()):
                    modified = item["LastModified"].astimezone(UTC)
                    yield ObjectInfo(item["Key"][len(self._base):], int(item["Size"]),
                                     modified)
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"listing {self.location}/{prefix}") from exc

    def list_folders(self, prefix: str = "") -> Iterator[str]:
        """Names of the immediate sub-folders under `prefix` (ListObjectsV2 with a "/"
        delimiter), e.g. the tenant areas at the root, without descending into them."""
        check_prefix(prefix)
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return self._list_folders(prefix)

    def _list_folders(self, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket, Prefix=self._base + prefix, Delimiter="/",
            PaginationConfig={"PageSize": self.page_size},
        )
        start = len(self._base + prefix)
        try:
            for page in pages:
                for common in page.get("CommonPrefixes", ()):
                    name = common["Prefix"][start:].rstrip("/")
                    if name and "/" not in name:
                        yield name
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"listing {self.location}/{prefix}") from exc

    # --- removing and renaming --------------------------------------------------------

    def remove_stale_temp(self, older_than: float) -> int:
        """Nothing to do: a PutObject is never seen half-written."""
        return 0

    def make_folder(self, prefix: str) -> None:
        """Nothing to do: a prefix exists with its first object."""
        check_key(prefix)

    def delete(self, key: str) -> None:
        """DeleteObject; S3 already treats a missing key as deleted."""
        full = self.object_key(key)
        try:
            self._call(self._describe(key), "delete_object", Key=full)
        except FileNotFoundError:
            return

    def rescue(self, raw_key: str, dst: str) -> None:
        """Move the object `raw_key` (as `list_raw` gives it: maybe no valid store key)
        to the store key `dst`, never replacing one: CopyObject then DeleteObject."""
        if self.exists(dst):
            raise FileExistsError(errno.EEXIST, "object exists", self._describe(dst))
        src_full = self._base + raw_key
        what = f"copying {self.location}/{raw_key!r} to {dst}"
        self._call(what, "copy_object", Key=self.object_key(dst),
                   CopySource={"Bucket": self.bucket, "Key": src_full})
        self._call(what, "delete_object", Key=src_full)

    def move(self, src: str, dst: str, *, durable: bool = True, replace: bool = True) -> None:
        """CopyObject then DeleteObject (not atomic: a crash in between leaves both).

        `replace=False` checks `dst` with a HEAD first: S3 has no conditional copy, so
        two movers racing for one name could still both write it (archive names carry
        the content hash, which makes such a pair the same file)."""
        src_full, dst_full = self.object_key(src), self.object_key(dst)
        if src_full == dst_full:
            self.head(src)
            return
        if not replace and self.exists(dst):
            raise FileExistsError(errno.EEXIST, "object exists", self._describe(dst))
        self._call(
            f"copying {self._describe(src)} to {dst}", "copy_object",
            Key=dst_full, CopySource={"Bucket": self.bucket, "Key": src_full},
        )
        self.delete(src)
