"""The IMAP and SMTP servers from their URLs, and the rule for encryption: TLS from
the start (imaps://, smtps://) or upgraded with STARTTLS; in the clear only to a
loopback address (a relay on the same host)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import unquote, urlsplit


class MailUrlError(ValueError):
    """A malformed mail URL; the message never contains the password."""


class Security(StrEnum):
    TLS = "tls"  # TLS from the first byte
    STARTTLS = "starttls"  # upgraded when the server offers it; refused otherwise unless loopback


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    security: Security
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    folder: str = "INBOX"

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def label(self) -> str:
        """For logs and the ledger: who and where, never the password."""
        return f"{self.user or ''}@{self.host}:{self.port}/{self.folder}"


_SCHEMES = {"imaps": (Security.TLS, 993), "imap": (Security.STARTTLS, 143),
            "smtps": (Security.TLS, 465), "smtp": (Security.STARTTLS, 587)}


def parse_endpoint(url: str, kind: str) -> Endpoint:
    """`kind` is "imap" or "smtp"; the URL's scheme must be of that kind."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise MailUrlError(f"the {kind} URL is malformed") from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES or not scheme.startswith(kind):
        raise MailUrlError(f"the {kind} URL must start with {kind}s:// or {kind}://")
    if not parts.hostname:
        raise MailUrlError(f"the {kind} URL names no host")
    security, default_port = _SCHEMES[scheme]
    folder = unquote(parts.path.lstrip("/")) or "INBOX"
    return Endpoint(host=parts.hostname, port=port or default_port, security=security,
                    user=unquote(parts.username) if parts.username else None,
                    password=unquote(parts.password) if parts.password else None,
                    folder=folder)
