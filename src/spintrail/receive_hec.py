"""Receive (Splunk-compatible): the HTTP Event Collector endpoints, so an echo set up for Splunk can point
at spintrail by changing only the host, and one spintrail can forward to another over HEC.

``POST /services/collector/event`` (also ``/services/collector`` and ``/services/collector/event/1.0``,
with or without a trailing ``/``) takes one or more concatenated HEC objects. Each object's ``event`` must
hold one echo event (in any shape ``/api/v1/events`` accepts); the events are stored exactly as on
``/api/v1/events`` (same normalization, same deduplication by event id) and the answer,
``{"text":"Success","code":0}``, is sent only after the commit. A refused request stores nothing.

What is kept: the raw bytes of each event are the exact bytes of the object's ``event`` value as they
appear in the body (the echo event as echo serialized it, without the HEC envelope); when ``event`` is a
JSON string, its text. The envelope's ``time``, ``host``, ``source``, ``sourcetype`` and ``index`` are
checked and otherwise ignored (the event's own ``details.created`` is its time). The Spinnaker instance is
taken from the ``X-Spinnaker-Instance`` header or ``?instance=``, else the indexed field
``fields.spinnaker_instance`` (or ``fields.instance``), else the template's ``instance`` field.

Authentication (``auth.py``): ``Authorization: Splunk <token>``, or Basic auth with the token as the password;
a token of ``hec_tokens`` or an API token with the ingest role.
Errors answer with Splunk's codes: 2 token required and 3 invalid authorization (401), 4 invalid token
(403), 5 no data, 6 invalid data format with ``invalid-event-number``, 12 event field required, 13 event
field blank, 15 bad indexed fields (400), 9 server busy (503, the store cannot take the events now;
``Retry-After`` is set). A body refused before it is decoded keeps the HTTP status that says why, with
code 6: 413 over ``max_body_bytes`` or ``max_events_per_request``, 415 an unsupported encoding, 408 too
slow. Each error body also has a ``detail`` naming the problem. ``/services/collector/ack``
answers code 14 (ACK is disabled): an answer here already means committed.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from spintrail.decode import DecodeError, IncomingEvent, decode_body, event_cost, storable_text
from spintrail.ingest import Ingestor
from spintrail.metrics import Metrics
from spintrail.receive import (
    RequestRejected,
    event_limits,
    hold_events,
    read_body,
    request_instance,
    request_reservation,
    store_prepared,
    too_deep,
)
from spintrail.splunk import HEC_CODES, HecError, parse_hec_events
from spintrail.store import PreparedEvent
from spintrail.store.base import Arrival

log = logging.getLogger(__name__)

router = APIRouter()

EVENT_PATHS = ("/services/collector", "/services/collector/event", "/services/collector/event/1.0")
HEALTH_PATH = "/services/collector/health"
ACK_PATH = "/services/collector/ack"
_THREAD_THRESHOLD = 256 * 1024
_WS = " \t\n\r"
_JSON = json.JSONDecoder()
_INSTANCE_FIELDS = ("spinnaker_instance", "instance")
#: Seconds a client is asked to wait before retrying a 503 that carries no estimate of its own.
RETRY_AFTER = "5"


def hec_answer(error: HecError, headers: dict[str, str] | None = None) -> JSONResponse:
    body = error.body()
    if error.detail:
        body["detail"] = error.detail
    return JSONResponse(body, status_code=error.status, headers=headers)


def hec_refusal(exc: RequestRejected) -> JSONResponse:
    """A request refused before its body was decoded, answered with a HEC code: 9 (Server is busy, with
    ``Retry-After``) for a 503 so clients retry later, else 6 (Invalid data format) with the HTTP status
    that says what is wrong (413 too large, 415 unsupported encoding, 408 too slow)."""
    if exc.status == 503:
        headers = {**exc.headers, "Retry-After": exc.headers.get("Retry-After", RETRY_AFTER)}
        return hec_answer(HecError(9, detail=exc.message), headers)
    return hec_answer(HecError(6, 0, exc.message, status=exc.status), exc.headers)


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos


def event_spans(text: str) -> list[tuple[int, int] | None]:
    """The ``[start, end)`` character span of each top-level object's ``event`` value (the last one when
    repeated, as JSON parsers keep), for a body ``parse_hec_events`` has already accepted."""
    spans: list[tuple[int, int] | None] = []
    pos = _skip(text, 0)
    while pos < len(text):
        pos = _skip(text, pos + 1)  # past '{'
        span: tuple[int, int] | None = None
        if text[pos] == "}":
            pos += 1
        else:
            while True:
                key, pos = _JSON.raw_decode(text, pos)
                pos = _skip(text, _skip(text, pos) + 1)  # past ':'
                start = pos
                _, pos = _JSON.raw_decode(text, pos)
                if key == "event":
                    span = (start, pos)
                pos = _skip(text, pos)
                if text[pos] == ",":
                    pos = _skip(text, pos + 1)
                    continue
                pos += 1  # past '}'
                break
        spans.append(span)
        pos = _skip(text, pos)
    return spans


def _instance_field(obj: dict[str, Any]) -> str | None:
    fields = obj.get("fields")
    if not isinstance(fields, dict):
        return None
    for key in _INSTANCE_FIELDS:
        value = fields.get(key)
        if isinstance(value, str) and value.strip():
            return storable_text(value.strip())
    return None


def hec_events(
    body: bytes, *, max_events: int | None = None, max_cost: int | None = None, limits: str = ""
) -> list[tuple[IncomingEvent, str | None]]:
    """The echo event of every HEC object in ``body`` with the instance its ``fields`` name.

    Raises :class:`HecError` as Splunk would answer, and code 6 with the object's number when its
    ``event`` is not an echo event; code 6 with HTTP 413 beyond ``max_events`` events or once their
    ``event_cost`` passes ``max_cost`` (``receive.event_limits``).
    """
    objects = parse_hec_events(body, max_events=max_events, limits=limits)
    text = body.decode("utf-8")
    try:
        spans = event_spans(text)
    except RecursionError:  # the parse above just managed, one call deeper it does not
        raise HecError(6, 0, "the body is nested too deeply") from None
    out: list[tuple[IncomingEvent, str | None]] = []
    cost = 0
    for number, (obj, span) in enumerate(zip(objects, spans, strict=True)):
        value = obj["event"]
        if isinstance(value, str) or span is None:
            # A string event is its text; an escaped lone surrogate in it cannot be encoded: U+FFFD.
            data = storable_text(value).encode() if isinstance(value, str) else json.dumps(value).encode()
        else:
            data = text[span[0] : span[1]].encode("utf-8")
        try:
            found = decode_body(data)
        except DecodeError as exc:
            raise HecError(6, number, f"event {number} is not an echo event: {exc}") from None
        if len(found) != 1:
            raise HecError(
                6, number, f"event {number} holds {len(found)} echo events; send one echo event per HEC event"
            )
        out.append((found[0], _instance_field(obj)))
        cost += event_cost(len(data))
        if max_cost is not None and cost > max_cost:
            raise HecError(
                6,
                number,
                f"the first {number + 1} events would take about {cost} bytes of memory, more than one "
                f"request may take ({max_cost}{limits}): send them in several requests",
                status=413,
            )
    return out


async def receive_hec(request: Request) -> JSONResponse:
    """Store the echo events of a Splunk HEC request; answers like Splunk, after the commit."""
    ingestor: Ingestor = request.app.state.ingestor
    arrival = ingestor.store.arrival()  # a group commit may wait for this request's events
    try:
        return await _receive_hec(request, ingestor, arrival)
    finally:
        arrival.done()


async def _receive_hec(request: Request, ingestor: Ingestor, arrival: Arrival) -> JSONResponse:
    metrics: Metrics = request.app.state.metrics
    settings = request.app.state.settings
    try:
        try:
            body = await read_body(request, settings.max_body_bytes)
        except RequestRejected as exc:
            if exc.status == 400:
                raise HecError(6, 0, exc.message) from None
            metrics.rejected.labels(f"hec_{exc.reason}").inc()
            return hec_refusal(exc)
        instance = request_instance(request)
        max_events, max_cost, limits = event_limits(settings)

        def prepare() -> list[PreparedEvent]:
            found = hec_events(body, max_events=max_events, max_cost=max_cost, limits=limits)
            now = int(time.time() * 1000)
            out = []
            for number, (incoming, from_fields) in enumerate(found):
                try:
                    out.append(ingestor.prepare(incoming, received_at=now, instance=instance or from_fields))
                except RecursionError:
                    raise HecError(6, number, too_deep(number)) from None
            return out

        prepared = await run_in_threadpool(prepare) if len(body) > _THREAD_THRESHOLD else prepare()
        try:
            hold_events(request_reservation(request), prepared)
            await store_prepared(request, prepared, arrival)
        except RequestRejected as exc:
            metrics.rejected.labels(f"hec_{exc.reason}").inc()
            if exc.status == 403:  # the token may not send events of these applications
                return hec_answer(HecError(4, detail=exc.message))
            if exc.status != 503:  # 503s are logged where they arise, once per interval
                log.warning("HEC request not stored: %s", exc.message)
            busy = HecError(9, detail=exc.message)
            return hec_answer(busy, {"Retry-After": exc.headers.get("Retry-After", RETRY_AFTER)})
    except HecError as exc:
        metrics.rejected.labels(f"hec_code_{exc.code}").inc()
        return hec_answer(exc)
    return JSONResponse({"text": HEC_CODES[0][1], "code": 0})


def warn_if_open(tokens: list[str]) -> None:
    """Say at start-up that the Splunk-compatible endpoint takes events without a token."""
    if not tokens:
        log.warning(
            "the Splunk-compatible endpoint /services/collector accepts events without a token: "
            "set hec_tokens (SPINTRAIL_HEC_TOKENS) to require one"
        )


for _path in EVENT_PATHS:
    router.add_api_route(
        _path,
        receive_hec,
        methods=["POST"],
        tags=["ingest"],
        summary="Receive echo events sent as Splunk HEC events" if _path.endswith("/event") else None,
        include_in_schema=_path.endswith("/event"),
    )
    router.add_api_route(_path + "/", receive_hec, methods=["POST"], include_in_schema=False)


@router.get(HEALTH_PATH, tags=["ingest"], summary="Splunk HEC health")
@router.get(HEALTH_PATH + "/1.0", include_in_schema=False)
async def hec_health(request: Request) -> JSONResponse:
    """``{"text":"HEC is healthy","code":17}``; 503 with code 9 when the store cannot be reached."""
    store = request.app.state.store
    try:
        await run_in_threadpool(store.ping)
    except Exception as exc:
        return hec_answer(HecError(9, detail=str(exc)), {"Retry-After": RETRY_AFTER})
    return JSONResponse({"text": HEC_CODES[17][1], "code": 17})


@router.post(ACK_PATH, include_in_schema=False)
async def hec_ack() -> JSONResponse:
    """Indexer acknowledgement is not needed: a Success answer is sent only once the events are committed."""
    return hec_answer(
        HecError(14, detail="spintrail answers only after the commit; no acknowledgement needed")
    )
