"""A real `airlock serve` app on uvicorn, on a loopback port, over a fresh workspace."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import Engine

from config.settings import Settings
from models.db import make_engine, session_scope
from models.migrate import upgrade
from pipelines.keyring import VendorKeyring, init_keyring
from pipelines.tokens import issue_token
from tests.factories import NOW, WireDevice, add_license, vendor
from web.app import WebServices, create_app
from web.serve import server_config, web_services


@dataclass
class Served:
    base_url: str
    settings: Settings
    engine: Engine
    keyring: VendorKeyring
    services: WebServices

    def token(self, customer: str = "ACME") -> str:
        with session_scope(self.engine) as session:
            return issue_token(session=session, customer=customer, name="test", now=NOW)[1]

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30, **kwargs)

    def device(self, hardware_id: str = "HW-1") -> WireDevice:
        return WireDevice(self.keyring, hardware_id)

    def license(self, **kwargs: Any) -> str:
        return add_license(self.engine, **kwargs)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_app(settings: Settings) -> Iterator[tuple[str, WebServices]]:
    """`airlock serve`'s app for `settings` on uvicorn, on a free loopback port."""
    settings = settings.model_copy(update={"serve_port": _free_port()})
    with web_services(settings) as services:
        server = uvicorn.Server(server_config(create_app(services), settings,
                                              lifespan="off"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{settings.serve_port}", services
        finally:
            server.should_exit = True
            thread.join(timeout=30)


@contextmanager
def serving(settings: Settings) -> Iterator[Served]:
    """Migrate, make the vendor keys and catalogue, and serve."""
    settings.home.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    keyring, _ = init_keyring(settings.resolved_keys_dir)
    engine = make_engine(settings.resolved_database_url)
    vendor(engine)
    try:
        with running_app(settings) as (url, services):
            yield Served(url, settings, engine, keyring, services)
    finally:
        engine.dispose()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with serving(Settings(home=tmp_path / "var", answer_wait_seconds=5)) as running:
        yield running
