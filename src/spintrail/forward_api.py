"""Forwarding API: each sink's state, backlog, counters and last error, and its dead letters."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from spintrail.forward import Forwarder, dead_letter_rows, find_sink, sink_rows

router = APIRouter()


def _forwarder(request: Request) -> Forwarder | None:
    return getattr(request.app.state, "forwarder", None)


@router.get("/api/v1/sinks", tags=["forwarding"], summary="Forwarding sinks and their state")
async def list_sinks(request: Request) -> Response:
    """Every configured sink: state (idle, delivering, retrying, paused, new), backlog, events delivered,
    dead letters, last error, and where its cursor stands."""
    forwarder = _forwarder(request)
    if forwarder is None:
        return JSONResponse({"sinks": []})
    rows = await run_in_threadpool(sink_rows, forwarder.settings.sinks, forwarder.outbox)
    return JSONResponse({"sinks": rows})


@router.get(
    "/api/v1/sinks/{name}/dead-letters", tags=["forwarding"], summary="Events a sink refused, with why"
)
async def list_dead_letters(
    request: Request, name: str, limit: int = Query(1000, ge=1, le=100_000, description="most to list")
) -> Response:
    """The sink's dead letters, oldest first: the event, when it failed and the sink's reason."""
    forwarder = _forwarder(request)
    try:
        if forwarder is None:
            raise KeyError(f"no sink named {name!r}: no sinks are configured")
        find_sink(forwarder.settings, name)
    except KeyError as exc:
        return JSONResponse({"error": "not_found", "message": exc.args[0]}, status_code=404)
    rows = await run_in_threadpool(dead_letter_rows, forwarder.store, forwarder.outbox, name, limit)
    return JSONResponse({"sink": name, "dead_letters": rows})
