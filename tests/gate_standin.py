"""A stand-in for Spinnaker's Gate over real HTTP on loopback: the execution-history endpoints backfill
reads, with authentication, paging, slow answers and failures now and then."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


class GateStandin:
    """Serves ``executions`` (orca execution objects) as Gate does.

    ``token``: the bearer token required (401 without it). ``fail_every``: every Nth request answers 503
    with ``Retry-After: 0``. ``delay``: seconds before each answer.
    """

    def __init__(
        self,
        executions: Iterable[dict[str, Any]],
        *,
        token: str = "s3cret",
        fail_every: int = 0,
        delay: float = 0.0,
    ) -> None:
        self.executions = {e["id"]: e for e in executions}
        self.token = token
        self.fail_every = fail_every
        self.delay = delay
        self.requests: list[str] = []
        self.lock = threading.Lock()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                standin.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _send(
        self, h: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.requests.append(h.path)
            n = len(self.requests)
        if self.delay:
            time.sleep(self.delay)
        if h.headers.get("Authorization") != f"Bearer {self.token}":
            return self._send(h, 401, {"error": "Unauthorized", "status": 401})
        if self.fail_every and n % self.fail_every == 0:
            return self._send(h, 503, {"error": "Service Unavailable"}, {"Retry-After": "0"})
        url = urlparse(h.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        parts = [p for p in url.path.split("/") if p]
        execs = list(self.executions.values())
        if parts == ["applications"]:
            return self._send(h, 200, [{"name": a} for a in sorted({e["application"] for e in execs})])
        if len(parts) == 3 and parts[0] == "applications":
            app, what = parts[1], parts[2]
            mine = [e for e in execs if e["application"] == app]
            pipes = sorted(
                (e for e in mine if e["type"] == "PIPELINE"), key=lambda e: e.get("startTime") or 0
            )
            if what == "pipelines":  # orca: the last two weeks, `limit` per pipeline config, ascending
                horizon = max((e.get("startTime") or 0 for e in pipes), default=0) - 14 * 86_400_000
                recent = [e for e in pipes if (e.get("startTime") or 0) >= horizon]
                return self._send(h, 200, recent[-int(q.get("limit", 10)) :])
            if what == "tasks":  # orca's task view: newest first, `page` from 1, the execution inside
                orch = sorted(
                    (e for e in mine if e["type"] == "ORCHESTRATION"),
                    key=lambda e: -(e.get("startTime") or 0),
                )
                limit, page = int(q.get("limit", 3500)), int(q.get("page", 1))
                chunk = orch[(page - 1) * limit : page * limit]
                return self._send(
                    h, 200, [{"id": e["id"], "name": e.get("description"), "execution": e} for e in chunk]
                )
        if len(parts) == 4 and parts[0] == "applications" and parts[2:] == ["executions", "search"]:
            lo = int(q.get("triggerTimeStartBoundary", 0))
            hi = int(q.get("triggerTimeEndBoundary", 2**62))
            found = sorted(
                (
                    e
                    for e in execs
                    if e["application"] == parts[1]
                    and e["type"] == "PIPELINE"
                    and lo <= (e.get("startTime") or 0) <= hi
                ),
                key=lambda e: -(e.get("startTime") or 0),
            )
            start, size = int(q.get("startIndex", 0)), int(q.get("size", 10))
            return self._send(h, 200, found[start : start + size])
        if len(parts) == 2 and parts[0] in ("pipelines", "tasks"):
            e = self.executions.get(parts[1])
            want = "PIPELINE" if parts[0] == "pipelines" else "ORCHESTRATION"
            if e is None or e["type"] != want:
                return self._send(h, 404, {"error": "Not Found", "status": 404})
            return self._send(h, 200, e if want == "PIPELINE" else {"id": e["id"], "execution": e})
        return self._send(h, 404, {"error": "Not Found", "status": 404})
