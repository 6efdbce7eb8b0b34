"""The storage contract shared by the inbox and the outbox: a flat key space of blobs.

Keys are relative, "/"-separated strings such as ``ACME/device-42.req``. Every store
validates a key with `check_key` before touching anything, so a key coming from the
outside world (an S3 listing, an event notification, a file name) can never name
something outside the store root.

Errors are the built-in ones wherever a built-in fits (`FileNotFoundError`,
`PermissionError`); a failure that may go away on its own (throttling, a timeout,
a dropped connection, after the client's own retries) is a `TransientStorageError`,
so a caller can try again later instead of rejecting the file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Protocol, runtime_checkable

MAX_KEY_BYTES = 1024


class InvalidKey(ValueError):
    """A key is empty, absolute, has "."/".."/empty segments, or unsafe characters."""


class StorageError(Exception):
    """A storage back end failed in a way that has no better built-in equivalent."""


class ObjectTooLarge(StorageError):
    """An object is larger than the reader's limit: refused from its size, never read whole.

    `size` is the size known when refusing (the stored size, or at least limit + 1).
    """

    def __init__(self, key: str, size: int, limit: int) -> None:
        super().__init__(f"{key}: {size} bytes, more than the limit of {limit}")
        self.key = key
        self.size = size
        self.limit = limit


class TransientStorageError(StorageError):
    """A back-end failure worth retrying later (throttling, timeout, lost connection).

    `cause` is the underlying exception (also chained as ``__cause__``).
    """

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # exactly Unicode category Cc
# The keys the pipeline makes itself (ASCII segments, none "." or ".."), recognised in
# one match: each file's keys are checked about a dozen times on their way through.
_PLAIN_SEGMENT = r"(?!\.\.?(?:/|\Z))[A-Za-z0-9_.@+=,~-]+"
_PLAIN_KEY = re.compile(rf"(?:{_PLAIN_SEGMENT}/)*{_PLAIN_SEGMENT}\Z")


def check_key(key: str) -> str:
    """Return `key` unchanged if it is a safe relative key, else raise `InvalidKey`.

    Rejected: empty keys, absolute keys ("/x"), "." or ".." segments, empty segments
    ("a//b", "a/"), backslashes, NUL and other control characters, and keys longer
    than 1024 bytes in UTF-8.
    """
    if not isinstance(key, str):
        raise InvalidKey(f"key must be a string, not {type(key).__name__}")
    if len(key) <= MAX_KEY_BYTES and _PLAIN_KEY.match(key):
        return key  # ASCII: as many bytes as characters
    if not key:
        raise InvalidKey("key is empty")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidKey(f"key {key!r} is not valid Unicode") from None
    if size > MAX_KEY_BYTES:
        raise InvalidKey(f"key is {size} bytes long (at most {MAX_KEY_BYTES})")
    if "\\" in key:
        raise InvalidKey(f"key {key!r} contains a backslash")
    if _CONTROL.search(key):
        raise InvalidKey(f"key {key!r} contains a control character")
    if key.startswith("/"):
        raise InvalidKey(f"key {key!r} is absolute")
    segments = key.split("/")
    if "" in segments:
        raise InvalidKey(f"key {key!r} has an empty segment")
    for dots in (".", ".."):
        if dots in segments:
            raise InvalidKey(f"key {key!r} has a {dots!r} segment")
    return key


def check_prefix(prefix: str) -> str:
    """Validate a listing prefix: "" (everything) or a key, optionally ending in "/"."""
    if prefix == "":
        return prefix
    check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key (relative to the store root), size and mtime (UTC)."""

    key: str
    size: int
    modified: datetime


@runtime_checkable
class Store(Protocol):
    """A folder or a bucket prefix holding blobs under relative keys."""

    location: str
    """Where the store lives, for messages: ``file:///abs/path`` or ``s3://bucket/prefix``."""

    def put(self, key: str, data: bytes) -> None:
        """Write `data` atomically (readers never see partial content), replacing any
        existing object; retrying a put rewrites the same object, never a second one."""
        ...

    def put_many(self, items: Iterable[tuple[str, bytes]], *, durable: bool = True) -> None:
        """`put` each (key, data): atomic each, durable all together when this returns
        (a local store syncs once for the batch); `durable=False` leaves that to a later
        `sync`."""
        ...

    def put_file(self, key: str, fileobj: IO[bytes]) -> None:
        """`put` with the content read from `fileobj` (from its position to the end),
        never all of it in memory at once."""
        ...

    def put_if_absent(self, key: str, data: bytes, *, durable: bool = True) -> bool:
        """Write `data` only if `key` does not exist yet; True if this call wrote it.
        `durable=False` leaves making it durable to a later `sync`."""
        ...

    def sync(self) -> None:
        """Make every write and move done with `durable=False` durable (one flush for a
        whole batch where that is cheaper); a no-op where each write is durable already."""
        ...

    def get(self, key: str) -> bytes:
        """The object's bytes; `FileNotFoundError` if missing."""
        ...

    def open(self, key: str, *, limit: int | None = None) -> AbstractContextManager[IO[bytes]]:
        """A seekable binary file with the object's bytes, never all of them in memory;
        `ObjectTooLarge` (from the stored size, before reading, and while reading) when
        there are more than `limit` bytes; `FileNotFoundError` if missing."""
        ...

    def head(self, key: str) -> ObjectInfo:
        """The object's metadata; `FileNotFoundError` if missing."""
        ...

    def exists(self, key: str) -> bool:
        """True if an object is stored under `key`."""
        ...

    def which_exist(self, keys: Iterable[str]) -> set[str]:
        """The subset of `keys` that are stored: cost grows with `keys`, not the store."""
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, recursively, sorted by key."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing object is not an error."""
        ...

    def remove_stale_temp(self, older_than: float) -> int:
        """Remove this store's own temp files (writes a killed process left half-done)
        untouched for `older_than` seconds; how many. Nothing to do on S3."""
        ...

    def make_folder(self, prefix: str) -> None:
        """Make the folder `prefix` exist where folders are real, so a customer can be
        shown where to drop files; on S3 a prefix exists with its first object."""
        ...

    def move(self, src: str, dst: str, *, durable: bool = True, replace: bool = True) -> None:
        """Rename `src` to `dst`; `FileNotFoundError` if `src` is missing. With
        `replace=False` an existing `dst` is a `FileExistsError` instead of replaced;
        `durable=False` leaves making the move durable to a later `sync`."""
        ...
