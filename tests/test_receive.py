"""The echo webhook over real HTTP: every body shape echo sends, idempotency, and every kind of bad input."""

from __future__ import annotations

import gzip
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import TEST_BACKEND, Server


def event(n: int = 0, **content: Any) -> dict[str, Any]:
    return {
        "details": {
            "source": "orca",
            "type": "orca:orchestration:starting",
            "created": str(1_718_370_000_000 + n),
            "application": "checkout",
            "requestHeaders": {},
        },
        "content": {
            "execution": {
                "type": "ORCHESTRATION",
                "id": f"EXEC{n}",
                "application": "checkout",
                "description": f"Resize Server Group: checkout-prod-v{n:03d}",
                "authentication": {"user": "carol@example.com"},
                "trigger": {"type": "manual", "user": "carol@example.com"},
                "stages": [],
                "status": "RUNNING",
            },
            "executionId": f"EXEC{n}",
            **content,
        },
        "eventId": str(uuid.UUID(int=n + 1)),
    }


def count(server: Server) -> int:
    return len(server.get("/api/v1/events?limit=1000").json()["events"])


def test_plain_event_is_stored_and_acknowledged(server: Server) -> None:
    r = server.post(event(1))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["stored"] == 1 and body["duplicates"] == 0
    got = server.get(f"/api/v1/events/{body['events'][0]['id']}").json()
    assert got["event"]["event_id"] == str(uuid.UUID(int=2))
    assert got["event"]["user"] == "carol@example.com"
    assert got["raw"] == event(1)


@pytest.mark.parametrize(
    "shape",
    [
        "wrapped",
        "wrapped_custom",
        "flattened",
        "wrapped_flattened",
        "template",
        "template_instance",
        "array",
        "ndjson",
        "concatenated",
    ],
)
def test_every_body_shape(server: Server, shape: str) -> None:
    e1, e2 = event(1), event(2)
    flat = {**e1, "details": json.dumps(e1["details"]), "content": json.dumps(e1["content"])}
    bodies: dict[str, tuple[str, int]] = {
        "wrapped": (json.dumps({"eventName": "spinnaker_events", "payload": e1}), 1),
        "wrapped_custom": (json.dumps({"eventName": "audit", "theEvent": e1}), 1),
        "flattened": (json.dumps(flat), 1),
        "wrapped_flattened": (json.dumps({"eventName": "x", "payload": flat}), 1),
        "template": (json.dumps({"event": e1}), 1),
        "template_instance": (json.dumps({"instance": "prod-eu", "sourcetype": "spinnaker", "event": e1}), 1),
        "array": (json.dumps([e1, e2]), 2),
        "ndjson": (json.dumps(e1) + "\n" + json.dumps(e2) + "\n", 2),
        "concatenated": (json.dumps(e1) + json.dumps(e2), 2),
    }
    body, n = bodies[shape]
    r = server.post(body)
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == n
    records = server.get("/api/v1/events").json()["events"]
    assert {rec["execution_id"] for rec in records} == ({"EXEC1", "EXEC2"} if n == 2 else {"EXEC1"})
    if shape == "template_instance":
        assert records[0]["spinnaker_instance"] == "prod-eu"


def test_gzip_body(server: Server) -> None:
    r = server.post(gzip.compress(json.dumps(event(3)).encode()), headers={"Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == 1


def test_routes_with_trailing_slash_and_stray_question_mark(server: Server) -> None:
    assert server.post(event(1), path="/api/v1/events/").status_code == 200
    assert server.post(event(2), path="/api/v1/events?").status_code == 200
    assert server.post(event(3), path="/api/v1/events?/").status_code == 200
    assert count(server) == 3


def test_instance_from_header_query_and_default(server_factory: Any, tmp_path: Path) -> None:
    server = server_factory(env={"SPINTRAIL_DEFAULT_INSTANCE": "main"})
    server.post(event(1), headers={"X-Spinnaker-Instance": "prod-us"})
    server.post(event(2), path="/api/v1/events?instance=prod-eu")
    server.post(event(3))
    by_exec = {
        r["execution_id"]: r["spinnaker_instance"] for r in server.get("/api/v1/events").json()["events"]
    }
    assert by_exec == {"EXEC1": "prod-us", "EXEC2": "prod-eu", "EXEC3": "main"}
    assert [r["execution_id"] for r in server.get("/api/v1/events?instance=prod-eu").json()["events"]] == [
        "EXEC2"
    ]


def test_resent_events_are_not_stored_twice(server: Server) -> None:
    assert server.post(event(1)).json()["stored"] == 1
    r = server.post(event(1))
    assert r.json() | {"events": None} == {"stored": 0, "duplicates": 1, "events": None}
    # The same event in another shape is the same event.
    assert server.post({"eventName": "spinnaker_events", "payload": event(1)}).json()["duplicates"] == 1
    r = server.post([event(1), event(2), event(2)])
    assert (r.json()["stored"], r.json()["duplicates"]) == (1, 2)
    assert count(server) == 2


def test_event_without_event_id_gets_a_stable_id(server: Server) -> None:
    e = event(5)
    del e["eventId"]
    first = server.post(e).json()
    assert first["stored"] == 1
    # Whitespace and key order do not change the derived id.
    again = server.post(json.dumps(e, indent=3, sort_keys=True)).json()
    assert again["duplicates"] == 1
    assert again["events"][0]["event_id"] == first["events"][0]["event_id"]


def test_raw_bytes_are_kept_exactly(server_factory: Any) -> None:
    server = server_factory(env={"SPINTRAIL_RAW_EVENTS": "keep"})
    body = (
        b'  {"eventName":"spinnaker_events",\n  "payload": '
        + json.dumps(event(9), indent=1).encode()
        + b"}\n"
    )
    r = server.post(body)
    raw = server.get(f"/api/v1/events/{r.json()['events'][0]['id']}/raw")
    assert raw.status_code == 200
    assert raw.content == body
    assert "attachment" in raw.headers["content-disposition"]
    # In an array, each event keeps its own bytes.
    arr = b"[" + json.dumps(event(10)).encode() + b" ,\n " + json.dumps(event(11), indent=2).encode() + b"]"
    r = server.post(arr)
    second = r.json()["events"][1]["id"]
    assert server.get(f"/api/v1/events/{second}/raw").content == json.dumps(event(11), indent=2).encode()


def test_large_event_of_several_megabytes(server: Server) -> None:
    e = event(12, context={"blob": "x" * (6 * 1024 * 1024)})
    r = server.post(e)
    assert r.status_code == 200, r.text
    raw = server.get(f"/api/v1/events/{r.json()['events'][0]['id']}/raw").content
    assert json.loads(raw) == e


@pytest.mark.parametrize(
    ("body", "headers", "status", "reason", "words"),
    [
        (b"", {}, 400, "empty_body", "empty"),
        (b"   \n", {}, 400, "empty_body", "empty"),
        (b'{"details": {"type": "x"}, "content": ', {}, 400, "invalid_json", "line 1"),
        (b'{"hello": "world"}', {}, 400, "no_event", "details"),
        (b"[]", {}, 400, "no_event", "empty"),
        (b"42", {}, 400, "no_event", ""),
        (b"\xff\xfe{}", {}, 400, "invalid_json", "UTF-8"),
        (b"not gzip at all", {"Content-Encoding": "gzip"}, 400, "bad_encoding", "gzip"),
        (b"{}", {"Content-Encoding": "br"}, 415, "unsupported_encoding", "br"),
    ],
)
def test_bad_input_is_refused_clearly_and_stores_nothing(
    server: Server, body: bytes, headers: dict[str, str], status: int, reason: str, words: str
) -> None:
    server.post(event(1))
    r = server.post(body, headers=headers)
    assert r.status_code == status, r.text
    assert r.json()["error"] == reason
    assert words in r.json()["message"]
    assert count(server) == 1


def test_one_bad_event_in_a_batch_stores_none_of_it(server: Server) -> None:
    r = server.post(json.dumps([event(1), {"not": "an event"}, event(2)]))
    assert r.status_code == 400
    assert "element" in r.json()["message"] or "1" in r.json()["message"]
    assert count(server) == 0


def test_body_over_the_limit_is_413(server_factory: Any) -> None:
    server = server_factory(env={"SPINTRAIL_MAX_BODY_BYTES": "100000"})
    r = server.post(event(1, context={"blob": "x" * 200_000}))
    assert r.status_code == 413
    assert "limit" in r.json()["message"]
    # A gzip bomb is measured after decompression.
    bomb = gzip.compress(json.dumps(event(2, context={"blob": "x" * 500_000})).encode())
    assert len(bomb) < 100_000
    r = server.post(bomb, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 413
    assert server.post(event(3)).status_code == 200
    assert count(server) == 1


def test_metrics_count_what_happened(server: Server) -> None:
    server.post(event(1))
    server.post(event(1))
    server.post(b"{")
    text = server.get("/metrics").text
    assert "spintrail_events_stored_total 1.0" in text
    assert "spintrail_events_duplicate_total 1.0" in text
    assert 'spintrail_requests_rejected_total{reason="invalid_json"} 1.0' in text
    assert "spintrail_commit_seconds_count" in text


def test_health_readiness_and_openapi(server: Server) -> None:
    assert server.get("/healthz").json() == {"status": "ok"}
    backend = "postgresql" if TEST_BACKEND == "postgres" else "sqlite"
    assert server.get("/readyz").json() == {"status": "ready", "store": backend}
    spec = server.get("/openapi.json").json()
    assert "/api/v1/events" in spec["paths"]
    params = {p["name"] for p in spec["paths"]["/api/v1/events"]["get"]["parameters"]}
    assert {"user", "application", "q", "since", "cursor"} <= params
    assert server.get("/docs").status_code == 200


def test_shared_echo_samples_all_ingest(server: Server, echo_fixtures: Path) -> None:
    files = sorted(echo_fixtures.glob("*.json")) + sorted((echo_fixtures / "synthetic").glob("*.json"))
    assert len(files) > 20
    for f in files:
        if f.stat().st_size > 1_000_000:
            continue  # the 665-event igor file goes through `spintrail import` (test_cli)
        r = server.post(f.read_bytes())
        assert r.status_code == 200, (f.name, r.text)
        assert r.json()["stored"] + r.json()["duplicates"] >= 1
    for f in echo_fixtures.glob("*.verbatim.txt"):
        r = server.post(f.read_bytes())
        assert r.status_code == 400, f.name
        assert r.json()["error"] == "invalid_json"
        assert "line" in r.json()["message"]
    with httpx.Client() as c:
        assert c.get(server.url + "/readyz").status_code == 200


def test_simulate_posts_to_a_running_server(server: Server) -> None:
    import subprocess
    import sys

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "spintrail",
            "simulate",
            "--url",
            server.url + "/api/v1/events",
            "--seed",
            "3",
            "--executions",
            "8",
            "--days",
            "1",
            "--batch-size",
            "5",
            "--duplicate-rate",
            "0.2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    # Every event sent was answered; the resent ones were recognised as duplicates.
    stored = len(server.get("/api/v1/events?limit=1000").json()["events"])
    assert stored > 50
    text = server.get("/metrics").text
    assert f"spintrail_events_stored_total {float(stored)}" in text
    dup = [line for line in text.splitlines() if line.startswith("spintrail_events_duplicate_total ")]
    assert float(dup[0].split()[1]) > 0
