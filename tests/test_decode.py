"""Tests for decoding echo request bodies and import files into events (spintrail.decode)."""

from __future__ import annotations

import copy
import json
import os
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spintrail.decode import (
    DecodeError,
    IncomingEvent,
    decode_body,
    iter_decode_file,
    storable,
    storable_text,
)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "echo"
NO_FIXTURES = f"echo fixtures folder {FIXTURES} is absent"


def fixture_files(pattern: str) -> list[Any]:
    """Fixture paths matching ``pattern``, or one skipped parameter when the folder is absent."""
    if not FIXTURES.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=NO_FIXTURES))]
    return [pytest.param(path, id=str(path.relative_to(FIXTURES))) for path in sorted(FIXTURES.glob(pattern))]


def make_event(event_type: str = "orca:stage:complete", **content: Any) -> dict[str, Any]:
    return {
        "details": {
            "source": "orca",
            "type": event_type,
            "created": "1718370095050",
            "application": "myapp",
            "requestHeaders": {},
        },
        "content": content or {"context": {"user": "alice@example.com", "region": "us-east-1"}},
        "eventId": "6f0c6a52-6c1e-4a0e-9a56-0f4b1c2d3e4f",
    }


def dumps(value: Any, **options: Any) -> bytes:
    return json.dumps(value, **options).encode("utf-8")


def flattened(event: dict[str, Any]) -> dict[str, Any]:
    """The event as echo sends it with ``flatten: true``: ``details`` and ``content`` as JSON strings."""
    flat = dict(event)
    flat["details"] = json.dumps(event["details"])
    if "content" in event:
        flat["content"] = json.dumps(event["content"])
    return flat


def file_events(body: bytes, chunk_size: int = 1 << 20) -> list[IncomingEvent]:
    handle, name = tempfile.mkstemp(suffix=".json")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(body)
        return list(iter_decode_file(name, chunk_size=chunk_size))
    finally:
        os.unlink(name)


def decode_everywhere(body: bytes) -> list[IncomingEvent]:
    """decode_body's result, checked to equal the streaming reader's at a large and a tiny chunk size."""
    events = decode_body(body)
    assert file_events(body) == events
    assert file_events(body, chunk_size=7) == events
    return events


def decode_error(body: bytes) -> DecodeError:
    with pytest.raises(DecodeError) as caught:
        decode_body(body)
    return caught.value


def file_error(body: bytes, chunk_size: int = 1 << 20) -> tuple[list[IncomingEvent], DecodeError]:
    """Events yielded before the error, and the error, when streaming ``body`` from a file."""
    handle, name = tempfile.mkstemp(suffix=".json")
    yielded: list[IncomingEvent] = []
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(body)
        with pytest.raises(DecodeError) as caught:
            for item in iter_decode_file(name, chunk_size=chunk_size):
                yielded.append(item)
        return yielded, caught.value
    finally:
        os.unlink(name)


# -- body shapes ---------------------------------------------------------------------------------------


def test_plain_event_keeps_the_whole_body_as_raw() -> None:
    event = make_event()
    body = b"\r\n\t " + dumps(event, indent=2) + b"\n\n"
    [got] = decode_everywhere(body)
    assert got.event == event
    assert got.raw == body
    assert got.instance is None


def test_old_echo_event_with_nulls_raw_content_payload_and_extra_keys_is_plain() -> None:
    event = {
        "details": {
            "source": "github",
            "type": "git",
            "created": "1518214003433",
            "organization": None,
            "project": None,
            "application": None,
            "_content_id": None,
            "attributes": None,
        },
        "content": None,
        "rawContent": '{"ref": "refs/heads/main"}',
        "payload": {"ref": "refs/heads/main", "event": {"details": {"type": "looks-like-an-event"}}},
        "insertedTime": 1427237764257,
    }
    [got] = decode_everywhere(dumps(event))
    assert got.event == event  # the webhook `payload` is part of the event, not a wrapper


def test_event_without_content_is_accepted_as_received() -> None:
    event = {"details": {"type": "manual"}, "eventId": "abc"}
    [got] = decode_everywhere(dumps(event))
    assert got.event == event
    assert "content" not in got.event


@pytest.mark.parametrize("field", ["payload", "spinnaker_event", "data"])
def test_wrapped_event_is_unwrapped_whatever_the_field_name(field: str) -> None:
    event = make_event()
    body = dumps({"eventName": "spinnaker_events", field: event})
    [got] = decode_everywhere(body)
    assert got.event == event
    assert got.raw == body


def test_flattened_details_and_content_are_parsed() -> None:
    event = make_event(context={"user": "bob", "note": "caf\u00e9"})
    [got] = decode_everywhere(dumps(flattened(event)))
    assert got.event == event
    assert isinstance(got.event["details"], dict)
    assert isinstance(got.event["content"], dict)


def test_flattened_details_alone_and_null_content_string() -> None:
    details_only = {"details": json.dumps({"type": "build", "source": "igor"}), "content": {"master": "ci"}}
    [got] = decode_everywhere(dumps(details_only))
    assert got.event == {"details": {"type": "build", "source": "igor"}, "content": {"master": "ci"}}
    # flatten with a null content: Jackson writes the string "null"
    null_content = {"details": {"type": "manual"}, "content": "null"}
    [got] = decode_everywhere(dumps(null_content))
    assert got.event == {"details": {"type": "manual"}, "content": None}


def test_wrapped_and_flattened_event() -> None:
    event = make_event()
    [got] = decode_everywhere(dumps({"eventName": "abc", "payload": flattened(event)}))
    assert got.event == event


def test_wrapped_value_that_is_a_json_string_of_the_event() -> None:
    event = make_event()
    for inner in (event, flattened(event)):
        body = dumps({"eventName": "abc", "payload": json.dumps(inner)})
        [got] = decode_everywhere(body)
        assert got.event == event
        assert got.raw == body


def test_splunk_template_with_instance() -> None:
    event = make_event()
    body = dumps({"event": event, "sourcetype": "spinnaker", "instance": " prod-us "}) + b" "
    [got] = decode_everywhere(body)
    assert got.event == event
    assert got.instance == "prod-us"
    assert got.raw == body


def test_template_instance_may_be_named_spinnaker_instance() -> None:
    [got] = decode_everywhere(dumps({"spinnaker_instance": "staging", "event": make_event()}))
    assert got.instance == "staging"


def test_plain_event_has_no_instance_and_blank_instance_is_none() -> None:
    [got] = decode_everywhere(dumps({"instance": "   ", "event": make_event()}))
    assert got.instance is None


def test_template_instance_that_is_not_a_string_is_rejected() -> None:
    error = decode_error(dumps({"instance": {"name": "prod"}, "event": make_event()}))
    assert "`instance`" in error.message and "an object" in error.message


def test_template_embedding_the_event_deep_or_in_a_list() -> None:
    event = make_event()
    nested = {"meta": {"env": "prod"}, "a": {"b": {"c": {"event": event}}}}  # event at depth 4
    [got] = decode_everywhere(dumps(nested))
    assert got.event == event
    listed = {"records": [{"data": event}], "count": 1}
    [got] = decode_everywhere(dumps(listed))
    assert got.event == event


def test_max_depth_bounds_the_template_search() -> None:
    event = make_event()
    too_deep = dumps({"a": {"b": {"c": {"d": {"event": event}}}}})  # depth 5
    assert "no echo event found" in decode_error(too_deep).message
    assert decode_body(too_deep, max_depth=5)[0].event == event
    wrapped = dumps({"eventName": "e", "payload": event})
    with pytest.raises(DecodeError, match="no echo event found"):
        decode_body(wrapped, max_depth=0)
    assert decode_body(dumps(event), max_depth=0)[0].event == event


def test_template_with_two_events_is_rejected() -> None:
    body = dumps({"first": make_event("orca:stage:starting"), "second": {"event": make_event()}})
    error = decode_error(body)
    assert "2 echo events in one object" in error.message
    assert "`first`" in error.message and "`second.event`" in error.message
    assert "exactly one" in error.message


def test_array_of_events_in_every_shape_keeps_each_element_as_raw() -> None:
    events = [make_event(f"orca:task:{n}") for n in range(5)]
    pieces = [
        dumps(events[0]),
        dumps({"eventName": "spinnaker_events", "payload": events[1]}),
        dumps(flattened(events[2])),
        dumps({"event": events[3], "instance": "eu"}),
        dumps({"eventName": "x", "payload": json.dumps(flattened(events[4]))}, indent=1),
    ]
    body = b" [\n  " + b" ,\r\n  ".join(pieces) + b"\n]\n"
    got = decode_everywhere(body)
    assert [item.event for item in got] == events
    assert [item.raw for item in got] == pieces
    assert [item.instance for item in got] == [None, None, None, "eu", None]


def test_single_element_array_raw_is_the_element() -> None:
    piece = dumps(make_event())
    [got] = decode_everywhere(b"[" + piece + b"]")
    assert got.raw == piece


@pytest.mark.parametrize("separator", [b"\n", b"\r\n", b"\n\n\t", b"", b" "])
def test_newline_delimited_and_concatenated_objects(separator: bytes) -> None:
    events = [make_event(f"orca:stage:{n}") for n in range(3)]
    pieces = [dumps(events[0]), dumps({"event": events[1]}), dumps(flattened(events[2]))]
    body = separator.join(pieces) + b"\n"
    got = decode_everywhere(body)
    assert [item.event for item in got] == events
    assert [item.raw for item in got] == pieces


def test_stream_of_arrays_and_objects() -> None:
    events = [make_event(f"build{n}") for n in range(3)]
    body = dumps([events[0], events[1]]) + b"\n" + dumps(events[2])
    got = decode_everywhere(body)
    assert [item.event for item in got] == events
    assert got[2].raw == dumps(events[2])


def test_splunk_export_lines_with_the_event_in_a_raw_string() -> None:
    events = [make_event("orca:pipeline:starting"), make_event("orca:pipeline:complete")]
    lines = [
        dumps({"preview": False, "offset": n, "result": {"_raw": json.dumps(event), "host": "splunk-1"}})
        for n, event in enumerate(events)
    ]
    got = decode_everywhere(b"\n".join(lines) + b"\n")
    assert [item.event for item in got] == events
    assert [item.raw for item in got] == lines


# -- raw bytes are exact --------------------------------------------------------------------------------


def test_raw_is_byte_exact_for_utf8_escapes_and_odd_whitespace() -> None:
    # texts[1] is written with ensure_ascii: the body holds \u00e9, a \ud83d\ude80 surrogate pair, \" etc.
    texts = ["caf\u00e9 \u65e5\u672c \U0001f680", 'caf\u00e9 \U0001f680 " \\ / \n', "\u2028\u0000"]
    pieces = [
        dumps(make_event(context={"note": texts[0]}), ensure_ascii=False),
        dumps(make_event(context={"note": texts[1]}), ensure_ascii=True),
        dumps(make_event(context={"note": texts[2]}), ensure_ascii=False, indent="\t"),
        # hand-written escapes: the raw keeps them escaped, the event holds the characters
        '{ "details" :\t{"type":"x\\u00e9"} ,\r\n "content": {"k": "\\ud83d\\ude80\u00e9"} }'.encode(),
    ]
    for body in (
        b"[\t" + b",\r\n".join(pieces) + b"\r\n]",
        b"\r\n".join(pieces),
        b"".join(pieces),
    ):
        got = decode_everywhere(body)
        assert [item.raw for item in got] == pieces
        position = 0
        for item in got:  # each raw is literally the next slice of the body
            start = body.index(item.raw, position)
            assert body[start : start + len(item.raw)] == item.raw
            position = start + len(item.raw)
        assert [item.event["content"]["context"]["note"] for item in got[:3]] == [
            texts[0],
            texts[1],
            texts[2].replace("\u0000", "\ufffd"),  # NUL cannot be stored: the event holds U+FFFD
        ]
        assert got[3].event == {"details": {"type": "x\u00e9"}, "content": {"k": "\U0001f680\u00e9"}}


def test_leading_byte_order_mark_is_skipped_but_kept_in_raw() -> None:
    piece = dumps(make_event(), ensure_ascii=False)
    single = "\ufeff".encode() + piece
    [got] = decode_everywhere(single)
    assert got.raw == single
    both = decode_everywhere("\ufeff".encode() + piece + b"\n" + piece)
    assert [item.raw for item in both] == [piece, piece]


# -- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"", b" ", b"\n\r\t \n"])
def test_empty_body_is_rejected(body: bytes) -> None:
    assert decode_error(body).message == "empty body: expected an echo event as JSON"
    assert file_error(body)[1].message == "empty file: expected an echo event as JSON"


def test_invalid_json_names_line_column_and_byte_offset() -> None:
    body = '{\n  "details": {"type": "\u00e9t\u00e9"},\n  "content": {"a": 1 "b": 2}\n}'.encode()
    error = decode_error(body)
    # line 3 is `  "content": {"a": 1 "b": 2}`; the bad `"` is its 22nd character
    assert error.line == 3
    assert "line 3, column 22" in error.message
    assert error.offset == body.index(b'"b"')
    assert f"byte offset {error.offset}" in error.message
    assert "Expecting ',' delimiter" in error.message
    assert file_error(body, chunk_size=5)[1].offset == error.offset


def test_invalid_json_in_a_multi_value_body_names_the_value() -> None:
    good = dumps(make_event())
    body = good + b"\n" + good + b"\n" + b'{"details": {"type": "x"}, }' + b"\n"
    error = decode_error(body)
    assert "top-level value #3" in error.message
    assert error.line == 3
    assert "Expecting property name" in error.message
    yielded, streamed = file_error(body, chunk_size=16)
    assert len(yielded) == 2  # the importer can report what came before the error
    assert streamed.line == 3 and streamed.offset == error.offset


def test_invalid_json_in_an_array_names_the_element() -> None:
    good = dumps(make_event())
    body = b"[" + good + b",\n" + good + b",\n" + b'{"details": tru}' + b"]"
    error = decode_error(body)
    assert "array element [2]" in error.message
    assert error.line == 3 and error.offset == body.index(b"tru}")


def test_not_utf8_names_the_byte_offset() -> None:
    body = '{"details": {"type": "caf\u00e9"}, "content": {"a": "'.encode() + b"\xff\xfe" + b'"}}'
    error = decode_error(body)
    assert error.offset == body.index(b"\xff")
    assert "not valid UTF-8" in error.message and f"byte offset {error.offset}" in error.message
    streamed = file_error(body, chunk_size=3)[1]
    assert streamed.offset == error.offset and "not valid UTF-8" in streamed.message


def test_file_truncated_inside_a_multibyte_character() -> None:
    body = dumps(make_event(context={"n": "\u00e9"}), ensure_ascii=False)
    cut = body[: body.index("\u00e9".encode()) + 1]
    assert "not valid UTF-8" in decode_error(cut).message
    assert file_error(cut, chunk_size=4)[1].offset == len(cut) - 1


@pytest.mark.parametrize(
    ("body", "kind"),
    [(b'"an event"', "string"), (b"42", "number"), (b"true", "boolean"), (b"null", "null")],
)
def test_top_level_value_that_is_not_an_object_or_array(body: bytes, kind: str) -> None:
    error = decode_error(body)
    assert f"found a JSON {kind}" in error.message
    assert "expected an object (one event) or an array" in error.message


def test_object_without_an_event_says_what_was_expected_and_found() -> None:
    error = decode_error(dumps({"eventName": "spinnaker_events", "body": {"type": "orca"}}))
    message = error.message
    assert message.startswith("no echo event found")
    assert "`details.type`" in message and '{"eventName": ..., "payload": <event>}' in message
    assert "flattened" in message and '{"event": <event>}' in message
    assert "found keys: eventName, body" in message


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-2.5E+400"])
def test_nan_infinity_and_overflowing_numbers_are_rejected(literal: bytes) -> None:
    body = b'{"details": {"type": "x"}, "content": {"v": ' + literal + b"}}"
    error = decode_error(body)
    assert f"contains {literal.decode()}, not a finite JSON number" in error.message
    flat = dumps({"details": {"type": "x"}, "content": '{"v": ' + literal.decode() + "}"})
    assert f"{literal.decode()} is not a finite JSON number" in decode_error(flat).message


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"details": 5, "content": {}}, "`details` is a number; expected an object with a string `type`"),
        ({"details": ["type"]}, "`details` is an array"),
        ({"details": {"source": "orca"}}, "`details` has no `type` (its keys: source)"),
        ({"details": {"type": 7}}, "`details.type` is a number; expected a non-empty string"),
        ({"details": {"type": "  "}}, "`details.type` is blank"),
        ({"details": "{not json"}, "`details` is a string but not valid JSON"),
        ({"details": "[1, 2]"}, "`details` is a JSON string of an array"),
    ],
)
def test_unusable_details_are_explained(event: dict[str, Any], expected: str) -> None:
    error = decode_error(dumps(event))
    assert error.message.startswith("no echo event found")
    assert expected in error.message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            [1, 2],
            "invalid `content` at line 1, column 1 (byte offset 0): `content` of the 'x' event is an array",
        ),
        (3, "`content` of the 'x' event is a number; expected an object, null or a JSON string of an object"),
        ("{broken", "invalid flattened `content`"),
        ('"text"', "`content` of the 'x' event is a JSON string of a string; expected a JSON object"),
    ],
)
def test_unusable_content_is_rejected(content: Any, expected: str) -> None:
    error = decode_error(dumps({"details": {"type": "x"}, "content": content}))
    assert expected in error.message


def test_unusable_content_inside_a_wrapper_names_its_path() -> None:
    error = decode_error(dumps({"eventName": "e", "payload": {"details": {"type": "x"}, "content": True}}))
    assert "`payload.content` of the 'x' event is a boolean" in error.message


def test_near_miss_inside_a_template_is_explained() -> None:
    error = decode_error(dumps({"event": {"details": {"source": "orca"}, "content": {}}}))
    assert "found keys: event" in error.message
    assert "`event.details` has no `type` (its keys: source)" in error.message


def test_wrapped_string_that_is_not_json_is_mentioned() -> None:
    error = decode_error(dumps({"eventName": "e", "payload": '{"details": {"type": "x"'}))
    assert "`payload` is a string starting with '{' but not valid JSON" in error.message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"[]", "empty array at line 1, column 2 (byte offset 1): expected at least one echo event"),
        (b"[ \n ]", "empty array"),
        (b'[{"details": {"type": "x"}}, 1]', "not an echo event in array element [1]"),
        (b'[{"details": {"type": "x"}}, ]', "trailing comma"),
        (b'[{"details": {"type": "x"}}', "the array is not closed"),
        (b'[{"details": {"type": "x"}} {"details": {"type": "x"}}]', "expected ',' or ']'"),
        (b'[{"details": {"type": "x"}}, {"a": 1}]', "no echo event found in array element [1]"),
    ],
)
def test_array_errors(body: bytes, expected: str) -> None:
    assert expected in decode_error(body).message
    assert expected.split(" at line")[0] in file_error(body, chunk_size=3)[1].message


def test_body_is_all_or_nothing() -> None:
    good = dumps(make_event())
    body = good + b"\n" + good + b"\n" + b"[]"
    with pytest.raises(DecodeError, match="empty array of top-level value #3"):
        decode_body(body)


def test_too_deep_nesting_and_huge_numbers_are_decode_errors() -> None:
    assert "nested too deeply" in decode_error(b"[" * 100_000).message
    assert "nested too deeply" in decode_error(b'{"a":' * 100_000).message
    huge = b'{"details": {"type": "x"}, "content": {"n": ' + b"9" * 5000 + b"}}"
    assert decode_error(huge).offset == 0


def test_bad_arguments() -> None:
    with pytest.raises(TypeError):
        decode_body('{"details": {"type": "x"}}')  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_depth"):
        decode_body(b"{}", max_depth=-1)
    with pytest.raises(ValueError, match="chunk_size"):
        iter_decode_file("unused.json", chunk_size=0)


def test_bytearray_and_memoryview_bodies() -> None:
    body = dumps(make_event())
    assert decode_body(bytearray(body)) == decode_body(memoryview(body)) == decode_body(body)


# -- fixtures -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", fixture_files("*.json") + fixture_files("synthetic/*.json"))
def test_fixture_decodes_to_its_events(path: Path) -> None:
    body = path.read_bytes()
    events = decode_body(body)
    assert list(iter_decode_file(path)) == events
    parsed = json.loads(body)
    if isinstance(parsed, list):
        assert len(events) == len(parsed)
        assert [item.event for item in events] == parsed
        assert [json.loads(item.raw) for item in events] == parsed
        return
    [item] = events
    assert item.raw == body
    if path.name.startswith("MODE_wrap-true-template"):
        assert item.event == parsed["event"]
    elif path.name.startswith("MODE_wrap-true"):
        assert item.event == parsed["payload"]
    else:
        assert item.event == parsed
    assert isinstance(item.event["details"]["type"], str)


def test_igor_array_of_665_events_through_both_functions() -> None:
    path = FIXTURES / "igor_build__spinnaker-echo__events.json"
    if not path.is_file():
        pytest.skip(NO_FIXTURES)
    body = path.read_bytes()
    parsed = json.loads(body)
    from_body = decode_body(body)
    streamed = list(iter_decode_file(path, chunk_size=4096))  # the largest element is ~588 KB
    assert len(from_body) == len(streamed) == 665
    assert streamed == from_body
    assert [item.event for item in streamed] == parsed
    assert all(item.event["details"]["type"] == "build" for item in streamed)
    position = 0
    for item in streamed:  # raws are the elements' exact, consecutive slices of the file
        start = body.index(item.raw, position)
        assert body[position:start].strip(b" \t\r\n[,") == b""
        position = start + len(item.raw)
    assert body[position:].strip() == b"]"
    assert max(len(item.raw) for item in streamed) > 500_000


@pytest.mark.parametrize("path", fixture_files("*.verbatim.txt"))
def test_verbatim_doc_samples_are_not_json_and_fail_with_a_position(path: Path) -> None:
    body = path.read_bytes()
    error = decode_error(body)
    assert error.offset is not None and 0 < error.offset <= len(body)
    assert error.line is not None and f"line {error.line}, column" in error.message
    assert f"byte offset {error.offset}" in error.message
    streamed = file_error(body, chunk_size=64)[1]
    assert (streamed.offset, streamed.line) == (error.offset, error.line)
    if b'"execution": ...' in body:
        assert error.offset == body.index(b"...")


# -- streaming ------------------------------------------------------------------------------------------


def test_file_errors_after_many_chunks_name_line_and_byte_offset(tmp_path: Path) -> None:
    line = dumps(make_event(context={"note": "\u00e9" * 50}), ensure_ascii=False) + b"\n"
    body = line * 300 + b'{"details": {"type": "x"}} garbage\n' + line
    path = tmp_path / "export.ndjson"
    path.write_bytes(body)
    yielded: list[IncomingEvent] = []
    with pytest.raises(DecodeError) as caught:
        for item in iter_decode_file(path, chunk_size=1000):
            yielded.append(item)
    assert len(yielded) == 301
    assert caught.value.line == 301  # 300 good lines, then `{...} garbage`
    assert caught.value.offset == body.index(b"garbage")
    assert "top-level value #302 at line 301, column 28" in caught.value.message


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX named pipes")
def test_file_events_are_yielded_before_the_rest_of_the_input_arrives(tmp_path: Path) -> None:
    pipe = tmp_path / "events.pipe"
    os.mkfifo(pipe)
    first = dumps(make_event("orca:stage:starting")) + b"\n"
    second = dumps(make_event("orca:stage:complete")) + b"\n"
    first_seen = threading.Event()
    waited: list[bool] = []

    def write() -> None:
        with open(pipe, "wb") as out:
            out.write(first + second[:10])
            out.flush()
            waited.append(first_seen.wait(timeout=10))
            out.write(second[10:])

    writer = threading.Thread(target=write)
    writer.start()
    try:
        events = iter_decode_file(pipe)
        head = next(events)
        first_seen.set()
        rest = list(events)
    finally:
        first_seen.set()
        writer.join(timeout=15)
    assert waited == [True], "the first event was only yielded after the writer gave up waiting"
    assert head.raw == first.rstrip()
    assert [item.event["details"]["type"] for item in rest] == ["orca:stage:complete"]


def test_file_reading_memory_stays_bounded(tmp_path: Path) -> None:
    line = dumps(make_event(context={"manifest": "x" * 900})) + b"\n"
    path = tmp_path / "big.ndjson"
    path.write_bytes(line * 4000)  # ~4 MB
    count = 0
    tracemalloc.start()
    try:
        for _ in iter_decode_file(path, chunk_size=64 * 1024):
            count += 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 4000
    assert peak < 1_000_000, f"peak {peak} bytes: the file was not streamed"


def test_many_values_decode_in_linear_time(tmp_path: Path) -> None:
    line = dumps(make_event(context={"note": "\u00fc\u00f1\u00ef " * 150}), ensure_ascii=False) + b"\n"
    body = line * 10_000  # ~7 MB of non-ASCII NDJSON
    started = time.perf_counter()
    events = decode_body(body)
    path = tmp_path / "many.ndjson"
    path.write_bytes(body)
    assert sum(1 for _ in iter_decode_file(path, chunk_size=64 * 1024)) == 10_000
    elapsed = time.perf_counter() - started
    assert len(events) == 10_000 and events[-1].raw == line.rstrip()
    assert elapsed < 5, f"{elapsed:.1f}s for 10,000 values: offsets are being recomputed"


# -- properties -----------------------------------------------------------------------------------------

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)
WHITESPACE = st.text(alphabet=" \t\r\n", max_size=3)
TEMPLATE_KEYS = st.text(max_size=10).filter(
    lambda key: key not in {"event", "instance", "spinnaker_instance"}
)


@st.composite
def echo_events(draw: st.DrawFn) -> dict[str, Any]:
    details: dict[str, Any] = {"type": draw(st.text(min_size=1, max_size=20).filter(str.strip))}
    if draw(st.booleans()):
        details["source"] = draw(st.sampled_from(["orca", "igor", "gate", "github"]))
    details["created"] = str(draw(st.integers(min_value=0, max_value=2**45)))
    if draw(st.booleans()):
        details["requestHeaders"] = draw(st.dictionaries(st.text(max_size=8), st.lists(st.text(max_size=8))))
    event: dict[str, Any] = {"details": details}
    content = draw(st.sampled_from(["object", "null", "absent"]))
    if content == "object":
        event["content"] = draw(st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4))
    elif content == "null":
        event["content"] = None
    if draw(st.booleans()):
        event["eventId"] = str(draw(st.uuids()))
    if draw(st.booleans()):
        event["rawContent"] = draw(st.text(max_size=20))
    if draw(st.booleans()):
        event["payload"] = draw(st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=3))
    return event


@st.composite
def shaped_events(draw: st.DrawFn) -> tuple[dict[str, Any], bytes, str | None]:
    """One event serialized in a random echo shape: (event, bytes, instance expected)."""
    event = draw(echo_events())
    options = {"ensure_ascii": draw(st.booleans()), "indent": draw(st.sampled_from([None, 0, 2, "\t"]))}
    shape = draw(
        st.sampled_from(["plain", "wrapped", "flattened", "wrapped+flattened", "wrapped-string", "template"])
    )
    instance = None
    value: Any = copy.deepcopy(event)
    if shape in ("flattened", "wrapped+flattened"):
        value = flattened(value)
    if shape in ("wrapped", "wrapped+flattened"):
        field = draw(TEMPLATE_KEYS.filter(lambda key: key != "eventName"))
        value = {"eventName": draw(st.text(max_size=10)), field: value}
    elif shape == "wrapped-string":
        inner = flattened(value) if draw(st.booleans()) else value
        value = {"eventName": "abc", "payload": json.dumps(inner, ensure_ascii=draw(st.booleans()))}
    elif shape == "template":
        value = {**draw(st.dictionaries(TEMPLATE_KEYS, SCALARS, max_size=3)), "event": value}
        for _ in range(draw(st.integers(min_value=0, max_value=3))):
            value = {draw(TEMPLATE_KEYS): value}
        name = draw(st.none() | st.text(min_size=1, max_size=10).filter(str.strip))
        if name is not None:
            value[draw(st.sampled_from(["instance", "spinnaker_instance"]))] = name
            instance = name.strip()
    return event, dumps(value, **options), instance


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, list[IncomingEvent]]:
    """A body in a random multi-event layout and the events (with exact raws) it must decode to."""
    layout = draw(st.sampled_from(["single", "array", "ndjson", "concatenated"]))
    count = 1 if layout == "single" else draw(st.integers(min_value=1, max_value=4))
    items = [draw(shaped_events()) for _ in range(count)]
    pieces = [piece for _, piece, _ in items]
    ws = [draw(WHITESPACE).encode() for _ in range(2 * count + 2)]
    bom = "\ufeff".encode() if draw(st.booleans()) else b""
    if layout == "array":
        inner = b",".join(ws[2 * n] + piece + ws[2 * n + 1] for n, piece in enumerate(pieces))
        body = bom + ws[-2] + b"[" + inner + b"]" + ws[-1]
    elif layout == "ndjson":
        body = bom + b"\n".join(ws[n] + piece for n, piece in enumerate(pieces)) + b"\n"
    else:
        body = bom + b"".join(ws[n] + piece for n, piece in enumerate(pieces)) + ws[-1]
    if layout != "array" and count == 1:
        pieces = [body]  # a single top-level value: the whole body is the raw
    expected = [
        # Lone surrogates and NUL, which no database stores, arrive as U+FFFD.
        IncomingEvent(storable(event), raw, instance and storable_text(instance))
        for (event, _, instance), raw in zip(items, pieces, strict=True)
    ]
    return body, expected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=bodies(), chunk_size=st.integers(min_value=1, max_value=64))
def test_property_any_shape_and_layout_decodes_to_the_same_events(
    case: tuple[bytes, list[IncomingEvent]], chunk_size: int
) -> None:
    body, expected = case
    assert decode_body(body) == expected
    assert file_events(body, chunk_size=chunk_size) == expected


TOKENS = st.sampled_from(
    [
        b"{",
        b"}",
        b"[",
        b"]",
        b":",
        b",",
        b" ",
        b"\n",
        b'"details"',
        b'"type"',
        b'"content"',
        b'"x"',
        b'"event"',
        b'"{\\"type\\": \\"y\\"}"',
        b"1",
        b"-2.5e3",
        b"true",
        b"null",
        b"NaN",
        b'"\xc3\xa9"',
        b'"\\u00e9"',
        b"\xff",
        b'"',
        b"\\",
        b"\xef\xbb\xbf",
    ]
)


def check_never_crashes(body: bytes, chunk_size: int) -> None:
    try:
        events = decode_body(body)
    except DecodeError as error:
        assert error.message
        with pytest.raises(DecodeError):
            file_events(body, chunk_size=chunk_size)
        return
    assert events and all(isinstance(item.raw, bytes) and item.raw in body for item in events)
    assert file_events(body, chunk_size=chunk_size) == events


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=200), chunk_size=st.integers(min_value=1, max_value=32))
def test_property_arbitrary_bytes_give_events_or_decode_error(body: bytes, chunk_size: int) -> None:
    check_never_crashes(body, chunk_size)


@settings(max_examples=300, deadline=None)
@given(tokens=st.lists(TOKENS, max_size=40), chunk_size=st.integers(min_value=1, max_value=32))
def test_property_json_like_token_soup_gives_events_or_decode_error(
    tokens: list[bytes], chunk_size: int
) -> None:
    check_never_crashes(b"".join(tokens), chunk_size)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty_body"),
        (b" \n", "empty_body"),
        (b"{", "invalid_json"),
        (b"\xff", "invalid_json"),
        (b'{"a": 1}', "no_event"),
        (b"[]", "no_event"),
        (b"7", "no_event"),
    ],
)
def test_error_reason_names_the_kind_of_problem(body: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_body(body)
    assert info.value.reason == reason


def test_strings_no_database_stores_become_replacement_characters() -> None:
    """Lone surrogates and NUL (escapes only: raw text cannot hold them) in values and keys, at any depth
    and in flattened strings; surrogate pairs stay the character they spell; the raw bytes stay exact."""
    body = (
        b'{"details":"{\\"type\\":\\"t\\\\udfff\\"}","content":{"a\\u0000":[["\\ud800"]],'
        b'"pair":"\\ud83d\\ude80","deep":' + b'{"x":' * 300 + b'"\\udc00"' + b"}" * 300 + b"}}"
    )
    for item in decode_everywhere(body):
        assert item.raw == body
        assert item.event["details"]["type"] == "t\ufffd"
        content = item.event["content"]
        assert content["a\ufffd"] == [["\ufffd"]] and content["pair"] == "\U0001f680"
        node = content["deep"]
        for _ in range(300):
            node = node["x"]
        assert node == "\ufffd"
