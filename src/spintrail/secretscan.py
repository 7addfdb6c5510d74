"""Secret scan: find every secret of an event in one pass of compiled code over its JSON text.

One Hyperscan database holds the trigger of every value rule of ``secret_rules.py`` and the structural
triggers below (secret-looking JSON keys and the known Spinnaker places of ``redact.py``). The event's
compact JSON (as ``orjson`` writes it) is scanned once; an event with no report is done. Otherwise:

1. structural reports, in text order: the value after a secret-looking key, a webhook's ``customHeaders``,
   a headers map, a ``{"name": "DB_PASSWORD", "value": ...}`` pair, an embedded ``rawContent`` document or
   base64 ``pipeline`` is parsed where it sits (``json.JSONDecoder.raw_decode``), redacted by the
   ``Redactor``'s rules for that place, and spliced back in. What a place became is remembered, known by a
   keyed digest of its text, for the next time it is seen (in this event or a later one; see ``_Memo``). A
   Kubernetes ``Secret`` manifest (or a name/value pair whose ``name`` is not its first key) sends the whole
   event through the ``Redactor``'s walk instead;
2. value reports (on the text as step 1 left it, scanned again when it changed) are confirmed by the rule's
   Python expression matched at the reported start; the secret group is replaced where it sits by its
   ``hmac-sha256:`` form (hashed decoded, as the value was before JSON escaping).

Free text (a description, a non-JSON ``rawContent``) goes through step 2 as the JSON string it would be.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import hyperscan
import orjson

from spintrail import redact as r
from spintrail.redact import Redactor
from spintrail.secret_rules import KEY_WORDS, VALUE_RULES, ValueRule, ci

__all__ = ["Outcome", "scan_hits", "scrub_json", "scrub_text"]

_HASHED_PREFIX = "hmac-sha256:"
_DECODER = json.JSONDecoder()

# Structural triggers (ids after the value rules'). Each starts where its place starts in the JSON text.
_S_KEY = 0  # "...password...": a key that may name a secret
_S_CREDENTIALS = 1  # "credentials": with a value that is not an account name
_S_CUSTOM_HEADERS = 2
_S_HEADERS = 3
_S_NAME_PAIR = 4  # {"name":"DB_PASSWORD" (or ,"name":...)
_S_K8S_SECRET = 5  # "kind":"Secret"
_S_RAW_CONTENT = 6
_S_PIPELINE = 7
_S_ESCAPE = 8  # \u or \/: bytes as received that the rules may not read as the event they hold
_S_AUTH_KEY = 9  # "basicAuth", "db_pw": a key ending in auth or pw
_S_QUOTE_ESCAPE = 10  # \": a quote in a string (a flattened JSON document, a command)

_KEY_WORD_ALT = "(" + "|".join(ci(w) for w in KEY_WORDS) + ")"
_KEY_WORD = _KEY_WORD_ALT.replace(".?", r"[^A-Za-z0-9\"\\]?")  # api_key, apiKey, api-key
_WS = r"[ \t\r\n]*"
_STRUCTURAL: tuple[tuple[int, str], ...] = (
    (_S_KEY, _KEY_WORD + r'[A-Za-z0-9_./ -]*"' + _WS + ":"),
    # Orca writes the account as "credentials": "prod": only other values are worth a look.
    (
        _S_CREDENTIALS,
        ci("credential") + '[sS]?"' + _WS + ":" + _WS
        + r'([^" \t\r\n]|"([^"]{65}|[^"]*[^a-z0-9_"-][^"]*"|[-_][^"]*"|[^"]*[-_]"|[0-9a-f]{20,64}"))',
    ),
    (_S_CUSTOM_HEADERS, '"customHeaders"' + _WS + ":" + _WS + r"\{"),
    (_S_HEADERS, '"(requestHeaders|headers)"' + _WS + ":" + _WS + r"\{" + _WS + '"'),
    (_S_NAME_PAIR, '"name"' + _WS + ":" + _WS + r'"[^"\\]*' + _KEY_WORD + r'[^"\\]*"'),
    (_S_K8S_SECRET, '"kind"' + _WS + ":" + _WS + '"Secret"'),
    (_S_RAW_CONTENT, '"rawContent"' + _WS + ":" + _WS + '"'),
    (_S_PIPELINE, '"pipeline"' + _WS + ":" + _WS + '"e'),
    (_S_ESCAPE, r"\\[u/]"),
    (_S_AUTH_KEY, "(" + ci("auth") + "|[^A-Za-z]" + ci("pw") + ")" + '"' + _WS + ":"),
    (_S_QUOTE_ESCAPE, r'\\"'),
)
#: Reported once per scan: whether there is one is all that counts (a flattened body holds hundreds).
_SINGLE = frozenset({_S_ESCAPE, _S_QUOTE_ESCAPE})
_NRULES = len(VALUE_RULES)
_RULE_RE: tuple[re.Pattern[str], ...] = tuple(re.compile(r.pattern) for r in VALUE_RULES)
_SECRET_GROUPS = ("s", "dq", "sq", "bare")
#: Query parameters that carry a signature or token under a name the key rules do not know.
_QUERY_SECRET_KEYS = frozenset({"sig", "signature", "x-amz-signature", "x-goog-signature"})
_HASH_RE = re.compile(r"hmac-sha256:[0-9a-f]{64}")
_HASH_ONLY = re.compile(r'"hmac-sha256:[0-9a-f]{64}"')


class _Database:
    """The compiled database and a scratch space per thread (Hyperscan scratch is not shareable)."""

    def __init__(self) -> None:
        expressions: list[bytes] = []
        ids: list[int] = []
        for i, rule in enumerate(VALUE_RULES):
            expressions.append(rule.trigger.encode())
            ids.append(i)
        for sid, expression in _STRUCTURAL:
            expressions.append(expression.encode())
            ids.append(_NRULES + sid)
        self.db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        self.db.compile(
            expressions=expressions,
            ids=ids,
            elements=len(expressions),
            flags=[0 if r.starts_at_key else hyperscan.HS_FLAG_SOM_LEFTMOST for r in VALUE_RULES]
            + [hyperscan.HS_FLAG_SINGLEMATCH if sid in _SINGLE else 0 for sid, _ in _STRUCTURAL],
        )
        self._local = threading.local()

    def scratch(self) -> Any:
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = hyperscan.Scratch(self.db)
        return scratch


_db: _Database | None = None
_db_lock = threading.Lock()


def _database() -> _Database:
    global _db
    if _db is None:
        with _db_lock:
            if _db is None:
                _db = _Database()
    return _db


Hit = tuple[int, int, int]  # (id, start, end) in characters of the scanned text (start: value rules only)
#: The reports of an escape: ``\u`` or ``\/`` (``ESCAPE``), and ``\"`` (once each per scan).
ESCAPE = _NRULES + _S_ESCAPE
QUOTE_ESCAPE = _NRULES + _S_QUOTE_ESCAPE
ESCAPES = frozenset({ESCAPE, QUOTE_ESCAPE})

def scan_hits(text: str, data: bytes | None = None) -> list[Hit]:
    """Every report of the database over ``text`` (offsets in characters), in order of their ends.
    ``data``: ``text`` as UTF-8, when the caller holds it already."""
    if data is None:
        data = text.encode("utf-8", "surrogatepass")
    found: list[Hit] = []
    append = found.append
    db = _database()
    db.db.scan(data, match_event_handler=lambda i, s, e, _f, _c: append((i, s, e)), scratch=db.scratch())
    if found and len(data) != len(text):  # non-ASCII: byte offsets to character offsets
        cache: dict[int, int] = {}

        def char(off: int) -> int:
            got = cache.get(off)
            if got is None:
                got = cache[off] = len(data[:off].decode("utf-8", "surrogatepass"))
            return got

        found = [(i, char(s), char(e)) for i, s, e in found]
    return found


class Outcome:
    """What scrubbing a JSON text did."""

    __slots__ = ("_hashes", "extra_hashes", "replaced", "text")

    def __init__(
        self, text: str, replaced: int, extra_hashes: set[str], hashes: set[str] | None = None
    ) -> None:
        self.text = text
        self.replaced = replaced
        self.extra_hashes = extra_hashes
        self._hashes = hashes

    def hashes(self) -> set[str]:
        """The ``hmac-sha256:`` values ``text`` carries (known without reading it again when the scrubbed
        text held none: then they are the ones written)."""
        if self._hashes is None:
            self._hashes = hashes_in(self.text)
        return self._hashes


def scrub_json(text: str, redactor: Redactor, hits: list[Hit] | None = None) -> Outcome:
    """Redact the JSON ``text`` of a value (``hits``: its scan, when already done)."""
    if hits is None:
        hits = scan_hits(text)
    extras: set[str] = set()
    if not hits:
        return Outcome(text, 0, extras)
    replaced = 0
    hits = [h for h in hits if h[0] not in ESCAPES]
    if not hits:
        return Outcome(text, 0, extras)
    # With no hash in the text to begin with, the hashes in the result are those written here.
    written: set[str] | None = set() if _HASHED_PREFIX not in text else None
    if any(h[0] >= _NRULES for h in hits):
        splices, full = _structural(text, hits, redactor, extras)
        if full:
            value = json.loads(text)
            _k8s_secret_decoded(value, redactor, extras)
            redacted, replaced = redactor.redact(value)
            text = _dumps(redacted)
            hits = scan_hits(text)
            written = None
        elif splices:
            text, hits, replaced = _apply(text, hits, splices, _memo(redactor))
            if written is not None:
                for new in {s[2] for s in splices}:
                    written |= hashes_in(new)
    text, n = _values(text, hits, redactor, extras, written)
    return Outcome(text, replaced + n, extras, written)


Splice = tuple[int, int, str, int]


def _apply(
    text: str, hits: list[Hit], splices: list[Splice], memo: _Memo
) -> tuple[str, list[Hit], int]:
    """``text`` with the splices made, and the value-rule reports moved with it: those in untouched
    text shift, those in a replaced value are found again by scanning its new text alone."""
    out: list[str] = []
    moved: list[Hit] = []
    cursor = 0
    shift = 0
    count = 0
    # By end (rules whose start Hyperscan does not track report 0 as their start).
    value_hits = sorted((e, s, i) for i, s, e in hits if i < _NRULES)
    k = 0
    for start, end, new, n in splices:
        while k < len(value_hits) and value_hits[k][0] <= start:
            e, s, i = value_hits[k]
            moved.append((i, s + shift if s else 0, e + shift))
            k += 1
        while k < len(value_hits) and value_hits[k][0] <= end:
            k += 1  # inside the replaced value: its new text is scanned instead
        out.append(text[cursor:start])
        at = start + shift
        if not _HASH_ONLY.fullmatch(new):  # a lone hash holds nothing a rule reports
            moved.extend((i, s + at if s else 0, e + at) for i, s, e in memo.value_hits(new))
        out.append(new)
        shift += len(new) - (end - start)
        cursor = end
        count += n
    moved.extend((i, s + shift if s else 0, e + shift) for e, s, i in value_hits[k:])
    out.append(text[cursor:])
    return "".join(out), moved, count


def scrub_text(text: str, redactor: Redactor) -> tuple[str, int]:
    """Free text with the secret part of every value rule's match replaced."""
    quoted = _dumps(text)
    hits = [h for h in scan_hits(quoted) if h[0] < _NRULES]
    if not hits:
        return text, 0
    new, n = _values(quoted, hits, redactor, set())
    return (json.loads(new), n) if n else (text, 0)


def _dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode("utf-8")
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _unescape(raw: str) -> str:
    return json.loads('"' + raw + '"') if "\\" in raw else raw


# --------------------------------------------------------------------------------------------- structure


def _structural(
    text: str, hits: list[Hit], redactor: Redactor, extras: set[str]
) -> tuple[list[tuple[int, int, str, int]], bool]:
    """Step 1: the places a key or known place makes secret, as splices ``(start, end, new text, values
    replaced)`` in text order; and whether the whole value needs the ``Redactor``'s walk instead."""
    splices: list[tuple[int, int, str, int]] = []
    cursor = 0
    memo = _memo(redactor)
    for i, _, end in sorted((h for h in hits if h[0] >= _NRULES), key=lambda h: h[2]):
        kind = i - _NRULES
        if kind in _SINGLE:
            continue
        if kind == _S_K8S_SECRET:
            return [], True
        start = _start(text, kind, end)
        if start < cursor:
            continue
        key = ""
        if kind in (_S_KEY, _S_CREDENTIALS, _S_AUTH_KEY):
            if start <= 0 or text[_back_ws(text, start)] not in "{,":
                continue  # inside a string (an escaped quote), not a key
            colon = text.index(":", text.index('"', start + 1))
            key = _unescape(text[start + 1 : text.rindex('"', start, colon)])
            if redactor._classify(key) == r._PLAIN:
                continue
            vstart = _skip_ws(text, colon + 1)
            kind = _S_KEY
        elif kind in (_S_CUSTOM_HEADERS, _S_HEADERS):
            vstart = text.rindex("{", 0, end)
        elif kind == _S_NAME_PAIR:
            key = _DECODER.raw_decode(text, text.rindex('"', 0, end - 1))[0]
            if redactor._classify(key) != r._SECRET:
                continue
            vstart = _back_ws(text, start)
            if text[vstart] != "{":
                return [], True  # "name" is not the first key: let the walk find its object
        elif kind == _S_RAW_CONTENT:
            vstart = end - 1
        elif kind == _S_PIPELINE:
            vstart = end - 2
        else:
            continue
        value, vend = _DECODER.raw_decode(text, vstart)
        place = memo.digest(kind, key, text[vstart:vend])
        done = memo.places.get(place)
        if done is None:
            added: set[str] = set()
            new, n = _place(kind, key, value, redactor, added)
            done = memo.remember(place, (_dumps(new) if n else "", n, frozenset(added)))
        extras |= done[2]
        if done[1]:
            splices.append((vstart, vend, done[0], done[1]))
            cursor = vend
    return splices, False


class _Memo:
    """What redacted places became, kept across events: the same webhook headers, trigger secret or
    password parameter comes back in every stage event of every execution of a pipeline.

    A place is known by a keyed BLAKE2b digest of its kind, key and text (a random key per process), so
    the text of a secret is never kept; what is kept is its redacted form, the hashes it adds to the index,
    and the value-rule reports of a redacted text. Bounded: emptied when full.
    """

    LIMIT = 4096

    def __init__(self) -> None:
        self._key = os.urandom(32)
        self.places: dict[bytes, tuple[str, int, frozenset[str]]] = {}
        self.scans: dict[str, list[Hit]] = {}

    def digest(self, kind: int, key: str, text: str) -> bytes:
        data = f"{kind}\0{key}\0{text}".encode("utf-8", "surrogatepass")
        return hashlib.blake2b(data, key=self._key, digest_size=16).digest()

    def remember(
        self, place: bytes, done: tuple[str, int, frozenset[str]]
    ) -> tuple[str, int, frozenset[str]]:
        if len(self.places) >= self.LIMIT:
            self.places.clear()
        self.places[place] = done
        return done

    def value_hits(self, redacted: str) -> list[Hit]:
        """The value-rule reports of a redacted place's text."""
        found = self.scans.get(redacted)
        if found is None:
            if len(self.scans) >= self.LIMIT:
                self.scans.clear()
            found = self.scans[redacted] = [h for h in scan_hits(redacted) if h[0] < _NRULES]
        return found


_memos: weakref.WeakKeyDictionary[Redactor, _Memo] = weakref.WeakKeyDictionary()
_memos_lock = threading.Lock()


def _memo(redactor: Redactor) -> _Memo:
    memo = _memos.get(redactor)
    if memo is None:
        with _memos_lock:
            memo = _memos.get(redactor)
            if memo is None:
                memo = _memos[redactor] = _Memo()
    return memo


def _place(kind: int, key: str, value: Any, redactor: Redactor, extras: set[str]) -> tuple[Any, int]:
    """One place of step 1 redacted by the ``Redactor``'s rules for it: ``(new value, values replaced)``."""
    if kind == _S_KEY:
        if redactor._decide(key, value, r._CTX_NORMAL, False) != r._SECRET:
            return value, 0
        if isinstance(value, list):
            new, n = redactor._walk(value, r._CTX_SECRET_VALUE)
        else:
            new, n = redactor._secret_scalar_or_object(value)
        if isinstance(value, dict):  # hashed whole: each string in it is looked for on its own too
            extras.update(redactor.hash_value(v) for v in _strings(value))
        return new, n
    if kind in (_S_CUSTOM_HEADERS, _S_HEADERS):
        ctx = r._CTX_ALL_SECRET if kind == _S_CUSTOM_HEADERS else r._CTX_HEADERS
        new, n = redactor._walk(value, ctx)
        if n and isinstance(value, dict):
            for header in value.values():
                if isinstance(header, str) and header[:6].lower() == "basic ":
                    _basic_forms(header[6:].strip(), redactor, extras)
        return new, n
    if kind == _S_NAME_PAIR:
        return redactor.redact(value)
    if kind == _S_RAW_CONTENT:
        return _embedded_document(value, redactor, extras)
    return _base64_pipeline(value, redactor, extras)


_CREDENTIAL_KEY = re.compile(r'(?i:credentials?)"')


def _back_ws(text: str, at: int) -> int:
    """The position of the last character before ``at`` that is not whitespace."""
    at -= 1
    while at > 0 and text[at] in " \t\r\n":
        at -= 1
    return at


def _skip_ws(text: str, at: int) -> int:
    while text[at] in " \t\r\n":
        at += 1
    return at


def _start(text: str, kind: int, end: int) -> int:
    """Where the place a structural report ends at ``end`` starts (-1: not one after all)."""
    if kind == _S_NAME_PAIR:
        return text.rfind('"name"', 0, end)
    if kind == _S_CREDENTIALS:
        keys = list(_CREDENTIAL_KEY.finditer(text, max(0, end - 300), end))
        if not keys:
            return -1
        close = keys[-1].end() - 1
    elif kind in (_S_KEY, _S_AUTH_KEY):
        close = text.rindex('"', 0, end)
    else:
        return end  # a literal place: where it ends will do
    # a key: its opening quote (a key holding an escaped quote is not looked into)
    at = text.rfind('"', 0, close)
    return at if at > 0 and text[at - 1] != "\\" else -1


def _embedded_document(value: str, redactor: Redactor, extras: set[str]) -> tuple[str, int]:
    """A ``rawContent`` string: a JSON document is redacted as an event (free text is left to step 2)."""
    if value.lstrip()[:1] not in ("{", "["):
        return value, 0
    try:
        parsed = json.loads(value)
    except ValueError:
        return value, 0
    if not isinstance(parsed, dict | list):
        return value, 0
    done = scrub_json(_dumps(parsed), redactor)
    extras |= done.extra_hashes
    return (done.text, done.replaced) if done.replaced else (value, 0)


_BASE64ISH = re.compile(r"[A-Za-z0-9+/=\s]+")


def _base64_pipeline(value: str, redactor: Redactor, extras: set[str]) -> tuple[str, int]:
    """A ``savePipeline`` stage's base64 pipeline config: decoded, redacted, encoded again when changed."""
    if len(value) < 8 or not _BASE64ISH.fullmatch(value):
        return value, 0
    try:
        parsed = json.loads(base64.b64decode(value).decode("utf-8"))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return value, 0
    if not isinstance(parsed, dict):
        return value, 0
    done = scrub_json(_dumps(parsed), redactor)
    extras |= done.extra_hashes
    if not done.replaced:
        return value, 0
    return base64.b64encode(done.text.encode("utf-8")).decode("ascii"), done.replaced


def _basic_forms(credential: str, redactor: Redactor, extras: set[str]) -> None:
    """Index what a Basic credential decodes to (``user:password``) and its password, for look-ups."""
    try:
        decoded = base64.b64decode(credential, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return
    extras.add(redactor.hash_value(decoded))
    if ":" in decoded:
        extras.add(redactor.hash_value(decoded.split(":", 1)[1]))


def _strings(value: Any) -> Iterator[str]:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if node:
                yield node
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _dicts(value: Any) -> Iterator[dict[str, Any]]:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack.extend(v for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, dict | list))


def _k8s_secret_decoded(value: Any, redactor: Redactor, extras: set[str]) -> None:
    """Index the decoded form of a Kubernetes Secret's ``data`` values (people look for the value itself)."""
    for node in _dicts(value):
        data = node.get("data")
        if node.get("kind") != "Secret" or not isinstance(data, dict):
            continue
        for v in data.values():
            if not isinstance(v, str) or not v:
                continue
            try:
                decoded = base64.b64decode(v, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                continue
            extras.add(redactor.hash_value(decoded))
            if decoded != decoded.strip():  # files often end in a newline nobody types
                extras.add(redactor.hash_value(decoded.strip()))


# --------------------------------------------------------------------------------------------- values


_STARTS_AT_KEY = tuple(r.starts_at_key for r in VALUE_RULES)
_KEY_CHAR = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


def _key_start(text: str, end: int) -> int:
    """Where the key before the ``:`` or ``=`` at ``end - 1`` starts (past a quote and blanks)."""
    at = end - 2
    while at >= 0 and text[at] in " \t":
        at -= 1
    if at >= 0 and text[at] == "'":
        at -= 1
    elif at >= 1 and text[at] == '"' and text[at - 1] == "\\":
        at -= 2
    while at >= 0 and text[at] in _KEY_CHAR:
        at -= 1
    return at + 1


def _matches(text: str, hits: list[Hit]) -> list[tuple[int, re.Match[str]]]:
    """The confirmed matches of the value rules reported, by start: each rule's expression is matched
    where Hyperscan saw the rule's trigger start."""
    found: list[tuple[int, int, re.Match[str]]] = []
    seen: set[tuple[int, int]] = set()
    for i, start, end in hits:
        if i >= _NRULES:
            continue
        if _STARTS_AT_KEY[i]:
            start = _key_start(text, end)
        if (i, start) in seen:
            continue
        seen.add((i, start))
        m = _RULE_RE[i].match(text, start)
        if m is not None:
            found.append((start, i, m))
    found.sort(key=lambda f: (f[0], f[1]))
    return [(i, m) for _, i, m in found]


def _values(
    text: str, hits: list[Hit], redactor: Redactor, extras: set[str], written: set[str] | None = None
) -> tuple[str, int]:
    """Step 2: every confirmed value-rule match has its secret group replaced by its hash (each hash
    written is added to ``written``)."""
    out: list[str] = []
    cursor = 0
    count = 0
    for i, m in _matches(text, hits):
        if m.start() < cursor:
            continue
        rule: ValueRule = VALUE_RULES[i]
        group = next(g for g in _SECRET_GROUPS if g in m.re.groupindex and m.group(g) is not None)
        gstart, gend = m.span(group)
        secret = _unescape(text[gstart:gend])
        if not secret or _HASHED_PREFIX in secret:
            continue
        if rule.key_group is not None:
            kstart = m.start(rule.key_group)
            while kstart > 0 and (text[kstart - 1].isalnum() or text[kstart - 1] in "_.-"):
                kstart -= 1
            if kstart > 0 and text[kstart - 1] == ":":
                continue  # a part of a colon-separated name (arn:...:secret:db-pass), not a key
            key = text[kstart : m.end(rule.key_group)]
            kind = redactor._classify(key)
            if kind == r._PLAIN and not (rule.id == "url-query-secret" and key.lower() in _QUERY_SECRET_KEYS):
                continue
            if kind == r._CREDENTIAL and redactor.looks_like_account(secret):
                continue
        if rule.id == "authorization-header" and text[max(0, gstart - 6) : gstart].lower() == "basic ":
            _basic_forms(secret, redactor, extras)
        out.append(text[cursor:gstart])
        hashed = redactor.hash_value(secret)
        out.append(hashed)
        if written is not None:
            written.add(hashed)
        cursor = gend
        count += 1
        if rule.index_whole:
            extras.add(redactor.hash_value(_unescape(m.group(0))))
    if not count:
        return text, 0
    out.append(text[cursor:])
    return "".join(out), count


def hashes_in(text: str) -> set[str]:
    """The ``hmac-sha256:`` values a text carries."""
    return set(_HASH_RE.findall(text)) if _HASHED_PREFIX in text else set()
