"""Receive: the echo webhook. Reads the body (size limit, gzip), decodes, stores, acknowledges after commit.

``POST /api/v1/events`` answers 200 only once every event of the request is committed to disk, so a crash
after the answer loses nothing. A body that is refused stores nothing. Status codes:

- 200: stored; the body counts events stored and duplicates (already stored, not stored again)
- 400: empty body, invalid JSON, no echo event in the body, corrupt gzip
- 401: authentication is on and the request has no valid token (``auth.py``)
- 403: the token may not send events (its role), or not of these applications
- 413: body larger than ``max_body_bytes`` (after decompression), or holding more events than
  ``max_events_per_request`` (or ``write_queue_max``), or events that would take more memory than twice
  ``max_body_bytes`` (``decode.event_cost``): decoding stops there, so memory stays bounded
- 415: a ``Content-Encoding`` other than gzip or identity
- 408: the body did not arrive within ``body_read_timeout_seconds`` (the connection is closed)
- 503: the write queue or the in-flight byte budget is full (with ``Retry-After``), or the store cannot
  commit; echo retries
- 507: the disk is full
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.routing import Route

from spintrail import auth, dbutil
from spintrail.decode import EVENT_OVERHEAD, DecodeError, TooMuch, decode_body, storable_text
from spintrail.guard import INFLIGHT_STATE_KEY, OverBudget, Reservation
from spintrail.ingest import Ingestor
from spintrail.metrics import Metrics
from spintrail.query import is_number
from spintrail.store import PreparedEvent, StoreFull, StoreOverloaded, StoreUnavailable
from spintrail.store.base import Arrival

log = logging.getLogger(__name__)

INSTANCE_HEADER = "x-spinnaker-instance"
_unavailable = dbutil.Throttled(log, "storing events")
_THREAD_THRESHOLD = 256 * 1024  # bodies larger than this are decoded off the event loop

router = APIRouter()


class RequestRejected(Exception):
    """A request refused before anything was stored."""

    def __init__(self, status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"error": self.reason, "message": self.message}, status_code=self.status, headers=self.headers
        )


async def read_body(
    request: Request,
    limit: int,
    *,
    reservation: Reservation | None = None,
    timeout: float | None = None,
) -> bytes:
    """The request body, inflated when gzip-encoded, refused when over ``limit`` bytes.

    The body's bytes are reserved against the in-flight budget as they arrive (503 at once beyond it), in
    ``reservation`` or else the request's own (released when the request ends, see ``guard``); a body not
    fully received within ``timeout`` seconds (default ``body_read_timeout_seconds``) gets 408. Every
    endpoint that reads a body through here is protected alike.
    """
    if reservation is None:
        reservation = request_reservation(request)
    if timeout is None:
        settings = getattr(request.app.state, "settings", None)
        timeout = getattr(settings, "body_read_timeout_seconds", None)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity", "gzip", "x-gzip"):
        raise RequestRejected(
            415, "unsupported_encoding", f"Content-Encoding {encoding!r} is not supported: send gzip or none"
        )
    declared = request.headers.get("content-length")
    if encoding in ("", "identity") and declared and is_number(declared) and int(declared) > limit:
        raise RequestRejected(
            413, "too_large", f"body of {declared} bytes is over the limit of {limit} bytes"
        )
    reserved_up_front = False
    chunks: list[bytes] = []
    size = 0
    inflater = zlib.decompressobj(wbits=31) if encoding in ("gzip", "x-gzip") else None
    try:
        if inflater is None and declared and is_number(declared):
            reservation.take(int(declared))
            reserved_up_front = True
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                if inflater is not None:
                    chunk = inflater.decompress(chunk, limit + 1 - size)
                    if inflater.unconsumed_tail:
                        size = limit + 1
                size += len(chunk)
                if size > limit:
                    raise RequestRejected(413, "too_large", f"body is over the limit of {limit} bytes")
                if not reserved_up_front:
                    reservation.take(len(chunk))
                chunks.append(chunk)
        if inflater is not None:
            tail = inflater.flush()
            size += len(tail)
            if size > limit:
                raise RequestRejected(413, "too_large", f"body is over the limit of {limit} bytes")
            reservation.take(len(tail))
            chunks.append(tail)
            if not inflater.eof:
                raise RequestRejected(400, "bad_encoding", "gzip body is truncated")
    except zlib.error as exc:
        raise RequestRejected(400, "bad_encoding", f"body is not valid gzip: {exc}") from None
    except OverBudget as exc:
        raise RequestRejected(
            503, "overloaded", f"spintrail is busy ({exc}); retry shortly", {"Retry-After": "1"}
        ) from None
    except TimeoutError:
        raise RequestRejected(
            408,
            "body_timeout",
            f"the body did not arrive within {timeout:g} seconds ({size} bytes received): "
            "send it in one go, or raise body_read_timeout_seconds for slow links",
            {"Connection": "close"},
        ) from None
    return b"".join(chunks)


def hold_events(reservation: Reservation, prepared: list[PreparedEvent]) -> None:
    """Count what the prepared events hold until their commit, beyond the body's bytes (already counted),
    in the in-flight budget: ``EVENT_OVERHEAD`` each, so a body of many tiny events weighs what it takes
    and the requests after it are refused while it waits (this one, admitted, is not)."""
    reservation.add(len(prepared) * EVENT_OVERHEAD)


def event_limits(settings: Any) -> tuple[int, int, str]:
    """``(most events, most memory, the settings that set them)`` for one ingest request."""
    if settings.write_queue_max < settings.max_events_per_request:
        max_events, names = settings.write_queue_max, "write_queue_max"
    else:
        max_events, names = settings.max_events_per_request, "max_events_per_request"
    max_cost = 2 * settings.max_body_bytes + EVENT_OVERHEAD  # one event of the largest body always fits
    return max_events, max_cost, f" (set by {names} and max_body_bytes)"


def too_deep(number: int) -> str:
    """Why event ``number`` (0-based) was refused when processing it nested deeper than Python can go."""
    return f"event {number} is nested too deeply to process: flatten it (a few hundred levels at most)"


def request_reservation(request: Request) -> Reservation:
    """This request's share of the in-flight byte budget (created on first use, released at its end)."""
    reservation: Reservation | None = getattr(request.state, INFLIGHT_STATE_KEY, None)
    if reservation is None:
        reservation = Reservation(getattr(request.app.state, "inflight", None))
        setattr(request.state, INFLIGHT_STATE_KEY, reservation)
    return reservation


def request_instance(request: Request) -> str | None:
    """The Spinnaker instance named by the request: the header first, then ``?instance=``."""
    value = request.headers.get(INSTANCE_HEADER) or request.query_params.get("instance")
    return storable_text(value.strip()) or None if value else None


async def store_prepared(
    request: Request, prepared: list[PreparedEvent], arrival: Arrival | None = None
) -> dict[str, Any]:
    """Submit prepared events to the store, wait for the commit, and count the outcome.

    ``arrival`` (from ``Store.arrival``, taken when the request began) is done once the events are
    submitted: from then on the writer need not wait for this request.
    """
    store = request.app.state.store
    metrics: Metrics = request.app.state.metrics
    refusal = auth.ingest_refusal(request, [p.record.application for p in prepared])
    if refusal:
        raise RequestRejected(403, "application_not_allowed", refusal)
    token = auth.ingest_token_name(request)
    for p in prepared:
        p.ingest_token = token
    try:
        future = store.submit(prepared)
    except StoreOverloaded as exc:
        metrics.store_errors.labels("overloaded").inc()
        raise RequestRejected(
            503, "overloaded", f"spintrail is busy ({exc}); retry shortly", {"Retry-After": "1"}
        ) from None
    except StoreUnavailable as exc:
        metrics.store_errors.labels("unavailable").inc()
        raise RequestRejected(503, "store_unavailable", str(exc), {"Retry-After": "5"}) from None
    finally:
        if arrival is not None:
            arrival.done()
    metrics.queue.set(store.pending)
    try:
        results = await asyncio.wrap_future(future)
    except StoreFull as exc:
        metrics.store_errors.labels("disk_full").inc()
        log.debug("disk full: %s", exc)  # the store logs each disk-full episode once
        raise RequestRejected(507, "disk_full", f"the store's disk is full: {exc}") from None
    except StoreUnavailable as exc:
        metrics.store_errors.labels("unavailable").inc()
        _unavailable.failed(exc)
        raise RequestRejected(503, "store_unavailable", str(exc), {"Retry-After": "5"}) from None
    _unavailable.succeeded()
    duplicates = sum(1 for r in results if r.duplicate)
    metrics.received.inc(len(results))
    metrics.stored.inc(len(results) - duplicates)
    metrics.duplicates.inc(duplicates)
    return {
        "stored": len(results) - duplicates,
        "duplicates": duplicates,
        "events": [
            {"id": r.id, "event_id": p.record.event_id, "duplicate": r.duplicate}
            for r, p in zip(results, prepared, strict=True)
        ],
    }


#: The body as the OpenAPI description shows it: one echo event (arrays, NDJSON, wrapped, flattened and
#: templated bodies are accepted too; see decode.py).
_EVENT_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["details"],
                "properties": {
                    "details": {
                        "type": "object",
                        "properties": {
                            "source": {"type": "string"},
                            "type": {"type": "string"},
                            "created": {"type": "string"},
                            "application": {"type": "string"},
                        },
                    },
                    "content": {"type": "object"},
                    "eventId": {"type": "string"},
                },
            }
        }
    },
}


@router.post(
    "/api/v1/events",
    tags=["ingest"],
    summary="Receive echo events",
    openapi_extra={"requestBody": _EVENT_BODY},
)
@router.post("/api/v1/events/", include_in_schema=False)
async def receive_events(request: Request) -> JSONResponse:
    """Store the echo events in the body (any shape echo sends); answers after the commit."""
    metrics: Metrics = request.app.state.metrics
    ingestor: Ingestor = request.app.state.ingestor
    reservation = request_reservation(request)
    arrival = ingestor.store.arrival()  # a group commit may wait for this request's events
    try:
        body = await read_body(request, request.app.state.settings.max_body_bytes)
        instance = request_instance(request)
        received_at = int(time.time() * 1000)

        max_events, max_cost, limits = event_limits(request.app.state.settings)

        def prepare() -> list[PreparedEvent]:
            try:
                incoming = decode_body(body, max_events=max_events, max_cost=max_cost, limits=limits)
            except TooMuch as exc:
                raise RequestRejected(413, exc.reason, str(exc)) from None
            except DecodeError as exc:
                raise RequestRejected(400, exc.reason, str(exc)) from None
            out = []
            for number, e in enumerate(incoming):
                try:
                    out.append(ingestor.prepare(e, received_at=received_at, instance=instance))
                except RecursionError:
                    raise RequestRejected(400, "invalid_json", too_deep(number)) from None
            return out

        prepared = await run_in_threadpool(prepare) if len(body) > _THREAD_THRESHOLD else prepare()
        hold_events(reservation, prepared)
        answer = await store_prepared(request, prepared, arrival)
    except RequestRejected as exc:
        metrics.rejected.labels(exc.reason).inc()
        return exc.response()
    finally:
        arrival.done()
        reservation.release()
    return JSONResponse(answer)


async def _receive_events_directly(request: Request) -> Response:
    await auth.authorize(request)  # what the app-wide dependency does for every FastAPI route
    return await receive_events(request)


def serve_directly(app: FastAPI) -> None:
    """Serve ``POST /api/v1/events`` through a plain Starlette route placed ahead of FastAPI's.

    The endpoint is the same function and is authorized by the same rule; what is skipped is FastAPI's
    per-request dependency resolution, a noticeable share of the cost of a small event. The FastAPI routes
    stay, unreached, so the OpenAPI description still documents the endpoint.
    """
    for path in ("/api/v1/events/", "/api/v1/events"):
        app.router.routes.insert(
            0, Route(path, _receive_events_directly, methods=["POST"], include_in_schema=False)
        )
