"""The trust HTTP API (who am I, access log, hash look-up, checkpoints, proofs, verification, tokens) and the
wiring of authentication, the access log and the checkpointer into the application."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from spintrail import auth, integrity
from spintrail.query import FilterError, parse_limit, parse_time, row_id
from spintrail.record import AuditRecord
from spintrail.settings import Settings
from spintrail.signer_state import SignerRefused
from spintrail.store import Store
from spintrail.trust import HASH_FORMS, Trust, install

log = logging.getLogger(__name__)

router = APIRouter()

#: Largest integer accepted in parameters (the databases' 64-bit integers).
MAX_INT = 2**63 - 1


def _cursor(value: str | None) -> int | None:
    """A page cursor (an id), or ``ValueError``."""
    if value is None or value == "":
        return None
    number = row_id(value)
    if number is None or number > MAX_INT:
        raise ValueError(value)
    return number


OPEN_WARNING = (
    "authentication is OFF: anyone who can reach this server can send, read and verify events as admin. "
    "Create a token (`spintrail tokens create NAME --role admin`) or set SPINTRAIL_ADMIN_TOKEN to turn it on."
)


def _error(status: int, reason: str, message: str) -> JSONResponse:
    return JSONResponse({"error": reason, "message": message}, status_code=status)


def _trust(request: Request) -> Trust:
    return request.app.state.trust  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------------- wiring


def setup(app: FastAPI) -> None:
    """Add authentication, its error responses and the trust routes to the application."""
    app.add_middleware(auth.AuthMiddleware)
    app.add_exception_handler(auth.AuthError, auth.auth_error_response)  # type: ignore[arg-type]
    app.include_router(router)


def start(
    app: FastAPI,
    settings: Settings,
    store: Store,
    checkpoint_listeners: Sequence[integrity.Listener] = (),
) -> None:
    """At start-up: install trust on the store, start authenticating and signing checkpoints (telling
    ``checkpoint_listeners`` about each one, from the first)."""
    trust = install(store, settings)
    trust.log.listeners.extend(checkpoint_listeners)
    app.state.trust = trust
    authenticator = auth.Authenticator(settings, trust.tokens)
    app.state.authenticator = authenticator
    if not authenticator.enabled():
        log.warning(OPEN_WARNING)
    checkpointer = integrity.Checkpointer(
        trust.log,
        trust.signing_key().signer,
        every_events=settings.checkpoint_events,
        every_seconds=settings.checkpoint_seconds,
        ticks=[authenticator.flush_usage],
    )
    checkpointer.start()
    app.state.checkpointer = checkpointer
    metrics = getattr(app.state, "metrics", None)
    if metrics is not None:
        metrics.watch_checkpoints(checkpointer)


def stop(app: FastAPI) -> None:
    checkpointer = getattr(app.state, "checkpointer", None)
    if checkpointer is not None:
        checkpointer.stop()
        app.state.checkpointer = None
    authenticator = getattr(app.state, "authenticator", None)
    if authenticator is not None:
        try:
            authenticator.flush_usage(force=True)
        except Exception:
            log.exception("could not record token usage")
    trust = getattr(app.state, "trust", None)
    if trust is not None:
        trust.close()


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a listen address) is reachable only from this machine."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def open_listen_refusal(settings: Settings, store: Store) -> str | None:
    """Why ``serve`` must not listen on ``settings.host``: an open store (authentication off by default, as
    before any token exists) is for a try-out on one's own machine. ``None`` when it may."""
    if settings.auth == "off" or is_loopback(settings.host):
        return None
    if auth.Authenticator(settings, install(store, settings).tokens).enabled():
        return None
    return (
        f"refusing to listen on {settings.host}: authentication is off (no token exists yet), so anyone who "
        "can reach this address would be admin. Create a token first (`spintrail tokens create NAME --role "
        "admin`, or set SPINTRAIL_ADMIN_TOKEN), listen on 127.0.0.1, or set auth = off (SPINTRAIL_AUTH=off) "
        "to serve an open store on purpose"
    )


def banner(settings: Settings, store: Store) -> list[str]:
    """Start-up lines for the console: authentication state and the checkpoint verifier key."""
    trust = install(store, settings)
    lines = []
    if not auth.Authenticator(settings, trust.tokens).enabled():
        lines.append("WARNING: " + OPEN_WARNING)
    lines.append(f"checkpoints of log {trust.origin} are signed by {trust.signing_key().verifier}")
    return lines


# --------------------------------------------------------------------------------------------- who am I


@router.get("/api/v1/whoami", tags=["trust"], summary="The caller's identity and role")
async def whoami(request: Request) -> dict[str, Any]:
    """Who the request is authenticated as, its role and the applications it may see."""
    result: auth.AuthResult = request.state.auth
    principal = result.principal or auth.ANONYMOUS
    return {**principal.to_api(), "authentication": "on" if result.enabled else "off"}


# --------------------------------------------------------------------------------------------- access log


@router.get("/api/v1/access-log", tags=["trust"], summary="Who read raw events, exports, reports, proofs")
async def access_log(
    request: Request,
    since: str | None = Query(None, description="from this time: RFC 3339, epoch ms, or relative (7d)"),
    until: str | None = Query(None, description="up to this time (exclusive)"),
    principal: str | None = Query(None, description="only this token or user"),
    action: str | None = Query(None, description="raw, event, export, report, proof, hash, verify"),
    limit: str | None = Query(None, description="page size, 1 to 1000 (default 100)"),
    cursor: str | None = Query(None, description="next_cursor of the previous page"),
) -> Response:
    """Logged reads, newest first."""
    try:
        n = parse_limit(limit)
        s = parse_time(since, name="since") if since else None
        u = parse_time(until, name="until") if until else None
        before = _cursor(cursor)
    except FilterError as exc:
        return _error(400, "bad_filter", str(exc))
    except ValueError:
        return _error(
            400, "bad_cursor", "cursor is not valid: pass the next_cursor value of a previous answer"
        )
    rows = await run_in_threadpool(
        _trust(request).access.list,
        since=s,
        until=u,
        principal=principal,
        action=action,
        limit=n + 1,
        before_id=before,
    )
    page = rows[:n]
    nxt = str(page[-1].id) if len(rows) > n and page else None
    return JSONResponse({"entries": [e.to_api() for e in page], "next_cursor": nxt})


# --------------------------------------------------------------------------------------------- hash


class HashRequest(BaseModel):
    value: str = Field(..., min_length=1, max_length=65536, description="the secret value to look for")
    limit: int = Field(100, ge=1, le=1000, description="most records to return")


@router.post("/api/v1/hash", tags=["trust"], summary="Does this secret value appear in any event?")
async def hash_value(request: Request, body: HashRequest) -> Response:
    """The ``hmac-sha256:`` form the value takes in this installation (also as ``Bearer <value>`` and
    similar header values, which are hashed whole), and the records that carry it. The look-up is logged
    with the hash, never the value."""
    trust = _trust(request)
    forms = {
        form.format("<value>"): trust.scrubber.hash_value(form.format(body.value)) for form in HASH_FORMS
    }
    await auth.record_access(request, "hash", target=forms["<value>"])
    _, records = await run_in_threadpool(lambda: trust.find_value(body.value, limit=body.limit))
    return JSONResponse(
        {
            "hash": forms["<value>"],
            "forms": forms,
            "count": len(records),
            "events": [r.to_api() for r in records],
        },
    )


# --------------------------------------------------------------------------------------------- integrity


@router.get("/api/v1/integrity/key", tags=["integrity"], summary="The checkpoint verifier key")
async def verifier_key(request: Request) -> dict[str, Any]:
    """The public key that signs this log's checkpoints (to rely on it, get it from the operator directly)."""
    trust = _trust(request)
    key = await run_in_threadpool(trust.signing_key)
    return {"origin": trust.origin, "verifier_key": key.verifier, "key_name": key.name}


@router.get("/api/v1/integrity/checkpoints", tags=["integrity"], summary="Signed checkpoints, newest first")
async def checkpoints(
    request: Request,
    limit: str | None = Query(None, description="page size, 1 to 1000 (default 100)"),
    cursor: str | None = Query(None, description="next_cursor of the previous page"),
) -> Response:
    try:
        n = parse_limit(limit)
        before = _cursor(cursor)
    except FilterError as exc:
        return _error(400, "bad_filter", str(exc))
    except ValueError:
        return _error(
            400, "bad_cursor", "cursor is not valid: pass the next_cursor value of a previous answer"
        )
    trust = _trust(request)
    found = await run_in_threadpool(trust.log.checkpoints, limit=n + 1, before_id=before)
    state = await run_in_threadpool(trust.log.state)
    page = found[:n]
    return JSONResponse(
        {
            "origin": trust.origin,
            "log_size": state.size,
            "checkpoints": [c.to_api() for c in page],
            "next_cursor": str(page[-1].id) if len(found) > n and page else None,
        }
    )


@router.get(
    "/api/v1/integrity/actions", tags=["integrity"], summary="Administrative actions in the log, newest first"
)
async def admin_actions(
    request: Request,
    action: str | None = Query(None, description="only this action (token_created, retention, adopt, ...)"),
    limit: str | None = Query(None, description="most entries, 1 to 1000 (default 100)"),
) -> Response:
    try:
        n = parse_limit(limit)
    except FilterError as exc:
        return _error(400, "bad_filter", str(exc))
    trust = _trust(request)
    found = await run_in_threadpool(
        lambda: integrity.admin_actions(trust.conns.get(), action=action, limit=n)
    )
    return JSONResponse({"origin": trust.origin, "actions": [a.to_api() for a in found]})


@router.get("/api/v1/integrity/proof/{ref}", tags=["integrity"], summary="Evidence bundle of one event")
async def proof(
    request: Request,
    ref: str,
    raw: bool = Query(False, description="include the raw bytes kept (base64)"),
) -> Response:
    """Record, raw hash, leaf, inclusion proof and signed checkpoint: check it with
    ``spintrail verify-proof BUNDLE --key VERIFIER_KEY``."""
    trust = _trust(request)
    record = await _find(trust.store, ref)
    if record is None:
        return _error(404, "not_found", f"no event with id or event_id {ref!r}")

    def make() -> dict[str, Any]:
        key = trust.signing_key()
        return trust.log.proof_bundle(record, signer=key.signer, verifier=key.verifier, include_raw=raw)

    try:
        bundle = await run_in_threadpool(make)
    except integrity.IntegrityError as exc:
        return _error(409, "not_provable", str(exc))
    except SignerRefused as exc:  # a checkpoint was needed and the signer will not sign this log
        return _error(503, "signer_refused", str(exc))
    return JSONResponse(bundle)


@router.get("/api/v1/integrity/consistency", tags=["integrity"], summary="The log only grew")
async def consistency(
    request: Request,
    old: int = Query(..., ge=0, le=MAX_INT, description="size of the older checkpoint"),
    new: int | None = Query(
        None, ge=0, le=MAX_INT, description="size of the newer checkpoint (default: the latest)"
    ),
) -> Response:
    """A consistency proof between two stored checkpoints (by tree size)."""
    trust = _trust(request)

    def make() -> dict[str, Any] | str:
        old_cp = trust.log.checkpoint_of_size(old)
        new_cp = trust.log.latest() if new is None else trust.log.checkpoint_of_size(new)
        if old_cp is None or new_cp is None:
            missing = old if old_cp is None else new
            return f"no stored checkpoint of size {missing}: see /api/v1/integrity/checkpoints"
        return trust.log.consistency_bundle(old_cp, new_cp)

    try:
        result = await run_in_threadpool(make)
    except integrity.IntegrityError as exc:
        return _error(409, "not_provable", str(exc))
    if isinstance(result, str):
        return _error(404, "not_found", result)
    return JSONResponse(result)


@router.post("/api/v1/integrity/verify", tags=["integrity"], summary="Verify the whole store")
async def verify(
    request: Request,
    start: int = Query(0, ge=0, le=MAX_INT, description="first leaf whose record is re-read"),
    end: int | None = Query(
        None, ge=0, le=MAX_INT, description="leaf after the last one re-read (default: all)"
    ),
    raw: bool = Query(True, description="also re-hash the raw bytes kept"),
) -> Response:
    """Check every record against the hash chain, the Merkle tree and the signed checkpoints (with this
    server's key; for an independent check run ``spintrail verify --key`` on a copy)."""
    trust = _trust(request)

    def run() -> integrity.Report:
        key = trust.signing_key()
        return integrity.verify(
            trust.store, trust.conns, [key.verifier], origin=trust.origin, start=start, end=end, check_raw=raw
        )

    report = await run_in_threadpool(run)
    return JSONResponse(report.to_api())


# --------------------------------------------------------------------------------------------- tokens


@router.get("/api/v1/tokens", tags=["trust"], summary="API tokens (never their secrets)")
async def list_tokens(request: Request) -> dict[str, Any]:
    rows = await run_in_threadpool(_trust(request).tokens.list)
    return {"tokens": [r.to_api() for r in rows]}


async def _find(store: Store, ref: str) -> AuditRecord | None:
    number = row_id(ref)
    if number is not None:
        found = await run_in_threadpool(store.get, number)
        if found is not None:
            return found
    return await run_in_threadpool(store.get_by_event_id, ref)
