"""Browsers on other sites cannot act through spintrail, open or signed in: over HTTP, and in real Chromium
with an attacker page served from a second loopback server (a form posting ``text/plain`` JSON and a
``no-cors`` fetch). Pages carry a Content-Security-Policy; the API docs page works offline."""

from __future__ import annotations

import base64
import json
import os
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Server, free_port
from test_auth import bearer, create_tokens, event

CHROMIUM = Path("/usr/bin/chromium")
#: The attacker's site: another name (so another site) that Chromium resolves to loopback.
ATTACKER_HOST = "attacker.test"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    f"--host-resolver-rules=MAP {ATTACKER_HOST} 127.0.0.1",
]


def stored(server: Server, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    r = server.get("/api/v1/events", headers=headers or {})
    assert r.status_code == 200, r.text
    return r.json()["events"]  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------------- over HTTP


def test_requests_with_an_effect_from_other_origins_are_refused(server: Server) -> None:
    """Open mode: every caller is admin, so only the origin check stands between a page and the store."""
    own = server.url
    port = server.url.rsplit(":", 1)[1]
    body = json.dumps(event(1))
    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": f"http://127.0.0.1:{int(port) + 1}"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": own},
        {"Origin": "http://evil.example", "Content-Type": "text/plain"},
    ):
        r = httpx.post(own + "/api/v1/events", content=body, headers=headers, timeout=30)
        assert r.status_code == 403, (headers, r.text)
        assert r.json()["error"] == "cross_site_request" and r.json()["message"], headers
        hec = httpx.post(
            own + "/services/collector/event", content=json.dumps({"event": event(1)}), headers=headers
        )
        assert hec.status_code == 403 and hec.json()["code"] == 4 and hec.json()["detail"], headers
    assert stored(server) == []
    # spintrail's own pages, and clients that are not browsers whatever their content type.
    for n, headers in enumerate(
        (
            {"Origin": own, "Sec-Fetch-Site": "same-origin", "Content-Type": "application/json"},
            {"Sec-Fetch-Site": "none"},
            {"Content-Type": "application/x-www-form-urlencoded"},  # what `curl -d` sends
            {"Content-Type": "text/plain"},
        ),
        start=2,
    ):
        r = httpx.post(own + "/api/v1/events", content=json.dumps(event(n)), headers=headers, timeout=30)
        assert r.status_code == 200, (headers, r.text)
    curl_hec = httpx.post(
        own + "/services/collector/event",
        content=json.dumps({"event": event(9)}),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert curl_hec.json() == {"text": "Success", "code": 0}
    assert len(stored(server)) == 5


def test_reads_that_write_the_access_log_are_refused_from_other_sites(
    server_factory: Any, tmp_path: Path
) -> None:
    db = tmp_path / "a.db"
    secrets = create_tokens(db, {"aud": ("auditor", None), "echo": ("ingest", None)})
    server = server_factory(str(db))
    assert server.post(event(1), headers=bearer(secrets["echo"])).status_code == 200
    aud = bearer(secrets["aud"])
    ref = str(uuid.UUID(int=1))
    cross = {**aud, "Sec-Fetch-Site": "cross-site"}
    for path in (f"/api/v1/events/{ref}/raw", f"/api/v1/integrity/proof/{ref}", f"/api/v1/events/{ref}"):
        r = server.get(path, headers=cross)
        assert r.status_code == 403 and r.json()["error"] == "cross_site_request", path
    # A link from another site to a page whose read is logged: refused, with a link to open it from here.
    page = server.get(f"/events/{ref}", headers={**cross, "Sec-Fetch-Mode": "navigate"})
    assert page.status_code == 403 and "text/html" in page.headers["content-type"]
    assert f'href="/events/{ref}"' in page.text
    assert server.get("/api/v1/access-log", headers=aud).json()["entries"] == []
    # Reads that write nothing are not refused; the same reads from spintrail's own pages are logged.
    assert server.get("/api/v1/events", headers=cross).status_code == 200
    same = {**aud, "Sec-Fetch-Site": "same-origin"}
    assert server.get(f"/events/{ref}", headers=same).status_code == 200
    assert [e["action"] for e in server.get("/api/v1/access-log", headers=aud).json()["entries"]] == ["event"]


def test_public_url_names_the_origin_behind_a_proxy(server_factory: Any) -> None:
    server = server_factory(env={"SPINTRAIL_PUBLIC_URL": "https://audit.example.com/"})
    body = json.dumps(event(1))
    for origin, status in (
        ("https://audit.example.com", 200),
        ("https://audit.example.com:443", 200),
        ("http://audit.example.com", 403),
        (server.url, 403),  # the Host no longer decides
    ):
        r = httpx.post(server.url + "/api/v1/events", content=body, headers={"Origin": origin}, timeout=30)
        assert r.status_code == status, (origin, r.text)


def test_pages_and_answers_carry_the_security_headers(server: Server) -> None:
    for path in ("/search", "/docs", "/static/app.js", "/api/v1/events", "/healthz", "/no-such-page"):
        r = server.get(path)
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp, path
        assert "http" not in csp and "*" not in csp, f"{path}: a third-party origin in {csp}"
        assert r.headers["x-content-type-options"] == "nosniff", path


def test_the_docs_assets_come_from_spintrail(server: Server) -> None:
    page = server.get("/docs")
    assert page.status_code == 200 and "/docs/assets/swagger-ui-bundle.js" in page.text
    assert "cdn" not in page.text.lower() and "<script>" not in page.text  # no inline script
    js = server.get("/docs/assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and "SwaggerUIBundle" in js.text
    assert server.get("/docs/assets/swagger-ui.css").status_code == 200
    assert server.get("/redoc").status_code == 404  # Redoc would load its files from a CDN


# ------------------------------------------------------------------------------------------- in Chromium


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"chromium is missing at {CHROMIUM}: CI must install it (scripts/test does)")
        pytest.skip(f"chromium not installed at {CHROMIUM} (apt-get install chromium): browser tests skipped")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


class AttackerSite:
    """A second loopback server (another origin) serving one page."""

    def __init__(self, html: str) -> None:
        page = html.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, host: str) -> str:
        return f"http://{host}:{self.port}/"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def attack_page(target: str) -> str:
    """A page that plants a forged event twice: an auto-submitting ``text/plain`` form whose single field
    spells a JSON document, and a ``no-cors`` fetch."""
    forged = event(666, "deploy-prod")
    text = json.dumps(forged)
    field_name, field_value = text[:-1] + ', "pad": "', '"}'
    fetched = json.dumps(event(667, "deploy-prod"))
    return f"""<!doctype html><html><body>
<form id="f" method="POST" action="{target}/api/v1/events" enctype="text/plain">
<input type="hidden" name='{field_name}' value='{field_value}'>
</form>
<script>
fetch("{target}/api/v1/events", {{method: "POST", mode: "no-cors", credentials: "include",
  headers: {{"Content-Type": "text/plain"}}, body: {json.dumps(fetched)}}})
  .finally(() => document.getElementById("f").submit());
</script></body></html>"""


@pytest.mark.parametrize("attacker_host", [ATTACKER_HOST, "127.0.0.1"], ids=["cross-site", "same-site"])
@pytest.mark.parametrize("signed_in", [False, True], ids=["open", "basic-auth"])
def test_browser_on_another_origin_plants_no_event(
    browser: Any, server_factory: Any, tmp_path: Path, attacker_host: str, signed_in: bool
) -> None:
    db = tmp_path / "victim.db"
    secrets = create_tokens(db, {"admin": ("admin", None)}) if signed_in else {}
    server = server_factory(str(db))
    site = AttackerSite(attack_page(server.url))
    options: dict[str, Any] = {}
    if signed_in:  # the admin signed in to spintrail's pages: the browser sends the token with every request
        options["http_credentials"] = {
            "username": "admin",
            "password": secrets["admin"],
            "origin": server.url,
        }
    context = browser.new_context(**options)
    try:
        if signed_in:  # really signed in: a page of spintrail opens with the credentials
            pg = context.new_page()
            assert pg.goto(server.url + "/api/v1/whoami").status == 200
            assert json.loads(pg.inner_text("body"))["name"] == "admin"
            pg.close()
        page = context.new_page()
        answers: list[tuple[str, int]] = []
        page.on(
            "response",
            lambda r: answers.append((r.request.method, r.status)) if "/api/v1/events" in r.url else None,
        )
        with page.expect_navigation(url=f"{server.url}/api/v1/events", timeout=15_000):
            page.goto(site.url(attacker_host))
        page.wait_for_load_state()
        body = page.inner_text("body")
        assert "cross_site_request" in body, body  # the form's answer, shown after its navigation
        assert ("POST", 403) in answers and all(status == 403 for _, status in answers), answers
        assert len(answers) == 2, answers  # the fetch and the form both reached spintrail
    finally:
        context.close()
        site.close()
    headers = bearer(secrets["admin"]) if signed_in else {}
    assert stored(server, headers) == []


def test_the_api_docs_page_works_offline_under_its_csp(browser: Any, server: Server) -> None:
    context = browser.new_context()
    page = context.new_page()
    elsewhere: list[str] = []
    problems: list[str] = []
    page.on("request", lambda r: elsewhere.append(r.url) if not r.url.startswith(server.url) else None)
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    try:
        page.goto(server.url + "/docs")
        page.wait_for_selector(".opblock", timeout=20_000)
        assert page.locator(".opblock").count() > 10
        assert "/api/v1/events" in page.inner_text("#swagger-ui")
    finally:
        context.close()
    assert elsewhere == [], "the docs page loaded something from another site"
    assert problems == [], problems


def test_signed_in_pages_render_under_the_csp(browser: Any, server_factory: Any, tmp_path: Path) -> None:
    """The pages need nothing the Content-Security-Policy forbids (a violation is a console error)."""
    db = tmp_path / "pages.db"
    secrets = create_tokens(db, {"aud": ("auditor", None), "echo": ("ingest", None)})
    server = server_factory(str(db))
    assert server.post(event(1), headers=bearer(secrets["echo"])).status_code == 200
    basic = base64.b64encode(f"me:{secrets['aud']}".encode()).decode()
    context = browser.new_context(extra_http_headers={"Authorization": f"Basic {basic}"})
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    try:
        for path in (
            "/search?application=checkout",
            f"/events/{uuid.UUID(int=1)}",
            f"/executions/{uuid.UUID(int=10_001)}",
        ):
            assert page.goto(server.url + path).status == 200, path
            page.wait_for_load_state("networkidle")
    finally:
        context.close()
    assert problems == [], problems


@pytest.mark.parametrize(
    ("headers", "public_url", "refused"),
    [
        ({b"host": b"[::1]:8080", b"origin": b"http://[::1]:8080"}, None, False),
        ({b"host": b"Audit.Example.com", b"origin": b"https://audit.example.com"}, None, False),
        ({b"host": b"audit.example.com:8080", b"origin": b"http://audit.example.com:8081"}, None, True),
        ({b"host": b"audit.example.com", b"origin": b"https://audit.example.com.evil.io"}, None, True),
        ({b"host": b"audit.example.com", b"origin": b"chrome-extension://abc"}, None, True),
        ({b"origin": b"http://audit.example.com"}, None, True),  # no Host to compare with
        (
            {b"host": b"10.0.0.5:8080", b"origin": b"https://audit.example.com"},
            "https://audit.example.com",
            False,
        ),
        ({b"sec-fetch-site": b"same-origin"}, None, False),
        ({b"sec-fetch-site": b"none"}, None, False),
        ({b"sec-fetch-site": b"Cross-Site"}, None, True),
        ({}, None, False),
    ],
)
def test_what_counts_as_another_origin(
    headers: dict[bytes, bytes], public_url: str | None, refused: bool
) -> None:
    from spintrail.browsers import cross_site_refusal

    assert (cross_site_refusal(headers, public_url) is not None) == refused
