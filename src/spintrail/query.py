"""Query vocabulary shared by the HTTP API and the CLI: the filters, how their values are parsed, limits."""

from __future__ import annotations

import re
import time as _time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime

from spintrail.record import format_time

#: Filters matched against one column (repeat a filter to match any of several values).
COLUMN_FILTERS: dict[str, str] = {
    "user": "user",
    "application": "application",
    "status": "status",
    "execution_id": "execution_id",
    "source": "source",
    "instance": "spinnaker_instance",
    "stage_type": "stage_type",
}

#: Filters matched against one element of a list field.
LIST_FILTERS: dict[str, str] = {
    "account": "accounts",
    "region": "regions",
    "server_group": "server_groups",
    "cluster": "clusters",
    "namespace": "namespaces",
    "ticket": "tickets",
}

#: Every filter name, in the order the docs and the CLI list them.
FILTER_NAMES: tuple[str, ...] = (
    "user",
    "application",
    "account",
    "region",
    "server_group",
    "cluster",
    "namespace",
    "type",
    "stage_type",
    "status",
    "execution_id",
    "source",
    "ticket",
    "instance",
    "q",
    "since",
    "until",
)

FILTER_HELP: dict[str, str] = {
    "user": "the person responsible (exact)",
    "application": "Spinnaker application (exact)",
    "account": "a cloud account touched (exact)",
    "region": "a region touched (exact)",
    "server_group": "a server group touched (exact)",
    "cluster": "a cluster touched (exact)",
    "namespace": "a Kubernetes namespace touched (exact)",
    "type": "event type, exact or a prefix ending in * such as orca:pipeline:*",
    "stage_type": "stage type, e.g. deploy, resizeServerGroup, manualJudgment (exact)",
    "status": "Spinnaker status, e.g. SUCCEEDED, TERMINAL, CANCELED",
    "execution_id": "one pipeline or orchestration run",
    "source": "event source: orca, igor, github, ...",
    "ticket": "a change ticket, e.g. OPS-1234",
    "instance": "Spinnaker instance",
    "q": "full-text search over descriptions, names, users and event text",
    "since": "from this time: RFC 3339, epoch ms, or relative such as 30m, 24h, 7d",
    "until": "up to this time (exclusive), same forms as since",
}

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


class FilterError(ValueError):
    """A filter value that cannot be understood; the message names the filter and the accepted forms."""


@dataclass(slots=True, frozen=True)
class Filters:
    """What to look for. Tuple fields match any of their values; empty tuples match everything."""

    user: tuple[str, ...] = ()
    application: tuple[str, ...] = ()
    account: tuple[str, ...] = ()
    region: tuple[str, ...] = ()
    server_group: tuple[str, ...] = ()
    cluster: tuple[str, ...] = ()
    namespace: tuple[str, ...] = ()
    type: tuple[str, ...] = ()
    stage_type: tuple[str, ...] = ()
    status: tuple[str, ...] = ()
    execution_id: tuple[str, ...] = ()
    source: tuple[str, ...] = ()
    ticket: tuple[str, ...] = ()
    instance: tuple[str, ...] = ()
    q: str | None = None
    since: int | None = None
    until: int | None = None

    @classmethod
    def from_params(
        cls, params: Mapping[str, Iterable[str] | str | None], *, now_ms: int | None = None
    ) -> Filters:
        """Build filters from query parameters or CLI options (names as in ``FILTER_NAMES``)."""
        values: dict[str, object] = {}
        for name in FILTER_NAMES:
            raw = params.get(name)
            if raw is None:
                continue
            items = [raw] if isinstance(raw, str) else list(raw)
            items = [v.strip() for v in items if v is not None and v.strip() != ""]
            if not items:
                continue
            if name == "q":
                values["q"] = " ".join(items)
            elif name in ("since", "until"):
                values[name] = parse_time(items[-1], name=name, now_ms=now_ms)
            else:
                values[name] = tuple(dict.fromkeys(items))
        f = cls(**values)  # type: ignore[arg-type]
        if f.since is not None and f.until is not None and f.since >= f.until:
            raise FilterError("since must be earlier than until")
        return f

    def as_params(self) -> dict[str, list[str]]:
        """The filters as query parameters (for links and next-page URLs)."""
        out: dict[str, list[str]] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value in (None, ()):
                continue
            if isinstance(value, tuple):
                out[f.name] = list(value)
            elif f.name in ("since", "until"):
                out[f.name] = [str(format_time(int(value)))]
            else:
                out[f.name] = [str(value)]
        return out

    def is_empty(self) -> bool:
        return not self.as_params()


def parse_limit(value: str | int | None, *, default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> int:
    """A page size between 1 and ``maximum``."""
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise FilterError(f"limit must be a whole number from 1 to {maximum}, not {value!r}") from None
    if not 1 <= n <= maximum:
        raise FilterError(f"limit must be a whole number from 1 to {maximum}, not {n}")
    return n


def parse_time(value: str, *, name: str = "time", now_ms: int | None = None) -> int:
    """RFC 3339, epoch milliseconds, or a relative age ("24h", "7d") to epoch milliseconds."""
    text = value.strip()
    m = _RELATIVE.match(text)
    if m:
        now = now_ms if now_ms is not None else int(_time.time() * 1000)
        return _in_range(now - int(float(m.group(1)) * _UNIT_MS[m.group(2)]), name, value)
    if is_number(text):
        if len(text) > 19:
            raise FilterError(f"{name} {value!r} is out of range")
        return _in_range(int(text), name, value)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise FilterError(
            f"{name} must be an RFC 3339 time (2024-06-14T13:01:35Z), epoch milliseconds, "
            f"or a relative age such as 30m, 24h, 7d; got {value!r}"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


#: Times beyond these (about 292 million years) do not fit the stores' 64-bit integers.
_MS_LIMIT = 2**63 - 1


def is_number(text: str) -> bool:
    """True when ``text`` is ASCII digits only (``str.isdigit`` also takes other scripts' digits, ``²``)."""
    return text.isascii() and text.isdigit()


def row_id(ref: str) -> int | None:
    """``ref`` as a store id, or None when it is not one: not ASCII digits, or beyond a 64-bit integer."""
    if not is_number(ref) or len(ref) > 19:
        return None
    n = int(ref)
    return n if n <= _MS_LIMIT else None


def _in_range(ms: int, name: str, value: str) -> int:
    if not -_MS_LIMIT <= ms <= _MS_LIMIT:
        raise FilterError(f"{name} {value!r} is out of range")
    return ms


def type_pattern(value: str) -> tuple[str, bool]:
    """An event-type filter as (text, is_prefix): ``orca:pipeline:*`` matches every pipeline event type."""
    if value.endswith("*"):
        return value[:-1], True
    return value, False
