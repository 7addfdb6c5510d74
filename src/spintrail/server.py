"""Serving: uvicorn with defences against slow clients, and a shutdown that always ends in time.

- Slow clients: a connection must deliver a request's headers within ``header_read_timeout_seconds`` (from
  connecting, or from the first byte of a later request on a kept-alive connection), else it is closed;
  request line plus headers are limited to ``max_header_bytes``; idle kept-alive connections close after
  ``keep_alive_timeout_seconds``; at most ``max_connections`` connections and requests at once (503 beyond).
  Bodies are bounded by ``body_read_timeout_seconds`` in ``receive``. Connections are asyncio protocols, not
  threads, so slow or idle ones cost a few kilobytes each and never block the others.
- Shutdown: on SIGTERM (or SIGINT) uvicorn stops accepting at once and gives requests in flight
  ``shutdown_grace_seconds - 1`` to finish (each is answered only after its commit); then the app's
  shutdown hooks run and the store commits what is queued and closes (``app.lifespan``). A watchdog ends the
  process at ``shutdown_grace_seconds`` whatever is still running: that is safe, because an event is only
  ever acknowledged after its commit, so abandoning work loses nothing that was acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from spintrail import dbutil
from spintrail.settings import Settings

log = logging.getLogger(__name__)
_busy_log = dbutil.Throttled(log, "accepting a request")

#: Exit status when the shutdown watchdog had to end the process.
WATCHDOG_EXIT = 3


def _protocol_base() -> type[Any]:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol  # type: ignore[no-any-return]
    except ImportError:  # pragma: no cover - uvicorn without httptools
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol  # type: ignore[no-any-return]


def protocol_class(settings: Settings) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol with a deadline for request headers and a limit on their size."""
    base = _protocol_base()
    header_timeout = settings.header_read_timeout_seconds
    max_header_bytes = settings.max_header_bytes

    class GuardedProtocol(base):  # type: ignore[misc, valid-type]
        _header_timer: asyncio.TimerHandle | None = None
        _armed_for: Any = None
        _header_bytes = 0

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # uvicorn's own answer beyond max_connections is a bare 503 without Retry-After, which neither
            # echo nor Splunk clients read as "come back later": the limit is applied here instead.
            limit, self.limit_concurrency = self.limit_concurrency, None
            if limit is not None:
                self.app = _concurrency_limited(self.app, self, limit)

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            before = self.cycle
            super().data_received(data)
            # Bytes arrived between requests but no new request began: a partial request line or headers
            # are buffered, and must be complete within the deadline (counted from the first such byte).
            if (
                self.cycle is before
                and self._waiting_for_headers()
                and not self.transport.is_closing()
                and (self._header_timer is None or self._armed_for is not self.cycle)
            ):
                self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def _waiting_for_headers(self) -> bool:
            return self.cycle is None or bool(self.cycle.response_complete)

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._armed_for = self.cycle
            self._header_timer = self.loop.call_later(header_timeout, self._header_timeout, self.cycle)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self, cycle_when_armed: Any) -> None:
            self._header_timer = None
            if (
                self.cycle is cycle_when_armed
                and self._waiting_for_headers()
                and not self.transport.is_closing()
            ):
                log.info(
                    "closing connection from %s: no complete request headers within %g s",
                    _peer(self),
                    header_timeout,
                )
                self.transport.close()

        # httptools only (h11 bounds headers with h11_max_incomplete_event_size): count header bytes.
        def on_message_begin(self) -> None:
            self._header_bytes = 0
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._count_header_bytes(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count_header_bytes(len(name) + len(value) + 4)
            super().on_header(name, value)

        def _count_header_bytes(self, n: int) -> None:
            self._header_bytes += n
            if self._header_bytes > max_header_bytes:
                log.info("refusing request from %s: headers over %d bytes", _peer(self), max_header_bytes)
                raise ValueError("request headers are too large")  # httptools answers 400 and closes

    return GuardedProtocol


#: Seconds a client refused for too many connections is asked to wait.
BUSY_RETRY_AFTER = b"1"
_BUSY_BODY = (
    b'{"error":"overloaded","message":"too many connections at once (max_connections); retry shortly"}'
)


def _concurrency_limited(app: Any, protocol: Any, limit: int) -> Any:
    """``app`` answering 503 with ``Retry-After`` (and HEC's code 9 on the Splunk-compatible routes) while
    ``limit`` connections are open or requests running, as uvicorn's ``limit_concurrency`` would."""

    async def limited(scope: Any, receive: Any, send: Any) -> None:
        # This request's task is already counted; its connection too, as in uvicorn's own check.
        busy = len(protocol.connections) >= limit or len(protocol.tasks) > limit
        if scope["type"] != "http" or not busy:
            await app(scope, receive, send)
            return
        _busy_log.failed(RuntimeError(f"{limit} connections or requests at once (max_connections)"))
        if scope.get("path", "").startswith("/services/collector"):
            body = b'{"text":"Server is busy","code":9}'
        else:
            body = _BUSY_BODY
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", BUSY_RETRY_AFTER),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return limited


def _peer(protocol: Any) -> str:
    client = getattr(protocol, "client", None)
    return f"{client[0]}:{client[1]}" if client else "unknown"


class GracefulServer(uvicorn.Server):
    """uvicorn's server, plus a watchdog that ends the process once the shutdown grace period is over."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, grace: float) -> None:
        super().__init__(config)
        self.app = app
        self.grace = grace
        self._watchdog: threading.Thread | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._watchdog is None:
            deadline = time.monotonic() + self.grace
            self.app.state.shutdown_deadline = deadline
            log.info("shutting down (signal %d): finishing requests in flight, %g s grace", sig, self.grace)
            self._watchdog = threading.Thread(
                target=_watchdog, args=(deadline,), name="spintrail-shutdown-watchdog", daemon=True
            )
            self._watchdog.start()
        super().handle_exit(sig, frame)


def _watchdog(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))
    log.error(
        "shutdown grace period over: exiting now. Nothing acknowledged is lost (events are acknowledged "
        "only after their commit); requests cut off were not acknowledged and echo resends them."
    )
    logging.shutdown()
    os._exit(WATCHDOG_EXIT)


def run_server(app: FastAPI, settings: Settings, **extra: Any) -> None:
    """Serve ``app`` on ``settings.host:port`` until SIGTERM or SIGINT, then shut down within the grace.

    ``extra`` goes to uvicorn as it is (the TLS options).
    """
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=settings.access_log,
        http=protocol_class(settings),
        timeout_keep_alive=settings.keep_alive_timeout_seconds,  # type: ignore[arg-type]
        timeout_graceful_shutdown=settings.shutdown_grace_seconds - 1,  # type: ignore[arg-type]
        limit_concurrency=settings.max_connections,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        # The client address must be the real peer: trusted_proxies is checked against it.
        proxy_headers=False,
        **extra,
    )
    GracefulServer(config, app, settings.shutdown_grace_seconds).run()
