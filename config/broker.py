"""Which broker a URL names: the one place that maps a URL scheme to a `BrokerKind`.

Distributed mode runs on Redis or RabbitMQ; the Celery settings, queue inspection and
the tests are keyed by the kind, never by string tests on the URL elsewhere.
"""

from __future__ import annotations

from enum import StrEnum


class BrokerKind(StrEnum):
    REDIS = "redis"
    RABBITMQ = "rabbitmq"


SCHEMES: dict[str, BrokerKind] = {
    "redis": BrokerKind.REDIS, "rediss": BrokerKind.REDIS,
    "amqp": BrokerKind.RABBITMQ, "amqps": BrokerKind.RABBITMQ, "pyamqp": BrokerKind.RABBITMQ,
}


def broker_kind(url: str) -> BrokerKind:
    """The kind of broker `url` names; ValueError for a scheme Airlock does not run on."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    try:
        return SCHEMES[scheme]
    except KeyError:
        raise ValueError("must be a redis:// or amqp:// URL (or unset for embedded mode)"
                         ) from None
