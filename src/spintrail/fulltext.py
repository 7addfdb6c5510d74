"""Full-text search: the text indexed for each event, and user queries turned into safe FTS expressions.

What is indexed: the record's descriptive fields (description, reason, names, users, tickets, ids, where) and
the string values of the event itself *outside* the embedded execution snapshot (stage and task events repeat
the whole execution; indexing it again for every event would multiply the index for no new words), up to
``RAW_TEXT_LIMIT`` characters. Tokens are words of letters and digits, so ``checkout-prod-v042`` is found by
``checkout-prod-v042``, ``prod-v042`` or ``v042`` (a phrase of consecutive tokens).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
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
    "execution_id",
    "event_id",
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
    extra: list[str] = []
    budget = RAW_TEXT_LIMIT
    content = event.get("content")
    if isinstance(content, dict):
        for s in _strings(content):
            if budget <= 0:
                break
            if s in fixed:
                continue
            s = s[:budget]
            extra.append(s)
            budget -= len(s) + 1
    return fixed + (" " + " ".join(extra) if extra else "")


def _strings(value: Any, depth: int = 0) -> Iterator[str]:
    """String leaves of a JSON value, breadth of keys first, skipping repeated snapshots."""
    if depth > 12:
        return
    if isinstance(value, str):
        if value and len(value) < 512 and not value.startswith(("http://", "https://")):
            yield value
    elif isinstance(value, dict):
        for key, child in value.items():
            if key in _SKIP_KEYS:
                continue
            yield from _strings(child, depth + 1)
    elif isinstance(value, list):
        for child in value[:50]:
            yield from _strings(child, depth + 1)


def fts5_query(text: str) -> str | None:
    """A user's search text as an FTS5 expression, or ``None`` when it holds no searchable word.

    Each whitespace-separated term (or "quoted phrase") becomes a phrase of its word tokens whose last
    token matches as a prefix; terms are ANDed. Nothing the user types reaches FTS5 syntax unquoted.
    """
    phrases = [phrase for _, phrase in fts5_terms(text)]
    if not phrases:
        return None
    return " AND ".join(phrases)


def fts5_terms(text: str) -> list[tuple[str, str]]:
    """The terms of a user's search text that hold words: (the term as typed, its FTS5 phrase)."""
    out: list[tuple[str, str]] = []
    for m in _TERM.finditer(text):
        term = m.group(1) if m.group(1) is not None else m.group(2)
        tokens = _TOKEN.findall(term)
        if tokens:
            out.append((term, '"' + " ".join(tokens) + '"*'))
    return out


def query_tokens(text: str) -> list[list[str]]:
    """The search text as terms of word tokens (for backends with their own syntax)."""
    out: list[list[str]] = []
    for m in _TERM.finditer(text):
        term = m.group(1) if m.group(1) is not None else m.group(2)
        tokens = _TOKEN.findall(term)
        if tokens:
            out.append(tokens)
    return out
