"""Test helper: a small real HTTP server on 127.0.0.1 that answers like Splunk's HTTP Event Collector.

It parses bodies, checks tokens and answers with HEC's documented codes through ``spintrail.splunk``, keeps
the events it accepted, runs indexer acknowledgement per channel, and can be told to misbehave: answer the
next requests with a given HEC code or HTTP status, answer slowly, or (after :meth:`SplunkStandin.stop`)
refuse connections.
"""

from __future__ import annotations

import gzip
import json
import ssl
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from spintrail.splunk import HEC_CODES, HecError, check_token, parse_hec_events

EVENT_PATHS = ("/services/collector", "/services/collector/event", "/services/collector/event/1.0")
ACK_PATH = "/services/collector/ack"
HEALTH_PATH = "/services/collector/health"


@dataclass
class SeenRequest:
    """One request the stand-in answered."""

    path: str
    headers: dict[str, str]
    body: bytes  # as received (still compressed if it was)
    status: int
    answer: dict[str, Any]
    at: float = field(default_factory=time.monotonic)  # when it was answered


@dataclass
class _Channel:
    next_ack: int = 0
    pending: dict[int, int] = field(default_factory=dict)  # ackId -> queries left before it reads true


class SplunkStandin:
    """HEC on ``127.0.0.1:<port>``. ``tokens`` empty accepts any request; ``indexes`` None accepts any."""

    def __init__(
        self,
        tokens: tuple[str, ...] = ("00000000-0000-0000-0000-000000000001",),
        *,
        indexes: set[str] | None = None,
        ack: bool = False,
        ack_after: int = 0,
        tls: tuple[Path, Path] | None = None,
        max_body: int | None = None,
    ) -> None:
        self.tokens = set(tokens)
        self.max_body = max_body  # larger (uncompressed) bodies get a bare 413, like a size-limited proxy
        self.indexes = indexes
        self.ack = ack
        self.ack_after = ack_after  # how many ack queries answer false before an ackId reads true
        self.delay = 0.0
        self.events: list[dict[str, Any]] = []
        self.requests: list[SeenRequest] = []
        self._failures: list[tuple[int, int | None] | None] = []  # (HTTP status, HEC code or None)
        self._channels: dict[str, _Channel] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop listening: from now on connections to the port are refused."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> SplunkStandin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail(self, code: int, times: int = 1, after: int = 0) -> None:
        """Let ``after`` event requests through, then answer ``times`` with HEC ``code`` (its documented
        status and text)."""
        with self._lock:
            self._failures += [None] * after + [(HEC_CODES[code][0], code)] * times

    def fail_http(self, status: int, times: int = 1, after: int = 0) -> None:
        """Like :meth:`fail`, with a bare HTTP ``status`` (no HEC body)."""
        with self._lock:
            self._failures += [None] * after + [(status, None)] * times

    def event_requests(self) -> list[SeenRequest]:
        return [r for r in self.requests if r.path in EVENT_PATHS]

    # ------------------------------------------------------------------------------------------ answering

    def answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[int, dict]:
        if self.delay:
            time.sleep(self.delay)
        parts = urlsplit(target)
        path = parts.path.rstrip("/") or "/"
        query = parse_qs(parts.query)
        if path == HEALTH_PATH and method == "GET":
            return HEC_CODES[17][0], {"text": HEC_CODES[17][1], "code": 17}
        if method != "POST" or (path not in EVENT_PATHS and path != ACK_PATH):
            return 404, {"text": "The requested URL was not found on this server.", "code": 404}
        try:
            check_token(headers.get("authorization"), self.tokens)
            channel = headers.get("x-splunk-request-channel") or next(iter(query.get("channel", [])), None)
            if path == ACK_PATH:
                return 200, self._ack(channel, body)
            with self._lock:
                failure = self._failures.pop(0) if self._failures else None
            if failure is not None:
                status, code = failure
                if code is None:
                    return status, {}
                raise HecError(code, 0 if code in (6, 7, 12, 13, 15) else None)
            if self.ack:
                self._check_channel(channel)
            plain = _decode(headers, body)
            if self.max_body is not None and len(plain) > self.max_body:
                return 413, {}
            events = parse_hec_events(plain)
            for number, event in enumerate(events):
                if self.indexes is not None and event.get("index", "main") not in self.indexes:
                    raise HecError(7, number)
            answer: dict[str, Any] = {"text": "Success", "code": 0}
            with self._lock:
                self.events += events
                if self.ack and channel:
                    state = self._channels.setdefault(channel, _Channel())
                    answer["ackId"] = state.next_ack
                    state.pending[state.next_ack] = self.ack_after
                    state.next_ack += 1
            return 200, answer
        except HecError as exc:
            return exc.status, exc.body()

    def _check_channel(self, channel: str | None) -> None:
        if not channel:
            raise HecError(10)
        try:
            uuid.UUID(channel)
        except ValueError:
            raise HecError(11) from None

    def _ack(self, channel: str | None, body: bytes) -> dict[str, Any]:
        if not self.ack:
            raise HecError(14)
        self._check_channel(channel)
        assert channel is not None
        try:
            ids = json.loads(body)["acks"]
            if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise HecError(6) from None
        out: dict[str, bool] = {}
        with self._lock:
            state = self._channels.setdefault(channel, _Channel())
            for ack_id in ids:
                left = state.pending.get(ack_id)
                if left is None:
                    out[str(ack_id)] = False  # unknown, or already reported: HEC forgets after "true"
                elif left <= 0:
                    out[str(ack_id)] = True
                    del state.pending[ack_id]
                else:
                    state.pending[ack_id] = left - 1
                    out[str(ack_id)] = False
        return {"acks": out}


def _decode(headers: dict[str, str], body: bytes) -> bytes:
    if headers.get("content-encoding", "").lower() == "gzip":
        try:
            return gzip.decompress(body)
        except (OSError, EOFError, zlib.error):
            raise HecError(6, 0, "body is not valid gzip") from None
    return body


def _handler(standin: SplunkStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, answer = standin.answer(self.command, self.path, headers, body)
            data = json.dumps(answer).encode() if answer else b""
            with standin._lock:
                standin.requests.append(SeenRequest(self.path.split("?")[0], headers, body, status, answer))
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout): nothing to answer

        do_POST = _serve
        do_GET = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
