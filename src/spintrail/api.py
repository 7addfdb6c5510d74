"""Query API: search, one event with its raw bytes, execution timelines, health, readiness and metrics."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from spintrail import auth
from spintrail.query import FILTER_HELP, FILTER_NAMES, FilterError, Filters, parse_limit, row_id
from spintrail.record import AuditRecord
from spintrail.store import Store, StoreUnavailable
from spintrail.timeline import build_timeline

router = APIRouter()


#: Seconds a client is asked to wait before retrying a 503 (every 503 says when to come back).
RETRY_AFTER = "5"


def error(status: int, reason: str, message: str) -> JSONResponse:
    headers = {"Retry-After": RETRY_AFTER} if status == 503 else None
    return JSONResponse({"error": reason, "message": message}, status_code=status, headers=headers)


def filters_from_request(request: Request) -> Filters:
    """The filters of a request's query string (repeat a parameter to match any of several values)."""
    params: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        params.setdefault(key, []).append(value)
    return Filters.from_params(params)


def _store(request: Request) -> Store:
    return request.app.state.store  # type: ignore[no-any-return]


def _openapi_filter_params() -> list[dict[str, Any]]:
    return [
        {
            "name": n,
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
            "description": FILTER_HELP[n],
        }
        for n in FILTER_NAMES
    ]


@router.get(
    "/api/v1/events",
    tags=["query"],
    summary="Search audit records",
    openapi_extra={"parameters": _openapi_filter_params()},
)
async def search_events(
    request: Request,
    limit: str | None = Query(None, description="page size, 1 to 1000 (default 100)"),
    cursor: str | None = Query(None, description="next_cursor of the previous page"),
) -> Response:
    """Records matching every filter, newest first by event time, with keyset pagination."""
    try:
        filters = filters_from_request(request)
        n = parse_limit(limit)
    except FilterError as exc:
        return error(400, "bad_filter", str(exc))
    store = _store(request)
    try:
        page = await run_in_threadpool(store.search, filters, limit=n, cursor=cursor)
    except ValueError as exc:
        return error(400, "bad_cursor", str(exc))
    except StoreUnavailable as exc:
        return error(503, "store_unavailable", str(exc))
    body = {"events": [r.to_api() for r in page.records], "next_cursor": page.next_cursor}
    headers = {}
    if page.next_cursor:
        params = [(k, v) for k, vs in filters.as_params().items() for v in vs]
        params += [("limit", str(n)), ("cursor", page.next_cursor)]
        headers["Link"] = f'<{request.url.path}?{urlencode(params)}>; rel="next"'
    return JSONResponse(body, headers=headers)


async def _find(request: Request, ref: str) -> AuditRecord | None:
    store = _store(request)
    number = row_id(ref)
    if number is not None:
        found = await run_in_threadpool(store.get, number)
        if found is not None:
            return found
    return await run_in_threadpool(store.get_by_event_id, ref)


@router.get("/api/v1/events/{ref}", tags=["query"], summary="One audit record and its raw event")
async def get_event(request: Request, ref: str) -> Response:
    """The record (by store id or echo event id), where it is in the tamper-evident log, and the event as
    kept, parsed (``raw`` is shown to auditors and admins only, and their read is logged)."""
    record = await _find(request, ref)
    if record is None or record.id is None:
        return error(404, "not_found", f"no event with id or event_id {ref!r}")
    principal = auth.principal_of(request)
    raw: bytes | None = None
    body: dict[str, Any] = {"event": record.to_api()}
    if principal is not None and principal.can("auditor"):
        await auth.record_access(request, "event", target=record.event_id)
        raw = await run_in_threadpool(_store(request).raw, record.id)
    else:
        body["raw_withheld"] = "the raw event is shown to the auditor and admin roles"
    trust = getattr(request.app.state, "trust", None)
    if trust is not None:
        leaf = await run_in_threadpool(trust.log.leaf_row, record.id)
        if leaf is not None:
            body["provenance"] = {"leaf_index": leaf[0], "raw_sha256": leaf[1].hex(), "ingest_token": leaf[2]}
    return Response(_with_raw(body, raw), media_type="application/json")


def _with_raw(body: dict[str, Any], raw: bytes | None) -> bytes:
    """``body`` as JSON with ``"raw"``: the kept bytes as they are where they hold one JSON value, else text.

    The bytes are placed as they are, not parsed and serialized again: whatever they hold (a lone surrogate
    escaped as ``\\udfff``, nesting deeper than Python's recursion allows) they can always be shown.
    """
    head = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if raw is None:
        value = b"null"
    else:
        value = raw
        try:
            json.loads(raw)
        except RecursionError:
            pass  # valid as far as it was read, only deep: JSON all the same
        except ValueError:
            value = json.dumps(raw.decode("utf-8", "replace")).encode()
    return head[:-1] + b',"raw":' + value.strip() + b"}"


@router.get("/api/v1/events/{ref}/raw", tags=["query"], summary="The exact bytes received")
async def get_raw(request: Request, ref: str) -> Response:
    """The event's original JSON, byte for byte."""
    record = await _find(request, ref)
    if record is None or record.id is None:
        return error(404, "not_found", f"no event with id or event_id {ref!r}")
    raw = await run_in_threadpool(_store(request).raw, record.id)
    if raw is None:
        return error(404, "raw_not_kept", f"the raw bytes of event {ref!r} are not kept")
    return Response(
        raw,
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="event-{record.event_id}.json"'},
    )


@router.get("/api/v1/executions/{execution_id}", tags=["query"], summary="An execution's timeline")
async def get_execution(request: Request, execution_id: str) -> Response:
    """Every event of one run in event-time order, with the run's user, status, start and end."""
    records = await run_in_threadpool(_store(request).execution, execution_id)
    if not records:
        return error(404, "not_found", f"no events for execution {execution_id!r}")
    return JSONResponse(build_timeline(execution_id, records).to_api())


@router.get("/healthz", tags=["operations"], summary="Liveness")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", tags=["operations"], summary="Readiness: the store is reachable")
async def readyz(request: Request) -> Response:
    store = _store(request)
    try:
        await run_in_threadpool(store.ping)
    except StoreUnavailable as exc:
        body = {"status": "unavailable", "store": store.backend, "reason": str(exc)}
        return JSONResponse(body, 503, headers={"Retry-After": RETRY_AFTER})
    return JSONResponse({"status": "ready", "store": store.backend})


@router.get("/metrics", tags=["operations"], summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    m = request.app.state.metrics
    store = _store(request)
    m.queue.set(store.pending)
    try:
        await run_in_threadpool(store.ping)
        m.database_up.set(1)
    except Exception:
        m.database_up.set(0)
    return PlainTextResponse(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
