"""The Splunk HTTP Event Collector (HEC) protocol: status codes, request parsing, token checks and response
classification, shared by the HEC forwarder and anything that has to answer like HEC.

The ``/services/collector/event`` body is one or more JSON objects written one after another (separated by
optional whitespace, never wrapped in an array). Each object carries ``event`` (a string or an object) and
optional ``time``, ``host``, ``source``, ``sourcetype``, ``index`` and ``fields`` (indexed fields whose
values are strings, numbers or lists of them).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Collection
from typing import Any

#: HEC status code -> (HTTP status, response text), as Splunk answers them.
HEC_CODES: dict[int, tuple[int, str]] = {
    0: (200, "Success"),
    1: (403, "Token disabled"),
    2: (401, "Token is required"),
    3: (401, "Invalid authorization"),
    4: (403, "Invalid token"),
    5: (400, "No data"),
    6: (400, "Invalid data format"),
    7: (400, "Incorrect index"),
    8: (500, "Internal server error"),
    9: (503, "Server is busy"),
    10: (400, "Data channel is missing"),
    11: (400, "Invalid data channel"),
    12: (400, "Event field is required"),
    13: (400, "Event field cannot be blank"),
    14: (400, "ACK is disabled"),
    15: (400, "Error in handling indexed fields"),
    16: (400, "Query string authorization is not enabled"),
    17: (200, "HEC is healthy"),
}

#: Envelope keys that, when present, must hold a string.
_STRING_KEYS = ("host", "source", "sourcetype", "index")
_JSON = json.JSONDecoder()
_WHITESPACE = " \t\n\r"


class HecError(Exception):
    """A HEC failure with its documented code, HTTP status and text.

    ``invalid_event_number`` is the 0-based position, within the request body, of the event that caused
    the failure (for codes that concern one event).
    """

    def __init__(
        self,
        code: int,
        invalid_event_number: int | None = None,
        detail: str | None = None,
        *,
        status: int | None = None,
    ) -> None:
        if code not in HEC_CODES:
            raise ValueError(f"unknown HEC code {code}")
        self.code = code
        self.status, self.text = HEC_CODES[code]
        if status is not None:  # a status HEC answers with no code of its own (413, 415, 408)
            self.status = status
        self.invalid_event_number = invalid_event_number
        self.detail = detail
        message = f"HEC code {code} ({self.text})"
        if invalid_event_number is not None:
            message += f" at event {invalid_event_number}"
        if detail:
            message += f": {detail}"
        super().__init__(message)

    def body(self) -> dict[str, Any]:
        """The JSON body Splunk sends with this error."""
        out: dict[str, Any] = {"text": self.text, "code": self.code}
        if self.invalid_event_number is not None:
            out["invalid-event-number"] = self.invalid_event_number
        return out


def parse_hec_events(body: bytes, *, max_events: int | None = None, limits: str = "") -> list[dict[str, Any]]:
    """Parse a ``/services/collector/event`` request body into its event objects.

    Raises :class:`HecError` the way HEC answers: 5 for a body with no event, 6 (with the event number) for
    text that is not a JSON object or has mistyped metadata, 12 when ``event`` is missing, 13 when it is an
    empty or all-whitespace string or an empty object, 15 when ``fields`` is not an object of flat values;
    code 6 with HTTP 413 beyond ``max_events`` objects (``limits`` names the setting), before parsing more.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HecError(6, 0, f"body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    events: list[dict[str, Any]] = []
    pos = _skip_ws(text, 0)
    while pos < len(text):
        number = len(events)
        if max_events is not None and number >= max_events:
            raise HecError(
                6,
                number,
                f"the body holds more than {max_events} events, the most one request may bring{limits}: "
                "send them in several requests",
                status=413,
            )
        try:
            obj, end = _JSON.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise HecError(6, number, f"not JSON: {exc.msg} at character {exc.pos}") from None
        except RecursionError:
            raise HecError(6, number, f"the value at character {pos} is nested too deeply") from None
        except ValueError as exc:  # an integer too long to convert, for one
            raise HecError(6, number, f"not usable JSON at character {pos}: {exc}") from None
        if not isinstance(obj, dict):
            raise HecError(6, number, f"expected a JSON object, got {type(obj).__name__}")
        _check_envelope(obj, number)
        events.append(obj)
        pos = _skip_ws(text, end)
    if not events:
        raise HecError(5, detail="the request body holds no event")
    return events


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WHITESPACE:
        pos += 1
    return pos


def _check_envelope(obj: dict[str, Any], number: int) -> None:
    if "event" not in obj:
        raise HecError(12, number, "the object has no 'event' key")
    event = obj["event"]
    if event is None:
        raise HecError(6, number, "'event' is null")
    if isinstance(event, str):
        if not event.strip():
            raise HecError(13, number, "'event' is an empty string")
    elif isinstance(event, dict):
        if not event:
            raise HecError(13, number, "'event' is an empty object")
    else:
        raise HecError(6, number, f"'event' must be a string or an object, got {type(event).__name__}")
    for key in _STRING_KEYS:
        if key in obj and not isinstance(obj[key], str):
            raise HecError(6, number, f"'{key}' must be a string")
    if "time" in obj:
        _check_time(obj["time"], number)
    if "fields" in obj:
        _check_fields(obj["fields"], number)


def _check_time(value: Any, number: int) -> None:
    if isinstance(value, bool):
        raise HecError(6, number, "'time' must be epoch seconds")
    if isinstance(value, int | float):
        return
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            raise HecError(6, number, f"'time' is not epoch seconds: {value!r}") from None
        return
    raise HecError(6, number, "'time' must be epoch seconds")


def _is_flat(value: Any) -> bool:
    return isinstance(value, str | int | float) and not isinstance(value, bool)


def _check_fields(fields: Any, number: int) -> None:
    if not isinstance(fields, dict):
        raise HecError(15, number, "'fields' must be an object")
    for name, value in fields.items():
        if _is_flat(value):
            continue
        if isinstance(value, list) and all(_is_flat(v) for v in value):
            continue
        raise HecError(15, number, f"indexed field {name!r} must be a string or a list of strings")


def check_token(authorization: str | None, tokens: Collection[str]) -> None:
    """Check an ``Authorization: Splunk <token>`` header against the configured tokens.

    With no token configured every request is accepted. Raises :class:`HecError` 2 when the header is
    missing, 3 when it is not of the ``Splunk <token>`` form, 4 when the token is not one of ``tokens``.
    """
    if not tokens:
        return
    if authorization is None or not authorization.strip():
        raise HecError(2)
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "splunk" or not token or " " in token:
        raise HecError(3)
    if token not in tokens:
        raise HecError(4)


class Outcome(enum.Enum):
    """What a forwarder does with a batch after HEC answered."""

    DELIVERED = "delivered"
    RETRY = "retry"  # transient: try the same batch again later
    PAUSE = "pause"  # the sink is misconfigured (token, index, channel): stop it and report
    DEAD_LETTER = "dead_letter"  # the data itself was refused: set it aside


_PAUSE_CODES = frozenset({1, 2, 3, 4, 7, 10, 11, 14, 16})
_RETRY_CODES = frozenset({8, 9})


def response_code(body: bytes) -> tuple[int | None, str | None, int | None]:
    """The ``(code, text, invalid-event-number)`` of a HEC JSON response body; ``None`` where absent."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None, None, None
    if not isinstance(data, dict):
        return None, None, None
    code = data.get("code")
    text = data.get("text")
    number = data.get("invalid-event-number")
    return (
        code if isinstance(code, int) and not isinstance(code, bool) else None,
        text if isinstance(text, str) else None,
        number if isinstance(number, int) and not isinstance(number, bool) else None,
    )


def classify_response(status: int, body: bytes) -> Outcome:
    """Decide what to do with a batch from HEC's HTTP status and JSON body.

    2xx is delivered. Codes 8 and 9, HTTP 429, 408 and other 5xx are retried. Token (1-4), index (7),
    channel/ack (10, 11, 14) and query-string auth (16) problems pause the sink, as do a plain 401/403/404
    without a HEC code (wrong credentials or a wrong URL, not bad data). Codes 5, 6, 12, 13, 15 and any
    other 4xx dead-letter the batch. Transport errors never reach here: the caller retries them.
    """
    if 200 <= status < 300:
        return Outcome.DELIVERED
    code, _, _ = response_code(body)
    if code in _RETRY_CODES or status in (408, 429) or status >= 500:
        return Outcome.RETRY
    if code in _PAUSE_CODES:
        return Outcome.PAUSE
    if code is None and status in (401, 403, 404):
        return Outcome.PAUSE
    if 400 <= status < 500:
        return Outcome.DEAD_LETTER
    # 1xx/3xx: not an answer HEC gives; most likely a proxy or a wrong URL in between.
    return Outcome.PAUSE


def describe_response(status: int, body: bytes) -> str:
    """A one-line human description of a HEC answer, e.g. ``HTTP 400, HEC code 6 (Invalid data format)``."""
    code, text, number = response_code(body)
    out = f"HTTP {status}"
    if code is not None:
        out += f", HEC code {code}"
        if text:
            out += f" ({text})"
        if number is not None:
            out += f" at event {number}"
    else:
        snippet = body[:200].decode("utf-8", "replace").strip()
        if snippet:
            out += f": {snippet}"
    return out
