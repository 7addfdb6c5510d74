"""Authentication and authorization: who is calling, and may they call this route.

Authentication (``AuthMiddleware``, every HTTP request) accepts, in this order:

* ``Authorization: Bearer <token>``, ``Authorization: Splunk <token>`` (HEC clients), or HTTP Basic with
  the token as the password (what echo's ``username``/``password`` sends; the user name is not checked);
* the user named by ``proxy_user_header``, only when the TCP peer is one of ``trusted_proxies``.

It sets ``request.state.auth`` and the application scope of the request (``scope.py``), which every store
read honours. When authentication is off (no token configured in ``auth = auto``, or ``auth = off``) every
caller is the anonymous admin.

Authorization (``authorize``, a dependency of every API route) looks the matched route up in ``RULES``
(``"METHOD /path"`` or ``"METHOD /prefix*"``; ``*`` as the method matches any) and checks the caller's role,
whether the route needs a token valid for every application, and writes the access log for routes that
say so. A route without a rule is refused to everyone but admins (and the test suite fails), so a new route
is one line in ``RULES``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from spintrail import dbutil
from spintrail import scope as app_scope
from spintrail.accesslog import Access
from spintrail.settings import Settings
from spintrail.tokens import TokenInfo, TokenStore, secret_hash

log = logging.getLogger(__name__)

READER_RANK = {"viewer": 1, "auditor": 2, "admin": 3}


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. ``applications`` is ``None`` for every application."""

    name: str
    role: str
    applications: frozenset[str] | None = None
    via: str = "token"  # token | settings | proxy | open

    def can(self, need: str) -> bool:
        if need in ("public", "authenticated"):
            return True
        if need == "ingest":
            return self.role in ("ingest", "admin")
        return READER_RANK.get(self.role, 0) >= READER_RANK[need]

    def to_api(self) -> dict[str, Any]:
        apps = sorted(self.applications) if self.applications is not None else None
        return {"name": self.name, "role": self.role, "applications": apps, "via": self.via}


ANONYMOUS = Principal("anonymous", "admin", None, "open")


@dataclass(frozen=True, slots=True)
class Rule:
    """Who may call a route: ``need`` is public, authenticated, ingest, viewer, auditor or admin;
    ``all_apps`` refuses tokens limited to some applications; ``log`` names the access-log action written
    for every call."""

    need: str
    all_apps: bool = False
    log: str | None = None


PUBLIC = Rule("public")
AUTHENTICATED = Rule("authenticated")
INGEST = Rule("ingest")
VIEWER = Rule("viewer")
AUDITOR = Rule("auditor")
ADMIN = Rule("admin")

#: Every route's rule, one line each. Keys: "METHOD /path" as the route declares it, or a prefix ending in
#: "*"; "*" as the method matches every method.
RULES: dict[str, Rule] = {
    # operations
    "GET /healthz": PUBLIC,
    "GET /readyz": PUBLIC,
    "GET /metrics": PUBLIC,
    # ingest: the echo webhook and the Splunk-compatible collector
    "POST /api/v1/events": INGEST,
    "POST /api/v1/events/": INGEST,
    "GET /services/collector/health*": PUBLIC,
    "* /services/collector*": INGEST,
    # reading
    "GET /api/v1/whoami": AUTHENTICATED,
    "GET /api/v1/events": VIEWER,
    "GET /api/v1/events/{ref}": VIEWER,  # the raw event inside is shown (and logged) for auditors only
    "GET /api/v1/events/{ref}/raw": Rule("auditor", log="raw"),
    "GET /api/v1/executions/{execution_id}": VIEWER,
    # auditing
    "GET /api/v1/access-log": Rule("auditor", all_apps=True),
    "POST /api/v1/hash": AUDITOR,  # logged by the endpoint, with the hash (never the value)
    "GET /api/v1/integrity/key": VIEWER,
    "GET /api/v1/integrity/checkpoints": AUDITOR,
    "GET /api/v1/integrity/proof/{ref}": Rule("auditor", log="proof"),
    "GET /api/v1/integrity/consistency": AUDITOR,
    "POST /api/v1/integrity/verify": Rule("auditor", all_apps=True, log="verify"),
    # pages (a browser signs in with Basic auth: any user name, the token as password)
    "GET /": VIEWER,
    "GET /search": VIEWER,
    "GET /events/{ref}": VIEWER,  # the raw event is shown (and logged) for auditors only
    "GET /executions/{execution_id}": VIEWER,
    "GET /dashboard": VIEWER,
    "GET /api/v1/dashboard": VIEWER,
    "GET /live": VIEWER,
    "GET /live/stream": VIEWER,
    # reports and exports
    "GET /reports": AUDITOR,
    "GET /reports/{name}": Rule("auditor", log="report"),
    "GET /api/v1/reports/{name}": Rule("auditor", log="report"),
    "GET /api/v1/export": Rule("auditor", log="export"),
    # administration
    "GET /api/v1/tokens": ADMIN,
    "* /api/v1/sinks*": ADMIN,
}

#: Routes that are not API routes (no dependencies run there) and are public by design.
PUBLIC_NON_API_PATHS: frozenset[str] = frozenset(
    {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/static"}
)


def rule_for(method: str, path: str) -> Rule | None:
    """The rule of a route (its declared path), or ``None`` when there is none."""
    for key in (f"{method} {path}", f"* {path}"):
        if key in RULES:
            return RULES[key]
    best: tuple[int, Rule] | None = None
    for key, rule in RULES.items():
        if not key.endswith("*"):
            continue
        m, _, prefix = key[:-1].partition(" ")
        if m in (method, "*") and path.startswith(prefix) and (best is None or len(prefix) > best[0]):
            best = (len(prefix), rule)
    return best[1] if best else None


# --------------------------------------------------------------------------------------------- errors


class AuthError(Exception):
    """A refused request: 401 (who are you?) or 403 (not allowed). ``hec_code`` for Splunk clients."""

    def __init__(self, status: int, reason: str, message: str, hec_code: int) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.hec_code = hec_code


def auth_error_response(request: Request, exc: AuthError) -> JSONResponse:
    # Basic first, so a browser opening a page asks for the token (as the password) itself.
    challenge = 'Basic realm="spintrail", Bearer realm="spintrail"'
    headers = {"WWW-Authenticate": challenge} if exc.status == 401 else {}
    if exc.status == 503:
        headers["Retry-After"] = "5"
    if request.url.path.startswith("/services/collector"):
        from spintrail.splunk import HEC_CODES

        status, text = HEC_CODES[exc.hec_code]
        return JSONResponse({"text": text, "code": exc.hec_code}, status_code=status, headers=headers)
    return JSONResponse(
        {"error": exc.reason, "message": exc.message}, status_code=exc.status, headers=headers
    )


# --------------------------------------------------------------------------------------------- authentication


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The outcome of authenticating one request."""

    principal: Principal | None
    error: AuthError | None = None
    enabled: bool = True


_NO_CREDENTIALS = AuthError(
    401,
    "unauthenticated",
    "authentication required: send `Authorization: Bearer <token>` (or Basic with the token as password); "
    "create one with `spintrail tokens create`",
    2,
)


class Authenticator:
    """Resolves credentials to principals, with a short cache (revocation takes effect within seconds)."""

    def __init__(self, settings: Settings, tokens: TokenStore) -> None:
        self.settings = settings
        self.cache_seconds = settings.token_cache_seconds
        self.tokens = tokens
        self.mode = settings.auth
        self._proxies = parse_networks(settings.trusted_proxies)
        self._proxy_roles = parse_user_roles(settings.proxy_user_roles)
        self._proxy_header = (settings.proxy_user_header or "").lower().encode("latin-1") or None
        self._cache: dict[bytes, tuple[float, TokenInfo | None]] = {}
        self._enabled: tuple[float, bool] | None = None
        self._lock = threading.Lock()
        self._used: dict[str, int] = {}
        self._last_flush = time.monotonic()

    def enabled(self) -> bool:
        """Whether callers must authenticate (see the ``auth`` setting)."""
        if self.mode == "on":
            return True
        if self.mode == "off":
            return False
        now = time.monotonic()
        cached = self._enabled
        if cached is not None and now - cached[0] < self.cache_seconds:
            return cached[1]
        on = bool(self._proxy_header) or self.tokens.active_count() > 0
        if cached is not None and cached[1] != on:
            log.warning("authentication is now %s", "required" if on else "OFF: every caller is admin")
        self._enabled = (now, on)
        return on

    def _token(self, secret: str) -> TokenInfo | None:
        now = time.monotonic()
        digest = secret_hash(secret)  # the cache never holds secrets
        cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < self.cache_seconds:
            return cached[1]
        info = self.tokens.lookup(secret)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now, info)
        return info

    def authenticate(self, headers: dict[bytes, bytes], client: str | None) -> AuthResult:
        enabled = self.enabled()
        header = headers.get(b"authorization")
        if header:
            result = self._from_authorization(header.decode("latin-1"))
            if result.principal is not None or enabled:
                return AuthResult(result.principal, result.error, enabled)
        elif self._proxy_header and client is not None and self._trusted(client):
            user = headers.get(self._proxy_header)
            if user:
                return AuthResult(
                    self._proxy_principal(user.decode("utf-8", "replace").strip()), None, enabled
                )
        if not enabled:
            return AuthResult(ANONYMOUS, None, False)
        return AuthResult(None, _NO_CREDENTIALS, True)

    def _from_authorization(self, value: str) -> AuthResult:
        scheme, _, credentials = value.strip().partition(" ")
        scheme = scheme.lower()
        credentials = credentials.strip()
        if scheme in ("bearer", "splunk", "token"):
            secret = credentials
        elif scheme == "basic":
            try:
                user, _, password = (
                    base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")
                )
            except (binascii.Error, ValueError):
                return AuthResult(
                    None, AuthError(401, "bad_authorization", "the Basic credentials are not valid base64", 3)
                )
            secret = password or user
        else:
            return AuthResult(
                None,
                AuthError(
                    401,
                    "bad_authorization",
                    f"authorization scheme {scheme!r} is not supported: use Bearer, Basic or Splunk",
                    3,
                ),
            )
        if not secret:
            return AuthResult(
                None, AuthError(401, "bad_authorization", "the Authorization header has no token", 3)
            )
        info = self._token(secret)
        if info is None:
            return AuthResult(None, AuthError(401, "invalid_token", "the token is not valid", 4))
        if info.revoked:
            return AuthResult(None, AuthError(401, "token_revoked", f"token {info.name!r} was revoked", 1))
        self._used[info.name] = int(time.time() * 1000)
        return AuthResult(
            Principal(info.name, info.role, info.applications, info.source.replace("database", "token"))
        )

    def _trusted(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in net for net in self._proxies)

    def _proxy_principal(self, user: str) -> Principal | None:
        role = self._proxy_roles.get(user, self.settings.proxy_default_role)
        if role == "none":
            return None
        return Principal(user, role, None, "proxy")

    def flush_usage(self, *, force: bool = False) -> None:
        """Write when tokens were last used (at most once a minute)."""
        if not force and time.monotonic() - self._last_flush < 60:
            return
        self._last_flush = time.monotonic()
        used, self._used = self._used, {}
        self.tokens.touch({k: v for k, v in used.items() if not k.startswith("settings:")})


def parse_networks(entries: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    out = []
    for entry in entries:
        try:
            out.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"trusted_proxies: {entry!r} is not an IP address or network") from None
    return out


def parse_user_roles(entries: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for entry in entries:
        user, sep, role = entry.rpartition("=")
        role = role.strip()
        if not sep or not user.strip() or role not in ("none", *READER_RANK):
            raise ValueError(f"proxy_user_roles: {entry!r} is not user=viewer|auditor|admin|none")
        out[user.strip()] = role
    return out


_unreachable = dbutil.Throttled(log, "token look-up")
_DOWN = "the database cannot be reached to check the token; retry shortly"


class AuthMiddleware:
    """Authenticates every HTTP request and sets its application scope before anything else runs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        authenticator: Authenticator | None = getattr(scope["app"].state, "authenticator", None)
        if authenticator is None:
            result = AuthResult(None, AuthError(503, "starting", "spintrail is starting; retry shortly", 9))
        else:
            headers = dict(scope.get("headers") or [])
            client = scope.get("client")
            try:
                result = authenticator.authenticate(headers, client[0] if client else None)
            except Exception as exc:
                if not dbutil.is_unreachable(exc):
                    raise
                _unreachable.failed(exc)  # public routes (/healthz, /readyz) still answer
                result = AuthResult(None, AuthError(503, "store_unavailable", _DOWN, 9))
            else:
                _unreachable.succeeded()
        scope.setdefault("state", {})["auth"] = result
        principal = result.principal
        app_scope.set_current(principal.applications if principal is not None else frozenset())
        await self.app(scope, receive, send)


def principal_of(request: Request) -> Principal | None:
    result: AuthResult | None = getattr(request.state, "auth", None)
    return result.principal if result is not None else None


# --------------------------------------------------------------------------------------------- authorization


_warned: set[str] = set()


async def authorize(request: Request) -> None:
    """The dependency every API route runs: apply the route's rule."""
    route = request.scope.get("route")
    path = getattr(route, "path", request.url.path)
    rule = rule_for(request.method, path)
    if rule is None:
        key = f"{request.method} {path}"
        if key not in _warned:
            _warned.add(key)
            log.error("no access rule for %s: only admins may call it; add it to auth.RULES", key)
        rule = ADMIN
    if rule.need == "public":
        return
    result: AuthResult | None = getattr(request.state, "auth", None)
    if result is None or result.principal is None:
        raise result.error if result is not None and result.error is not None else _NO_CREDENTIALS
    principal = result.principal
    if not principal.can(rule.need):
        raise AuthError(
            403,
            "forbidden",
            f"{principal.name} has the {principal.role} role; {request.method} {path} needs {rule.need}",
            4,
        )
    if rule.all_apps and principal.applications is not None:
        raise AuthError(
            403,
            "forbidden",
            f"{principal.name} is limited to some applications; {request.method} {path} needs a token valid "
            "for every application",
            4,
        )
    if rule.log:
        await record_access(request, rule.log)


def access_entry(request: Request, action: str, target: str | None = None) -> Access:
    principal = principal_of(request) or ANONYMOUS
    client = request.client.host if request.client else None
    return Access(
        principal=principal.name,
        role=principal.role,
        via=principal.via,
        action=action,
        method=request.method,
        path=request.url.path,
        query=request.url.query or None,
        target=target,
        client=client,
    )


async def record_access(request: Request, action: str, target: str | None = None) -> None:
    """Write an access-log entry for this request, or refuse it (503) when that is impossible."""
    trust = request.app.state.trust
    entry = access_entry(request, action, target)
    try:
        await run_in_threadpool(trust.access.record, entry)
    except Exception as exc:
        log.error("access log: cannot record %s by %s: %s", action, entry.principal, exc)
        raise AuthError(
            503, "access_log_unavailable", f"the access log cannot be written ({exc}): retry", 9
        ) from None


def ingest_refusal(request: Request, applications: list[str | None]) -> str | None:
    """Why an ingest token limited to some applications may not store events of these, or ``None``."""
    principal = principal_of(request)
    if principal is None or principal.applications is None:
        return None
    outside = sorted({a or "(none)" for a in applications if a not in principal.applications})
    if not outside:
        return None
    return (
        f"token {principal.name} may only send events of {', '.join(sorted(principal.applications))}; "
        f"this request has events of {', '.join(outside)}: nothing was stored"
    )


def ingest_token_name(request: Request) -> str | None:
    """The name recorded with events sent in this request (``None`` when authentication is off and no
    token was sent)."""
    principal = principal_of(request)
    if principal is None or principal.via == "open":
        return None
    return principal.name
