"""The web application: `create_app(services)`; `airlock serve` runs it on uvicorn."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from config.settings import Settings
from pipelines.process import Processor
from pipelines.uploads import Uploads
from web.body import BodyTooLarge
from web.links import Links
from web.ratelimit import RateLimiter
from workers.runtime import Runtime

log = logging.getLogger("airlock.web")

PACKAGE = Path(__file__).parent

# Pages and answers load nothing from elsewhere; the API docs page loads Swagger UI.
def page_csp(logo: str | None) -> str:
    """The pages' policy; a logo at an https URL adds its origin to the images allowed."""
    origin = ""
    if logo and logo.startswith("https://"):
        parts = urlsplit(logo)
        origin = f" https://{parts.netloc}"
    return (f"default-src 'self'; img-src 'self' data:{origin}; object-src 'none'; "
            "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
_DOCS_CSP = ("default-src 'self'; img-src 'self' data: https://fastapi.tiangolo.com; "
             "script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
             "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; object-src 'none'; "
             "frame-ancestors 'none'")


@dataclass
class WebServices:
    """What the routes need, built once by the entry point."""

    runtime: Runtime
    uploads: Uploads
    links: Links
    limiter: RateLimiter  # public uploads
    logins: RateLimiter  # console sign-in attempts

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def engine(self) -> Engine:
        return self.runtime.engine

    @property
    def processor(self) -> Processor:
        return self.runtime.processor

    def now(self) -> datetime:
        return self.processor.clock()


class SecurityHeaders:
    """CSP and the usual headers on every answer (plain ASGI: no per-request task)."""

    def __init__(self, app: ASGIApp, csp: str) -> None:
        self.app = app
        self.csp = csp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = _DOCS_CSP if scope["path"] == "/docs" else self.csp

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Content-Security-Policy"] = csp
                headers["X-Content-Type-Options"] = "nosniff"
                headers["X-Frame-Options"] = "DENY"
                headers["Referrer-Policy"] = "no-referrer"
                headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(services: WebServices) -> FastAPI:
    from web import api, console
    from web.portal import router as portal_router
    from web.portal import templates_for

    app = FastAPI(title="Airlock", version="1", docs_url="/docs", redoc_url=None,
                  openapi_url="/openapi.json",
                  description="Upload offline license request files and fetch the answers.")
    app.state.services = services
    app.state.templates = templates_for(services.settings)
    app.mount("/static", StaticFiles(directory=PACKAGE / "static"), name="static")
    app.include_router(api.router)
    api.install(app)
    app.include_router(portal_router)
    app.include_router(console.router)
    console.install(app)

    app.add_middleware(SecurityHeaders, csp=page_csp(services.settings.portal_logo))

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge) -> Response:
        return JSONResponse(status_code=413, content={
            "reason": "too_large", "message": f"The upload is larger than the accepted "
            f"limit of {exc.limit} bytes."}, headers={"Connection": "close"})

    return app
