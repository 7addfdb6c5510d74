"""Secrets never leave the receiver: not in the store file, the full-text index, the API, proofs or what is
forwarded; and "does this value appear?" still finds them by their keyed hash."""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Server
from spintrail.decode import IncomingEvent
from spintrail.ingest import Ingestor
from spintrail.settings import Settings
from spintrail.store.sqlite import SqliteStore

ADMIN = "admin-token-for-the-secret-tests"
AUTH = {"Authorization": f"Bearer {ADMIN}"}

# Planted secrets: each one word of letters and digits, so it is a single full-text token too.
TRIGGER_SECRET = "zqtriggersecret4f1c"
PARAM_PASSWORD = "zqparampassword77ab"
BEARER = "zqbearertoken0d9e2"
ENV_PASSWORD = "zqenvdbpassword51"
K8S_SECRET = base64.b64encode(b"zqk8ssecretvalue").decode()
URL_PASSWORD = "zqurlpassword8c"
FREE_TEXT = "zqfreetextpw3a"
HUB_SIGNATURE = "sha1=0d1e2f3a4b5c6d7e8f90a1b2c3d4e5f6a7b8c9d0"
PLANTED = [
    TRIGGER_SECRET,
    PARAM_PASSWORD,
    BEARER,
    ENV_PASSWORD,
    K8S_SECRET,
    URL_PASSWORD,
    FREE_TEXT,
    HUB_SIGNATURE,
]


def pipeline_event(n: int) -> dict[str, Any]:
    """An orca stage event carrying secrets in every place echo events leak them (echo-events.md 5.3)."""
    execution = {
        "type": "PIPELINE",
        "id": f"01HSECRET{n:04d}",
        "application": "checkout",
        "name": "Deploy to prod",
        "authentication": {"user": "carol@example.com"},
        "trigger": {
            "type": "git",
            "user": "carol@example.com",
            "secret": TRIGGER_SECRET,
            "parameters": {"db_password": PARAM_PASSWORD, "ticket": "OPS-42"},
        },
        "stages": [
            {
                "type": "webhook",
                "name": "Notify",
                "context": {
                    "url": f"https://deployer:{URL_PASSWORD}@hooks.example.com/deploy",
                    "customHeaders": {
                        "Authorization": f"Bearer {BEARER}",
                        "Content-Type": "application/json",
                    },
                },
            },
            {
                "type": "deployManifest",
                "name": "Deploy",
                "context": {
                    "account": "prod",
                    "manifests": [
                        {
                            "kind": "Deployment",
                            "spec": {
                                "template": {
                                    "spec": {
                                        "containers": [
                                            {"env": [{"name": "DATABASE_PASSWORD", "value": ENV_PASSWORD}]}
                                        ]
                                    }
                                }
                            },
                        },
                        {"kind": "Secret", "metadata": {"name": "db"}, "data": {"password": K8S_SECRET}},
                    ],
                },
            },
            {
                "type": "manualJudgment",
                "name": "Approve",
                "context": {"judgmentInput": f"approved; rotate later, old password={FREE_TEXT}"},
                "lastModified": {"user": "dave@example.com"},
            },
        ],
        "status": "RUNNING",
    }
    return {
        "details": {
            "source": "orca",
            "type": "orca:stage:complete",
            "created": str(1_718_370_000_000 + n),
            "application": "checkout",
        },
        "content": {
            "execution": execution,
            "executionId": execution["id"],
            "stageId": "s3",
            "context": execution["stages"][2]["context"],
        },
        "eventId": str(uuid.UUID(int=1000 + n)),
    }


def git_event() -> dict[str, Any]:
    """A git webhook event as echo forwards it: the signature header and the raw body."""
    body = {"ref": "refs/heads/main", "repository": {"full_name": "acme/checkout"}, "secret": TRIGGER_SECRET}
    return {
        "details": {
            "source": "github",
            "type": "git",
            "created": "1718370001000",
            "requestHeaders": {"X-Hub-Signature": [HUB_SIGNATURE], "X-GitHub-Event": ["push"]},
        },
        "content": {"repoProject": "acme", "slug": "checkout", "hash": "abc123", "branch": "main"},
        "rawContent": json.dumps(body),
        "eventId": str(uuid.UUID(int=999)),
    }


def fixture_events(echo_fixtures: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Events from the shared samples that carry secrets, and those secrets."""
    git = json.loads(
        (echo_fixtures / "synthetic" / "git__synthetic__github-push-wrapping-real-payload.json").read_text()
    )
    signatures = [
        v
        for k, vs in git["details"].get("requestHeaders", {}).items()
        if "signature" in k.lower()
        for v in vs
    ]
    stage_file = "policyengine_input__spinnaker.execution__stages.before.savePipeline__armory-docs.json"
    stage = json.loads((echo_fixtures / "related" / "policy-engine" / stage_file).read_text())["input"][
        "stage"
    ]
    save = {
        "details": {
            "source": "orca",
            "type": "orca:stage:starting",
            "created": "1718370002000",
            "application": "x",
        },
        "content": {"context": stage["context"], "executionId": "01HSAVEPIPELINE"},
        "eventId": str(uuid.UUID(int=998)),
    }
    pipeline = json.loads(base64.b64decode(stage["context"]["pipeline"]))
    trigger_secrets = [t["secret"] for t in pipeline["triggers"] if t.get("secret")]
    assert signatures and trigger_secrets
    # The savePipeline trigger secret is the word "spinnaker", which is also an account name: it is checked
    # inside the decoded pipeline instead of by searching the bytes.
    return [git, save], [s.split("=", 1)[1] for s in signatures]


def simulator_secrets(events: list[dict[str, Any]]) -> list[str]:
    """The secrets the simulator plants: webhook tokens and headers, trigger secrets, env passwords."""
    found: set[str] = set()
    stack: list[Any] = list(events)
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            name = node.get("name")
            if (
                isinstance(name, str)
                and re.search(r"PASSWORD|TOKEN|SECRET", name)
                and isinstance(node.get("value"), str)
            ):
                found.add(node["value"])
            for k, v in node.items():
                if isinstance(v, str) and len(v) >= 12 and re.fullmatch(r"token|secret|password", k, re.I):
                    found.add(v)
                elif k == "customHeaders" and isinstance(v, dict):
                    found.update(
                        x.split(" ", 1)[-1]
                        for h, x in v.items()
                        if h.lower() == "authorization" and isinstance(x, str)
                    )
                else:
                    stack.append(v)
        elif isinstance(node, list):
            stack.extend(node)
    return sorted(s for s in found if len(s) >= 12)


def _terms(db: Path) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        conn.execute("CREATE VIRTUAL TABLE temp.vocab USING fts5vocab(main, 'events_fts', 'row')")
        return {r[0] for r in conn.execute("SELECT term FROM temp.vocab")}
    finally:
        conn.close()


def _file_bytes(db: Path) -> bytes:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*") if p.is_file())


def _all_raw(db: Path) -> list[bytes]:
    store = SqliteStore(db)
    try:
        ids = [r[0] for r in store.connect().execute("SELECT id FROM events")]
        return [store.raw(i) or b"" for i in ids]
    finally:
        store.close()


@pytest.fixture(scope="module")
def loaded(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[dict[str, Any]]:
    """A real server (default settings: raw_events = redact) fed with every planted secret."""
    base = tmp_path_factory.mktemp("secrets")
    db = base / "s.db"
    secrets = list(PLANTED)
    events = [pipeline_event(n) for n in range(3)] + [git_event()]
    try:
        echo = request.getfixturevalue("echo_fixtures")
    except pytest.skip.Exception:
        echo = None
    if echo is not None:
        more, more_secrets = fixture_events(echo)
        events += more
        secrets += more_secrets
    try:
        from spintrail.simulate import Simulator  # type: ignore[import-not-found]

        simulated = list(Simulator(seed=3, days=1, executions=12).events())
        secrets += simulator_secrets(simulated)
        events += simulated
    except ImportError:
        simulated = []
    server = Server(
        str(db), env={"SPINTRAIL_ADMIN_TOKEN": ADMIN, "SPINTRAIL_CHECKPOINT_SECONDS": "3600"}
    ).start()
    try:
        body = "\n".join(json.dumps(e) for e in events)
        r = server.post(body, headers=AUTH)
        assert r.status_code == 200, r.text
        yield {
            "server": server,
            "db": db,
            "secrets": secrets,
            "events": events,
            "simulated": len(simulated),
            "echo": echo,
            "ids": [e["event_id"] for e in r.json()["events"]],
        }
    finally:
        server.stop()


def test_the_api_never_shows_a_secret(loaded: dict[str, Any]) -> None:
    server: Server = loaded["server"]
    texts = [server.get("/api/v1/events?limit=1000", headers=AUTH).text]
    for secret in loaded["secrets"]:
        r = server.get("/api/v1/events", params={"q": secret}, headers=AUTH)
        assert r.json()["events"] == [], secret
    for event_id in loaded["ids"][:12]:
        texts.append(server.get(f"/api/v1/events/{event_id}", headers=AUTH).text)
        texts.append(server.get(f"/api/v1/events/{event_id}/raw", headers=AUTH).text)
        texts.append(server.get(f"/api/v1/integrity/proof/{event_id}?raw=true", headers=AUTH).text)
    execution = server.get("/api/v1/executions/01HSECRET0000", headers=AUTH)
    assert execution.status_code == 200
    texts.append(execution.text)
    everything = "\n".join(texts)
    leaked = [s for s in loaded["secrets"] if s in everything]
    assert not leaked
    # The redacted events still say where the secrets were.
    raw = server.get(f"/api/v1/events/{loaded['ids'][0]}/raw", headers=AUTH).json()
    trigger = raw["content"]["execution"]["trigger"]
    assert trigger["secret"].startswith("hmac-sha256:") and trigger["parameters"]["ticket"] == "OPS-42"
    judgment = server.get(f"/api/v1/events/{loaded['ids'][0]}", headers=AUTH).json()["event"]
    assert judgment["user"] == "carol@example.com" and judgment["tickets"] == ["OPS-42"]


def test_the_store_file_and_full_text_index_hold_no_secret(loaded: dict[str, Any]) -> None:
    db: Path = loaded["db"]
    data = _file_bytes(db)
    assert not [s for s in loaded["secrets"] if s.encode() in data]
    terms = _terms(db)
    assert "checkout" in terms
    tokens = {t.lower() for s in loaded["secrets"] for t in re.findall(r"\w+", s) if len(t) >= 8}
    assert not tokens & terms
    raws = b"\n".join(_all_raw(db))
    assert len(raws) > 1000
    assert not [s for s in loaded["secrets"] if s.encode() in raws]
    if loaded["echo"] is not None:  # the savePipeline stage: its base64 pipeline's trigger secret is hashed
        save = next(json.loads(r) for r in _all_raw(db) if b"01HSAVEPIPELINE" in r)
        pipeline = json.loads(base64.b64decode(save["content"]["context"]["pipeline"]))
        assert all(t["secret"].startswith("hmac-sha256:") for t in pipeline["triggers"] if t.get("secret"))


def test_hash_lookup_finds_where_a_secret_appeared(loaded: dict[str, Any]) -> None:
    server: Server = loaded["server"]
    r = httpx.post(server.url + "/api/v1/hash", json={"value": TRIGGER_SECRET}, headers=AUTH)
    assert r.status_code == 200
    found = r.json()
    assert found["count"] == 4  # three pipeline events and the git webhook
    # A bearer token is found although the whole header value was hashed.
    assert httpx.post(server.url + "/api/v1/hash", json={"value": BEARER}, headers=AUTH).json()["count"] == 3
    none = httpx.post(server.url + "/api/v1/hash", json={"value": "never-planted"}, headers=AUTH).json()
    assert none["count"] == 0
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "spintrail",
            "hash",
            PARAM_PASSWORD,
            "--database",
            str(loaded["db"]),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and len(json.loads(out.stdout)) == 3


def test_forwarded_events_hold_no_secret(loaded: dict[str, Any], tmp_path: Path) -> None:
    """What forwarding sends (the redacted event and the record) delivered to a Splunk stand-in over HTTP."""
    from spintrail.sinks import Delivery, HecSink, HecSinkConfig
    from splunk_standin import SplunkStandin

    store = SqliteStore(tmp_path / "f.db")
    ingestor = Ingestor(Settings(database=str(tmp_path / "f.db")), store)
    deliveries = []
    for i, event in enumerate(loaded["events"]):
        p = ingestor.prepare(IncomingEvent(event, json.dumps(event).encode()))
        assert p.event is not None
        deliveries.append(Delivery(i, p.record.event_id, p.record.to_api(), p.event, p.record.time))
    token = "7b1d1f33-0000-4000-8000-000000000001"
    with SplunkStandin((token,), indexes={"main"}) as hec:
        sink = HecSink(HecSinkConfig(name="splunk", url=hec.url, token=token, payload="both"))
        sink.send(deliveries)
        sink.close()
        sent = b"".join(r.body for r in hec.event_requests())
    assert sent.count(b'"event_id"') >= len(deliveries)
    assert not [s for s in loaded["secrets"] if s.encode() in sent]
    ingestor.trust.close()
    store.close()


def test_simulated_history_is_covered_when_the_simulator_is_there(loaded: dict[str, Any]) -> None:
    try:
        import spintrail.simulate  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        pytest.skip("spintrail.simulate is not in this tree: the simulator's planted secrets are not checked")
    assert loaded["simulated"] > 100 and len(loaded["secrets"]) >= len(PLANTED) + 4


def test_raw_events_keep_is_exact_and_drop_keeps_nothing(tmp_path: Path) -> None:
    event = pipeline_event(7)
    raw = json.dumps(event, indent=1).encode()
    for mode in ("keep", "redact", "drop"):
        store = SqliteStore(tmp_path / f"{mode}.db")
        ingestor = Ingestor(Settings(database=str(tmp_path / f"{mode}.db"), raw_events=mode), store)
        p = ingestor.prepare(IncomingEvent(event, raw))
        (result,) = store.append([p])
        kept = store.raw(result.id)
        record = json.dumps(store.get(result.id).to_api())  # type: ignore[union-attr]
        assert not [s for s in PLANTED if s in record or s in p.text]
        if mode == "keep":
            assert kept == raw  # exact evidence, secrets at rest
        elif mode == "redact":
            assert kept is not None and TRIGGER_SECRET.encode() not in kept and json.loads(kept)["eventId"]
        else:
            assert kept is None
        ingestor.trust.close()
        store.close()


def test_the_hash_index_keeps_16_bytes_and_still_finds_older_full_entries(tmp_path: Path) -> None:
    import sqlite3

    from spintrail import scrub

    db = tmp_path / "h.db"
    store = SqliteStore(db)
    ingestor = Ingestor(Settings(database=str(db)), store)
    events = (pipeline_event(1), pipeline_event(2))
    results = store.append([ingestor.prepare(IncomingEvent(e, json.dumps(e).encode())) for e in events])
    hashed = ingestor.scrubber.hash_value(TRIGGER_SECRET)
    conn = sqlite3.connect(db)
    digests = {len(d) for (d,) in conn.execute("SELECT digest FROM redacted_values")}
    assert digests == {scrub.DIGEST_BYTES}
    # An entry as written before: all 32 bytes of the HMAC.
    conn.execute("DELETE FROM redacted_values WHERE event_row = ?", (results[1].id,))
    conn.execute(
        "INSERT INTO redacted_values(digest, event_row) VALUES (?, ?)",
        (bytes.fromhex(hashed.removeprefix("hmac-sha256:")), results[1].id),
    )
    conn.commit()
    assert scrub.records_with(conn, hashed) == [results[0].id, results[1].id]
    assert scrub.records_with(conn, ingestor.scrubber.hash_value("never-planted")) == []
    conn.close()
    ingestor.trust.close()
    store.close()


# --------------------------------------------------------------------------------------------- property

_SECRET_KEYS = [
    "password",
    "apiKey",
    "client_secret",
    "accessToken",
    "Authorization",
    "x-api-key",
    "dbPassword",
]
_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=12))
_json = st.recursive(
    _json_leaf,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def prop_ingestor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingestor]:
    db = tmp_path_factory.mktemp("property") / "p.db"
    store = SqliteStore(db)
    ingestor = Ingestor(Settings(database=str(db)), store)
    yield ingestor
    ingestor.trust.close()
    store.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    noise=st.dictionaries(st.sampled_from(["context", "outputs", "notes", "trigger"]), _json, max_size=3),
    key=st.sampled_from(_SECRET_KEYS),
    path=st.lists(st.sampled_from(["context", "stages", "0", "parameters", "deep"]), max_size=4),
    secret=st.from_regex(r"zq[a-z0-9]{10,20}", fullmatch=True),
)
def test_property_a_planted_secret_never_reaches_record_index_or_raw(
    prop_ingestor: Ingestor, noise: dict[str, Any], key: str, path: list[str], secret: str
) -> None:
    node: dict[str, Any] = {key: secret}
    for part in reversed(path):
        node = {part: [node]} if part == "stages" else {part: node}
    event = {
        "details": {
            "source": "orca",
            "type": "orca:stage:complete",
            "created": "1718370000000",
            "application": "a",
        },
        "content": {**noise, "payload": node, "context": {"note": f"token={secret}", "stage": node}},
        "eventId": "e",
    }
    p = prop_ingestor.prepare(IncomingEvent(event, json.dumps(event).encode()))
    assert secret not in json.dumps(p.record.to_api())
    assert secret not in p.text
    assert secret.encode() not in p.raw
    assert secret not in json.dumps(p.event)
    assert p.secret_hashes  # the hash is indexed for look-ups
