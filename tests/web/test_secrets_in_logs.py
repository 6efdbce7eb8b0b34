"""Tokens, passwords and session cookies never reach the logs (access log included)."""

from __future__ import annotations

import logging
import re

import pytest

from models.db import session_scope
from pipelines.operators import add_operator
from tests.web.conftest import Served


def test_no_secret_is_logged(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = served.token()
    password = "a password nobody logs"
    with session_scope(served.engine) as session:
        add_operator(session=session, name="alice", password=password)
    key = served.license()
    with served.client(token) as api:
        api.post("/api/v1/files", params={"name": "a.req"},
                 content=served.device().activation(license_key=key))
        api.get("/api/v1/jobs/1")
    with served.client("alk_wrong_guess") as stranger:
        stranger.get("/api/v1/jobs/1")
    with served.client() as browser:
        form = browser.get("/console/login").text
        login_token = re.search(r'name="token" value="([^"]+)"', form)[1]  # type: ignore[index]
        signed = browser.post("/console/login", data={"name": "alice", "password": password,
                                                       "token": login_token})
        session_cookie = signed.cookies.get("airlock_session")
        browser.get("/console/licenses")
        browser.post("/console/login", data={"name": "alice", "password": password + "x",
                                              "token": "stale"})
    assert session_cookie
    # what the server side logged (the test's own HTTP client logs headers at DEBUG)
    logged = "\n".join(f"{r.name} {r.getMessage()} {r.__dict__}" for r in caplog.records
                       if not r.name.startswith(("httpx", "httpcore")))
    assert "POST /api/v1/files" in logged  # the access log is there
    for secret in (token, token.split("_", 2)[2], password, session_cookie, login_token,
                   "alk_wrong_guess"):
        assert secret not in logged
