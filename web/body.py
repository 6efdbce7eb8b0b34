"""Upload bodies read as they stream in, and refused the moment they pass the limit.

Nothing is buffered past the limit: a raw body is spooled to a temporary file (in
memory while small) with its hash computed on the way; a form's body is counted
before the multipart parser sees it.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from typing import IO

from starlette.requests import Request
from starlette.types import Message, Receive

SPOOL_IN_MEMORY = 1024 * 1024  # bytes kept in memory before the spool goes to disk


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the upload is larger than {limit} bytes")
        self.limit = limit


@dataclass
class Body:
    file: IO[bytes]
    sha256: str
    size: int


def _declared_too_large(request: Request, limit: int) -> bool:
    declared = request.headers.get("content-length", "")
    return declared.isdigit() and int(declared) > limit


async def read_body(request: Request, limit: int) -> Body:
    """The raw request body, `BodyTooLarge` once more than `limit` bytes arrive (or are
    announced)."""
    if _declared_too_large(request, limit):
        raise BodyTooLarge(limit)
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, prefix="airlock-upload-")
    digest = hashlib.sha256()
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            digest.update(chunk)
            spool.write(chunk)
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return Body(file=spool, sha256=digest.hexdigest(), size=size)  # type: ignore[arg-type]


def limit_body(request: Request, limit: int) -> Request:
    """`request` with a receive channel that raises `BodyTooLarge` past `limit` bytes
    (for the form parser, which reads the body itself)."""
    if _declared_too_large(request, limit):
        raise BodyTooLarge(limit)
    received = 0
    inner: Receive = request.receive

    async def receive() -> Message:
        nonlocal received
        message = await inner()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)
        return message

    return Request(request.scope, receive)


def body_of(data: bytes) -> Body:
    """A `Body` for bytes already in hand (a form field)."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
    spool.write(data)
    spool.seek(0)
    return Body(file=spool, sha256=hashlib.sha256(data).hexdigest(), size=len(data))  # type: ignore[arg-type]
