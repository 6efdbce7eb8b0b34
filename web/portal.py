"""The public offline portal (``/``): upload a request file, get the answer at once.

No account: the file's own proof (the device key that signed it) authenticates it,
and the customer is the one owning the license it names (`pipelines.owner`). Works
as a plain HTML form; the script only adds drag and drop.
"""

from __future__ import annotations

import asyncio
import mimetypes
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.datastructures import UploadFile

from config.settings import Settings
from pipelines.errors import Rejection, RejectReason
from pipelines.owner import owner_of
from pipelines.render import device_file_name
from pipelines.uploads import Answer, NotYetRegistered, TicketKind
from web.api import TRY_AGAIN, attachment, services_of
from web.app import PACKAGE, WebServices
from web.body import body_of, limit_body

router = APIRouter(include_in_schema=False)
Services = Annotated[WebServices, Depends(services_of)]
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the other fields
PORTAL_NAME = "portal.req"


def templates_for(settings: Settings) -> Jinja2Templates:
    """Our pages, each overridable by a file of the same name in AIRLOCK_PORTAL_TEMPLATES."""
    folders = [str(settings.portal_templates)] if settings.portal_templates else []
    loader = FileSystemLoader([*folders, str(PACKAGE / "templates")])
    env = Environment(loader=loader, autoescape=select_autoescape(default=True))
    return Jinja2Templates(env=env)


def page(request: Request, services: WebServices, name: str, status: int = 200,
          **context: Any) -> HTMLResponse:
    templates: Jinja2Templates = request.app.state.templates
    settings = services.settings
    brand = {"title": settings.portal_title, "logo": logo_url(settings),
             "accent": settings.portal_accent, "support": settings.portal_support,
             "footer": settings.portal_footer}
    return templates.TemplateResponse(request, name, {"brand": brand, **context},
                                      status_code=status)


def _public(services: WebServices) -> None:
    if not services.settings.portal_public:
        raise HTTPException(404)


@router.get("/", response_class=HTMLResponse)
def portal(request: Request, services: Services) -> HTMLResponse:
    _public(services)
    return page(request, services, "portal.html")


def logo_url(settings: Settings) -> str | None:
    """Where pages load the logo from: its https URL, or ours for a file on this host."""
    logo = settings.portal_logo
    if not logo or logo.startswith("https://"):
        return logo
    return "/brand/logo"


@router.get("/brand/logo")
def logo(services: Services) -> Response:
    """The white-label logo when AIRLOCK_PORTAL_LOGO names a file here."""
    path = services.settings.portal_logo
    if not path or path.startswith("https://"):
        raise HTTPException(404)
    try:
        content = Path(path).read_bytes()
    except OSError:
        raise HTTPException(404) from None
    media = mimetypes.guess_type(path)[0] or "application/octet-stream"
    if not media.startswith("image/"):
        raise HTTPException(404)
    return Response(content, media_type=media, headers={"Cache-Control": "max-age=300"})


@router.get("/theme.css")
def theme(services: Services) -> Response:
    """The white-label colour as a style sheet (the pages allow no inline style)."""
    accent = services.settings.portal_accent
    return Response(f":root {{ --accent: {accent}; }}\n", media_type="text/css",
                    headers={"Cache-Control": "max-age=300"})


@router.post("/", response_class=HTMLResponse)
async def portal_upload(request: Request, services: Services) -> HTMLResponse:
    _public(services)
    address = request.client.host if request.client else "unknown"
    if not services.limiter.allow(address):
        return page(request, services, "answer.html", 429, refused=True,
                     message="Too many uploads from your address; wait a minute and try again.")
    limit = services.settings.max_file_bytes
    form = await limit_body(request, limit + FORM_OVERHEAD).form(max_files=1, max_fields=4)
    data, _name = await _file_of(form.get("file"), form.get("text"))
    if not data:
        return page(request, services, "answer.html", 400, refused=True,
                     message="Choose a request file, or paste its text, then upload.")
    if len(data) > limit:
        return page(request, services, "answer.html", 413, refused=True,
                     message=f"The file is larger than the accepted limit of {limit} bytes.")
    try:
        tenant = await asyncio.to_thread(owner_of, services.engine, services.processor, data)
    except Rejection as exc:
        return page(request, services, "answer.html", 422, refused=True,
                     reason=str(exc.public_reason), message=exc.public_message)
    body = body_of(data)
    uploads = services.uploads
    try:
        # never the sender's name: a public upload is one request file, never an archive
        ticket = await asyncio.to_thread(uploads.receive, tenant, PORTAL_NAME, body.file,
                                         sha256=body.sha256, size=body.size)
    except NotYetRegistered:
        return page(request, services, "answer.html", 503, pending=True, message=TRY_AGAIN)
    finally:
        body.file.close()
    answer = await asyncio.to_thread(uploads.wait, ticket, services.settings.answer_wait_seconds)
    status = 422 if answer.final and not answer.accepted else 200  # as a door refusal is
    return page(request, services, "answer.html", status, **_shown(services, answer))


async def _file_of(upload: Any, text: Any) -> tuple[bytes, str]:
    if isinstance(upload, UploadFile) and upload.filename:
        return await upload.read(), upload.filename
    if isinstance(text, str) and text.strip():
        return text.strip().encode("utf-8") + b"\n", "pasted.req"
    return b"", ""


def _shown(services: WebServices, answer: Answer) -> dict[str, Any]:
    if not answer.final:
        return {"pending": True, "message": "The file is still being processed. Upload the "
                "same file again in a minute to get its answer."}
    now = time.time()
    # A refused sign-in looks the same whether or not the user exists (the door refuses
    # an unknown one with no file to download).
    hidden = answer.reason == RejectReason.BAD_CREDENTIALS
    downloads = [{"name": device_file_name(name),
                  "url": services.links.path(answer.ticket.id, name, now=now)}
                 for name in answer.results] \
        if answer.ticket.kind is TicketKind.JOB and not hidden else []
    return {"refused": not answer.accepted, "reason": answer.reason,
            "message": answer.message or "Accepted: download the answer and load it on the "
            "device.", "downloads": downloads, "kind": answer.kind}


@router.get("/portal/results/{job_id}/{expires}/{signature}/{name:path}")
def portal_result(services: Services, job_id: int, expires: int, signature: str,
                  name: str) -> Response:
    _public(services)
    if not services.links.valid(job_id, name, expires, signature, now=time.time()):
        raise HTTPException(404)
    content = services.uploads.result(services.uploads.ticket_of(job_id), name)
    if content is None:
        raise HTTPException(404)
    return Response(content, media_type="application/octet-stream", headers={
        "Content-Disposition": attachment(device_file_name(name))})
