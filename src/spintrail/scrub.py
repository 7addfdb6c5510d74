"""Scrub: take the secrets out of an event before anything is indexed, stored in fields, kept or forwarded.

Two passes over the decoded event, both with the installation's redaction key (``keys.py``):

1. ``Redactor.redact``: values under secret-looking keys and in known Spinnaker places (webhook
   ``customHeaders``, trigger ``secret``, signature headers, Kubernetes Secret data, ...) become
   ``hmac-sha256:<hex>``;
2. free text: every remaining string that mentions a credential (``Authorization: Bearer ...``,
   ``password=...``, ``https://user:pass@host``, ...) has just the secret part replaced the same way.

A prefilter (``may_need_redaction``) looks over the event's bytes first: an event in which no rule could
match anything is not walked at all. Then the ``raw_events`` setting decides what is kept of the original
bytes: ``keep`` the bytes exactly as received (secrets at rest), ``redact`` the redacted event re-serialized
as compact JSON (or the bytes as received, when the prefilter found nothing), ``drop`` nothing.
The SHA-256 of what is (or would be, for ``drop``) kept is what the tamper-evident log commits to, so a
published proof never carries an unkeyed hash of a secret unless ``keep`` was chosen.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import orjson

from spintrail.redact import Redactor

#: A string can only hold a free-text secret if it mentions one of these (a superset of the triggers of
#: ``Redactor.redact_text``); strings without any are skipped cheaply.
_SECRET_WORD = re.compile(
    r"authoriz|cookie|signature|bearer|pass|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key"
)
_HASH = re.compile(r"hmac-sha256:[0-9a-f]{64}")


#: Prefilter over a whole event's bytes: when none of these occur, neither pass could replace anything and
#: the event is kept as it arrived, without walking it. Together they are a superset of every key rule and
#: known place of ``redact.py`` and of the free-text rules, matched on the lowercased JSON text: the
#: free-text words (``_TEXT_WORDS``, below), these, and the gated patterns. Each is a plain substring search
#: (or a regular expression looked for only where its word occurs), so an event costs a few scans.
_KEY_WORDS = ("jwt", "customheaders", "hmac-sha256:")
#: Separators inside keys (``api-key``, ``apiKey``, ``api\tkey``): any run of non-alphanumerics or escapes.
_SEP = r"(?:[^a-z0-9]|\\[bfnrt])*"
#: A ``pipeline`` key whose value is a string starting with ``e`` (base64 of ``{``: a pipeline config).
_BASE64_PIPELINE = re.compile(r"pipeline\\*\"(?:\s|\\[nrt])*:(?:\s|\\[nrt])*\\*\"e")
_GATED: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("auth", re.compile(r"auth(?![a-z0-9])")),  # a key ending in the word auth; not "authentication"
    ("connection", re.compile("connection" + _SEP + "string")),
    ("pipeline", _BASE64_PIPELINE),
)
#: Words that make a following ``key`` secret (``api_key``, ``privateKey``, ``signing-key`` ...).
_KEY_OWNERS = ("api", "private", "access", "signing", "encryption", "master")
_KEY_OWNER = re.compile("(?:" + "|".join(_KEY_OWNERS) + ")" + _SEP + r"\Z")
_SEP_TAIL = re.compile(_SEP + r"\Z")
_ASCII_SEPARATORS = "".join(chr(c) for c in range(128) if not chr(c).isalnum())
_KEY_WINDOW = 64


def _owned_key(low: str) -> bool:
    """Whether some ``key`` in the lowercased text follows one of ``_KEY_OWNERS`` across separators.

    Separator runs longer than the window count as a match (the word could lie beyond it).
    """
    at = low.find("key")
    while at >= 0:
        lo = max(0, at - _KEY_WINDOW)
        window = low[lo:at]
        if window.isascii() and "\\" not in window:
            before = lo + len(window.rstrip(_ASCII_SEPARATORS))
            if (lo and before == lo) or low.endswith(_KEY_OWNERS, 0, before):
                return True
        else:  # escapes (``\t`` holds a letter) or non-ASCII separators: regular expressions
            if _KEY_OWNER.search(low, lo, at):
                return True
            tail = _SEP_TAIL.search(low, lo, at)
            if lo and tail is not None and tail.start() <= lo + 1:
                return True
        at = low.find("key", at + 3)
    return False


#: ``"credentials": "prod"`` (orca's account field) is not secret: an occurrence of ``credential`` that is
#: the last word of such a key (as its snake form splits it) with an account-name value does not count.
_ACCOUNT_VALUE = re.compile(r"s?\"\s*:\s*\"([^\"\\]*)\"", re.IGNORECASE)
#: Characters that case-fold to or from ASCII letters (U+017F long s matches ``s`` ignoring case, U+212A
#: is a Kelvin sign): where any occurs, the lowercased text is not a safe stand-in and the event is walked.
_FOLDS = re.compile("[\u00df\u0130\u0131\u0149\u017f\u01f0\u1e96-\u1e9a\u1e9e\u212a\ufb00-\ufb06]")


def _only_account_credentials(text: str, low: str) -> bool:
    """Whether every ``credential`` in the text is an account-name pair such as ``"credentials":"prod"``."""
    at = low.find("credential")
    while at >= 0:
        before = text[at - 1] if at else '"'
        first = text[at]
        # "credentials" must be a word of the key's snake form: after a non-alphanumeric, or a camel hump.
        hump = before.islower() or before.isdigit() or (before.isupper() and text[at + 1] == "r")
        word = (not before.isascii() or not before.isalnum()) or (first == "C" and hump)
        match = _ACCOUNT_VALUE.match(text, at + 10) if word else None
        if match is None or not Redactor.looks_like_account(match.group(1)):
            return False
        at = low.find("credential", match.end())
    return True


def may_need_redaction(raw: bytes) -> bool:
    """False only when no key rule, known place or free-text rule can match anywhere in ``raw``."""
    return _prefilter(raw) is not None


#: What the prefilter found: the free-text trigger words present in the event (``None``: not known, check
#: every word), so the check after the walk looks for those alone.
_Found = tuple[str, ...] | None


def _prefilter(raw: bytes) -> _Found | None:
    """``None`` when nothing in ``raw`` could be replaced; else what the free-text check must look for."""
    if b"\\u" in raw:  # escaped characters could spell a key or a word the prefilter cannot see
        return _ALL
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return _ALL
    if not text.isascii() and _FOLDS.search(text):
        return _ALL
    low = text.lower()
    found = tuple(w for w in _TEXT_WORDS if w != "key" and w in low)
    if "key" in low and _owned_key(low):  # api/access/private keys (and the key rules' signing_key ...)
        found += ("key",)
    if "://" in low and _USERINFO.search(low):
        found += ("://",)
    if not found and not _key_rules_may_apply(text, low):
        return None
    if "rawcontent" in low or ("pipeline" in low and _BASE64_PIPELINE.search(low)):
        return _ALL  # embedded documents are rewritten whole: their new text was not in the event
    return found


def _key_rules_may_apply(text: str, low: str) -> bool:
    """The prefilter's words beyond the free-text ones (which the caller has looked for already)."""
    for word in _KEY_WORDS:
        if word in low:
            return True
    for word, pattern in _GATED:
        if word in low and pattern.search(low):
            return True
    return "credential" in low and not _only_account_credentials(text, low)


#: Where a free-text trigger word occurs in compact JSON: the rest of its string, and whether a ':' follows
#: (then the string is a key, which the free-text pass never rewrites).
_REST_OF_STRING = re.compile(r'(?:[^"\\]|\\.)*"(:?)')
#: The free-text rules' trigger words (``_SECRET_WORD``); ``api/access/private[_-]key`` are found by "key".
_TEXT_WORDS = ("authoriz", "cookie", "signature", "bearer", "pass", "pwd", "secret", "token", "key")
_KEY_PREFIX = re.compile(r"(?:api|access|private)[_-]?$")
_USERINFO = re.compile(r"://[^/\s:@]+:[^@\s/]+@")


#: Every free-text word, and user-info in URLs: what the check after the walk looks for when unsure.
_ALL: tuple[str, ...] = (*_TEXT_WORDS, "://")


def _text_rules_may_apply(serialized: str, words: tuple[str, ...] = _ALL) -> bool:
    """Whether any string value (not key) of compact JSON could hold a free-text secret.

    ``words`` are the trigger words (and ``"://"`` for user-info in URLs) to look for: those the prefilter
    found in the event, since the walk only takes text away (an ``hmac-sha256:`` hash spells none of them).
    """
    low = serialized.lower()
    for word in words:
        if word == "://":
            if "://" in low and _USERINFO.search(low) is not None:
                return True
            continue
        at = low.find(word)
        while at >= 0:
            end = at + len(word)
            if word != "key" or _KEY_PREFIX.search(low, max(0, at - 8), at):
                rest = _REST_OF_STRING.match(low, end)
                if rest is None or not rest.group(1):
                    return True
            at = low.find(word, end)
    return False


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


class Scrubber:
    """Redacts events and free text with one installation's key, and applies the ``raw_events`` choice."""

    def __init__(
        self,
        key: bytes,
        *,
        raw_events: str = "redact",
        extra_patterns: tuple[str, ...] = (),
        prefilter: bool = True,
    ) -> None:
        if raw_events not in ("keep", "redact", "drop"):
            raise ValueError(f"raw_events must be keep, redact or drop, not {raw_events!r}")
        self.redactor = Redactor(key, extra_patterns=extra_patterns)
        self.raw_events = raw_events
        # Extra key patterns are arbitrary regular expressions the prefilter cannot cover.
        self._always_walk = bool(extra_patterns) or not prefilter

    def hash_value(self, value: str) -> str:
        """The ``hmac-sha256:`` form a secret value takes in this installation."""
        return self.redactor.hash_value(value)

    def text(self, value: str | None) -> str | None:
        """Free text with credentials hashed (descriptions, reasons, indexed text)."""
        if not value or not _may_hold_secret(value):
            return value
        return self.redactor.redact_text(value)

    def scrub(self, event: dict[str, Any], raw: bytes) -> Scrubbed:
        """The event with its secrets replaced, and what to keep of ``raw`` (the bytes it was decoded from).

        When the prefilter finds nothing that any rule could replace anywhere in ``raw``, the event is
        returned as it is and the bytes as received are kept, with ``redact`` too: nothing in them is secret.
        """
        found = _prefilter(raw) if not self._always_walk and raw else _ALL
        if found is None:
            return self._scrubbed(event, raw, 0, set())
        redacted, replaced = self.redactor.redact(event)
        # With redact the re-serialized event is needed anyway; where no string value in it holds a
        # free-text trigger (only keys such as "Authorization" of hashed headers do), the pass is skipped.
        serialized = serialize(redacted) if self.raw_events != "keep" else None
        text = serialized.decode("utf-8") if serialized is not None and b"\\u" not in serialized else None
        if text is not None and not _text_rules_may_apply(text, found):
            hashes = set(_HASH.findall(text))
        else:
            # The free-text pass rewrites strings in place; the redacted event shares its unchanged parts
            # with the input (which must stay as received), so it works on a fresh copy.
            redacted = json.loads(serialized if serialized is not None else serialize(redacted))
            more, hashes = self._scrub_strings(redacted)
            replaced += more
            if more and serialized is not None:
                serialized = serialize(redacted)
        return self._scrubbed(redacted, raw if serialized is None else serialized, replaced, hashes)

    def _scrubbed(self, event: dict[str, Any], kept: bytes, replaced: int, hashes: set[str]) -> Scrubbed:
        """The outcome; ``kept`` is what to keep (nothing with ``drop``, yet still what the log hashes)."""
        return Scrubbed(
            event=event,
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
