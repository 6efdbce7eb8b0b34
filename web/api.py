"""The customer API (``/api/v1``): upload files, follow jobs and batches, fetch answers.

Every route speaks for the customer its bearer token belongs to; another customer's
job, batch or result is answered exactly like one that does not exist (404).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipelines.archives import archive_format
from pipelines.tokens import Caller, authenticate
from pipelines.uploads import (
    Answer,
    IdempotencyConflict,
    NotYetRegistered,
    Ticket,
    TicketKind,
    safe_name,
)
from web.app import WebServices
from web.body import read_body

router = APIRouter(prefix="/api/v1", tags=["customer API"])
_bearer = HTTPBearer(auto_error=False, description="A customer token: alk_…")


def services_of(request: Request) -> WebServices:
    return request.app.state.services  # type: ignore[no-any-return]


Services = Annotated[WebServices, Depends(services_of)]


def caller(services: Services,
           credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
           ) -> Caller:
    found = None if credentials is None else authenticate(
        services.engine, credentials.credentials, now=services.now())
    if found is None:
        raise ApiError(401, "unauthorized", "A valid customer token is needed.",
                       headers={"WWW-Authenticate": "Bearer"})
    return found


Authorized = Annotated[Caller, Depends(caller)]


TRY_AGAIN = ("The file is stored and will be processed; send it again in a few seconds "
             "to get its answer.")


class ResultLink(BaseModel):
    name: str
    url: str


class AnswerModel(BaseModel):
    """Where an upload stands: final once processed (accepted or refused)."""

    type: Literal["job", "batch"]
    id: int
    status: str
    final: bool
    accepted: bool
    kind: str | None = None
    reason: str | None = None
    message: str | None = None
    results: list[ResultLink] = []
    total: int | None = None
    finished: int | None = None
    finished_at: datetime | None = None


class ErrorModel(BaseModel):
    reason: str
    message: str


class OutboxEntry(BaseModel):
    job_id: int
    status: str
    reason: str | None
    finished_at: datetime | None
    name: str
    url: str


def _model(answer: Answer) -> AnswerModel:
    ticket = answer.ticket
    base = f"/api/v1/{ticket.kind.value}es" if ticket.kind is TicketKind.BATCH \
        else f"/api/v1/{ticket.kind.value}s"
    return AnswerModel(
        type=ticket.kind.value, id=ticket.id, status=answer.status, final=answer.final,
        accepted=answer.final and answer.accepted, kind=answer.kind, reason=answer.reason,
        message=answer.message, total=answer.total, finished=answer.finished,
        finished_at=answer.finished_at,
        results=[ResultLink(name=name, url=f"{base}/{ticket.id}/results/{name}")
                 for name in answer.results])


class ApiError(Exception):
    """An API refusal: its status and the reason and sentence of the body."""

    def __init__(self, status: int, reason: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.headers = status, reason, message, headers


def _not_found() -> ApiError:
    return ApiError(404, "not_found", "No such job, batch or result.")


_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorModel}, 404: {"model": ErrorModel}, 422: {"model": ErrorModel}}


def _owned(services: WebServices, who: Caller, kind: TicketKind, ident: int) -> Ticket:
    ticket = services.uploads.find(who.tenant, kind, ident)
    if ticket is None:
        raise _not_found()
    return ticket


@router.post("/files", response_model=AnswerModel, status_code=200,
             responses={202: {"model": AnswerModel, "description": "Accepted, not yet final"},
                        409: {"model": ErrorModel}, 413: {"model": ErrorModel},
                        503: {"model": ErrorModel}, **_ERRORS},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/octet-stream": {"schema": {"type": "string",
                                                         "format": "binary"}}}}})
async def upload(request: Request, response: Response, services: Services, who: Authorized,
                 name: Annotated[str, Query(min_length=1, max_length=200,
                                            description="The file's name (an archive by "
                                            "its extension: .zip, .tar, .tar.gz, .ndjson)")],
                 idempotency_key: Annotated[str | None, Header(max_length=200)] = None
                 ) -> AnswerModel:
    """One request file, or a bulk archive, as the raw request body. The answer comes
    at once when it is ready within a few seconds; otherwise 202 and the job or batch
    to follow. With an ``Idempotency-Key``, a retried upload gets the first answer."""
    settings = services.settings
    limit = settings.max_archive_bytes if archive_format(safe_name(name)) \
        else settings.max_file_bytes
    body = await read_body(request, limit)
    uploads = services.uploads
    try:
        ticket = await asyncio.to_thread(uploads.claim_key, who.tenant, idempotency_key,
                                         body.sha256, services.now()) \
            if idempotency_key else None
        if ticket is None:
            ticket = await asyncio.to_thread(uploads.receive, who.tenant, name, body.file,
                                             sha256=body.sha256, size=body.size)
            if idempotency_key:
                await asyncio.to_thread(uploads.remember, idempotency_key, ticket)
    except IdempotencyConflict:
        raise ApiError(409, "idempotency_key_reused",
                       "This Idempotency-Key was used for another file.") from None
    finally:
        body.file.close()
    answer = await asyncio.to_thread(uploads.wait, ticket,
                                     0 if ticket.kind is TicketKind.BATCH
                                     else settings.answer_wait_seconds)
    if not answer.final:
        response.status_code = 202
    return _model(answer)


@router.get("/jobs/{job_id}", response_model=AnswerModel, responses=_ERRORS)
def get_job(services: Services, who: Authorized,
            job_id: Annotated[int, Path(ge=1, le=2**62)]) -> AnswerModel:
    """Where one uploaded file stands, and its answers once final."""
    return _model(services.uploads.answer(_owned(services, who, TicketKind.JOB, job_id)))


@router.get("/batches/{batch_id}", response_model=AnswerModel, responses=_ERRORS)
def get_batch(services: Services, who: Authorized,
              batch_id: Annotated[int, Path(ge=1, le=2**62)]) -> AnswerModel:
    """A bulk archive's progress (members finished of total) and, once done, its report."""
    return _model(services.uploads.answer(_owned(services, who, TicketKind.BATCH, batch_id)))


def _download(services: WebServices, ticket: Ticket, name: str) -> Response:
    content = services.uploads.result(ticket, name)
    if content is None:
        raise _not_found()
    return Response(content, media_type="application/octet-stream",
                    headers={"Content-Disposition": attachment(name)})


def attachment(name: str) -> str:
    """A Content-Disposition that names the download safely (ASCII, no path, no quotes)."""
    base = name.rsplit("/", 1)[-1]
    safe = "".join(ch for ch in base if ch.isascii() and (ch.isalnum() or ch in "._-+"))
    return f'attachment; filename="{safe or "result"}"'


_NAME = Annotated[str, Path(min_length=1, max_length=256)]


@router.get("/jobs/{job_id}/results/{name:path}", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}, **_ERRORS})
def get_job_result(services: Services, who: Authorized,
                   job_id: Annotated[int, Path(ge=1, le=2**62)], name: _NAME) -> Response:
    """One answer file of a finished job (license, refresh file, receipt, rejection)."""
    return _download(services, _owned(services, who, TicketKind.JOB, job_id), name)


@router.get("/batches/{batch_id}/results/{name:path}", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}, **_ERRORS})
def get_batch_result(services: Services, who: Authorized,
                     batch_id: Annotated[int, Path(ge=1, le=2**62)], name: _NAME) -> Response:
    """A finished batch's report (JSON or CSV)."""
    return _download(services, _owned(services, who, TicketKind.BATCH, batch_id), name)


@router.get("/outbox", response_model=list[OutboxEntry], responses=_ERRORS)
def get_outbox(services: Services, who: Authorized,
               since: Annotated[datetime, Query(description="ISO 8601 time, with its zone")],
               limit: Annotated[int, Query(ge=1, le=1000)] = 500) -> list[OutboxEntry]:
    """The answers of jobs finished since a time, oldest first (page with the last
    entry's time)."""
    if since.tzinfo is None:
        raise ApiError(422, "naive_time", "Give the time with its zone, e.g. Z.")
    try:
        since = since.astimezone(UTC)
    except OverflowError:
        raise ApiError(422, "invalid_request", "The time is out of range.") from None
    return [OutboxEntry(**row, url=f"/api/v1/jobs/{row['job_id']}/results/{row['name']}")
            for row in services.uploads.since(who.tenant, since, limit)]


def install(app: Any) -> None:
    """Every API refusal as ``{"reason", "message"}``, request validation included."""

    @app.exception_handler(ApiError)
    async def _refused(_request: Request, exc: ApiError) -> Response:
        return JSONResponse(status_code=exc.status, headers=exc.headers,
                            content={"reason": exc.reason, "message": exc.message})

    @app.exception_handler(NotYetRegistered)
    async def _later(_request: Request, _exc: NotYetRegistered) -> Response:
        return JSONResponse(status_code=503, headers={"Retry-After": "5"}, content={
            "reason": "try_again", "message": TRY_AGAIN})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if not request.url.path.startswith(router.prefix + "/"):
            return await http_exception_handler(request, exc)
        reason = "not_found" if exc.status_code == 404 else f"http_{exc.status_code}"
        return JSONResponse(status_code=exc.status_code, headers=exc.headers,
                            content={"reason": reason, "message": str(exc.detail)})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(f"{'.'.join(str(p) for p in error.get('loc', ()))}: "
                             f"{error.get('msg', 'invalid')}" for error in exc.errors()[:5])
        return JSONResponse(status_code=422, content={"reason": "invalid_request",
                                                      "message": problems[:500]})
