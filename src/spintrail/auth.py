"""Authentication and authorization: who is calling, and may they call this route.

Authentication (``AuthMiddleware``, every HTTP request) accepts, in this order:

* ``Authorization: Bearer <token>``, ``Authorization: Splunk <token>`` (HEC clients), or HTTP Basic with
  the token as the password (what echo's ``username``/``password`` sends; the user name is not checked);
* the user named by ``proxy_user_header``, only when the TCP peer is one of ``trusted_proxies``.

On the Splunk-compatible routes the ``hec_tokens`` are accepted too (as ``Splunk <token>`` or the Basic
password). It sets ``request.state.auth`` and the application scope of the request (``scope.py``), which
every store read honours. When authentication is off (``auth = off``, or ``auth = auto`` on a store where it
was never on: see ``tokens.py``) every caller is the anonymous admin.

Before that, the middleware refuses a request with more than one ``Authorization`` header (400) and a
request with an effect that a browser sent from another site (403, ``browsers.py``); ``record_access``
refuses reads that would write the access log from another site the same way.

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

from spintrail import browsers, dbutil
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

#: Where the Splunk-compatible routes live (their errors answer in Splunk's format).
HEC_PREFIX = "/services/collector"


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
    "GET /api/v1/integrity/actions": Rule("auditor", all_apps=True),
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
PUBLIC_NON_API_PATHS: frozenset[str] = frozenset({"/openapi.json", "/docs", "/docs/assets", "/static"})


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

    def __init__(
        self, status: int, reason: str, message: str, hec_code: int, *, detail: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.hec_code = hec_code
        self.detail = detail  # Splunk clients get this status, ``error`` and the message as ``detail``


def cross_site_error(message: str) -> AuthError:
    """The refusal of a request sent by a browser from another site (``browsers.py``)."""
    return AuthError(403, "cross_site_request", message, 4, detail=True)


TWO_AUTHORIZATIONS = AuthError(
    400,
    "ambiguous_authorization",
    "the request has more than one Authorization header: send exactly one",
    3,
    detail=True,
)


def auth_error_response(request: Request, exc: AuthError) -> JSONResponse:
    # Basic first, so a browser opening a page asks for the token (as the password) itself.
    challenge = 'Basic realm="spintrail", Bearer realm="spintrail"'
    headers = {"WWW-Authenticate": challenge} if exc.status == 401 else {}
    if exc.status == 503:
        headers["Retry-After"] = "5"
    if request.url.path.startswith(HEC_PREFIX):
        from spintrail.splunk import HEC_CODES

        status, text = HEC_CODES[exc.hec_code]
        body: dict[str, Any] = {"text": text, "code": exc.hec_code}
        if exc.detail:
            status = exc.status
            body.update(error=exc.reason, detail=exc.message)
        return JSONResponse(body, status_code=status, headers=headers)
    if exc.reason == "cross_site_request" and request.method == "GET" and _is_page(request):
        # A link from another site to a page whose read is logged: one click from here opens it.
        from spintrail import web

        return web.render(
            request,
            "error.html",
            status=403,
            code=403,
            message=exc.message,
            continue_url=request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        )
    return JSONResponse(
        {"error": exc.reason, "message": exc.message}, status_code=exc.status, headers=headers
    )


def _is_page(request: Request) -> bool:
    return not request.url.path.startswith(("/api/", HEC_PREFIX))


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
        self._hec_tokens = {secret: n for n, secret in enumerate(settings.hec_tokens, 1)}
        self._cache: dict[bytes, tuple[float, TokenInfo | None]] = {}
        self._enabled: tuple[float, bool] | None = None
        self._status: tuple[bool, bool] | None = None
        self._marked = False
        self._lock = threading.Lock()
        self._used: dict[str, int] = {}
        self._last_flush = time.monotonic()

    def enabled(self) -> bool:
        """Whether callers must authenticate (see the ``auth`` setting and ``tokens.AUTH_STATE``)."""
        if self.mode == "off":
            return False
        if self.mode == "on":
            if not self._marked:  # remember it for the store; never let the database decide here
                try:
                    self.tokens.set_auth_state("on", by="spintrail", reason="the auth setting is on")
                    self._marked = True
                except Exception as exc:
                    log.debug("cannot record the authentication state yet: %s", exc)
            return True
        now = time.monotonic()
        cached = self._enabled
        if cached is not None and now - cached[0] < self.cache_seconds:
            return cached[1]
        state = self.tokens.auth_state()
        active = self.tokens.active_count()
        turned_on = bool(self._proxy_header) or active > 0
        on = turned_on or state == "on"
        if turned_on and state != "on":
            # Once on, authentication stays on for the store (every replica reads the same state),
            # also when the last token is revoked, until an admin turns it off explicitly.
            self.tokens.set_auth_state("on", by="spintrail", reason=self._why_on(active))
        status = (on, on and active == 0 and not self._proxy_header)
        if status != self._status:
            if status[1]:
                log.warning(
                    "authentication is on but no token is active: nobody can send or read events. Create "
                    "one with `spintrail tokens create NAME --role admin` (or set SPINTRAIL_ADMIN_TOKEN)"
                )
            elif self._status is not None:
                log.warning("authentication is now %s", "required" if on else "OFF: every caller is admin")
            self._status = status
        self._enabled = (now, on)
        return on

    def _why_on(self, active: int) -> str:
        if self._proxy_header:
            return "proxy_user_header is set"
        return f"{active} token(s) exist"

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

    def authenticate(self, headers: dict[bytes, bytes], client: str | None, path: str = "") -> AuthResult:
        enabled = self.enabled()
        header = headers.get(b"authorization")
        if self._hec_tokens and path.startswith(HEC_PREFIX):
            # The Splunk-compatible routes take hec_tokens besides API tokens, and need one of them.
            enabled = True
            if header:
                hec = self._hec_principal(header.decode("latin-1"))
                if hec is not None:
                    return hec
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

    def _hec_principal(self, value: str) -> AuthResult | None:
        """The principal of a ``hec_tokens`` secret in ``Authorization`` (``Splunk <token>`` or the Basic
        password, as Splunk takes them), or ``None`` when the header holds no such secret."""
        secret, _ = secret_of(value)
        number = self._hec_tokens.get(secret or "")
        if not number:
            return None
        if value.strip().partition(" ")[0].lower() not in ("splunk", "basic"):
            return AuthResult(
                None,
                AuthError(401, "bad_authorization", "send hec_tokens as `Authorization: Splunk <token>`", 3),
            )
        return AuthResult(Principal(f"settings:hec-{number}", "ingest", None, "settings"))

    def _from_authorization(self, value: str) -> AuthResult:
        secret, error = secret_of(value)
        if secret is None:
            return AuthResult(None, error)
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


def secret_of(value: str) -> tuple[str | None, AuthError | None]:
    """The token in an ``Authorization`` value (Bearer, Splunk, Token, or Basic with the token as the
    password), or why there is none."""
    scheme, _, credentials = value.strip().partition(" ")
    scheme = scheme.lower()
    credentials = credentials.strip()
    if scheme in ("bearer", "splunk", "token"):
        secret = credentials
    elif scheme == "basic":
        try:
            user, _, password = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, ValueError):
            return None, AuthError(401, "bad_authorization", "the Basic credentials are not valid base64", 3)
        secret = password or user
    else:
        return None, AuthError(
            401,
            "bad_authorization",
            f"authorization scheme {scheme!r} is not supported: use Bearer, Basic or Splunk",
            3,
        )
    if not secret:
        return None, AuthError(401, "bad_authorization", "the Authorization header has no token", 3)
    return secret, None


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
        raw_headers = scope.get("headers") or []
        headers = dict(raw_headers)
        refused: AuthError | None = None
        if sum(1 for name, _ in raw_headers if name == b"authorization") > 1:
            refused = TWO_AUTHORIZATIONS  # never decided by whichever comes last
        elif scope["method"] not in browsers.SAFE_METHODS:
            settings: Settings | None = getattr(scope["app"].state, "settings", None)
            why = browsers.cross_site_refusal(headers, settings.public_url if settings else None)
            if why is not None:
                refused = cross_site_error(why)
        if refused is not None:
            response = auth_error_response(Request(scope), refused)
            await response(scope, receive, send)
            return
        authenticator: Authenticator | None = getattr(scope["app"].state, "authenticator", None)
        if authenticator is None:
            result = AuthResult(None, AuthError(503, "starting", "spintrail is starting; retry shortly", 9))
        else:
            client = scope.get("client")
            try:
                result = authenticator.authenticate(headers, client[0] if client else None, scope["path"])
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
    """Write an access-log entry for this request, or refuse it: 403 when a browser sent it from another
    site (a page elsewhere must not fill the access log in a reader's name), 503 when the log cannot be
    written."""
    why = browsers.cross_site_refusal(dict(request.scope["headers"]), request.app.state.settings.public_url)
    if why is not None:
        raise cross_site_error(why)
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
