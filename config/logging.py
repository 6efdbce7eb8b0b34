"""Logging set-up for the entry points: one line per event, never file contents or keys.

Two formats: ``text`` (the default, for people) and ``json`` (one object per line, for
log pipelines). A record's structured fields come from ``extra=`` (`FIELDS`: the
customer, job, request id and reason of a file); both formats pass every message
through `redact`, so a URL's password never reaches a log, whoever logged it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from enum import StrEnum


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


FIELDS = ("customer", "job", "request_id", "reason")
_NOISY = ("botocore", "boto3", "urllib3", "s3transfer", "amqp", "kombu")
# scheme://user:password@host → scheme://user:***@host; password=… and token=… too
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@")
_SECRET_PARAM = re.compile(r"(?i)(?P<head>\b(?:password|passwd|token|secret)=)[^&\s\"']+")


def redact(text: str) -> str:
    """`text` with passwords in URLs and secret query parameters replaced by ***."""
    # Both patterns need these; most lines (one per file) have neither, and the
    # membership tests cost a fraction of running the patterns.
    if "://" in text:
        text = _URL_PASSWORD.sub(r"\g<head>***@", text)
    if "=" in text:
        text = _SECRET_PARAM.sub(r"\g<head>***", text)
    return text


class _Redacting(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, event, the `FIELDS` given with
    ``extra=``, and the exception (type and message, then the traceback) if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname, "logger": record.name,
            "event": redact(record.getMessage()),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["error"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


def setup_logging(level: str = "INFO", fmt: LogFormat | str = LogFormat.TEXT) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if LogFormat(fmt) is LogFormat.JSON else
                         _Redacting("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
