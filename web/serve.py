"""`airlock serve`: the web app on uvicorn, its uploads handed to this mode's intake."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from config.settings import Settings
from pipelines.uploads import Uploads
from web.app import WebServices
from web.links import Links, link_key
from web.ratelimit import RateLimiter
from workers.handover import handover_for
from workers.runtime import build_runtime

log = logging.getLogger("airlock.web")

LOGINS_PER_MINUTE = 10  # console sign-in attempts per client address


@contextmanager
def web_services(settings: Settings) -> Iterator[WebServices]:
    runtime = build_runtime(settings)
    handover, end_handover = handover_for(runtime)
    archives, end_archives = handover_for(runtime)  # started on the first archive
    uploads = Uploads(runtime.engine, runtime.inbox, runtime.outbox, handover,
                      archive_handover=archives)
    uploads.start()
    try:
        yield WebServices(runtime=runtime, uploads=uploads,
                          links=Links(link_key(runtime.keyring)),
                          limiter=RateLimiter(settings.portal_uploads_per_minute),
                          logins=RateLimiter(LOGINS_PER_MINUTE))
    finally:
        uploads.close()
        end_handover()
        end_archives()
        runtime.close()


def server_config(app: Any, settings: Settings, **options: Any) -> uvicorn.Config:
    """uvicorn's settings for `app`. The client's address (the portal's and the
    sign-in's limits are per address) is the peer's, unless the peer is one of
    `trusted_proxies`: then it is what that proxy put in X-Forwarded-For."""
    trusted = settings.trusted_proxies
    return uvicorn.Config(app, host=settings.serve_address, port=settings.serve_port,
                          log_config=None, server_header=False, proxy_headers=bool(trusted),
                          forwarded_allow_ips=trusted or None, **options)


def serve(settings: Settings, stop: threading.Event) -> None:
    """Serve until `stop` is set (SIGTERM/SIGINT set it through uvicorn)."""
    from web.app import create_app

    with web_services(settings) as services:
        server = uvicorn.Server(server_config(create_app(services), settings))
        watcher = threading.Thread(target=_stop_when, args=(stop, server), daemon=True)
        watcher.start()
        log.info("serving on http://%s:%d (%s mode)", settings.serve_address,
                 settings.serve_port, "embedded" if settings.embedded else "distributed")
        server.run()
        stop.set()


def _stop_when(stop: threading.Event, server: object) -> None:
    stop.wait()
    server.should_exit = True  # type: ignore[attr-defined]
