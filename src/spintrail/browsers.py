"""Browsers on other sites: what keeps a page elsewhere from acting through a signed-in (or open) spintrail.

A browser attaches Basic credentials to every request it sends to spintrail, whichever page asked for it,
and in open mode no credentials are needed at all; a form or a ``no-cors`` fetch on another site can
therefore send a request (it just cannot read the answer). So every request with a side effect (any
method but GET, HEAD and OPTIONS, and reads that write the access log) is refused with 403 when a browser
says it comes from elsewhere:

* ``Sec-Fetch-Site: cross-site`` or ``same-site`` (every current browser sends it), or
* an ``Origin`` that is not spintrail's own: ``public_url`` when set (behind a reverse proxy), else the
  ``Host`` the request was sent to.

Server-side clients (echo, curl, Splunk's libraries) send neither header and are never refused, whatever
their content type. Every response also carries ``SECURITY_HEADERS``: a Content-Security-Policy that allows
only spintrail's own scripts, styles and images and no framing, and ``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Methods without side effects: never checked (except reads that write the access log).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _host_port(netloc: str, scheme: str | None) -> tuple[str, int | None]:
    """``host[:port]`` as (lower-case host, port); the port is the scheme's default when ``scheme`` is given
    and none is written, else ``None``."""
    parts = urlsplit("//" + netloc.strip())
    try:
        port = parts.port
    except ValueError:
        port = -1  # not a port: matches nothing
    host = (parts.hostname or "").lower()
    if port is None and scheme is not None:
        port = _DEFAULT_PORTS.get(scheme)
    return host, port


def origin_of(url: str) -> str:
    """The origin (``scheme://host[:port]``, default port left out) of a URL such as ``public_url``."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host, port = _host_port(parts.netloc, scheme)
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}" + ("" if port == _DEFAULT_PORTS.get(scheme) else f":{port}")


def _same_origin(origin: str, public_url: str | None, host_header: str | None) -> bool:
    if origin.lower() == "null":
        return False
    if public_url:
        return origin_of(origin) == origin_of(public_url)
    if not host_header:
        return False
    parts = urlsplit(origin)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        return False
    origin_host, origin_port = _host_port(parts.netloc, scheme)
    host, port = _host_port(host_header, None)
    # Without a port in Host (the usual case behind a proxy on 80/443) only the host names are compared:
    # the request may have reached spintrail over plain HTTP from a proxy that speaks HTTPS to browsers.
    return origin_host == host and (port is None or port == origin_port)


def cross_site_refusal(headers: Mapping[bytes, bytes], public_url: str | None) -> str | None:
    """Why a browser request with these headers comes from another site, or ``None`` when it does not
    (or the client is not a browser)."""
    site = headers.get(b"sec-fetch-site", b"").decode("latin-1").strip().lower()
    if site in ("cross-site", "same-site"):
        return (
            f"a browser sent this request from another site (Sec-Fetch-Site: {site}): requests with an "
            "effect are accepted only from spintrail's own pages or from clients that are not browsers"
        )
    raw = headers.get(b"origin")
    if raw is None:
        return None
    origin = raw.decode("latin-1").strip()
    host = headers.get(b"host")
    if _same_origin(origin, public_url, host.decode("latin-1") if host is not None else None):
        return None
    own = origin_of(public_url) if public_url else "the address in the Host header"
    return (
        f"a browser on {origin or 'an unknown origin'} sent this request, but spintrail's own origin is "
        f"{own}: requests with an effect are accepted only from spintrail's own pages (set public_url when "
        "spintrail is reached through a proxy under another name)"
    )


class SecurityHeaders:
    """Adds ``SECURITY_HEADERS`` to every HTTP response (those a route set itself are kept)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                present = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
