"""Splunk HEC protocol: body parsing, token checks, error bodies, response classification, and the HEC
stand-in answering those over real HTTP."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator

import httpx
import pytest

from spintrail.splunk import (
    HEC_CODES,
    HecError,
    Outcome,
    check_token,
    classify_response,
    describe_response,
    parse_hec_events,
    response_code,
)
from splunk_standin import SplunkStandin

TOKEN = "11111111-2222-3333-4444-555555555555"


def _raises(body: bytes) -> HecError:
    with pytest.raises(HecError) as info:
        parse_hec_events(body)
    return info.value


# ------------------------------------------------------------------------------------------------ codes


def test_hec_codes_carry_documented_http_status_and_text() -> None:
    assert set(HEC_CODES) == set(range(18))
    assert HEC_CODES[0] == (200, "Success")
    assert HEC_CODES[2] == (401, "Token is required")
    assert HEC_CODES[3] == (401, "Invalid authorization")
    assert HEC_CODES[4] == (403, "Invalid token")
    assert HEC_CODES[6] == (400, "Invalid data format")
    assert HEC_CODES[8] == (500, "Internal server error")
    assert HEC_CODES[9] == (503, "Server is busy")
    assert HEC_CODES[13] == (400, "Event field cannot be blank")
    assert HEC_CODES[17] == (200, "HEC is healthy")


def test_hec_error_body_has_invalid_event_number_only_when_known() -> None:
    assert HecError(6, 3).body() == {"text": "Invalid data format", "code": 6, "invalid-event-number": 3}
    assert HecError(2).body() == {"text": "Token is required", "code": 2}
    err = HecError(9)
    assert (err.status, err.text, err.invalid_event_number) == (503, "Server is busy", None)


def test_hec_error_refuses_an_unknown_code() -> None:
    with pytest.raises(ValueError, match="unknown HEC code 99"):
        HecError(99)


# ---------------------------------------------------------------------------------------------- parsing


def test_parse_concatenated_objects_with_and_without_whitespace() -> None:
    body = (
        b'{"event": {"a": 1}, "time": 1718370095.05, "host": "h", "sourcetype": "st"}'
        b'{"event": "plain text"}\n\n  '
        b'{"event": {"b": [1, 2]}, "fields": {"event_id": "e1", "acct": ["x", "y"]}}\r\n'
    )
    events = parse_hec_events(body)
    assert [e["event"] for e in events] == [{"a": 1}, "plain text", {"b": [1, 2]}]
    assert events[0]["time"] == 1718370095.05
    assert events[2]["fields"] == {"event_id": "e1", "acct": ["x", "y"]}


def test_parse_accepts_time_as_numeric_string() -> None:
    assert parse_hec_events(b'{"event": "x", "time": "1433188255.500"}')[0]["time"] == "1433188255.500"


@pytest.mark.parametrize("body", [b"", b"  \n\t ", b"\n"])
def test_parse_empty_body_is_no_data(body: bytes) -> None:
    err = _raises(body)
    assert (err.code, err.status, err.text) == (5, 400, "No data")
    assert err.invalid_event_number is None


def test_parse_bad_json_names_the_event_number() -> None:
    err = _raises(b'{"event": "a"} {"event": "b"} {"event": "c", } {"event": "d"}')
    assert err.code == 6
    assert err.invalid_event_number == 2
    assert err.body() == {"text": "Invalid data format", "code": 6, "invalid-event-number": 2}


def test_parse_truncated_object_is_invalid_data_format() -> None:
    err = _raises(b'{"event": "a"}\n{"event": {"x": ')
    assert (err.code, err.invalid_event_number) == (6, 1)


@pytest.mark.parametrize("body", [b'[{"event": "a"}]', b'"just a string"', b"42", b"null"])
def test_parse_non_object_is_invalid_data_format(body: bytes) -> None:
    err = _raises(body)
    assert (err.code, err.invalid_event_number) == (6, 0)
    assert "expected a JSON object" in str(err)


def test_parse_non_utf8_body_is_invalid_data_format() -> None:
    err = _raises(b'{"event": "\xff\xfe"}')
    assert (err.code, err.invalid_event_number) == (6, 0)
    assert "UTF-8" in str(err)


def test_parse_missing_event_is_event_field_required() -> None:
    err = _raises(b'{"event": "ok"}{"time": 1, "host": "h"}')
    assert (err.code, err.status, err.text, err.invalid_event_number) == (
        12,
        400,
        "Event field is required",
        1,
    )


@pytest.mark.parametrize("blank", ['""', '"   "', '"\\n"', "{}"])
def test_parse_blank_event_is_event_field_cannot_be_blank(blank: str) -> None:
    err = _raises(b'{"event": "ok"} {"event": ' + blank.encode() + b"}")
    assert (err.code, err.text, err.invalid_event_number) == (13, "Event field cannot be blank", 1)


@pytest.mark.parametrize("event", ["null", "42", "true", "[1, 2]"])
def test_parse_event_of_other_type_is_invalid_data_format(event: str) -> None:
    err = _raises(b'{"event": ' + event.encode() + b"}")
    assert (err.code, err.invalid_event_number) == (6, 0)


@pytest.mark.parametrize("meta", ['"host": 5', '"index": ["a"]', '"time": "yesterday"', '"time": true'])
def test_parse_mistyped_metadata_is_invalid_data_format(meta: str) -> None:
    err = _raises(b'{"event": "x", ' + meta.encode() + b"}")
    assert (err.code, err.invalid_event_number) == (6, 0)


@pytest.mark.parametrize(
    "fields", ['"fields": "x"', '"fields": {"a": {"nested": 1}}', '"fields": {"a": [[1]]}']
)
def test_parse_bad_indexed_fields_is_error_in_handling_indexed_fields(fields: str) -> None:
    err = _raises(b'{"event": "x"}{"event": "y", ' + fields.encode() + b"}")
    assert (err.code, err.text, err.invalid_event_number) == (15, "Error in handling indexed fields", 1)


# ------------------------------------------------------------------------------------------------- tokens


def test_check_token_accepts_anything_when_no_token_is_configured() -> None:
    check_token(None, [])
    check_token("Bearer whatever", ())


def test_check_token_accepts_a_configured_token() -> None:
    check_token(f"Splunk {TOKEN}", {TOKEN})
    check_token(f"splunk {TOKEN}", {TOKEN})


@pytest.mark.parametrize(
    ("header", "code", "status"),
    [
        (None, 2, 401),
        ("", 2, 401),
        (f"Bearer {TOKEN}", 3, 401),
        ("Splunk", 3, 401),
        (f"Basic {TOKEN}", 3, 401),
        ("Splunk not-the-token", 4, 403),
    ],
)
def test_check_token_failures(header: str | None, code: int, status: int) -> None:
    with pytest.raises(HecError) as info:
        check_token(header, {TOKEN})
    assert (info.value.code, info.value.status) == (code, status)


# ------------------------------------------------------------------------------------------ classification


def _body(code: int, number: int | None = None) -> bytes:
    return json.dumps(HecError(code, number).body()).encode()


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (200, b'{"text":"Success","code":0}', Outcome.DELIVERED),
        (200, b'{"text":"Success","code":0,"ackId":7}', Outcome.DELIVERED),
        (503, _body(9), Outcome.RETRY),
        (500, _body(8), Outcome.RETRY),
        (429, b"", Outcome.RETRY),
        (502, b"<html>bad gateway</html>", Outcome.RETRY),
        (403, _body(1), Outcome.PAUSE),
        (401, _body(2), Outcome.PAUSE),
        (401, _body(3), Outcome.PAUSE),
        (403, _body(4), Outcome.PAUSE),
        (400, _body(7, 1), Outcome.PAUSE),
        (400, _body(10), Outcome.PAUSE),
        (400, _body(14), Outcome.PAUSE),
        (400, _body(5), Outcome.DEAD_LETTER),
        (400, _body(6, 0), Outcome.DEAD_LETTER),
        (400, _body(12, 2), Outcome.DEAD_LETTER),
        (400, _body(13, 0), Outcome.DEAD_LETTER),
        (400, _body(15, 0), Outcome.DEAD_LETTER),
        (413, b"", Outcome.DEAD_LETTER),
        (400, b"not json", Outcome.DEAD_LETTER),
        (404, b"<html>not found</html>", Outcome.PAUSE),
    ],
)
def test_classify_response(status: int, body: bytes, outcome: Outcome) -> None:
    assert classify_response(status, body) is outcome


def test_response_code_and_description() -> None:
    assert response_code(_body(6, 4)) == (6, "Invalid data format", 4)
    assert response_code(b"garbage") == (None, None, None)
    assert describe_response(400, _body(6, 4)) == "HTTP 400, HEC code 6 (Invalid data format) at event 4"
    assert describe_response(502, b"Bad Gateway") == "HTTP 502: Bad Gateway"


# --------------------------------------------------------------------------- the stand-in over real HTTP


@pytest.fixture
def hec() -> Iterator[SplunkStandin]:
    with SplunkStandin((TOKEN,), indexes={"main", "audit"}) as standin:
        yield standin


def _post(url: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(url, content=body, headers=headers, timeout=5)


def test_standin_accepts_events_like_hec(hec: SplunkStandin) -> None:
    r = _post(
        f"{hec.url}/services/collector/event",
        b'{"event": "a"}{"event": {"b": 1}}',
        authorization=f"Splunk {TOKEN}",
    )
    assert (r.status_code, r.json()) == (200, {"text": "Success", "code": 0})
    assert [e["event"] for e in hec.events] == ["a", {"b": 1}]


def test_standin_answers_auth_failures_with_hec_bodies(hec: SplunkStandin) -> None:
    url = f"{hec.url}/services/collector/event"
    r = _post(url, b'{"event": "a"}')
    assert (r.status_code, r.json()) == (401, {"text": "Token is required", "code": 2})
    r = _post(url, b'{"event": "a"}', authorization="Splunk wrong")
    assert (r.status_code, r.json()) == (403, {"text": "Invalid token", "code": 4})
    assert hec.events == []


def test_standin_reports_bad_event_and_index_with_event_number(hec: SplunkStandin) -> None:
    url = f"{hec.url}/services/collector/event"
    r = _post(url, b'{"event": "a"}{"event": ""}', authorization=f"Splunk {TOKEN}")
    assert (r.status_code, r.json()) == (
        400,
        {"text": "Event field cannot be blank", "code": 13, "invalid-event-number": 1},
    )
    r = _post(
        url,
        b'{"event": "a", "index": "main"}{"event": "b", "index": "secret"}',
        authorization=f"Splunk {TOKEN}",
    )
    assert (r.status_code, r.json()) == (
        400,
        {"text": "Incorrect index", "code": 7, "invalid-event-number": 1},
    )


def test_standin_decodes_gzip_bodies(hec: SplunkStandin) -> None:
    r = _post(
        f"{hec.url}/services/collector/event",
        gzip.compress(b'{"event": "zipped"}'),
        authorization=f"Splunk {TOKEN}",
        **{"content-encoding": "gzip"},
    )
    assert r.status_code == 200
    assert hec.events[0]["event"] == "zipped"


def test_standin_health_and_injected_failures(hec: SplunkStandin) -> None:
    r = httpx.get(f"{hec.url}/services/collector/health", timeout=5)
    assert (r.status_code, r.json()) == (200, {"text": "HEC is healthy", "code": 17})
    hec.fail(9, after=1)
    url = f"{hec.url}/services/collector/event"
    assert _post(url, b'{"event": "a"}', authorization=f"Splunk {TOKEN}").status_code == 200
    r = _post(url, b'{"event": "b"}', authorization=f"Splunk {TOKEN}")
    assert (r.status_code, r.json()) == (503, {"text": "Server is busy", "code": 9})
    assert _post(url, b'{"event": "c"}', authorization=f"Splunk {TOKEN}").status_code == 200


def test_standin_ack_needs_a_channel_and_reports_each_ack_once() -> None:
    channel = "0b8ad3e6-7d58-4f14-bb71-5c4d0c3f2a11"
    with SplunkStandin((TOKEN,), ack=True, ack_after=1) as hec:
        url = f"{hec.url}/services/collector/event"
        auth = f"Splunk {TOKEN}"
        r = _post(url, b'{"event": "a"}', authorization=auth)
        assert (r.status_code, r.json()) == (400, {"text": "Data channel is missing", "code": 10})
        r = _post(url, b'{"event": "a"}', authorization=auth, **{"x-splunk-request-channel": "nope"})
        assert (r.status_code, r.json()["code"]) == (400, 11)
        r = _post(url, b'{"event": "a"}', authorization=auth, **{"x-splunk-request-channel": channel})
        assert r.json() == {"text": "Success", "code": 0, "ackId": 0}
        r = _post(f"{url}?channel={channel}", b'{"event": "b"}', authorization=auth)
        assert r.json()["ackId"] == 1
        ack_url = f"{hec.url}/services/collector/ack"
        ask = json.dumps({"acks": [0, 1]}).encode()
        headers = {"authorization": auth, "x-splunk-request-channel": channel}
        assert _post(ack_url, ask, **headers).json() == {"acks": {"0": False, "1": False}}
        assert _post(ack_url, ask, **headers).json() == {"acks": {"0": True, "1": True}}
        assert _post(ack_url, ask, **headers).json() == {"acks": {"0": False, "1": False}}


def test_standin_ack_endpoint_without_ack_is_ack_disabled(hec: SplunkStandin) -> None:
    r = _post(
        f"{hec.url}/services/collector/ack",
        b'{"acks": [0]}',
        authorization=f"Splunk {TOKEN}",
        **{"x-splunk-request-channel": "0b8ad3e6-7d58-4f14-bb71-5c4d0c3f2a11"},
    )
    assert (r.status_code, r.json()) == (400, {"text": "ACK is disabled", "code": 14})
