"""Scrub: take the secrets out of an event before anything is indexed, stored in fields, kept or forwarded.

Two passes over the decoded event, both with the installation's redaction key (``keys.py``):

1. ``Redactor.redact``: values under secret-looking keys and in known Spinnaker places (webhook
   ``customHeaders``, trigger ``secret``, signature headers, Kubernetes Secret data, ...) become
   ``hmac-sha256:<hex>``;
2. free text: every remaining string that mentions a credential (``Authorization: Bearer ...``,
   ``password=...``, ``https://user:pass@host``, ...) has just the secret part replaced the same way.

Then the ``raw_events`` setting decides what is kept of the original bytes: ``keep`` the bytes exactly as
received (secrets at rest), ``redact`` the redacted event re-serialized as compact JSON, ``drop`` nothing.
The SHA-256 of what is (or would be, for ``drop``) kept is what the tamper-evident log commits to, so a
published proof never carries an unkeyed hash of a secret unless ``keep`` was chosen.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from spintrail.redact import Redactor

#: A string can only hold a free-text secret if it mentions one of these (a superset of the triggers of
#: ``Redactor.redact_text``); strings without any are skipped cheaply.
_SECRET_WORD = re.compile(
    r"authoriz|cookie|signature|bearer|pass|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key"
)
_HASH = re.compile(r"hmac-sha256:[0-9a-f]{64}")


def _may_hold_secret(value: str) -> bool:
    # Every text rule needs a ':' or '=' after its keyword, or whitespace after "bearer"; most strings
    # (names, ids, versions) have neither and are skipped before the regular expression.
    if ":" not in value and "=" not in value and " " not in value and "\t" not in value and "\n" not in value:
        return False
    return bool(_SECRET_WORD.search(value.lower())) or ("@" in value and "://" in value)


@dataclass(slots=True)
class Scrubbed:
    """An event with its secrets replaced, and the raw bytes to keep."""

    event: dict[str, Any]
    raw: bytes
    keep_raw: bool
    raw_sha256: bytes
    replaced: int
    secret_hashes: tuple[str, ...]


def serialize(event: Any) -> bytes:
    """Compact JSON of an event (UTF-8; lone surrogates escaped rather than lost)."""
    text = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(event, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class Scrubber:
    """Redacts events and free text with one installation's key, and applies the ``raw_events`` choice."""

    def __init__(
        self, key: bytes, *, raw_events: str = "redact", extra_patterns: tuple[str, ...] = ()
    ) -> None:
        if raw_events not in ("keep", "redact", "drop"):
            raise ValueError(f"raw_events must be keep, redact or drop, not {raw_events!r}")
        self.redactor = Redactor(key, extra_patterns=extra_patterns)
        self.raw_events = raw_events

    def hash_value(self, value: str) -> str:
        """The ``hmac-sha256:`` form a secret value takes in this installation."""
        return self.redactor.hash_value(value)

    def text(self, value: str | None) -> str | None:
        """Free text with credentials hashed (descriptions, reasons, indexed text)."""
        if not value or not _may_hold_secret(value):
            return value
        return self.redactor.redact_text(value)

    def scrub(self, event: dict[str, Any], raw: bytes) -> Scrubbed:
        redacted, replaced = self.redactor.redact(event)
        more, hashes = self._scrub_strings(redacted)
        replaced += more
        kept = raw if self.raw_events == "keep" else serialize(redacted)
        return Scrubbed(
            event=redacted,
            raw=kept if self.raw_events != "drop" else b"",
            keep_raw=self.raw_events != "drop",
            raw_sha256=hashlib.sha256(kept).digest(),
            replaced=replaced,
            secret_hashes=tuple(sorted(hashes)),
        )

    def _scrub_strings(self, root: Any) -> tuple[int, set[str]]:
        """Redact free-text secrets in every string value of ``root`` in place; collect the hashes seen."""
        count = 0
        hashes: set[str] = set()
        stack: list[Any] = [root]
        redact_text = self.redactor.redact_text
        while stack:
            node = stack.pop()
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for k, v in items:
                if isinstance(v, str):
                    if _may_hold_secret(v):
                        new = redact_text(v)
                        if new != v:
                            node[k] = v = new
                            count += 1
                    if "hmac-sha256:" in v:
                        hashes.update(_HASH.findall(v))
                elif isinstance(v, dict | list):
                    stack.append(v)
        return count, hashes


# --------------------------------------------------------------------------------------------- hash index

#: ``redacted_values``: which records carry which ``hmac-sha256:`` value, for "does this value appear?".
MIGRATIONS: dict[str, list[tuple[int, str]]] = {
    "sqlite": [
        (
            1,
            "CREATE TABLE redacted_values (digest BLOB NOT NULL, event_row INTEGER NOT NULL,"
            " PRIMARY KEY (digest, event_row)) WITHOUT ROWID",
        )
    ],
    "postgresql": [
        (
            1,
            "CREATE TABLE redacted_values (digest BYTEA NOT NULL, event_row BIGINT NOT NULL,"
            " PRIMARY KEY (digest, event_row))",
        )
    ],
}


def _digest(hashed: str) -> bytes:
    return bytes.fromhex(hashed.removeprefix("hmac-sha256:"))


def index_hook(conn: Any, written: list[Any]) -> None:
    """Store write hook: remember which records carry which redacted values."""
    from spintrail import dbutil

    rows = [(_digest(h), w.id) for w in written for h in w.item.secret_hashes]
    if rows:
        conn.cursor().executemany(
            dbutil.sql(conn, "INSERT INTO redacted_values(digest, event_row) VALUES (?, ?)"), rows
        )


def records_with(conn: Any, hashed: str, *, limit: int = 1000) -> list[int]:
    """Store ids of the records that carry the redacted value ``hashed`` (oldest first)."""
    from spintrail import dbutil

    return [
        int(r[0])
        for r in dbutil.rows(
            conn,
            "SELECT event_row FROM redacted_values WHERE digest = ? ORDER BY event_row LIMIT ?",
            (_digest(hashed), limit),
        )
    ]
