"""Malformed and hostile bodies on both ingest routes, over real HTTP: a 4xx naming the problem (Splunk's
codes on the Splunk-compatible route), strings no database stores kept as U+FFFD, and every stored event
readable back through the API and the page."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import Server

HEC = "/services/collector/event"
REPLACED = "\ufffd"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory: Path = tmp_path_factory.mktemp("hostile")
    server = Server(str(directory / "h.db"), env={"SPINTRAIL_RAW_EVENTS": "keep"}).start()
    yield server
    server.stop()


def event_text(event_id: str, *, application: str = "app", context: str = "{}") -> str:
    """An echo event as JSON text; ``application`` and ``context`` are placed as written (JSON escapes)."""
    return (
        '{"details":{"source":"orca","type":"orca:stage:complete","created":"1718370000000",'
        f'"application":"{application}"}},"eventId":"{event_id}","content":{{"execution":{{"id":"E1",'
        f'"type":"PIPELINE","stages":[{{"type":"wait","context":{context}}}]}}}}}}'
    )


def hec(server: Server, body: str | bytes) -> httpx.Response:
    return httpx.post(server.url + HEC, content=body, timeout=60)


def nested(depth: int, leaf: str = "1") -> str:
    return '{"a":' * depth + leaf + "}" * depth


HOSTILE = {
    "10k-deep arrays": "[" * 10_000 + "]" * 10_000,
    "100k-deep arrays": "[" * 100_000 + "]" * 100_000,
    "100k-deep objects": nested(100_000),
    "100k-digit integer": '{"details":{"type":"x"},"n":' + "9" * 100_000 + "}",
    "NaN": '{"details":{"type":"x"},"n":NaN}',
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_json_gets_a_4xx_naming_the_problem_on_both_routes(live: Server, name: str) -> None:
    body = HOSTILE[name]
    r = live.post(body)
    assert r.status_code == 400, (name, r.status_code, r.text[:300])
    assert r.json()["error"] == "invalid_json" and r.json()["message"]
    r = hec(live, '{"event":' + body + "}")
    assert r.status_code == 400, (name, r.status_code, r.text[:300])
    answer = r.json()
    assert answer["code"] == 6 and answer["text"] == "Invalid data format"
    assert answer["invalid-event-number"] == 0 and answer["detail"]


def test_hostile_indexed_fields_get_code_15_or_6(live: Server) -> None:
    deep = '{"event":' + event_text("f1") + ',"fields":' + "[" * 100_000 + "]" * 100_000 + "}"
    r = hec(live, deep)
    assert r.status_code == 400 and r.json()["code"] == 6, r.text[:300]
    r = hec(live, '{"event":' + event_text("f2") + ',"fields":{"x":{"y":1}}}')
    assert r.status_code == 400 and r.json()["code"] == 15, r.text[:300]


def test_lone_surrogates_and_nul_are_stored_as_replacement_characters(live: Server) -> None:
    """They cannot be stored as given; the event is not lost for them: the record holds U+FFFD, the raw
    bytes stay exact, and the API and the page show it."""
    context = '{"deep":' + nested(50, '"x\\udfffy\\u0000z"') + ',"k\\ud800":"\\ud83d\\ude00"}'
    body = event_text("lone-1", application="a\\udfffb\\u0000c", context=context)
    r = live.post(body)
    assert r.status_code == 200, r.text
    got = live.get("/api/v1/events/lone-1")
    assert got.status_code == 200, got.text[:300]
    assert got.json()["event"]["application"] == f"a{REPLACED}b{REPLACED}c"
    assert live.get("/api/v1/events/lone-1/raw").content == body.encode()
    assert got.json()["raw"]["eventId"] == "lone-1"
    page = live.get("/events/lone-1")
    assert page.status_code == 200 and "\\udfff" in page.text
    fields = ',"fields":{"instance":"i\\udfff"}}'
    hec_body = '{"event":' + event_text("lone-2", application="\\udfff") + fields
    r = hec(live, hec_body)
    assert r.status_code == 200 and r.json() == {"text": "Success", "code": 0}, r.text
    record = live.get("/api/v1/events/lone-2").json()["event"]
    assert record["application"] == REPLACED and record["spinnaker_instance"] == f"i{REPLACED}"
    r = live.post(event_text("lone-3"), headers={"X-Spinnaker-Instance": "ok"}, params={"instance": "\x00"})
    assert r.status_code == 200
    # An event sent as a JSON string, with an escaped lone surrogate inside the string.
    as_string = json.dumps(event_text("lone-4", application="x\\udfff"))
    assert "\\\\udfff" in as_string
    r = hec(live, '{"event":' + as_string.replace("\\\\udfff", "\\udfff") + "}")
    assert r.status_code == 200, r.text
    assert live.get("/api/v1/events/lone-4").json()["event"]["application"] == f"x{REPLACED}"


def test_the_deepest_event_accepted_is_readable_everywhere(live: Server) -> None:
    """Going down from far too deep, the first depth each route accepts is still read back whole."""
    for route in ("api", "hec"):
        for depth in range(1000, 0, -7):
            event_id = f"deep-{route}-{depth}"
            body = event_text(event_id, context=nested(depth, '"\\udfff"'))
            r = live.post(body) if route == "api" else hec(live, '{"event":' + body + "}")
            assert r.status_code in (200, 400), (depth, r.status_code, r.text[:300])
            if r.status_code == 200:
                break
            assert "nested too deeply" in r.text
        assert depth > 500, depth
        got = live.get(f"/api/v1/events/{event_id}")
        assert got.status_code == 200, got.text[:300]
        assert got.content.count(b'{"a":') == depth
        assert live.get(f"/events/{event_id}").status_code == 200
        assert live.get(f"/api/v1/events/{event_id}/raw").content == body.encode()
    assert live.get("/api/v1/events?limit=1000").status_code == 200
    assert live.get("/search").status_code == 200


@pytest.mark.parametrize("ref", ["1" * 30, "9" * 19, "\u0661\u0662", "\u00b2", "-1"])
def test_an_id_that_is_no_store_id_is_not_found(live: Server, ref: str) -> None:
    for path in (f"/events/{ref}", f"/api/v1/events/{ref}", f"/api/v1/integrity/proof/{ref}"):
        r = live.get(path)
        assert r.status_code == 404, (path, r.status_code, r.text[:200])
    r = live.get("/live/stream", headers={"Last-Event-ID": "1" * 30})
    assert r.status_code == 400


def test_still_sound_afterwards(live: Server) -> None:
    assert live.get("/readyz").status_code == 200
    report = httpx.post(live.url + "/api/v1/integrity/verify", timeout=60).json()
    assert report["ok"], report["problems"]
    assert json.loads(live.get("/api/v1/events?limit=1").text)["events"]
