"""The portal scenario: concurrent API clients upload single files to `airlock serve`.

Each client sends one deactivation file at a time and waits for its answer; the
figures are uploads per second over all clients and each upload's time from sending
to the final answer (the server answers at once when the file is done in time)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import httpx

from bench.procs import spawn, wait_for_log
from bench.scenarios import Workspace, deactivation_fleet, percentile
from models.db import session_scope
from models.types import utcnow
from pipelines.tokens import issue_token

MAX_UPLOADS = 2000  # enough for stable percentiles; the drop-folder scenarios do volume
CLIENTS = 8


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def portal(ws: Workspace, files: int, clients: int = CLIENTS) -> dict[str, Any]:
    count = min(files, MAX_UPLOADS)
    blobs, _setup = deactivation_fleet(ws, count)
    from bench.fleet import CUSTOMER

    with session_scope(ws.engine) as session:
        token = issue_token(session=session, customer=CUSTOMER, name="bench", now=utcnow())[1]
    port = _free_port()
    server = spawn("serve", ["cli", "serve", "--port", str(port)], ws.env, ws.home / "logs")
    latencies: list[float] = []
    refused: list[int] = []
    lock = threading.Lock()
    queue = list(enumerate(blobs))

    def client() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                          headers={"Authorization": f"Bearer {token}"}) as http:
            while True:
                with lock:
                    if not queue:
                        return
                    n, blob = queue.pop()
                began = time.perf_counter()
                answer = http.post("/api/v1/files", params={"name": f"d{n:07d}.req"},
                                   content=blob)
                took = time.perf_counter() - began
                with lock:
                    latencies.append(took)
                    if answer.status_code != 200 or not answer.json().get("accepted"):
                        refused.append(answer.status_code)

    try:
        wait_for_log(server, "serving on")
        threads = [threading.Thread(target=client) for _ in range(clients)]
        first = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - first
    finally:
        rss = server.stop()
    ordered = sorted(latencies)
    return {"uploads": count, "clients": clients, "not_accepted": len(refused),
            "seconds": round(seconds, 3), "files_per_s": round(count / max(seconds, 1e-9), 1),
            "p50_ms": round(percentile(ordered, 50) * 1000, 1),
            "p99_ms": round(percentile(ordered, 99) * 1000, 1),
            "peak_rss_mib": {"serve": rss}}
