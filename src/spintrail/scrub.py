"""Scrub: take the secrets out of an event before anything is indexed, stored in fields, kept or forwarded.

The event's compact JSON is scanned once by the compiled rules of ``secretscan.py`` (secret-looking keys,
the known Spinnaker places of ``redact.py``, and the value rules of ``secret_rules.py``: private keys,
credentials in URLs, tokens, webhooks, command-line passwords ...). An event with nothing to report is kept as
it is; otherwise every secret is replaced where it sits by ``hmac-sha256:<hex>`` under the installation's
redaction key (``keys.py``).

The ``raw_events`` setting then decides what is kept of the original bytes: ``keep`` the bytes exactly as
received (secrets at rest), ``redact`` the redacted event as compact JSON (or the bytes as received, when
neither they nor the event hold anything a rule reports), ``drop`` nothing. The SHA-256 of what is (or would
be, for ``drop``) kept is what the tamper-evident log commits to, so a published proof never carries an
unkeyed hash of a secret unless ``keep`` was chosen.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import orjson

from spintrail import secretscan
from spintrail.redact import Redactor


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
    """Compact JSON of an event (UTF-8; lone surrogates escaped rather than lost).

    orjson writes it several times faster than ``json``; what orjson refuses (integers beyond 64 bits, lone
    surrogates) is written by ``json``. Decoded events hold no NaN or infinity (``decode`` refuses them),
    which orjson would write as ``null``.
    """
    try:
        return orjson.dumps(event)
    except (orjson.JSONEncodeError, TypeError):
        pass
    text = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(event, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _clean(raw: bytes, redactor: Redactor) -> bool:
    """Whether the rules replace nothing in ``raw`` itself, read as it is: escaped quotes (a flattened
    document, a quote in a command) hide no word, ``\\u`` and ``\\/`` escapes could."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    hits = secretscan.scan_hits(text)
    if any(i == secretscan.ESCAPE for i, _, _ in hits):
        return False
    try:
        return secretscan.scrub_json(text, redactor, hits).replaced == 0
    except (ValueError, IndexError):  # not one JSON value (a stretch of a body): look no further
        return False


def _same_shape(event: Any, redacted: Any) -> bool:
    """Whether the bytes as received parse to the event as decoded (``details`` and ``content`` may arrive
    as JSON strings that the decoder parses)."""
    if type(event) is not type(redacted):
        return False
    if not isinstance(event, dict):
        return True
    return event.keys() == redacted.keys() and all(
        type(event.get(k)) is type(redacted.get(k)) for k in ("details", "content")
    )


class Scrubber:
    """Redacts events and free text with one installation's key, and applies the ``raw_events`` choice."""

    def __init__(
        self,
        key: bytes,
        *,
        raw_events: str = "redact",
        extra_patterns: tuple[str, ...] = (),
    ) -> None:
        if raw_events not in ("keep", "redact", "drop"):
            raise ValueError(f"raw_events must be keep, redact or drop, not {raw_events!r}")
        self.redactor = Redactor(key, extra_patterns=extra_patterns)
        self.raw_events = raw_events
        # Extra key patterns are arbitrary regular expressions the compiled scan does not know: such an
        # installation walks every event with the key rules.
        self._always_walk = bool(extra_patterns)

    def hash_value(self, value: str) -> str:
        """The ``hmac-sha256:`` form a secret value takes in this installation."""
        return self.redactor.hash_value(value)

    def text(self, value: str | None) -> str | None:
        """Free text with credentials hashed (descriptions, reasons, indexed text)."""
        if not value:
            return value
        return secretscan.scrub_text(value, self.redactor)[0]

    def scrub(self, event: dict[str, Any], raw: bytes) -> Scrubbed:
        """The event with its secrets replaced, and what to keep of ``raw`` (the bytes it was decoded from).

        When nothing in the event (nor in ``raw``) is reported by any rule, the event is returned as it is
        and the bytes as received are kept, with ``redact`` too: nothing in them is secret.
        """
        if not self._always_walk and raw:
            # Echo's bytes as they are: scanned, and redacted, without writing the event again. Escapes
            # (\u, \/, \") could hide a word from the rules or hold a flattened JSON document the event has
            # parsed: with any, the event is written again and that is scanned.
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = ""
            hits = secretscan.scan_hits(text, raw) if text else [(secretscan.ESCAPE, 0, 0)]
            if not hits:
                return self._scrubbed(event, raw, raw, 0, set())
            done: secretscan.Outcome | None = None
            if all(h[0] not in secretscan.ESCAPES for h in hits):
                try:
                    done = secretscan.scrub_json(text, self.redactor, hits)
                except (ValueError, IndexError):  # bytes that do not read as one JSON value: the long way
                    done = None
            if done is not None and not done.replaced:
                return self._scrubbed(event, raw, raw, 0, secretscan.hashes_in(text) | done.extra_hashes)
            if done is not None:
                new = done.text.encode("utf-8")
                try:
                    redacted_event = orjson.loads(new)
                except orjson.JSONDecodeError:  # integers beyond 64 bits: the long way
                    redacted_event = None
                if redacted_event is not None and _same_shape(event, redacted_event):
                    hashes = done.hashes() | done.extra_hashes
                    return self._scrubbed(redacted_event, raw, new, done.replaced, hashes)
        serialized = serialize(event)
        text = serialized.decode("utf-8", "surrogatepass")
        hits = None
        replaced = 0
        if self._always_walk:
            redacted, replaced = self.redactor.redact(event)
            text = serialize(redacted).decode("utf-8", "surrogatepass")
            hits = None
        done = secretscan.scrub_json(text, self.redactor, hits)
        replaced += done.replaced
        if not replaced:
            # The bytes as received, unless they hold what the event as decoded does not show.
            kept = raw if raw == serialized or not raw or _clean(raw, self.redactor) else serialized
            return self._scrubbed(event, raw, kept, 0, secretscan.hashes_in(text) | done.extra_hashes)
        new = done.text.encode("utf-8", "surrogatepass")
        try:
            redacted_event = orjson.loads(new)
        except orjson.JSONDecodeError:  # integers beyond 64 bits, lone surrogates
            redacted_event = json.loads(done.text)
        hashes = done.hashes() | done.extra_hashes
        return self._scrubbed(redacted_event, raw, new, replaced, hashes)

    def _scrubbed(
        self, event: dict[str, Any], raw: bytes, redacted: bytes, replaced: int, hashes: set[str]
    ) -> Scrubbed:
        """The outcome: ``raw`` is kept with ``keep``, ``redacted`` with ``redact`` (and with ``drop`` it is
        what the log hashes, though nothing is kept)."""
        kept = raw if self.raw_events == "keep" else redacted
        return Scrubbed(
            event=event,
            raw=kept if self.raw_events != "drop" else b"",
            keep_raw=self.raw_events != "drop",
            raw_sha256=hashlib.sha256(kept).digest(),
            replaced=replaced,
            secret_hashes=tuple(sorted(hashes)),
        )


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


#: Bytes of a value's HMAC the index keeps: 128 bits tell values apart as well as the whole 256 (a wrong
#: match would need a collision of an installation's own keyed hashes), at half the size per entry.
DIGEST_BYTES = 16


def _digest(hashed: str) -> bytes:
    return bytes.fromhex(hashed.removeprefix("hmac-sha256:"))[:DIGEST_BYTES]


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
            # Entries written before the index kept 16 bytes hold all 32.
            "SELECT event_row FROM redacted_values WHERE digest IN (?, ?) ORDER BY event_row LIMIT ?",
            (_digest(hashed), bytes.fromhex(hashed.removeprefix("hmac-sha256:")), limit),
        )
    ]
