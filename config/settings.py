"""The one typed configuration object, read from `AIRLOCK_*` environment variables.

Build it once at an entry point (`load_settings()`) and pass it down; nothing else
in the code base reads the environment.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.broker import broker_kind
from config.logging import LogFormat


class SettingsError(Exception):
    """A setting is malformed; the message names it and says what is expected."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AIRLOCK_", extra="ignore", frozen=True)

    home: Path = Field(default=Path("var"), description="Working folder for the defaults")
    database_url: str = Field(default="", description="SQLAlchemy URL; default SQLite in home")
    broker_url: str | None = Field(default=None, description="Celery broker; unset = embedded")
    inbox: str = Field(default="", description="Folder or s3://bucket/prefix")
    outbox: str = Field(default="", description="Folder or s3://bucket/prefix")
    keys_dir: Path | None = Field(default=None, description="Vendor keyring folder")

    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_connect_timeout: float = 5.0
    s3_read_timeout: float = 30.0
    sqs_queue_url: str | None = Field(default=None, description="Optional S3 event queue")
    # Permissions of the result and archive files a local store writes, as an octal
    # string ("640", "0600"); folders it creates are 0750.
    file_mode: int = Field(default=0o640, description="Octal mode of stored files")
    log_format: LogFormat = Field(default=LogFormat.TEXT, description="text or json")
    # /metrics for Prometheus on run, watch and worker (unset: not served). The address
    # is loopback unless set: the metrics name customers.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_address: str = "127.0.0.1"

    max_file_bytes: int = Field(default=256 * 1024, gt=0)
    max_archive_members: int = Field(default=200_000, gt=0)
    max_archive_bytes: int = Field(default=1024**3, gt=0, description="Largest bulk archive file")
    max_uncompressed_bytes: int = Field(default=2 * 1024**3, gt=0)
    max_compression_ratio: float = Field(default=200.0, gt=1)

    settle_seconds: float = Field(default=0.5, ge=0)
    scan_interval_seconds: float = Field(default=2.0, gt=0)
    # Only where the kernel cannot tell whether a dropped file is still open for
    # writing: how long after its last write a file never seen closed is waited for.
    open_hold_seconds: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=5, gt=0)
    task_time_limit: int = Field(default=300, gt=0)
    chunk_size: int = Field(default=200, gt=0)

    # Password guessing: after this many failures in the window an area's user is locked out.
    lockout_failures: int = Field(default=10, gt=0)
    lockout_window_seconds: int = Field(default=15 * 60, gt=0)
    # How long a vendor-signed request may wait before it is applied.
    vendor_request_days: int = Field(default=7, gt=0)

    # `airlock serve`: the portal, the customer API and (later) the console.
    serve_address: str = "127.0.0.1"
    serve_port: int = Field(default=8080, ge=1, le=65535)
    # Reverse proxies whose X-Forwarded-For / -Proto are believed (addresses or networks,
    # comma-separated). Empty: the peer is the client, and the headers are ignored.
    trusted_proxies: str = ""
    # An upload is answered at once when its outcome is ready within this long, else 202.
    answer_wait_seconds: float = Field(default=5.0, ge=0, le=60)
    portal_public: bool = Field(default=True, description="The account-free upload page")
    portal_uploads_per_minute: int = Field(default=30, gt=0, description="Per client address")
    portal_title: str = Field(default="Airlock offline activation", max_length=120)
    portal_logo: str | None = Field(default=None, description="https:// URL or image file")
    portal_accent: str = Field(default="#2f5d8a", description="Accent colour, #rgb or #rrggbb")
    portal_support: str | None = Field(default=None, max_length=200)
    portal_footer: str | None = Field(default=None, max_length=500)
    portal_templates: Path | None = Field(default=None, description="Pages that override ours")

    # `airlock mail`: request files by email, answers by reply.
    imap_url: str | None = Field(default=None, description="imaps://USER:PASS@HOST/FOLDER")
    smtp_url: str | None = Field(default=None, description="smtps:// or smtp:// (STARTTLS)")
    mail_from: str | None = Field(default=None, description="The replies' From address")
    # Take a sender only when the receiving server's Authentication-Results (under
    # `mail_authserv_id`) says DKIM or SPF passed for its domain.
    mail_require_auth: bool = False
    mail_authserv_id: str | None = Field(default=None, max_length=200)
    mail_poll_seconds: float = Field(default=60.0, gt=0, description="Without IDLE")
    mail_max_message_bytes: int = Field(default=25 * 1024 * 1024, gt=0)
    mail_max_attachments: int = Field(default=50, gt=0)

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, value: str) -> str:
        if value and not value.startswith(("sqlite", "postgresql")):
            raise ValueError("must be a sqlite:// or postgresql+psycopg:// URL")
        return value

    @field_validator("broker_url")
    @classmethod
    def _broker_scheme(cls, value: str | None) -> str | None:
        if value == "":
            return None
        if value is not None:
            broker_kind(value)  # Redis or RabbitMQ
        return value

    @field_validator("inbox", "outbox")
    @classmethod
    def _location(cls, value: str) -> str:
        if value.startswith("s3://") and len(value) <= len("s3://"):
            raise ValueError("an s3:// location needs a bucket: s3://bucket/prefix")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: str) -> str:
        entries = [entry.strip() for entry in value.split(",") if entry.strip()]
        for entry in entries:
            try:  # strict: uvicorn matches the text as written, so 10.0.0.1/8 never would
                ipaddress.ip_network(entry)
            except ValueError:
                raise ValueError(f"must list IP addresses or networks (no host bits), not "
                                 f"{entry!r}") from None
        return ",".join(entries)

    @field_validator("portal_logo")
    @classmethod
    def _logo(cls, value: str | None) -> str | None:
        if value and "://" in value and not value.startswith("https://"):
            raise ValueError("must be an https:// URL or the path of an image file")
        return value or None

    @field_validator("portal_accent")
    @classmethod
    def _accent(cls, value: str) -> str:
        if not re.fullmatch(r"#(?:[0-9a-fA-F]{3}){1,2}", value):
            raise ValueError(f"must be a colour such as #2f5d8a, not {value!r}")
        return value

    @field_validator("file_mode", mode="before")
    @classmethod
    def _file_mode(cls, value: object) -> int:
        if isinstance(value, str):
            text = value.strip()
            if not re.fullmatch(r"[0-7]{3,4}", text):
                raise ValueError(f"must be an octal mode of 3-4 digits such as 640, not {value!r}")
            mode = int(text, 8)
        elif isinstance(value, int) and not isinstance(value, bool):
            mode = value
        else:
            raise ValueError("must be an octal mode such as 640")
        if not 0 <= mode <= 0o777:
            raise ValueError(f"{mode:o}: only permission bits (no setuid/setgid/sticky)")
        if mode & 0o002:
            raise ValueError(f"{mode:o}: stored files must not be world-writable")
        if mode & 0o600 != 0o600:
            raise ValueError(f"{mode:o}: the owner must be able to read and write")
        return mode

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'airlock.db'}"

    @property
    def resolved_inbox(self) -> str:
        return self.inbox or str(self.home / "inbox")

    @property
    def resolved_outbox(self) -> str:
        return self.outbox or str(self.home / "outbox")

    @property
    def resolved_keys_dir(self) -> Path:
        return self.keys_dir or self.home / "keys"

    @property
    def embedded(self) -> bool:
        return self.broker_url is None


def load_settings(**overrides: object) -> Settings:
    """Read the environment once; raise SettingsError naming any malformed setting."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"AIRLOCK_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise SettingsError(f"invalid configuration: {problems}") from None
