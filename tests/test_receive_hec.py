"""The Splunk-compatible endpoint over real HTTP: echo's Splunk configuration, HEC's answers and codes, and
events stored exactly as on /api/v1/events."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Server
from echo_samples import echo_event

TOKEN = "9d4b2a7e-2f43-4c55-8a51-3f2b8f7e1c01"
OTHER = "5c1f0e52-7d1b-4b8a-9a3c-0e6f2d9b7a44"


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@pytest.fixture(scope="module")
def hec_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module, requiring one of two tokens, keeping raw events byte for byte."""
    directory = tmp_path_factory.mktemp("hec")
    env = {"SPINTRAIL_HEC_TOKENS": f"{TOKEN}, {OTHER}", "SPINTRAIL_RAW_EVENTS": "keep"}
    server = Server(str(directory / "hec.db"), env=env)
    server.start()
    yield server
    server.stop()


def post(
    server: Server, body: bytes, path: str = "/services/collector/event", **headers: str
) -> httpx.Response:
    sent = {"Content-Type": "application/json; charset=UTF-8", "Authorization": f"Splunk {TOKEN}"}
    sent.update(headers)
    return httpx.post(server.url + path, content=body, headers=sent, timeout=30)


def stored(server: Server, event_id: str) -> dict[str, Any] | None:
    r = server.get(f"/api/v1/events/{event_id}")
    return r.json() if r.status_code == 200 else None


def test_echo_configured_for_splunk_works_with_only_the_host_changed(hec_server: Server) -> None:
    # echo: rest.endpoints[].url = https://<splunk>:8088/services/collector/event?, wrap: true,
    # template: '{"event":{{event}} }', headers.Authorization: "Splunk <token>". echo substitutes the event
    # into the template, parses it back into a map and posts that map serialized by Jackson.
    event = echo_event(1)
    template = '{"event":{{event}} }'
    body = json.dumps(json.loads(template.replace("{{event}}", json.dumps(event))), separators=(",", ":"))
    url = hec_server.url + "/services/collector/event?"
    r = httpx.post(
        url,
        content=body.encode(),
        headers={
            "Content-Type": "application/json; charset=UTF-8",
            "Authorization": f"Splunk {TOKEN}",
            "User-Agent": "okhttp/4.12.0",
        },
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"text": "Success", "code": 0}
    got = stored(hec_server, event["eventId"])
    assert got is not None
    assert got["event"]["user"] == "erin@example.com"
    assert got["event"]["server_groups"] == ["checkout-prod-v001"]
    assert got["raw"] == event
    # Raw bytes kept: the event exactly as echo serialized it inside the HEC object.
    raw = hec_server.get(f"/api/v1/events/{event['eventId']}/raw").content
    assert raw == compact(event)

    # Older echo versions append "/" to the URL: the trailing "?" keeps the route.
    second = echo_event(2)
    r = httpx.post(
        url + "/",
        content=compact({"event": second}),
        headers={"Content-Type": "application/json", "Authorization": f"Splunk {TOKEN}"},
        timeout=30,
    )
    assert r.json() == {"text": "Success", "code": 0}
    assert stored(hec_server, second["eventId"]) is not None


def test_template_with_metadata_and_literal_template_text(hec_server: Server) -> None:
    # The template text itself (with its space before the closing brace) and Splunk metadata keys.
    event = echo_event(3)
    body = '{"sourcetype":"spinnaker","index":"main","host":"echo-1","time":1718370000.5,"event":%s }'
    r = post(hec_server, (body % json.dumps(event)).encode())
    assert r.json() == {"text": "Success", "code": 0}
    assert stored(hec_server, event["eventId"])["raw"] == event  # type: ignore[index]


@pytest.mark.parametrize(
    "path",
    [
        "/services/collector",
        "/services/collector/",
        "/services/collector/event/",
        "/services/collector/event/1.0",
        "/services/collector/event/1.0/",
    ],
)
def test_every_collector_path(hec_server: Server, path: str) -> None:
    event = echo_event(100 + len(path), application="paths")
    r = post(hec_server, compact({"event": event}), path=path)
    assert r.status_code == 200 and r.json()["code"] == 0, r.text
    assert stored(hec_server, event["eventId"]) is not None


def test_several_concatenated_objects_each_keep_their_own_bytes(hec_server: Server) -> None:
    events = [echo_event(10 + i) for i in range(3)]
    body = (
        json.dumps({"event": events[0]}, indent=1)
        + "\n"
        + json.dumps({"time": 1718370000, "event": events[1]})
        + "  "
        + json.dumps({"event": events[2], "fields": {"spinnaker_instance": "prod-eu"}})
    )
    r = post(hec_server, body.encode())
    assert r.json() == {"text": "Success", "code": 0}
    first_raw = hec_server.get(f"/api/v1/events/{events[0]['eventId']}/raw").content
    assert first_raw == json.dumps(events[0], indent=1).replace("\n", "\n ").encode()
    assert json.loads(first_raw) == events[0]
    third = stored(hec_server, events[2]["eventId"])
    assert third is not None and third["event"]["spinnaker_instance"] == "prod-eu"
    assert stored(hec_server, events[1]["eventId"])["event"]["spinnaker_instance"] is None  # type: ignore[index]


def test_event_sent_as_a_json_string_and_flattened_or_wrapped_events(hec_server: Server) -> None:
    plain = echo_event(20)
    flattened = echo_event(21)
    flat = {
        **flattened,
        "details": json.dumps(flattened["details"]),
        "content": json.dumps(flattened["content"]),
    }
    wrapped = echo_event(22)
    body = b"".join(
        compact(o)
        for o in (
            {"event": json.dumps(plain)},
            {"event": flat},
            {"event": {"eventName": "spinnaker_events", "payload": wrapped}},
        )
    )
    r = post(hec_server, body)
    assert r.json() == {"text": "Success", "code": 0}, r.text
    for e in (plain, flattened, wrapped):
        got = stored(hec_server, e["eventId"])
        assert got is not None and got["event"]["user"].endswith("@example.com")


def test_same_event_via_hec_and_echo_webhook_is_stored_once(hec_server: Server) -> None:
    event = echo_event(30)
    r = hec_server.post(event)
    assert r.json()["stored"] == 1
    r = post(hec_server, compact({"event": event}))
    assert r.json() == {"text": "Success", "code": 0}
    r = post(hec_server, compact({"event": event}))
    assert r.json() == {"text": "Success", "code": 0}
    found = hec_server.get("/api/v1/events?execution_id=HEC30").json()["events"]
    assert len(found) == 1


def test_gzip_body(hec_server: Server) -> None:
    event = echo_event(40)
    r = post(hec_server, gzip.compress(compact({"event": event})), **{"Content-Encoding": "gzip"})
    assert r.json() == {"text": "Success", "code": 0}
    assert stored(hec_server, event["eventId"]) is not None


def test_header_names_the_instance(hec_server: Server) -> None:
    event = echo_event(41)
    r = post(
        hec_server,
        compact({"event": event, "fields": {"spinnaker_instance": "ignored"}}),
        **{"X-Spinnaker-Instance": "prod-us"},
    )
    assert r.json()["code"] == 0
    assert stored(hec_server, event["eventId"])["event"]["spinnaker_instance"] == "prod-us"  # type: ignore[index]


@pytest.mark.parametrize(
    ("headers", "status", "answer"),
    [
        ({}, 401, {"text": "Token is required", "code": 2}),
        ({"Authorization": ""}, 401, {"text": "Token is required", "code": 2}),
        ({"Authorization": f"Bearer {TOKEN}"}, 401, {"text": "Invalid authorization", "code": 3}),
        (
            {"Authorization": "Splunk 00000000-0000-0000-0000-000000000000"},
            403,
            {"text": "Invalid token", "code": 4},
        ),
    ],
)
def test_tokens_are_checked(hec_server: Server, headers: dict[str, str], status: int, answer: dict) -> None:
    event = echo_event(50 + status + len(headers))
    r = httpx.post(
        hec_server.url + "/services/collector/event",
        content=compact({"event": event}),
        headers={"Content-Type": "application/json", **headers},
        timeout=30,
    )
    assert r.status_code == status
    assert {k: r.json()[k] for k in ("text", "code")} == answer
    assert stored(hec_server, event["eventId"]) is None


def test_second_configured_token_works(hec_server: Server) -> None:
    event = echo_event(60)
    r = post(hec_server, compact({"event": event}), Authorization=f"Splunk {OTHER}")
    assert r.json() == {"text": "Success", "code": 0}


def test_basic_auth_with_the_token_as_password(hec_server: Server) -> None:
    # echo's username/password options send Basic auth; HEC takes the token as the password
    event = echo_event(61)
    r = httpx.post(
        hec_server.url + "/services/collector/event",
        content=compact({"event": event}),
        auth=("echo", TOKEN),
        timeout=10,
    )
    assert r.json() == {"text": "Success", "code": 0}
    r = httpx.post(
        hec_server.url + "/services/collector/event",
        content=compact({"event": echo_event(62)}),
        auth=("echo", "wrong"),
        timeout=10,
    )
    assert r.status_code == 403 and r.json()["code"] == 4
    r = post(hec_server, compact({"event": echo_event(63)}), Authorization="Basic !!notbase64")
    assert r.status_code == 401 and r.json()["code"] == 3


@pytest.mark.parametrize(
    ("body", "code", "number", "detail"),
    [
        (b"", 5, None, "no event"),
        (b"  \n ", 5, None, "no event"),
        (b'{"event": {"details": ', 6, 0, "not JSON"),
        (b"[1, 2]", 6, 0, "expected a JSON object"),
        (b'{"time": 1}', 12, 0, "no 'event' key"),
        (b'{"event": "   "}', 13, 0, "empty string"),
        (b'{"event": {}}', 13, 0, "empty object"),
        (b'{"event": {"message": "hello"}}', 6, 0, "not an echo event"),
        (b'{"event": "plain text log line"}', 6, 0, "not an echo event"),
        (b'{"event": {"details": {"type": "x"}}, "fields": {"a": {"b": 1}}}', 15, 0, "indexed field"),
    ],
)
def test_bad_requests_get_splunk_codes(
    hec_server: Server, body: bytes, code: int, number: int | None, detail: str
) -> None:
    r = post(hec_server, body)
    assert r.status_code == 400
    answer = r.json()
    assert answer["code"] == code
    assert answer.get("invalid-event-number") == number
    assert detail in answer["detail"]


def test_a_bad_object_refuses_the_whole_request_naming_its_number(hec_server: Server) -> None:
    good = echo_event(70)
    body = compact({"event": good}) + b"\n" + compact({"event": good}) + b'\n{"event": {"msg": "x"}}'
    r = post(hec_server, body)
    assert r.status_code == 400
    assert r.json()["code"] == 6 and r.json()["invalid-event-number"] == 2
    assert r.json()["text"] == "Invalid data format"
    assert stored(hec_server, good["eventId"]) is None


def test_health_and_ack(hec_server: Server) -> None:
    r = hec_server.get("/services/collector/health")
    assert r.status_code == 200 and r.json() == {"text": "HEC is healthy", "code": 17}
    r = httpx.post(
        hec_server.url + "/services/collector/ack",
        content=b'{"acks": [0]}',
        headers={"Authorization": f"Splunk {TOKEN}"},
        timeout=10,
    )
    assert r.status_code == 400 and r.json()["code"] == 14


def test_oversized_body_is_refused(tmp_path: Path, server_factory: Any) -> None:
    server = server_factory(str(tmp_path / "small.db"), env={"SPINTRAIL_MAX_BODY_BYTES": "2048"})
    event = echo_event(80, padding="x" * 4000)
    r = post(server, compact({"event": event}))
    assert r.status_code == 413
    # Splunk's client libraries read an answer without a code as success: code 6, and why in `detail`.
    assert r.json()["code"] == 6 and r.json()["text"] == "Invalid data format"
    assert "limit" in r.json()["detail"]


def test_without_tokens_configured_any_request_is_accepted(tmp_path: Path, server_factory: Any) -> None:
    server = server_factory(str(tmp_path / "open.db"))
    first, second = echo_event(90), echo_event(91)
    r = httpx.post(server.url + "/services/collector/event", content=compact({"event": first}), timeout=10)
    assert r.json() == {"text": "Success", "code": 0}
    r = post(server, compact({"event": second}), Authorization="Splunk anything")
    assert r.json() == {"text": "Success", "code": 0}
    assert stored(server, first["eventId"]) and stored(server, second["eventId"])
