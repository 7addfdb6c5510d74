"""Who may write and read: every route has a rule, every role and application limit is enforced on every
route of a real server, and the ways in (bearer, Basic as echo sends it, Splunk, a trusted proxy)."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from conftest import Server
from spintrail import auth, receive
from spintrail.app import create_app
from spintrail.settings import Settings
from spintrail.store.sqlite import SqliteStore
from spintrail.trust import install

HIDDEN_APP = "zzhiddenapp"
#: Appears only inside the hidden application's records (its accounts and server groups), never in a request,
#: so a page that merely echoes a filter value back does not count as showing hidden events.
HIDDEN_DATA = f"{HIDDEN_APP}-prod"


def event(n: int, app: str = "checkout", **extra: Any) -> dict[str, Any]:
    """An event whose user, account, server group and description all name its application, so a
    listing or an aggregate that leaks another application's events shows that application's name."""
    user = f"carol@{app}.example.com"
    return {
        "details": {
            "source": "orca",
            "type": "orca:orchestration:complete",
            "created": str(1_718_370_000_000 + n),
            "application": app,
        },
        "content": {
            "execution": {
                "type": "ORCHESTRATION",
                "id": str(uuid.UUID(int=10_000 + n)),
                "application": app,
                "description": f"Resize Server Group: {app}-prod-v{n:03d}",
                "authentication": {"user": user},
                "trigger": {"type": "manual", "user": user},
                "stages": [
                    {
                        "type": "resizeServerGroup",
                        "context": {
                            "credentials": f"{app}-prod",
                            "region": "us-east-1",
                            "serverGroupName": f"{app}-prod-v{n:03d}",
                        },
                    }
                ],
                "status": "SUCCEEDED",
            },
            "executionId": str(uuid.UUID(int=10_000 + n)),
            **extra,
        },
        "eventId": str(uuid.UUID(int=n)),
    }


def create_tokens(db: Path, specs: dict[str, tuple[str, list[str] | None]]) -> dict[str, str]:
    store = SqliteStore(db)
    trust = install(store, Settings(database=str(db)))
    try:
        return {name: trust.tokens.create(name, role, apps) for name, (role, apps) in specs.items()}
    finally:
        trust.close()
        store.close()


def bearer(secret: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"} if secret else {}


# --------------------------------------------------------------------------------------------- the rule table


def routes(app: Any) -> Iterator[tuple[Any, bool]]:
    """Every route of the app (flattening included routers) and whether it is an API route."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI before lazily included routers

        def iter_route_contexts(routes: Any) -> Any:
            return routes

    for rc in iter_route_contexts(app.routes):
        yield rc, isinstance(getattr(rc, "original_route", rc), APIRoute)


def unruled_routes(app: Any) -> list[str]:
    """Routes without an access rule or without the authorize dependency, and unknown non-API routes."""
    missing = []
    for route, is_api in routes(app):
        if is_api:
            if not any(d.dependency is auth.authorize for d in route.dependencies):
                missing.append(f"{route.path}: not behind auth.authorize")
            for method in sorted(route.methods):
                if auth.rule_for(method, route.path) is None:
                    missing.append(f"{method} {route.path}: no rule in auth.RULES")
        elif getattr(route, "endpoint", None) is receive._receive_events_directly:
            # The ingest endpoint served without FastAPI's dependencies authorizes itself by the same rule.
            for method in sorted(route.methods - {"HEAD"}):
                if auth.rule_for(method, route.path) is None:
                    missing.append(f"{method} {route.path}: no rule in auth.RULES")
        elif getattr(route, "path", None) not in auth.PUBLIC_NON_API_PATHS:
            missing.append(f"{getattr(route, 'path', route)}: not an API route and not known to be public")
    return missing


def test_every_route_has_an_access_rule(tmp_path: Path) -> None:
    app = create_app(Settings(database=str(tmp_path / "r.db")))
    assert unruled_routes(app) == [], "add a line to auth.RULES for each of these routes"
    # The check catches a route added without a rule.
    app.add_api_route("/api/v1/brand-new", lambda: {}, methods=["GET"])
    assert unruled_routes(app) == ["GET /api/v1/brand-new: no rule in auth.RULES"]


#: Independent of auth.RULES: the sensitive routes must keep at least these requirements.
PINNED = {
    "POST /api/v1/events": "ingest",
    "GET /api/v1/events": "viewer",
    "GET /api/v1/events/{ref}/raw": "auditor",
    "GET /api/v1/access-log": "auditor",
    "POST /api/v1/hash": "auditor",
    "GET /api/v1/integrity/proof/{ref}": "auditor",
    "POST /api/v1/integrity/verify": "auditor",
    "GET /api/v1/tokens": "admin",
}


def test_sensitive_routes_keep_their_roles() -> None:
    for key, need in PINNED.items():
        method, path = key.split(" ")
        rule = auth.rule_for(method, path)
        assert rule is not None and rule.need == need, key
    assert auth.rule_for("GET", "/api/v1/access-log").all_apps  # type: ignore[union-attr]
    assert auth.rule_for("POST", "/services/collector/event").need == "ingest"  # type: ignore[union-attr]
    assert auth.rule_for("GET", "/services/collector/health/1.0").need == "public"  # type: ignore[union-attr]
    assert auth.rule_for("DELETE", "/api/v1/sinks/x").need == "admin"  # type: ignore[union-attr]


# ------------------------------------------------------------------------------ every route, every role

PRINCIPALS: dict[str, tuple[str, list[str] | None]] = {
    "ingest": ("ingest", None),
    "viewer": ("viewer", None),
    "auditor": ("auditor", None),
    "admin": ("admin", None),
    "viewer-checkout": ("viewer", ["checkout"]),
    "auditor-checkout": ("auditor", ["checkout"]),
}


def allowed(rule: auth.Rule, who: str) -> bool:
    if rule.need == "public":
        return True
    if who == "none":
        return False
    role, apps = PRINCIPALS[who]
    if rule.all_apps and apps is not None:
        return False
    return auth.Principal(who, role, frozenset(apps) if apps else None).can(rule.need)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    db = tmp_path_factory.mktemp("guarded") / "g.db"
    secrets = create_tokens(db, PRINCIPALS)
    server = Server(str(db), env={"SPINTRAIL_CHECKPOINT_SECONDS": "3600"}).start()
    try:
        for n, app in ((1, "checkout"), (2, HIDDEN_APP), (3, "checkout"), (4, HIDDEN_APP)):
            r = server.post(event(n, app), headers=bearer(secrets["ingest"]))
            assert r.status_code == 200, r.text
        yield server, secrets
    finally:
        server.stop()


def _requests(route: Any, method: str) -> list[tuple[str, dict[str, Any]]]:
    """Requests to try on a route: path parameters point at the hidden application's data."""
    fill = {"ref": str(uuid.UUID(int=2)), "execution_id": str(uuid.UUID(int=10_002))}
    path = re.sub(r"{(\w+)(:[^}]*)?}", lambda m: fill.get(m.group(1), "x"), route.path)
    body: dict[str, Any] = {}
    if path == "/api/v1/hash":
        body = {"json": {"value": f"carol@{HIDDEN_APP}.example.com"}}
    elif path.startswith("/api/v1/events") and method == "POST":
        body = {"content": json.dumps(event(2, HIDDEN_APP))}
    out = [(path, body)]
    if method == "GET":
        out.append((path + f"?application={HIDDEN_APP}&q={HIDDEN_APP}", body))
    return out


def test_every_role_and_application_limit_on_every_route(guarded: tuple[Server, dict[str, str]]) -> None:
    server, secrets = guarded
    app = create_app(Settings(database=":memory:"))
    checked = 0
    failures: list[str] = []
    marker_seen_by_unlimited = False
    client = httpx.Client(timeout=60)
    for route, is_api in routes(app):
        if not is_api:
            continue
        for method in sorted(route.methods):
            rule = auth.rule_for(method, route.path)
            assert rule is not None
            for path, body in _requests(route, method):
                for who in ("none", *PRINCIPALS):
                    r = client.request(method, server.url + path, headers=bearer(secrets.get(who)), **body)
                    checked += 1
                    denied = r.status_code in (401, 403)
                    if r.status_code >= 500:
                        failures.append(f"{who} {method} {path}: {r.status_code} {r.text[:200]}")
                    elif allowed(rule, who) == denied:
                        failures.append(f"{who} {method} {path}: got {r.status_code}, rule {rule}")
                    elif who == "none" and denied and rule.need != "public":
                        assert r.status_code == 401 and "Bearer" in r.headers["www-authenticate"]
                    if PRINCIPALS.get(who, ("", None))[1] is not None and HIDDEN_DATA in r.text:
                        failures.append(f"{who} {method} {path}: shows the hidden application's events")
                    if who in ("viewer", "auditor") and HIDDEN_DATA in r.text:
                        marker_seen_by_unlimited = True
    client.close()
    assert not failures, "\n".join(failures)
    assert marker_seen_by_unlimited  # the leak check above can see the marker when it is there
    assert checked > 150


def test_limited_tokens_see_only_their_applications(guarded: tuple[Server, dict[str, str]]) -> None:
    server, secrets = guarded
    limited = bearer(secrets["viewer-checkout"])
    events = server.get("/api/v1/events", headers=limited).json()["events"]
    assert {e["application"] for e in events} == {"checkout"} and len(events) == 2
    assert server.get(f"/api/v1/events?application={HIDDEN_APP}", headers=limited).json()["events"] == []
    assert server.get(f"/api/v1/events/{uuid.UUID(int=2)}", headers=limited).status_code == 404
    assert server.get(f"/api/v1/executions/{uuid.UUID(int=10_002)}", headers=limited).status_code == 404
    everything = server.get("/api/v1/events", headers=bearer(secrets["viewer"])).json()["events"]
    assert len(everything) == 4
    # A viewer reads records but not the raw event; an auditor reads both, and that read is logged.
    one = server.get(f"/api/v1/events/{uuid.UUID(int=1)}", headers=limited).json()
    assert one["raw"] is None and "raw_withheld" in one and one["provenance"]["ingest_token"] == "ingest"
    full = server.get(f"/api/v1/events/{uuid.UUID(int=1)}", headers=bearer(secrets["auditor"])).json()
    assert full["raw"]["eventId"] == str(uuid.UUID(int=1))
    log = server.get("/api/v1/access-log?action=event", headers=bearer(secrets["admin"])).json()["entries"]
    assert log[0]["principal"] == "auditor" and log[0]["target"] == str(uuid.UUID(int=1))


# --------------------------------------------------------------------------------------------- ways in


def test_echo_basic_auth_splunk_scheme_revocation_and_the_token_recorded(
    server_factory: Any, tmp_path: Path
) -> None:
    db = tmp_path / "w.db"
    secrets = create_tokens(db, {"echo-prod": ("ingest", None), "reader": ("admin", None)})
    server = server_factory(str(db), env={"SPINTRAIL_TOKEN_CACHE_SECONDS": "0"})
    basic = base64.b64encode(f"spinnaker:{secrets['echo-prod']}".encode()).decode()
    r = server.post(event(1), headers={"Authorization": f"Basic {basic}"})
    assert r.status_code == 200, r.text
    assert (
        server.post(event(2), headers={"Authorization": f"Splunk {secrets['echo-prod']}"}).status_code == 200
    )
    assert server.post(event(3)).status_code == 401
    wrong = server.post(event(3), headers=bearer("st_not-a-token"))
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_token"
    garbled = server.post(event(3), headers={"Authorization": "Basic %%%"})
    assert garbled.status_code == 401 and "base64" in garbled.json()["message"]
    other = server.post(event(3), headers={"Authorization": "Digest x"})
    assert other.status_code == 401 and "not supported" in other.json()["message"]
    got = server.get(f"/api/v1/events/{uuid.UUID(int=1)}", headers=bearer(secrets["reader"])).json()
    assert got["provenance"]["ingest_token"] == "echo-prod"
    count = len(server.get("/api/v1/events", headers=bearer(secrets["reader"])).json()["events"])
    assert count == 2  # refused requests stored nothing
    r = subprocess.run(
        [sys.executable, "-m", "spintrail", "tokens", "revoke", "echo-prod", "--database", str(db)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    revoked = server.post(event(4), headers=bearer(secrets["echo-prod"]))
    assert revoked.status_code == 401 and revoked.json()["error"] == "token_revoked"
    listed = subprocess.run(
        [sys.executable, "-m", "spintrail", "tokens", "list", "--database", str(db), "--format", "json"],
        capture_output=True,
        text=True,
    )
    rows = {t["name"]: t for t in json.loads(listed.stdout)}
    assert rows["echo-prod"]["status"] == "revoked" and "secret" not in listed.stdout
    raw_db = db.read_bytes()
    assert secrets["reader"].encode() not in raw_db  # stored hashed, never in clear


def test_ingest_token_limited_to_applications(server_factory: Any, tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    secrets = create_tokens(db, {"echo-checkout": ("ingest", ["checkout"]), "admin": ("admin", None)})
    server = server_factory(str(db))
    assert server.post(event(1, "checkout"), headers=bearer(secrets["echo-checkout"])).status_code == 200
    body = "\n".join(json.dumps(e) for e in (event(2, "checkout"), event(3, "payments")))
    r = server.post(body, headers=bearer(secrets["echo-checkout"]))
    assert r.status_code == 403 and "payments" in r.json()["message"]
    assert len(server.get("/api/v1/events", headers=bearer(secrets["admin"])).json()["events"]) == 1


def test_settings_tokens_for_kubernetes(server_factory: Any) -> None:
    server = server_factory(
        env={
            "SPINTRAIL_ADMIN_TOKEN": "admin-secret-from-k8s",
            "SPINTRAIL_INGEST_TOKENS": "echo-a=ing-a, ing-b",
        }
    )
    assert server.post(event(1), headers=bearer("ing-a")).status_code == 200
    assert server.post(event(2), headers=bearer("ing-b")).status_code == 200
    assert server.get("/api/v1/events", headers=bearer("ing-a")).status_code == 403
    admin = bearer("admin-secret-from-k8s")
    assert server.get("/api/v1/whoami", headers=admin).json()["name"] == "settings:admin"
    tokens = {
        e["provenance"]["ingest_token"]
        for e in (server.get(f"/api/v1/events/{uuid.UUID(int=n)}", headers=admin).json() for n in (1, 2))
    }
    assert tokens == {"settings:echo-a", "settings:ingest-2"}


def test_open_mode_says_so_and_locks_as_soon_as_a_token_exists(server_factory: Any, tmp_path: Path) -> None:
    db = tmp_path / "open.db"
    server = server_factory(
        str(db), env={"SPINTRAIL_LOG_LEVEL": "warning", "SPINTRAIL_TOKEN_CACHE_SECONDS": "0"}
    )
    log = server.log()
    assert "WARNING: authentication is OFF" in log  # the banner line
    assert re.search(r"WARNING spintrail\.trust_api: authentication is OFF", log)  # the log line
    assert server.post(event(1)).status_code == 200
    assert server.get("/api/v1/whoami").json() == {
        "name": "anonymous",
        "role": "admin",
        "applications": None,
        "via": "open",
        "authentication": "off",
    }
    secrets = create_tokens(db, {"first": ("viewer", None)})
    deadline = time.monotonic() + 10
    while server.get("/api/v1/events").status_code != 401:
        assert time.monotonic() < deadline, "authentication did not turn on"
        time.sleep(0.2)
    assert server.get("/api/v1/events", headers=bearer(secrets["first"])).status_code == 200
    assert server.post(event(2)).status_code == 401


def test_trusted_proxy_user_header(server_factory: Any, tmp_path: Path) -> None:
    env = {
        "SPINTRAIL_PROXY_USER_HEADER": "X-Forwarded-User",
        "SPINTRAIL_PROXY_USER_ROLES": "alice@example.com=auditor,mallory@example.com=none",
    }
    trusted = server_factory(str(tmp_path / "p1.db"), env={**env, "SPINTRAIL_TRUSTED_PROXIES": "127.0.0.0/8"})
    who = trusted.get("/api/v1/whoami", headers={"X-Forwarded-User": "bob@example.com"}).json()
    assert (who["name"], who["role"], who["via"]) == ("bob@example.com", "viewer", "proxy")
    alice = {"X-Forwarded-User": "alice@example.com"}
    assert trusted.get("/api/v1/access-log", headers=alice).status_code == 200
    assert (
        trusted.get("/api/v1/events", headers={"X-Forwarded-User": "mallory@example.com"}).status_code == 401
    )
    assert trusted.get("/api/v1/events").status_code == 401
    # Spoofing the forwarding headers does not move the client address off the real peer.
    untrusted = server_factory(str(tmp_path / "p2.db"), env={**env, "SPINTRAIL_TRUSTED_PROXIES": "10.9.9.9"})
    spoof = {**alice, "X-Forwarded-For": "10.9.9.9", "X-Real-IP": "10.9.9.9"}
    assert untrusted.get("/api/v1/events", headers=spoof).status_code == 401


def test_splunk_clients_get_splunk_errors(tmp_path: Path) -> None:
    """The Splunk-compatible endpoint is guarded by the same rules and answers like HEC."""
    import threading

    import uvicorn

    from conftest import free_port

    db = tmp_path / "hec.db"
    secrets = create_tokens(db, {"hec": ("ingest", None), "viewer": ("viewer", None)})
    app = create_app(Settings(database=str(db)))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}/services/collector/event"
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        assert httpx.post(url).json() == {"text": "Token is required", "code": 2}
        r = httpx.post(url, headers={"Authorization": "Splunk nope"})
        assert (r.status_code, r.json()["code"]) == (403, 4)
        r = httpx.post(url, headers={"Authorization": f"Splunk {secrets['viewer']}"})
        assert (r.status_code, r.json()["code"]) == (403, 4)
        r = httpx.post(url, headers={"Authorization": f"Splunk {secrets['hec']}"}, content=b"")
        assert r.json()["code"] == 5  # past authentication: HEC's "No data"
        body = json.dumps({"event": event(1)})
        r = httpx.post(url, headers={"Authorization": f"Splunk {secrets['hec']}"}, content=body)
        assert r.json() == {"text": "Success", "code": 0}
    finally:
        server.should_exit = True
        thread.join(15)


def test_access_log_records_raw_reads_proofs_and_hash_lookups(server_factory: Any, tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    secrets = create_tokens(db, {"aud": ("auditor", None), "echo": ("ingest", None)})
    server = server_factory(str(db))
    server.post(event(1), headers=bearer(secrets["echo"]))
    aud = bearer(secrets["aud"])
    assert server.get(f"/api/v1/events/{uuid.UUID(int=1)}/raw?why=INC-42", headers=aud).status_code == 200
    assert server.get(f"/api/v1/integrity/proof/{uuid.UUID(int=1)}", headers=aud).status_code == 200
    r = httpx.post(server.url + "/api/v1/hash", json={"value": "a-secret-value"}, headers=aud)
    assert r.status_code == 200
    entries = server.get("/api/v1/access-log", headers=aud).json()["entries"]
    assert [e["action"] for e in entries] == ["hash", "proof", "raw"]
    raw = entries[2]
    assert raw["principal"] == "aud" and raw["query"] == "why=INC-42" and raw["client"] == "127.0.0.1"
    assert "a-secret-value" not in json.dumps(entries) and entries[0]["target"].startswith("hmac-sha256:")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "spintrail",
            "access-log",
            "--database",
            str(db),
            "--action",
            "raw",
            "--format",
            "csv",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and out.stdout.count("\n") == 2 and ",aud," in out.stdout


def test_tls(server_factory: Any, tmp_path: Path) -> None:
    import datetime
    import ipaddress
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "spintrail.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    trusting = ssl.create_default_context(cafile=str(cert_file))

    class TlsServer(Server):
        def start(self, timeout: float = 20.0) -> Server:
            plain = self.url
            self.url = plain.replace("http://", "https://")
            deadline = time.monotonic() + timeout
            cmd = [
                sys.executable,
                "-m",
                "spintrail",
                "serve",
                "--port",
                str(self.port),
                "--database",
                self.database,
            ]
            self.proc = subprocess.Popen(
                cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            while time.monotonic() < deadline:
                try:
                    if httpx.get(self.url + "/readyz", verify=trusting, timeout=1).status_code == 200:
                        return self
                except httpx.HTTPError:
                    time.sleep(0.05)
            raise RuntimeError("TLS server did not become ready")

    server = TlsServer(
        str(tmp_path / "tls.db"),
        env={"SPINTRAIL_TLS_CERT_FILE": str(cert_file), "SPINTRAIL_TLS_KEY_FILE": str(key_file)},
    )
    try:
        server.start()
        r = httpx.post(server.url + "/api/v1/events", content=json.dumps(event(1)), verify=trusting)
        assert r.status_code == 200 and r.json()["stored"] == 1
        with pytest.raises(httpx.HTTPError):
            httpx.get(server.url.replace("https://", "http://") + "/readyz", timeout=2)
    finally:
        server.stop()
    half = subprocess.run(
        [sys.executable, "-m", "spintrail", "serve", "--database", str(tmp_path / "x.db")],
        env={"SPINTRAIL_TLS_CERT_FILE": str(cert_file), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert half.returncode == 2 and "tls_key_file" in half.stderr


# ------------------------------------------------------------------------------------- failing closed


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spintrail", *args], capture_output=True, text=True)


def test_revoking_the_last_token_leaves_nobody_in_not_everybody(server_factory: Any, tmp_path: Path) -> None:
    db = tmp_path / "last.db"
    secrets = create_tokens(db, {"only-admin": ("admin", None)})
    env = {"SPINTRAIL_TOKEN_CACHE_SECONDS": "0"}
    server = server_factory(str(db), env=env)
    admin = bearer(secrets["only-admin"])
    assert server.get("/api/v1/whoami", headers=admin).json()["name"] == "only-admin"
    assert _cli("tokens", "revoke", "only-admin", "--database", str(db)).returncode == 0

    def all_refused(s: Server) -> None:
        for headers in ({}, admin):
            assert s.get("/api/v1/whoami", headers=headers).status_code == 401
            assert s.get("/api/v1/tokens", headers=headers).status_code == 401
            assert s.get("/api/v1/events", headers=headers).status_code == 401
            assert s.post(event(1), headers=headers).status_code == 401
            hec = httpx.post(s.url + "/services/collector/event", content=json.dumps({"event": event(2)}))
            assert (hec.status_code, hec.json()["code"]) == (401, 2)

    all_refused(server)
    server.stop()
    restarted = server_factory(str(db), env=env)
    all_refused(restarted)
    assert "no token is active: nobody can send or read" in restarted.log()
    status = _cli("auth", "status", "--database", str(db))
    assert "ON" in status.stdout and "nobody can send or read" in status.stdout
    # Only an explicit command opens the store again, and it says what it does.
    refused = _cli("auth", "off", "--database", str(db))
    assert refused.returncode == 2 and "--yes" in refused.stderr
    opened = _cli("auth", "off", "--yes", "--database", str(db))
    assert opened.returncode == 0 and "every caller is admin" in opened.stderr
    deadline = time.monotonic() + 10
    while restarted.get("/api/v1/whoami").status_code != 200:
        assert time.monotonic() < deadline, "the store did not open after `auth off`"
        time.sleep(0.2)
    store = SqliteStore(db)
    trust = install(store, Settings(database=str(db)))
    try:
        assert trust.tokens.auth_state() == "off"
    finally:
        trust.close()
        store.close()


def test_auth_off_is_refused_while_a_token_is_active(tmp_path: Path) -> None:
    db = tmp_path / "busy.db"
    create_tokens(db, {"echo": ("ingest", None)})
    r = _cli("auth", "off", "--yes", "--database", str(db))
    assert r.returncode == 2 and "revoke them first" in r.stderr


def test_serve_refuses_an_open_store_on_a_non_loopback_address(tmp_path: Path) -> None:
    db = str(tmp_path / "open.db")
    r = subprocess.run(
        [sys.executable, "-m", "spintrail", "serve", "--host", "0.0.0.0", "--port", "0", "--database", db],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert "refusing to listen on 0.0.0.0" in r.stderr and "auth = off" in r.stderr


def test_two_authorization_headers_are_refused(server_factory: Any, tmp_path: Path) -> None:
    db = tmp_path / "two.db"
    secrets = create_tokens(db, {"viewer": ("viewer", None), "admin": ("admin", None)})
    server = server_factory(str(db))
    two = [("Authorization", f"Bearer {secrets['viewer']}"), ("Authorization", f"Bearer {secrets['admin']}")]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        r = client.get("/api/v1/tokens", headers=two)
        assert r.status_code == 400 and r.json()["error"] == "ambiguous_authorization"
        r = client.post("/api/v1/events", content=json.dumps(event(1)), headers=two)
        assert r.status_code == 400
        r = client.post("/services/collector/event", content=json.dumps({"event": event(1)}), headers=two)
        assert r.status_code == 400 and r.json()["code"] == 3 and "more than one" in r.json()["detail"]
        assert client.get("/api/v1/tokens", headers=[two[1]]).status_code == 200
        assert len(client.get("/api/v1/events", headers=[two[1]]).json()["events"]) == 0


def test_hec_tokens_and_api_tokens_work_together(server_factory: Any, tmp_path: Path) -> None:
    db = tmp_path / "both.db"
    secrets = create_tokens(
        db, {"admin": ("admin", None), "echo-checkout": ("ingest", ["checkout"]), "viewer": ("viewer", None)}
    )
    server = server_factory(str(db), env={"SPINTRAIL_HEC_TOKENS": "good"})
    url = server.url + "/services/collector/event"

    def hec(n: int, app: str, token: str | None) -> httpx.Response:
        headers = {"Authorization": f"Splunk {token}"} if token else {}
        return httpx.post(url, content=json.dumps({"event": event(n, app)}), headers=headers, timeout=30)

    assert hec(1, "payments", "good").json() == {"text": "Success", "code": 0}
    basic = base64.b64encode(b"x:good").decode()
    r = httpx.post(
        url, content=json.dumps({"event": event(2)}), headers={"Authorization": f"Basic {basic}"}, timeout=30
    )
    assert r.json()["code"] == 0
    assert hec(3, "checkout", secrets["echo-checkout"]).json()["code"] == 0  # API ingest tokens too
    forbidden = hec(4, "payments", secrets["echo-checkout"])
    assert forbidden.status_code == 403 and forbidden.json()["code"] == 4
    assert "payments" in forbidden.json()["detail"]
    assert (hec(5, "checkout", "bad").status_code, hec(5, "checkout", "bad").json()["code"]) == (403, 4)
    assert hec(5, "checkout", None).json()["code"] == 2
    assert hec(5, "checkout", secrets["viewer"]).status_code == 403
    # hec_tokens are for the Splunk routes only.
    assert server.post(event(6), headers=bearer("good")).status_code == 401
    events = server.get("/api/v1/events", headers=bearer(secrets["admin"])).json()["events"]
    tokens = sorted(e["event_id"][-1] + ":" + str(e.get("application")) for e in events)
    assert tokens == ["1:payments", "2:checkout", "3:checkout"]
    one = server.get(f"/api/v1/events/{uuid.UUID(int=1)}", headers=bearer(secrets["admin"])).json()
    assert one["provenance"]["ingest_token"] == "settings:hec-1"


def test_hec_tokens_guard_the_splunk_route_in_open_mode(server_factory: Any) -> None:
    server = server_factory(env={"SPINTRAIL_HEC_TOKENS": "good,other"})
    url = server.url + "/services/collector/event"
    body = json.dumps({"event": event(1)})
    assert httpx.post(url, content=body, timeout=30).json()["code"] == 2
    assert (
        httpx.post(url, content=body, headers={"Authorization": "Splunk nope"}, timeout=30).status_code == 403
    )
    ok = httpx.post(url, content=body, headers={"Authorization": "Splunk other"}, timeout=30)
    assert ok.json() == {"text": "Success", "code": 0}
    assert server.post(event(2)).status_code == 200  # the echo route stays open in open mode


def test_the_authentication_state_is_kept_with_the_store(store: Any) -> None:
    """Every replica reads the same state: it lives in the database, on both backends."""
    settings = Settings(database="unused", token_cache_seconds=0)
    trust = install(store, settings)
    tokens = trust.tokens
    authenticator = auth.Authenticator(settings, tokens)
    assert tokens.auth_state() is None and not authenticator.enabled()
    tokens.create("first", "admin", created_by="test")
    assert tokens.auth_state() == "on" and authenticator.enabled()
    tokens.revoke("first")
    replica = auth.Authenticator(settings, tokens)  # another process over the same database
    assert replica.enabled() and authenticator.enabled()
    assert tokens.set_auth_state("off", by="test", reason="test") == "on"
    assert not replica.enabled()
    # auth = on, a proxy user header or token settings turn it on for the store too.
    on = auth.Authenticator(Settings(database="unused", auth="on", token_cache_seconds=0), tokens)
    assert on.enabled() and tokens.auth_state() == "on"
