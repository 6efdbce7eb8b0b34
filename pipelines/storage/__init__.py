"""Blob storage for the inbox and the outbox: a local folder or an S3 bucket prefix.

`open_store(settings.resolved_inbox, settings)` gives a `Store`; see `base.Store` for
the contract every implementation keeps.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from pipelines.storage.base import (
    InvalidKey,
    ObjectInfo,
    ObjectTooLarge,
    StorageError,
    Store,
    TransientStorageError,
    check_key,
    check_prefix,
)
from pipelines.storage.local import LocalStore
from pipelines.storage.s3 import (
    S3ClientParams,
    S3Store,
    make_client,
    make_s3_client,
    make_sqs_client,
    parse_s3_url,
)

if TYPE_CHECKING:
    from config.settings import Settings

__all__ = [
    "InvalidKey",
    "LocalStore",
    "ObjectInfo",
    "ObjectTooLarge",
    "S3ClientParams",
    "S3Store",
    "StorageError",
    "Store",
    "TransientStorageError",
    "check_key",
    "check_prefix",
    "make_client",
    "make_s3_client",
    "make_sqs_client",
    "open_store",
    "parse_s3_url",
]


def open_store(location: str, settings: Settings | None = None, *, client: Any = None) -> Store:
    """A `LocalStore` for a folder path, an `S3Store` for ``s3://bucket/prefix``.

    The S3 client is built from `settings` (endpoint, region, timeouts) unless given;
    a `LocalStore` writes its files with ``settings.file_mode`` (0640 without settings).
    """
    if not location:
        raise ValueError("no storage location given")
    if location.startswith("s3://"):
        bucket, prefix = parse_s3_url(location)
        return S3Store(bucket, prefix, client=client or make_s3_client(settings))
    if location.startswith("file://"):
        location = unquote(urlsplit(location).path)
    if settings is None:
        return LocalStore(Path(location))
    return LocalStore(Path(location), file_mode=settings.file_mode)
