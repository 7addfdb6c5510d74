"""Decode the envelope: turn one request body (or one import file) into the echo events it holds.

Accepted shapes, detected from the bytes alone: the plain echo event; wrapped
``{"eventName": ..., "<field>": <event>}``; flattened (``details``/``content`` sent as JSON strings, also
inside a wrapper); any template embedding exactly one event (``{"event": <event>}`` for Splunk HEC); a
JSON array of those; newline-delimited or concatenated JSON values of those. Every event keeps the exact
bytes it arrived as.
"""

from __future__ import annotations

import codecs
import io
import json
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

__all__ = [
    "EVENT_OVERHEAD",
    "DecodeError",
    "IncomingEvent",
    "TooMuch",
    "decode_body",
    "event_cost",
    "iter_decode_file",
    "storable",
    "storable_text",
]


@dataclass(slots=True)
class IncomingEvent:
    """One echo event found in a body.

    ``event`` is the echo ``Event`` object with ``details`` and ``content`` as objects (flattened JSON
    strings parsed); ``content`` is left absent or ``null`` when it arrived so. ``raw`` is the event's
    bytes exactly as received: the whole body when the body is a single JSON value, otherwise the slice
    of its own top-level value (or array element). ``instance`` is the Spinnaker instance named by a
    template's top-level ``instance`` / ``spinnaker_instance`` string field.
    """

    event: dict[str, Any]
    raw: bytes
    instance: str | None = None


class DecodeError(ValueError):
    """The bytes hold no usable echo event; ``message`` says what is wrong and where.

    ``offset`` (byte offset into the body or file) and ``line`` (1-based) are set when a position is known.
    """

    def __init__(self, message: str, *, offset: int | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.line = line

    @property
    def reason(self) -> str:
        """A short machine-readable kind: ``empty_body``, ``invalid_json`` or ``no_event``."""
        if self.message.startswith(("empty body", "empty file")):
            return "empty_body"
        if self.message.startswith("invalid JSON") or "not valid UTF-8" in self.message:
            return "invalid_json"
        return "no_event"


class TooMuch(DecodeError):
    """The body holds more events, or events that take more memory, than one request may bring."""

    @property
    def reason(self) -> str:
        return "too_many_events"


#: Bytes of memory one event takes beyond its raw bytes once decoded, normalized and prepared (measured
#: for small events; see ``event_cost``).
EVENT_OVERHEAD = 2048


def event_cost(raw_size: int) -> int:
    """What one event of ``raw_size`` bytes is counted as, in memory bytes, until it is committed."""
    return EVENT_OVERHEAD + 2 * raw_size


_WS = re.compile(r"[ \t\n\r]*")
_OBJECT_TEXT = re.compile(r"[ \t\n\r]*\{")
_BOM = "\ufeff"
#: A JSON error this close to the end of the buffered text may only mean the chunk cut the value short.
_TRUNCATION_SLACK = 16
_INSTANCE_KEYS = ("instance", "spinnaker_instance")
_MAX_NOTES = 3
_EXPECTED = (
    'expected an object with `details.type`: plain `{"details": {"type": ...}, "content": {...}}`, '
    'wrapped `{"eventName": ..., "payload": <event>}`, flattened (`details`/`content` as JSON strings) '
    'or templated `{"event": <event>}`'
)


class _NonFinite(Exception):
    """NaN, Infinity or a number too large for a float: Python's json accepts them, JSON does not."""

    def __init__(self, literal: str) -> None:
        super().__init__(literal)
        self.literal = literal


def _reject_constant(literal: str) -> Any:
    raise _NonFinite(literal)


def _finite_float(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):
        raise _NonFinite(literal)
    return value


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


class _Problem(Exception):
    """Something wrong inside one parsed value, reported before its position is attached."""

    def __init__(self, headline: str, detail: str) -> None:
        super().__init__(f"{headline}: {detail}")
        self.headline = headline
        self.detail = detail


class _BadText(Exception):
    """A string that should hold JSON does not."""


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _a(value: Any) -> str:
    name = _type_name(value)
    return f"an {name}" if name[0] in "ao" else f"a {name}"


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


#: A JSON escape that decodes to a character no database stores as given: a surrogate (JSON joins valid
#: pairs, so one that remains is alone) or NUL. Raw text cannot hold them: it is strict UTF-8, and JSON
#: forbids raw control characters in strings.
_UNSTORABLE_ESCAPE = re.compile(r"\\u(?:[dD][89a-fA-F][0-9a-fA-F]{2}|0000)")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def storable_text(text: str) -> str:
    """``text`` with each lone surrogate and NUL replaced by U+FFFD (they cannot be encoded or stored)."""
    return _UNSTORABLE.sub(REPLACEMENT, text) if _UNSTORABLE.search(text) else text


def storable(value: Any) -> Any:
    """``value`` (parsed JSON) with every string and key made :func:`storable_text`, changed in place.

    Iterative, so a value nested as deeply as the parser allows is walked without recursion.
    """
    if isinstance(value, str):
        return storable_text(value)
    stack: list[Any] = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if any(_UNSTORABLE.search(key) for key in node):
                items = list(node.items())
                node.clear()
                node.update((storable_text(key), child) for key, child in items)
            for key, child in node.items():
                if isinstance(child, str):
                    if _UNSTORABLE.search(child):
                        node[key] = storable_text(child)
                elif isinstance(child, dict | list):
                    stack.append(child)
        elif isinstance(node, list):
            for index, child in enumerate(node):
                if isinstance(child, str):
                    if _UNSTORABLE.search(child):
                        node[index] = storable_text(child)
                elif isinstance(child, dict | list):
                    stack.append(child)
    return value


def _parse_text(text: str) -> Any:
    """Parse a JSON document held in a string (a flattened field or a wrapped JSON string)."""
    try:
        value = _DECODER.decode(text)
        return storable(value) if _UNSTORABLE_ESCAPE.search(text) else value
    except json.JSONDecodeError as exc:
        raise _BadText(f"{exc.msg} at line {exc.lineno}, column {exc.colno} of the string") from None
    except _NonFinite as exc:
        raise _BadText(f"{_short(exc.literal)} is not a finite JSON number") from None
    except RecursionError:
        raise _BadText("nested too deeply") from None
    except ValueError as exc:
        raise _BadText(str(exc)) from None


def _as_event(obj: dict[str, Any], prefix: str) -> tuple[dict[str, Any] | None, str | None]:
    """Return ``(obj normalized, None)`` when ``obj`` is an echo event, else ``(None, why not or None)``.

    Flattened ``details``/``content`` strings are replaced by the parsed objects in place. A definite event
    (``details.type`` present) with unusable ``content`` raises ``_Problem``.
    """
    if "details" not in obj:
        return None, None
    label = f"`{prefix}details`"
    details = obj["details"]
    if isinstance(details, str):
        try:
            details = _parse_text(details)
        except _BadText as exc:
            return None, f"{label} is a string but not valid JSON ({exc})"
        if not isinstance(details, dict):
            return None, f"{label} is a JSON string of {_a(details)}; expected an object with a string `type`"
        flattened = True
    elif isinstance(details, dict):
        flattened = False
    else:
        return None, f"{label} is {_a(details)}; expected an object with a string `type`"
    event_type = details.get("type")
    if not isinstance(event_type, str) or not event_type.strip():
        if "type" not in details:
            keys = ", ".join(_short(k) for k in islice(details, 12)) or "none"
            return None, f"{label} has no `type` (its keys: {keys})"
        got = "blank" if isinstance(event_type, str) else _a(event_type)
        return None, f"`{prefix}details.type` is {got}; expected a non-empty string"
    if flattened:
        obj["details"] = details
    if "content" in obj:
        content = obj["content"]
        where = f"`{prefix}content` of the {_short(event_type)!r} event"
        if isinstance(content, str):
            try:
                content = _parse_text(content)
            except _BadText as exc:
                raise _Problem(
                    "invalid flattened `content`",
                    f"{where} is a string but not valid JSON ({exc}); expected a JSON object",
                ) from None
            if content is not None and not isinstance(content, dict):
                raise _Problem(
                    "invalid flattened `content`",
                    f"{where} is a JSON string of {_a(content)}; expected a JSON object",
                )
            obj["content"] = content
        elif content is not None and not isinstance(content, dict):
            raise _Problem(
                "invalid `content`",
                f"{where} is {_a(content)}; expected an object, null or a JSON string of an object",
            )
    return obj, None


def _short(key: str) -> str:
    return key if len(key) <= 40 else key[:37] + "..."


def _search(
    node: dict[str, Any] | list[Any],
    path: str,
    depth: int,
    max_depth: int,
    found: list[tuple[str, dict[str, Any]]],
    notes: list[str],
) -> None:
    """Collect the echo events embedded in a template ``node`` whose children sit at ``depth``."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, child in items:
        child_path = f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else key)
        if isinstance(child, str):
            if not _OBJECT_TEXT.match(child):
                continue
            try:
                child = _parse_text(child)
            except _BadText as exc:
                if len(notes) < _MAX_NOTES:
                    notes.append(f"`{child_path}` is a string starting with '{{' but not valid JSON ({exc})")
                continue
        if isinstance(child, dict):
            event, note = _as_event(child, f"{child_path}.")
            if event is not None:
                found.append((child_path, event))
                continue
            if note and len(notes) < _MAX_NOTES:
                notes.append(note)
            if depth < max_depth:
                _search(child, child_path, depth + 1, max_depth, found, notes)
        elif isinstance(child, list) and depth < max_depth:
            _search(child, child_path, depth + 1, max_depth, found, notes)


def _instance(template: dict[str, Any]) -> str | None:
    for key in _INSTANCE_KEYS:
        value = template.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise _Problem(
                f"invalid template field `{key}`",
                f"it is {_a(value)}; expected a string naming the Spinnaker instance",
            )
        if value.strip():
            return value.strip()
    return None


def _extract(value: dict[str, Any], max_depth: int) -> tuple[dict[str, Any], str | None]:
    """Find the one echo event in a top-level object: the object itself or the one its template embeds."""
    event, note = _as_event(value, "")
    if event is not None:
        return event, None
    found: list[tuple[str, dict[str, Any]]] = []
    notes = [note] if note else []
    if max_depth > 0:
        _search(value, "", 1, max_depth, found, notes)
    if len(found) == 1:
        return found[0][1], _instance(value)
    if found:
        paths = ", ".join(f"`{path}`" for path, _ in found[:3]) + (", ..." if len(found) > 3 else "")
        raise _Problem(
            f"{len(found)} echo events in one object",
            f"found at {paths}; a template must embed exactly one event "
            "(send several events as a JSON array or one JSON object per line)",
        )
    if value:
        keys = ", ".join(_short(k) for k in islice(value, 12))
        if len(value) > 12:
            keys += f", ... ({len(value)} keys)"
        detail = f"{_EXPECTED}; found keys: {keys}"
    else:
        detail = f"{_EXPECTED}; found an empty object"
    if notes:
        detail += "; " + "; ".join(notes[:_MAX_NOTES])
    raise _Problem("no echo event found", detail)


class _Scanner:
    """Walks the top-level JSON values of a text that is either complete or refilled from a file."""

    def __init__(
        self,
        text: str,
        *,
        fill: Callable[[int], str] | None,
        whole: bytes | None,
        max_depth: int,
        chunk_size: int,
        what: str,
    ) -> None:
        self.text = text
        self.pos = 0
        self.eof = fill is None
        self._fill = fill
        self._whole = whole
        self._max_depth = max_depth
        self._chunk_size = chunk_size
        self._what = what
        # While pinned nothing is dropped, so a single-value input can be returned whole as its raw bytes.
        self._pinned = True
        self._bytes_before = 0
        self._lines_before = 0
        self._col_before = 0

    # -- buffer -----------------------------------------------------------------------------------------

    def _more(self, keep: int) -> bool:
        """Read more input, dropping the text before index ``keep``; False when already at end of input."""
        if self.eof or self._fill is None:
            return False
        drop = 0 if self._pinned else keep
        if drop:
            text = self.text
            self._bytes_before += len(text[:drop].encode("utf-8")) if not text.isascii() else drop
            newlines = text.count("\n", 0, drop)
            if newlines:
                self._lines_before += newlines
                self._col_before = drop - text.rfind("\n", 0, drop) - 1
            else:
                self._col_before += drop
        chunk = self._fill(max(self._chunk_size, len(self.text) - drop))
        if not chunk:
            self.eof = True
        self.text = self.text[drop:] + chunk
        self.pos -= drop
        return True

    def _grow(self) -> None:
        """Read until the partial value at ``pos`` has doubled (or input ends): re-parsing stays linear."""
        goal = 2 * (len(self.text) - self.pos) + 1
        while len(self.text) - self.pos < goal and self._more(self.pos):
            pass

    def _skip_ws(self) -> bool:
        """Move past whitespace; False at end of input."""
        while True:
            self.pos = _WS.match(self.text, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.text):
                return True
            if not self._more(self.pos):
                return False

    def _error(self, headline: str, index: int, detail: str | None = None) -> DecodeError:
        text = self.text
        offset = self._bytes_before + _utf8_len(text[:index])
        line = self._lines_before + text.count("\n", 0, index) + 1
        last = text.rfind("\n", 0, index)
        column = index - last if last >= 0 else self._col_before + index + 1
        message = f"{headline} at line {line}, column {column} (byte offset {offset})"
        if detail:
            message += f": {detail}"
        return DecodeError(message, offset=offset, line=line)

    def _value(self, where: str) -> tuple[Any, int, int]:
        """Parse the JSON value at ``pos``, reading more input while the buffer cuts it short."""
        while True:
            start = self.pos
            try:
                value, end = _DECODER.raw_decode(self.text, start)
            except json.JSONDecodeError as exc:
                if not self.eof and (
                    exc.pos >= len(self.text) - _TRUNCATION_SLACK or exc.msg.startswith("Unterminated string")
                ):
                    self._grow()
                    continue
                detail = exc.msg[:-3] + " here" if exc.msg.endswith(" at") else exc.msg
                raise self._error(f"invalid JSON{where}", exc.pos, detail) from None
            except _NonFinite as exc:
                raise self._error(
                    f"invalid JSON{where}",
                    start,
                    f"the value starting here contains {_short(exc.literal)}, not a finite JSON number",
                ) from None
            except RecursionError:
                raise self._error(
                    f"invalid JSON{where}", start, "the value starting here is nested too deeply"
                ) from None
            except ValueError as exc:
                raise self._error(f"invalid JSON{where}", start, str(exc)) from None
            if _UNSTORABLE_ESCAPE.search(self.text, start, end):
                value = storable(value)
            self.pos = end
            return value, start, end

    def _event(self, value: dict[str, Any], where: str, start: int) -> tuple[dict[str, Any], str | None]:
        try:
            return _extract(value, self._max_depth)
        except _Problem as exc:
            raise self._error(f"{exc.headline}{where}", start, exc.detail) from None
        except RecursionError:
            raise self._error(
                f"invalid JSON{where}", start, "a JSON string inside is nested too deeply"
            ) from None

    def _raw(self, start: int, end: int) -> bytes:
        return self.text[start:end].encode("utf-8")

    # -- grammar ----------------------------------------------------------------------------------------

    def events(self) -> Iterator[IncomingEvent]:
        if not self.text and not self.eof:
            self._more(0)
        if self.text.startswith(_BOM):
            self.pos = 1
        if not self._skip_ws():
            raise DecodeError(f"empty {self._what}: expected an echo event as JSON")
        number = 0
        while True:
            number += 1
            of_value = f"top-level value #{number}" if number > 1 else ""
            where = f" in {of_value}" if of_value else ""
            if self.text[self.pos] == "[":
                self._pinned = False
                yield from self._array(of_value)
            else:
                value, start, end = self._value(where)
                if not isinstance(value, dict):
                    raise self._error(
                        f"not an echo event{where}",
                        start,
                        f"found a JSON {_type_name(value)}; expected an object (one event) or an array",
                    )
                event, instance = self._event(value, where, start)
                if self._pinned:
                    if not self._skip_ws():
                        whole = self._whole if self._whole is not None else self.text.encode("utf-8")
                        yield IncomingEvent(event, whole, instance)
                        return
                    self._pinned = False
                yield IncomingEvent(event, self._raw(start, end), instance)
            if not self._skip_ws():
                return

    def _array(self, of_value: str) -> Iterator[IncomingEvent]:
        of = f" of {of_value}" if of_value else ""
        self.pos += 1
        index = 0
        while True:
            where = f" in array element [{index}]{of}"
            if not self._skip_ws():
                raise self._error(
                    f"unexpected end of {self._what}{where}",
                    self.pos,
                    "the array is not closed (expected a value)",
                )
            if self.text[self.pos] == "]":
                if index == 0:
                    raise self._error(f"empty array{of}", self.pos, "expected at least one echo event")
                raise self._error(
                    f"invalid JSON{where}", self.pos, "expected a value after ',' (trailing comma)"
                )
            value, start, end = self._value(where)
            if not isinstance(value, dict):
                raise self._error(
                    f"not an echo event{where}",
                    start,
                    f"found a JSON {_type_name(value)}; expected an object holding an echo event",
                )
            event, instance = self._event(value, where, start)
            yield IncomingEvent(event, self._raw(start, end), instance)
            after = f" after array element [{index}]{of}"
            index += 1
            if not self._skip_ws():
                raise self._error(
                    f"unexpected end of {self._what}{after}",
                    self.pos,
                    "the array is not closed (expected ',' or ']')",
                )
            delimiter = self.text[self.pos]
            if delimiter == "]":
                self.pos += 1
                return
            if delimiter != ",":
                raise self._error(f"invalid JSON{after}", self.pos, "expected ',' or ']'")
            self.pos += 1


class _Utf8Chunks:
    """Reads a binary file as text in chunks, naming the byte offset of any invalid UTF-8."""

    def __init__(self, handle: io.BufferedReader) -> None:
        self._handle = handle
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._fed = 0

    def __call__(self, size: int) -> str:
        while True:
            data = self._handle.read1(size)  # what is there now: a pipe yields events as they arrive
            pending = len(self._decoder.getstate()[0])
            try:
                text = self._decoder.decode(data, final=not data)
            except UnicodeDecodeError as exc:
                offset = self._fed - pending + exc.start
                bad = exc.object[exc.start]
                raise DecodeError(
                    f"file is not valid UTF-8 at byte offset {offset}: {exc.reason} (byte 0x{bad:02x})",
                    offset=offset,
                ) from None
            self._fed += len(data)
            if text or not data:
                return text


def decode_body(
    body: bytes,
    *,
    max_depth: int = 4,
    max_events: int | None = None,
    max_cost: int | None = None,
    limits: str = "",
) -> list[IncomingEvent]:
    """Return every echo event in one request body, or raise ``DecodeError`` (then nothing is returned).

    ``max_depth`` bounds how deep below the top-level object a template may embed its event. Beyond
    ``max_events`` events, or once the events' ``event_cost`` adds up to more than ``max_cost``, decoding
    stops with ``TooMuch`` (whose message names ``limits``, the settings behind the bounds), so a body of
    countless tiny events never becomes countless objects in memory.
    """
    if not isinstance(body, bytes | bytearray | memoryview):
        raise TypeError(f"body must be bytes, not {type(body).__name__}")
    if max_depth < 0:
        raise ValueError("max_depth must be >= 0")
    data = bytes(body)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DecodeError(
            f"body is not valid UTF-8 at line {line} (byte offset {exc.start}): {exc.reason} "
            f"(byte 0x{data[exc.start]:02x})",
            offset=exc.start,
            line=line,
        ) from None
    scanner = _Scanner(text, fill=None, whole=data, max_depth=max_depth, chunk_size=len(text), what="body")
    if max_events is None and max_cost is None:
        return list(scanner.events())
    events: list[IncomingEvent] = []
    cost = 0
    for event in scanner.events():
        events.append(event)
        cost += event_cost(len(event.raw))
        if max_events is not None and len(events) > max_events:
            raise TooMuch(
                f"the body holds more than {max_events} events, the most one request may bring{limits}: "
                "send them in several requests"
            )
        if max_cost is not None and cost > max_cost:
            raise TooMuch(
                f"the first {len(events)} events of the body would take about {cost} bytes of memory, more "
                f"than one request may take ({max_cost}{limits}): send them in several requests"
            )
    return events


def iter_decode_file(path: str | os.PathLike[str], *, chunk_size: int = 1 << 20) -> Iterator[IncomingEvent]:
    """Yield the echo events of a file (one event, a JSON array, NDJSON or concatenated JSON), streaming.

    The file is read ``chunk_size`` bytes at a time (more while one value is larger). Events before an
    error have already been yielded when ``DecodeError`` is raised. Each event's ``raw`` matches what
    ``decode_body`` would return for the same bytes.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    return _iter_file(path, chunk_size)


def _iter_file(path: str | os.PathLike[str], chunk_size: int) -> Iterator[IncomingEvent]:
    with open(path, "rb") as handle:
        scanner = _Scanner(
            "", fill=_Utf8Chunks(handle), whole=None, max_depth=4, chunk_size=chunk_size, what="file"
        )
        yield from scanner.events()
