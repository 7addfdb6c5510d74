"""A small client for the parts of Spinnaker's Gate that hold execution history.

Error vocabulary::

    GateError
     +-- GateUnavailable   Gate did not answer usefully after every retry (5xx, 429, timeouts, resets)
     +-- GateAuthError     401 or 403: the credentials are missing, wrong, or lack read access
     +-- GateNotFound      404: no such application or execution
     +-- GateRejected      any other 4xx (the request itself is wrong)

Requests are retried with exponential backoff on 429, 5xx and transport errors, honouring ``Retry-After``;
a token bucket keeps the request rate at or below ``rate`` per second so a backfill never loads Spinnaker.
"""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

__all__ = [
    "GateAuth",
    "GateAuthError",
    "GateClient",
    "GateError",
    "GateNotFound",
    "GateRejected",
    "GateUnavailable",
]


class GateError(Exception):
    """Base of every Gate failure."""


class GateUnavailable(GateError):
    """Gate kept failing (5xx, 429, timeouts, dropped connections) through every retry."""


class GateAuthError(GateError):
    """Gate refused the credentials (401) or the access (403)."""


class GateNotFound(GateError):
    """Gate answered 404."""


class GateRejected(GateError):
    """Gate refused the request (a 4xx other than 401, 403, 404 and 429)."""


@dataclass(frozen=True, slots=True)
class GateAuth:
    """How to authenticate to Gate: any one of a bearer token, a session cookie, HTTP Basic, or an X.509
    client certificate (which can be combined with the others, as a certificate is checked by TLS)."""

    token: str | None = None
    cookie: str | None = None
    username: str | None = None
    password: str | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    ca_bundle: Path | None = None

    def describe(self) -> str:
        """Which method is used, never the secret itself (for logs and the run's provenance)."""
        methods = [
            name
            for name, used in (
                ("bearer token", self.token),
                ("session cookie", self.cookie),
                ("basic", self.username),
                ("x509 client certificate", self.client_cert),
            )
            if used
        ]
        return ", ".join(methods) or "none"


def _cookies(cookie: str) -> dict[str, str]:
    """``SESSION=abc; other=x`` (or a bare value, taken as ``SESSION``) as a cookie dict."""
    out: dict[str, str] = {}
    for part in cookie.split(";"):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        if sep:
            out[name.strip()] = value.strip()
        else:
            out["SESSION"] = name
    return out


class _RateLimiter:
    """At most ``rate`` calls a second on average (a token bucket of one second's burst)."""

    def __init__(self, rate: float, clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
        self.rate = rate
        self.clock = clock
        self.sleep = sleep
        self.tokens = 1.0
        self.last = clock()
        self.lock = threading.Lock()

    def wait(self) -> None:
        if self.rate <= 0:
            return
        with self.lock:
            now = self.clock()
            self.tokens = min(max(1.0, self.rate), self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens < 1.0:
                delay = (1.0 - self.tokens) / self.rate
                self.sleep(delay)
                self.last = self.clock()
                self.tokens = 0.0
            else:
                self.tokens -= 1.0


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class GateClient:
    """Reads applications and executions from Gate.

    :param url: Gate's base URL, e.g. ``https://gate.example.com`` (or its x509 port).
    :param auth: the credentials.
    :param timeout: seconds for each request (connect and read).
    :param retries: attempts after the first for a retryable failure.
    :param backoff: seconds before the first retry; doubled each time, at most ``max_backoff``.
    :param rate: most requests per second (0: no limit).
    :param transport: an ``httpx`` transport (tests); by default a real connection.
    """

    def __init__(
        self,
        url: str,
        *,
        auth: GateAuth | None = None,
        timeout: float = 60.0,
        retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        rate: float = 5.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"gate URL must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.auth = auth or GateAuth()
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.sleep = sleep
        self.requests = 0
        self.retried = 0
        self._limit = _RateLimiter(rate, clock, sleep)
        a = self.auth
        headers = {"Accept": "application/json", "User-Agent": "spintrail-backfill"}
        if a.token:
            headers["Authorization"] = f"Bearer {a.token}"
        verify: Any = str(a.ca_bundle) if a.ca_bundle else True
        cert: Any = None
        if a.client_cert:
            cert = (str(a.client_cert), str(a.client_key)) if a.client_key else str(a.client_cert)
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            cookies=_cookies(a.cookie) if a.cookie else None,
            auth=(a.username, a.password or "") if a.username else None,
            timeout=timeout,
            verify=verify,
            cert=cert,
            transport=transport,
            follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GateClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one request -------------------------------------------------------------------------------

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET ``path`` and return its JSON, retrying what can be retried."""
        attempt = 0
        while True:
            self._limit.wait()
            self.requests += 1
            wait: float | None = None
            try:
                response = self._http.get(path, params=params)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                if status < 300:
                    try:
                        return response.json()
                    except ValueError:
                        problem = f"{status} with a body that is not JSON"
                elif status in (401, 403):
                    raise GateAuthError(
                        f"gate answered {status} for GET {path}: check the credentials "
                        f"(used: {self.auth.describe()}) and that they may read this application"
                    )
                elif status == 404:
                    raise GateNotFound(f"gate answered 404 for GET {path}")
                elif status in (301, 302, 303, 307, 308):
                    raise GateAuthError(
                        f"gate redirected GET {path} to {response.headers.get('location')!r}: that is "
                        "usually its login page, so the credentials were not accepted"
                    )
                elif status == 429 or status >= 500:
                    problem = f"{status} {response.reason_phrase}"
                    wait = _retry_after(response.headers.get("retry-after"))
                else:
                    raise GateRejected(f"gate answered {status} for GET {path}: {response.text[:300]}")
            if attempt >= self.retries:
                raise GateUnavailable(f"GET {self.url}{path} failed {attempt + 1} times, last: {problem}")
            delay = min(self.max_backoff, self.backoff * 2**attempt)
            self.sleep(max(delay, min(wait, 300.0)) if wait is not None else delay)
            attempt += 1
            self.retried += 1

    # -- Gate's endpoints --------------------------------------------------------------------------

    def applications(self) -> list[str]:
        """The names of every application (``GET /applications``)."""
        body = self.get("/applications")
        names = [a.get("name") for a in body if isinstance(a, dict)] if isinstance(body, list) else []
        return sorted({n for n in names if isinstance(n, str) and n})

    def recent_pipelines(self, application: str, *, limit: int) -> list[dict[str, Any]]:
        """Recent pipeline executions (``/applications/{app}/pipelines``: orca returns at most ``limit`` per
        pipeline config, of the last ``daysOfExecutionHistory`` days)."""
        body = self.get(
            f"/applications/{quote(application, safe='')}/pipelines", {"limit": limit, "expand": "true"}
        )
        return [e for e in body if isinstance(e, dict)] if isinstance(body, list) else []

    def search_pipelines(
        self, application: str, *, start: int | None, end: int | None, size: int
    ) -> Iterator[dict[str, Any]]:
        """Pipeline executions triggered between ``start`` and ``end`` (epoch ms), page after page
        (``/applications/{app}/executions/search``)."""
        index = 0
        while True:
            params: dict[str, Any] = {"startIndex": index, "size": size, "expand": "true"}
            if start is not None:
                params["triggerTimeStartBoundary"] = start
            if end is not None:
                params["triggerTimeEndBoundary"] = end
            body = self.get(f"/applications/{quote(application, safe='')}/executions/search", params)
            page = [e for e in body if isinstance(e, dict)] if isinstance(body, list) else []
            yield from page
            if len(page) < size:
                return
            index += size

    def orchestrations(self, application: str, *, limit: int) -> Iterator[dict[str, Any]]:
        """Ad-hoc operations (``/applications/{app}/tasks?page=P&limit=N``), page after page; each item is
        the execution itself (orca's task view carries it as ``execution``)."""
        page_no = 1
        while True:
            body = self.get(
                f"/applications/{quote(application, safe='')}/tasks", {"page": page_no, "limit": limit}
            )
            page = [e for e in body if isinstance(e, dict)] if isinstance(body, list) else []
            for item in page:
                yield unwrap_task(item)
            if len(page) < limit:
                return
            page_no += 1

    def execution(self, execution_id: str) -> dict[str, Any]:
        """One execution: ``/pipelines/{id}`` serves pipelines only, so an orchestration is then read from
        ``/tasks/{id}``. ``GateNotFound`` when neither has it."""
        ident = quote(execution_id, safe="")
        try:
            body = self.get(f"/pipelines/{ident}")
        except GateNotFound:
            try:
                body = unwrap_task(self.get(f"/tasks/{ident}"))
            except GateNotFound:
                raise GateNotFound(
                    f"gate has no execution {execution_id} (neither /pipelines nor /tasks): orca may have "
                    "removed it already"
                ) from None
        if not isinstance(body, dict):
            raise GateRejected(f"gate answered something other than an execution for {execution_id}")
        return body


def unwrap_task(item: Any) -> dict[str, Any]:
    """The execution inside orca's task view (``{"id", "steps", ..., "execution": {...}}``), or the item."""
    if isinstance(item, dict) and isinstance(item.get("execution"), dict) and "stages" not in item:
        return item["execution"]
    return item if isinstance(item, dict) else {}
