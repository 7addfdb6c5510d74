"""Full-text search: the text indexed for each event, and user queries turned into safe FTS expressions.

What is indexed: the record's descriptive fields (description, reason, names, users, tickets, where) and
the string values of the event itself *outside* the embedded execution snapshot (stage and task events repeat
the whole execution; indexing it again for every event would multiply the index for no new words), up to
``RAW_TEXT_LIMIT`` characters. The event and execution ids are not indexed: each is a handful of tokens
found in no other event, which made up a quarter of the index, and both have exact lookups (``GET
/api/v1/events/{event_id}``, the ``execution_id`` filter). Tokens are words of letters and digits; a search
matches the events holding every token of every term, the last token of each term as a prefix, so
``checkout-prod-v042`` is found by ``checkout-prod-v042``, ``prod-v042``, ``v042`` or ``checkout-prod-v04``.
"""

from __future__ import annotations

import re
from typing import Any

from spintrail.record import LIST_FIELDS, AuditRecord

RAW_TEXT_LIMIT = 2048

_INDEXED_SCALARS = (
    "description",
    "reason",
    "application",
    "pipeline",
    "stage",
    "stage_type",
    "task",
    "user",
    "run_as_user",
    "type",
    "status",
    "trigger_type",
    "spinnaker_instance",
    "cloud_provider",
)
_TOKEN = re.compile(r"\w+", re.UNICODE)
_TERM = re.compile(r'"([^"]*)"|(\S+)')
#: Keys whose subtrees are not indexed as event text (snapshots repeated in every event, bulky blobs).
_SKIP_KEYS = frozenset({"execution", "parentExecution", "rawContent", "payload", "stageDetails"})


def index_text(record: AuditRecord, event: dict[str, Any]) -> str:
    """The text indexed for one event."""
    parts: list[str] = []
    for name in _INDEXED_SCALARS:
        value = getattr(record, name)
        if value:
            parts.append(str(value))
    for name in LIST_FIELDS:
        parts.extend(getattr(record, name))
    fixed = " ".join(parts)
    content = event.get("content")
    if not isinstance(content, dict):
        return fixed
    found: list[str] = []
    _collect(content, found, 0)
    extra: list[str] = []
    budget = RAW_TEXT_LIMIT
    for s in found:
        if s in fixed or _is_id(s):
            continue
        s = s[:budget]
        extra.append(s)
        budget -= len(s) + 1
        if budget <= 0:
            break
    return fixed + (" " + " ".join(extra) if extra else "")


def _is_id(s: str) -> bool:
    """A UUID, a ULID or an epoch timestamp: each is found in no other event (the ids that matter have
    exact filters), and every unique token costs index space."""
    n = len(s)
    if n == 36:
        return s[8] == "-" and s[13] == "-" and s[18] == "-" and s[23] == "-"
    if n == 26:
        return s.isalnum() and s.upper() == s
    return n >= 10 and s.isdigit()


_MAX_STRINGS = 200  # enough for RAW_TEXT_LIMIT characters


def _collect(value: Any, out: list[str], depth: int) -> None:
    """String leaves of a JSON value, depth first in key order, skipping repeated snapshots."""
    if depth > 12 or len(out) >= _MAX_STRINGS:
        return
    if type(value) is dict:
        children: Any = (child for key, child in value.items() if key not in _SKIP_KEYS)
    elif type(value) is list:
        children = value[:50]
    else:
        return
    for child in children:
        kind = type(child)
        if kind is str:
            if child and len(child) < 512 and not child.startswith(_URLS):
                out.append(child)
                if len(out) >= _MAX_STRINGS:
                    return
        elif kind is dict or kind is list:
            _collect(child, out, depth + 1)


_URLS = ("http://", "https://")


def fts5_query(text: str) -> str | None:
    """A user's search text as an FTS5 expression, or ``None`` when it holds no searchable word.

    Each whitespace-separated term (or "quoted phrase") contributes its word tokens, the last one as a
    prefix; every token must match (AND). Tokens are quoted, so nothing the user types reaches FTS5 syntax.
    The index keeps no token positions (a third of the size), so the tokens of a term need not be adjacent.
    """
    parts: list[str] = []
    for tokens in query_tokens(text):
        parts += [f'"{t}"' for t in tokens[:-1]]
        parts.append(f'"{tokens[-1]}"*')
    if not parts:
        return None
    return " AND ".join(dict.fromkeys(parts))


def query_tokens(text: str) -> list[list[str]]:
    """The search text as terms of word tokens (for backends with their own syntax)."""
    out: list[list[str]] = []
    for m in _TERM.finditer(text):
        term = m.group(1) if m.group(1) is not None else m.group(2)
        tokens = _TOKEN.findall(term)
        if tokens:
            out.append(tokens)
    return out
