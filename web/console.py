"""The vendor console (``/console``): licenses, devices, refresh files, jobs, status.

Operators sign in with a password (`airlock operator add`); the session lives in the
database and its cookie is HttpOnly and SameSite=Strict. Every form that changes
something carries the session's CSRF token. Refresh files are made the way every file
is handled: a vendor-signed refresh request handed to the intake of this mode.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from models import JobStatus
from models.db import session_scope
from pipelines import catalog
from pipelines.catalog import CatalogError, FeatureSpec
from pipelines.jobs import JobQuery, job_record, list_jobs, retry_jobs
from pipelines.operators import SignedIn, sign_in, sign_out, signed_in
from pipelines.refresh_request import operator_refresh_request, refresh_scope
from pipelines.render import device_file_name
from pipelines.status import customer_status, hourly_outcomes
from web.api import attachment, services_of
from web.app import WebServices
from web.body import body_of
from web.chart import hourly_chart
from web.portal import page

router = APIRouter(prefix="/console", include_in_schema=False)
Services = Annotated[WebServices, Depends(services_of)]

SESSION_COOKIE = "airlock_session"
LOGIN_COOKIE = "airlock_login"  # double-submit token of the sign-in form


class _SignIn(Exception):
    """Not signed in: answered with the sign-in page."""


def operator(request: Request, services: Services) -> SignedIn:
    who = signed_in(services.engine, request.cookies.get(SESSION_COOKIE, ""),
                    now=services.now())
    if who is None:
        raise _SignIn()
    return who


Operator = Annotated[SignedIn, Depends(operator)]


def _check_csrf(who: SignedIn, token: str) -> None:
    if not hmac.compare_digest(who.csrf.encode(), token.encode()):
        raise HTTPException(403, detail="The form is stale; reload the page and try again.")


# --- notes after a redirect ----------------------------------------------------------------
# An action redirects to a page with a one-line note in the query string. The note is
# signed with the session's CSRF secret, so a link someone else crafts (a "your license
# was revoked, call …" message under the console's address) shows nothing.


def _note_query(who: SignedIn, page: str, **notes: str) -> str:
    """The query string for `notes` (message=…, error=…) on `page`, with their
    signature."""
    return urlencode({**notes, "sig": _note_sig(who, page, notes)})


def _note_sig(who: SignedIn, page: str, notes: dict[str, str]) -> str:
    text = "\0".join([page, *(f"{kind}={notes.get(kind, '')}" for kind in ("message", "error"))])
    return hmac.new(who.csrf.encode(), text.encode(), "sha256").hexdigest()


def _notes(who: SignedIn, page: str, sig: str, **notes: str) -> dict[str, str]:
    """`notes` if `sig` is this session's signature of them on `page`, else none."""
    if sig and hmac.compare_digest(sig, _note_sig(who, page, notes)):
        return notes
    return {kind: "" for kind in notes}


def _console(request: Request, services: WebServices, name: str, who: SignedIn | None,
             status: int = 200, **context: Any) -> HTMLResponse:
    return page(request, services, name, status, operator=who,
                csrf=who.csrf if who else None, **context)


def _cookie_flags(request: Request) -> dict[str, Any]:
    return {"httponly": True, "samesite": "strict", "path": "/console",
            "secure": request.url.scheme == "https"}


# --- signing in ------------------------------------------------------------------------


def login_page(request: Request, services: WebServices, status: int = 200,
               message: str | None = None) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = _console(request, services, "console_login.html", None, status,
                        login_token=token, message=message)
    response.set_cookie(LOGIN_COOKIE, token, max_age=3600, **_cookie_flags(request))
    return response


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, services: Services) -> HTMLResponse:
    return login_page(request, services)


@router.post("/login")
async def login(request: Request, services: Services, name: Annotated[str, Form()],
                password: Annotated[str, Form()], token: Annotated[str, Form()]) -> Response:
    address = request.client.host if request.client else "unknown"
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not hmac.compare_digest(expected.encode(), token.encode()):
        return login_page(request, services, 403, "The form is stale; try again.")
    if not services.logins.allow(address):
        return login_page(request, services, 429, "Too many attempts; wait a minute.")
    found = await asyncio.to_thread(sign_in, services.engine, name, password,
                                    now=services.now())
    if found is None:
        return login_page(request, services, 401, "Wrong name or password.")
    cookie, _who = found
    response = RedirectResponse("/console/licenses", status_code=303)
    response.set_cookie(SESSION_COOKIE, cookie, max_age=8 * 3600, **_cookie_flags(request))
    response.delete_cookie(LOGIN_COOKIE, path="/console")
    return response


@router.post("/logout")
def logout(request: Request, services: Services, who: Operator,
           csrf: Annotated[str, Form()]) -> Response:
    _check_csrf(who, csrf)
    sign_out(services.engine, who)
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/console")
    return response


@router.get("")
def home(who: Operator) -> Response:
    return RedirectResponse("/console/licenses", status_code=303)


# --- licenses and devices --------------------------------------------------------------


@router.get("/licenses", response_class=HTMLResponse)
def licenses(request: Request, services: Services, who: Operator, q: str = "",
             customer: str = "") -> HTMLResponse:
    with session_scope(services.engine) as session:
        rows = catalog.list_licenses(session=session, customer_code=customer or None)
    needle = q.strip().lower()
    if needle:
        rows = [r for r in rows if needle in r["key"].lower() or needle in r["customer"].lower()
                or needle in r["product"].lower()]
    return _console(request, services, "console_licenses.html", who, licenses=rows[:500],
                    q=q, customer=customer, total=len(rows))


def _license(services: WebServices, key: str) -> dict[str, Any]:
    try:
        with session_scope(services.engine) as session:
            return catalog.describe_license(session=session, key=key)
    except CatalogError:
        raise HTTPException(404, detail="No such license.") from None


@router.get("/licenses/{key}", response_class=HTMLResponse)
def license_page(request: Request, services: Services, who: Operator, key: str,
                 message: str = "", error: str = "", sig: str = "") -> HTMLResponse:
    notes = _notes(who, f"license:{key}", sig, message=message, error=error)
    return _console(request, services, "console_license.html", who,
                    lic=_license(services, key), message=notes["message"],
                    error=notes["error"])


def _back(who: SignedIn, key: str, **notes: str) -> RedirectResponse:
    query = _note_query(who, f"license:{key}", **notes)
    return RedirectResponse(f"/console/licenses/{quote(key)}?{query}#devices",
                            status_code=303)


@router.post("/licenses/{key}/devices/{hardware_id}/release")
def release(services: Services, who: Operator, key: str, hardware_id: str,
            csrf: Annotated[str, Form()]) -> Response:
    _check_csrf(who, csrf)
    try:
        with session_scope(services.engine) as session:
            catalog.release_device(session=session, key=key, hardware_id=hardware_id,
                                   now=services.now(), actor=who.actor)
    except CatalogError as exc:
        return _back(who, key, error=exc.message)
    return _back(who, key, message=f"Released {hardware_id}: its seat is free.")


@router.post("/licenses/{key}/devices/{hardware_id}/refresh")
async def refresh_file(request: Request, services: Services, who: Operator, key: str,
                       hardware_id: str, csrf: Annotated[str, Form()]) -> Response:
    """The device's license_refresh.lic, made through the intake like any file."""
    _check_csrf(who, csrf)
    lic = _license(services, key)
    request_file = operator_refresh_request(services.runtime.keyring,
                                            refresh_scope([key], hardware_id),
                                            now=services.now())
    body = body_of(request_file)
    uploads = services.uploads
    try:
        ticket = await asyncio.to_thread(uploads.receive, lic["customer"], "console-refresh.req",
                                         body.file, sha256=body.sha256, size=body.size)
    finally:
        body.file.close()
    answer = await asyncio.to_thread(uploads.wait, ticket, services.settings.answer_wait_seconds)
    if not answer.final:
        return _back(who, key, message=f"The refresh file is being made (job {ticket.id}); "
                     "download it from the job page.")
    if not answer.accepted or not answer.results:
        return _back(who, key, error=answer.message or "The refresh was refused.")
    name = answer.results[0]
    content = uploads.result(ticket, name) or b""
    return Response(content, media_type="application/octet-stream",
                    headers={"Content-Disposition": attachment(device_file_name(name))})


@router.post("/licenses/{key}/entitlements")
def entitlements(services: Services, who: Operator, key: str, csrf: Annotated[str, Form()],
                 extend_days: Annotated[str, Form()] = "",
                 max_activations: Annotated[str, Form()] = "",
                 feature: Annotated[str, Form()] = "") -> Response:
    """Extend, change seats, add or change a feature; devices learn of it through a
    refresh file."""
    _check_csrf(who, csrf)
    try:
        changes: dict[str, Any] = {}
        if extend_days.strip():
            changes["extend_days"] = _number(extend_days, "days")
        if max_activations.strip():
            changes["max_activations"] = _number(max_activations, "seats")
        if feature.strip():
            changes["put_features"] = [FeatureSpec.parse(feature.strip())]
        if not changes:
            return _back(who, key, error="Nothing to change.")
        with session_scope(services.engine) as session:
            catalog.update_license(session=session, key=key, now=services.now(),
                                   actor=who.actor, **changes)
    except (CatalogError, ValueError) as exc:
        return _back(who, key, error=getattr(exc, "message", str(exc)))
    return _back(who, key, message="Entitlements changed: download refresh files for the devices.")


def _number(text: str, what: str) -> int:
    value = text.strip()
    if not value.isdigit() or len(value) > 9:
        raise ValueError(f"{what}: a whole number, please")
    return int(value)


# --- jobs and status -------------------------------------------------------------------


@router.get("/jobs", response_class=HTMLResponse)
def jobs(request: Request, services: Services, who: Operator, status: str = "",
         customer: str = "", reason: str = "") -> HTMLResponse:
    try:
        chosen = JobStatus(status) if status else None
    except ValueError:
        chosen = None
    rows = list_jobs(services.engine, JobQuery(status=chosen, customer=customer or None,
                                               reason=reason or None, limit=200))
    return _console(request, services, "console_jobs.html", who, jobs=rows,
                    filters={"status": status, "customer": customer, "reason": reason},
                    statuses=[s.value for s in JobStatus])


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, services: Services, who: Operator, job_id: int,
             message: str = "", sig: str = "") -> HTMLResponse:
    runtime = services.runtime
    record = job_record(services.engine, runtime.inbox, runtime.outbox, job_id) \
        if 0 < job_id < 2**62 else None
    if record is None:
        raise HTTPException(404, detail="No such job.")
    return _console(request, services, "console_job.html", who, job=record,
                    message=_notes(who, f"job:{job_id}", sig, message=message)["message"])


@router.post("/jobs/{job_id}/retry")
def retry(services: Services, who: Operator, job_id: int,
          csrf: Annotated[str, Form()]) -> Response:
    _check_csrf(who, csrf)
    (result,) = retry_jobs(services.runtime, [job_id], actor=who.actor)
    note = f"{result.result}: {result.detail}" if result.detail else str(result.result)
    query = _note_query(who, f"job:{job_id}", message=note)
    return RedirectResponse(f"/console/jobs/{job_id}?{query}", status_code=303)


@router.get("/status", response_class=HTMLResponse)
def status(request: Request, services: Services, who: Operator) -> HTMLResponse:
    now = services.now()
    customers = customer_status(services.engine, services.runtime.inbox, now=now)
    hours = hourly_outcomes(services.engine, now=now, hours=24)
    return _console(request, services, "console_status.html", who, customers=customers,
                    chart=hourly_chart(hours), hours=hours,
                    since=(now - timedelta(hours=24)))


def install(app: Any) -> None:
    """Answer a request without a session with the sign-in page (or 401 for scripts)."""

    @app.exception_handler(_SignIn)
    async def _not_signed_in(request: Request, _exc: _SignIn) -> Response:
        if request.method == "GET":
            return RedirectResponse("/console/login", status_code=303)
        return Response("Sign in first.", status_code=401, media_type="text/plain")
