"""The portal scenario: concurrent API clients upload single files to `airlock serve`.

Each client sends one deactivation file at a time and waits for its answer; for 1, 4
and 8 clients the figures are uploads per second over all clients and each upload's
time from sending to the final answer (the server answers at once when the file is
done in time). The clients run on the same machine and take CPU from the server.
"""

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

PER_LEVEL = 400  # uploads per number of clients: stable percentiles, a short run
CLIENTS = (1, 4, 8)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def portal(ws: Workspace, files: int, clients: tuple[int, ...] = CLIENTS) -> dict[str, Any]:
    """One server; for each number of clients in turn, `min(files, PER_LEVEL)` uploads."""
    each = min(files, PER_LEVEL)
    blobs, _setup = deactivation_fleet(ws, each * len(clients))
    from bench.fleet import CUSTOMER

    with session_scope(ws.engine) as session:
        token = issue_token(session=session, customer=CUSTOMER, name="bench", now=utcnow())[1]
    port = _free_port()
    server = spawn("serve", ["cli", "serve", "--port", str(port)], ws.env, ws.home / "logs")
    levels: dict[str, Any] = {}
    try:
        wait_for_log(server, "serving on")
        for n, count in enumerate(clients):
            batch = list(enumerate(blobs[n * each:(n + 1) * each], start=n * each))
            levels[str(count)] = _level(f"http://127.0.0.1:{port}", token, batch, count)
    finally:
        rss = server.stop()
    return {"uploads_per_level": each, "by_clients": levels, "peak_rss_mib": {"serve": rss}}


def _level(url: str, token: str, queue: list[tuple[int, bytes]], clients: int
           ) -> dict[str, Any]:
    """`clients` threads, each uploading one file at a time until `queue` is empty."""
    latencies: list[float] = []
    refused: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60,
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

    count = len(queue)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    first = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - first
    ordered = sorted(latencies)
    return {"uploads": count, "not_accepted": len(refused),
            "files_per_s": round(count / max(seconds, 1e-9), 1),
            "p50_ms": round(percentile(ordered, 50) * 1000, 1),
            "p99_ms": round(percentile(ordered, 99) * 1000, 1)}
