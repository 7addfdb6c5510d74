"""Secret redaction: replace secret values in an event with a keyed HMAC before it is indexed, stored in
normalized fields or forwarded.

Every secret value becomes ``hmac-sha256:<hex>`` computed with a per-installation key, so two events carrying
the same secret still show the same hash (an investigator can correlate them, or hash a known value and
search for it) while the value itself never leaves the receiver. Like any unsalted-per-value hash, values
from a small space (PINs, short dictionary words) can be brute-forced by someone who holds the key.

What counts as secret
---------------------
*Key patterns* (always on). A key is first normalised to ``snake_case`` (``apiKey`` -> ``api_key``,
``X-Hub-Signature-256`` -> ``x_hub_signature_256``), then searched case-insensitively with each pattern of
:data:`DEFAULT_SECRET_KEY_PATTERNS` (plus ``extra_patterns``, which are also tried on the raw key). To keep
false positives out, a default-pattern match is ignored when the last word of the key (trailing numbers
dropped) says the value is *about* a secret rather than the secret itself: ``secretName``, ``secretKeyRef``,
``passwordFile``, ``tokenType``, ``inputTokenCount``, ``credentialsId``, ``authorizationUrl`` ... (see
``_SAFE_LAST_WORDS``). The token pattern only matches a word that *ends* in ``token``, so ``tokenizer`` and
``maxTokens`` are kept. ``extra_patterns`` are never overridden by these exemptions. Keys longer than 100
characters are messages used as map keys (orca's ``expressionEvaluationSummary``), not field names, and are
never matched.

``credentials``: in orca stage contexts this is the Spinnaker account name (``"prod"``), which the audit
record needs. A ``credential(s)`` value is therefore only redacted when it is an object/list or a string that
does not look like a Spinnaker account name (``^[a-z0-9]+([-a-z0-9_]*[a-z0-9])?$``, at most 64 characters,
not a long hex blob).

A dict with a secret-looking ``name`` (``{"name": "DB_PASSWORD", "value": ...}``: Kubernetes env vars,
pipeline ``parameterConfig``) has its ``value``, ``default`` and ``options`` redacted.

*Known Spinnaker places* (``known_places=True``), redacted whatever their key names:

* all values of any ``customHeaders`` object (webhook and preconfigured-webhook stage contexts);
* ``requestHeaders`` / ``headers`` entries named ``Authorization``, ``Proxy-Authorization``, ``Cookie``,
  ``Set-Cookie``, ``X-Hub-Signature*``, anything with ``signature`` in its name, or matching a key pattern;
* ``trigger.secret`` and ``trigger.other.secret``;
* Kubernetes ``Secret`` manifests anywhere (``manifests[]``, ``outputs.manifests[]``, kato result objects):
  every value of ``data`` and ``stringData`` and the ``kubectl.kubernetes.io/last-applied-configuration``
  annotation (which repeats the data);
* ``rawContent`` strings (raw webhook bodies): parsed as JSON and redacted like the event (re-serialized only
  when something was replaced), or passed through :meth:`Redactor.redact_text` when not JSON;
* base64 ``pipeline`` strings (``savePipeline`` stage contexts carry the whole pipeline config, including
  trigger secrets): decoded, redacted and re-encoded only when something was replaced.

Value rules: strings are hashed over their UTF-8 bytes; numbers and objects over their canonical JSON (sorted
keys, no spaces), so ``5`` and ``"5"`` hash alike; lists are redacted element by element (their shape is
kept); ``None``, booleans, empty strings and values that are already ``hmac-sha256:`` hashes are left alone.

The walk is iterative (no recursion limit on deeply nested input), copies the input (it is never mutated),
keeps key order, and caches the per-key decision, so multi-megabyte events cost one pass.

These are the decisions; finding where they apply is ``secretscan.py``'s compiled scan, which calls them
for each place it reports and walks a whole event only for a Kubernetes Secret manifest (or with
``extra_patterns``). Secrets inside strings (private keys, tokens, credentials in URLs and commands) are the
value rules of ``secret_rules.py``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from spintrail.secret_rules import KEY_RULES

__all__ = ["DEFAULT_SECRET_KEY_PATTERNS", "HASH_PREFIX", "Redactor"]

HASH_PREFIX = "hmac-sha256:"

#: Regexes searched (case-insensitively) in the snake_case form of a key (``secret_rules.KEY_RULES``).
DEFAULT_SECRET_KEY_PATTERNS: tuple[str, ...] = tuple(rule.pattern for rule in KEY_RULES)

#: A default-pattern match is ignored when the key's last word (trailing numbers dropped) is one of these:
#: the value names, points at, counts or describes a secret instead of being one.
_SAFE_LAST_WORDS = frozenset(
    {
        "name", "names", "ref", "refs", "reference", "id", "ids", "type", "types", "kind", "count", "length",
        "len", "size", "file", "files", "path", "paths", "dir", "url", "uri", "urls", "endpoint", "expiry",
        "expires", "expiration", "expired", "at", "time", "timestamp", "ttl", "age", "policy", "enabled",
        "required", "field", "fields", "hint", "prompt", "label", "description", "format", "mode", "version",
        "location", "provider", "source", "env", "present", "set", "exists", "valid", "changed", "arn",
        "arns",
    }
)  # fmt: skip

#: Keys that match a pattern but, in Kubernetes manifests, only list references to secrets.
_SAFE_KEYS = frozenset({"image_pull_secrets"})

#: ``secret: {secretName: ..., items: [...]}`` (volume source) is a reference, not a secret.
_SECRET_REFERENCE_FIELDS = frozenset({"secretName", "name", "items", "defaultMode", "optional"})

_ACCOUNT_NAME = re.compile(r"[a-z0-9]+([-a-z0-9_]*[a-z0-9])?")
_HEX_BLOB = re.compile(r"[0-9a-fA-F]{20,}")
_HASHED = re.compile(r"hmac-sha256:[0-9a-f]{64}")
_BASE64ISH = re.compile(r"[A-Za-z0-9+/=\s]+")

_HEADER_NAMES = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
_NAME_VALUE_SECRET_FIELDS = ("value", "default", "defaultValue", "options")
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"

_CAMEL_1 = re.compile(r"([a-z0-9])([A-Z])")
_CAMEL_2 = re.compile(r"([A-Z]+)([A-Z][a-z])")
_NON_WORD = re.compile(r"[^A-Za-z0-9]+")

# Key decision kinds.
_PLAIN = 0
_SECRET = 1
_CREDENTIAL = 2

# Walk contexts: how to treat the keys of the container being visited.
_CTX_NORMAL = 0
_CTX_ALL_SECRET = 1  # every value of this dict is secret (customHeaders, Secret data)
_CTX_HEADERS = 2  # header maps: header-name rules apply
_CTX_TRIGGER = 3  # a trigger object: "secret" and "other.secret"
_CTX_TRIGGER_OTHER = 4
_CTX_K8S_SECRET_METADATA = 5
_CTX_K8S_SECRET_ANNOTATIONS = 6
_CTX_SECRET_VALUE = 7  # the container itself is a secret value being hashed element-wise (lists)

_CACHE_LIMIT = 50_000
_MAX_SHARED_DEPTH = 200
_SCALARS = frozenset({str, int, float, bool, type(None)})

#: Keys whose values get a context of their own (or are embedded documents): a dict holding any of them is
#: always visited key by key.
_CONTEXT_KEYS = frozenset(
    {
        "customHeaders", "requestHeaders", "headers", "trigger", "other", "data", "stringData", "metadata",
        "annotations", "rawContent", "pipeline",
    }
)  # fmt: skip
_MAX_KEY_LENGTH = 100


def _snake(key: str) -> str:
    s = _CAMEL_1.sub(r"\1_\2", key)
    s = _CAMEL_2.sub(r"\1_\2", s)
    return _NON_WORD.sub("_", s).strip("_").lower()


def _canonical_json(value: Any) -> str:
    """Canonical JSON (sorted keys, compact, UTF-8) built without recursion, for arbitrarily deep values."""
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Literal):
            out.append(item.text)
        elif isinstance(item, dict):
            parts: list[Any] = [_Literal("{")]
            for i, k in enumerate(sorted(item, key=str)):
                if i:
                    parts.append(_Literal(","))
                parts.append(_Literal(json.dumps(str(k), ensure_ascii=False) + ":"))
                parts.append(item[k])
            parts.append(_Literal("}"))
            stack.extend(reversed(parts))
        elif isinstance(item, list | tuple):
            parts = [_Literal("[")]
            for i, v in enumerate(item):
                if i:
                    parts.append(_Literal(","))
                parts.append(v)
            parts.append(_Literal("]"))
            stack.extend(reversed(parts))
        else:
            out.append(json.dumps(item, ensure_ascii=False))
    return "".join(out)


class _Literal:
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class Redactor:
    """Replaces secret values in events and free text with ``hmac-sha256:<hex>`` under one key."""

    def __init__(self, key: bytes, *, extra_patterns: Sequence[str] = (), known_places: bool = True) -> None:
        if not isinstance(key, bytes | bytearray):
            raise TypeError(f"redaction key must be bytes, got {type(key).__name__}")
        if len(key) < 16:
            raise ValueError(f"redaction key must be at least 16 bytes, got {len(key)}")
        self._key = bytes(key)
        # HMAC (RFC 2104) from two SHA-256 states keyed once: copying them costs a third of a one-shot
        # ``hmac.digest``, which sets the key up again for every value.
        block = hashlib.sha256(self._key).digest() if len(self._key) > 64 else self._key
        block = block.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
        self._known_places = known_places
        self._defaults = [re.compile(p, re.IGNORECASE) for p in DEFAULT_SECRET_KEY_PATTERNS]
        extras: list[re.Pattern[str]] = []
        for p in extra_patterns:
            try:
                extras.append(re.compile(p, re.IGNORECASE))
            except re.error as exc:
                raise ValueError(f"invalid secret key pattern {p!r}: {exc}") from exc
        self._extras = extras
        self._cache: dict[str, int] = {}
        # Keys known to be plain wherever they appear in an ordinary dict: a dict whose keys all are (and
        # whose "name" is not secret-looking) is copied whole, its children visited, without a per-key rule.
        self._plain: set[str] = set()

    # ------------------------------------------------------------------ hashing

    def hash_value(self, value: str) -> str:
        """``hmac-sha256:<hex>`` of the UTF-8 bytes of ``value`` under this installation's key."""
        data = value.encode("utf-8", "surrogatepass")  # JSON may carry lone surrogate escapes
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return HASH_PREFIX + outer.hexdigest()

    def _hash_any(self, value: Any) -> str:
        if isinstance(value, str):
            return self.hash_value(value)
        return self.hash_value(_canonical_json(value))

    # ------------------------------------------------------------------ key rules

    def _classify(self, key: str) -> int:
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        result = self._classify_uncached(key)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = result
        return result

    def _classify_uncached(self, key: str) -> int:
        if len(key) > _MAX_KEY_LENGTH:
            return _PLAIN  # a message used as a map key (orca's expressionEvaluationSummary), not a field
        snake = _snake(key)
        for pattern in self._extras:
            if pattern.search(snake) or pattern.search(key):
                return _SECRET
        if snake in _SAFE_KEYS or not any(p.search(snake) for p in self._defaults):
            return _PLAIN
        words = snake.split("_")
        while len(words) > 1 and words[-1].isdigit():
            words.pop()
        if words[-1] in _SAFE_LAST_WORDS:
            return _PLAIN
        if words[-1] in ("credential", "credentials"):
            return _CREDENTIAL
        return _SECRET

    def _is_secret_header(self, name: str) -> bool:
        lowered = name.lower()
        if lowered in _HEADER_NAMES or "signature" in lowered:
            return True
        return self._classify(name) == _SECRET

    @staticmethod
    def looks_like_account(value: str) -> bool:
        """Whether a ``credentials`` value is a Spinnaker account name (kept) rather than a secret."""
        return len(value) <= 64 and bool(_ACCOUNT_NAME.fullmatch(value)) and not _HEX_BLOB.fullmatch(value)

    # ------------------------------------------------------------------ walk

    def redact(self, event: Any) -> tuple[Any, int]:
        """Return ``event`` with its secrets replaced, and the number of values replaced.

        The input is never mutated: every dict and list on the way to a replaced value is a new one, while
        parts with nothing replaced are the input's own (so an event with no secret comes back as itself).
        """
        t = type(event)
        if t is dict or t is list:
            return self._shared(event, 0)
        return self._walk(event, _CTX_NORMAL)

    def _shared(self, value: Any, depth: int) -> tuple[Any, int]:
        """Redact an ordinary (context-free) dict or list, copying only what changes.

        Recursive for speed; below ``_MAX_SHARED_DEPTH`` levels (and for containers in a context of their
        own) the iterative ``_walk`` takes over, so nesting depth is never a problem.
        """
        if depth > _MAX_SHARED_DEPTH:
            return self._walk(value, _CTX_NORMAL)
        plain = self._plain
        count = 0
        if type(value) is list:
            changed, count = self._changed_children(enumerate(value), depth)
            if changed is None:
                return value, 0
            out_list = list(value)
            for i, new in changed.items():
                out_list[i] = new
            return out_list, count
        name = value.get("name")
        secret_name_pair = type(name) is str and self._classify(name) == _SECRET
        if not secret_name_pair and value.keys() <= plain:
            changed, count = self._changed_children(value.items(), depth)
            if changed is None:
                return value, 0
            out = dict(value)
            out.update(changed)
            return out, count
        # A dict a rule or known place concerns: every key is decided, as in ``_walk``.
        out = {}
        is_changed = False
        known = self._known_places
        k8s_secret = known and value.get("kind") == "Secret"
        for k, v in value.items():
            t = type(v)
            if not secret_name_pair and k in plain:
                if t is dict or t is list:
                    new, n = self._shared(v, depth + 1)
                elif t in _SCALARS or not isinstance(v, dict | list | tuple):
                    out[k] = v
                    continue
                else:
                    new, n = self._walk(v, _CTX_NORMAL)
            else:
                if isinstance(k, str):
                    self._learn(k)
                decision = self._decide(k, v, _CTX_NORMAL, secret_name_pair)
                if decision == _SECRET:
                    if isinstance(v, list | tuple):
                        new, n = self._walk(v, _CTX_SECRET_VALUE)
                    else:
                        new, n = self._secret_scalar_or_object(v)
                elif not isinstance(v, dict | list | tuple):
                    new, n = v, 0
                    if known and t is str:
                        if k == "rawContent":
                            new, n = self._redact_raw(v)
                        elif k == "pipeline":
                            new, n = self._redact_base64_pipeline(v)
                else:
                    ctx = self._child_context(k, v, k8s_secret, _CTX_NORMAL)
                    if ctx == _CTX_NORMAL and (t is dict or t is list):
                        new, n = self._shared(v, depth + 1)
                    else:
                        new, n = self._walk(v, ctx)
            out[k] = new
            if new is not v:
                count += n
                is_changed = True
        return (out, count) if is_changed else (value, 0)

    def _changed_children(
        self, items: Iterable[tuple[Any, Any]], depth: int
    ) -> tuple[dict[Any, Any] | None, int]:
        """Redact the children (``(key or index, value)`` pairs) of an ordinary dict or list whose every key
        is plain: the ones that changed, by key or index (``None``: none did), and the values replaced."""
        changed: dict[Any, Any] | None = None
        count = 0
        for k, v in items:
            t = type(v)
            if t is dict or t is list:
                new, n = self._shared(v, depth + 1)
            elif t in _SCALARS or not isinstance(v, dict | list | tuple):
                continue
            else:
                new, n = self._walk(v, _CTX_NORMAL)
            if new is not v:
                count += n
                if changed is None:
                    changed = {}
                changed[k] = new
        return changed, count

    def _walk(self, event: Any, context: int) -> tuple[Any, int]:
        """Redact ``event`` read in ``context``: an iterative walk returning a full copy."""
        holder: list[Any] = [None]
        count = 0
        # (value, container to write into, slot in that container, context of value's own children)
        stack: list[tuple[Any, Any, Any, int]] = [(event, holder, 0, context)]
        known = self._known_places
        plain = self._plain
        while stack:
            value, parent, slot, ctx = stack.pop()
            if isinstance(value, dict):
                secret_name_pair = (
                    ctx == _CTX_NORMAL
                    and isinstance(value.get("name"), str)
                    and self._classify(value["name"]) == _SECRET
                )
                if ctx == _CTX_NORMAL and not secret_name_pair and value.keys() <= plain:
                    out = dict(value)
                    parent[slot] = out
                    for k, v in out.items():
                        t = type(v)
                        if t is dict or t is list or (t is not str and isinstance(v, dict | list | tuple)):
                            stack.append((v, out, k, _CTX_NORMAL))
                    continue
                out = {}
                parent[slot] = out
                k8s_secret = known and value.get("kind") == "Secret"
                shortcut = ctx == _CTX_NORMAL and not secret_name_pair
                for k, v in value.items():
                    if shortcut:
                        if k in plain:  # as the rules below would decide, without asking them
                            t = type(v)
                            container = t is dict or t is list
                            if container or (t not in _SCALARS and isinstance(v, dict | list | tuple)):
                                out[k] = None
                                stack.append((v, out, k, _CTX_NORMAL))
                            else:
                                out[k] = v
                            continue
                        if isinstance(k, str):
                            self._learn(k)
                    decision = self._decide(k, v, ctx, secret_name_pair)
                    if decision == _SECRET:
                        if isinstance(v, list | tuple):
                            out[k] = None
                            stack.append((v, out, k, _CTX_SECRET_VALUE))
                        else:
                            new, n = self._secret_scalar_or_object(v)
                            out[k] = new
                            count += n
                        continue
                    if not isinstance(v, dict | list | tuple):
                        if known and isinstance(v, str):
                            if k == "rawContent":
                                v, n = self._redact_raw(v)
                                count += n
                            elif k == "pipeline":
                                v, n = self._redact_base64_pipeline(v)
                                count += n
                        out[k] = v
                        continue
                    out[k] = None
                    stack.append((v, out, k, self._child_context(k, v, k8s_secret, ctx)))
            elif isinstance(value, list | tuple):
                lst: list[Any] = [None] * len(value)
                parent[slot] = lst
                for i, v in enumerate(value):
                    if ctx == _CTX_SECRET_VALUE:
                        if isinstance(v, list | tuple):
                            stack.append((v, lst, i, _CTX_SECRET_VALUE))
                        else:
                            lst[i], n = self._secret_scalar_or_object(v)
                            count += n
                    else:
                        t = type(v)
                        if t is dict or t is list or (t is not str and isinstance(v, dict | list | tuple)):
                            stack.append((v, lst, i, _CTX_NORMAL))
                        else:
                            lst[i] = v
            else:
                parent[slot] = value
        return holder[0], count

    def _learn(self, key: str) -> None:
        """Remember ``key`` as plain in ordinary dicts when no rule or known place concerns it."""
        if key not in _CONTEXT_KEYS and self._classify(key) == _PLAIN:
            if len(self._plain) >= _CACHE_LIMIT:
                self._plain.clear()
            self._plain.add(key)

    def _decide(self, key: Any, value: Any, ctx: int, secret_name_pair: bool) -> int:
        """``_SECRET`` when the value under ``key`` must be hashed, else ``_PLAIN``."""
        if value is None or isinstance(value, bool):
            return _PLAIN
        skey = key if isinstance(key, str) else str(key)
        if ctx == _CTX_ALL_SECRET:
            return _SECRET
        if ctx == _CTX_HEADERS:
            return _SECRET if self._is_secret_header(skey) else _PLAIN
        if ctx in (_CTX_TRIGGER, _CTX_TRIGGER_OTHER) and skey == "secret":
            return _SECRET
        if ctx == _CTX_K8S_SECRET_ANNOTATIONS and skey == _LAST_APPLIED:
            return _SECRET
        if secret_name_pair and skey in _NAME_VALUE_SECRET_FIELDS:
            return _SECRET
        kind = self._classify(skey)
        if kind == _PLAIN:
            return _PLAIN
        if kind == _CREDENTIAL:
            if isinstance(value, str) and self.looks_like_account(value):
                return _PLAIN
            return _SECRET
        if (
            isinstance(value, dict)
            and _snake(skey) == "secret"
            and value
            and value.keys() <= _SECRET_REFERENCE_FIELDS
        ):
            return _PLAIN  # Kubernetes secret volume source: names a Secret, holds no data
        return _SECRET

    def _child_context(self, key: Any, value: Any, in_k8s_secret: bool, ctx: int) -> int:
        if not self._known_places or not isinstance(value, dict):
            return _CTX_NORMAL
        if key == "customHeaders":
            return _CTX_ALL_SECRET
        if key in ("requestHeaders", "headers"):
            return _CTX_HEADERS
        if key == "trigger":
            return _CTX_TRIGGER
        if key == "other" and ctx == _CTX_TRIGGER:
            return _CTX_TRIGGER_OTHER
        if in_k8s_secret:
            if key in ("data", "stringData"):
                return _CTX_ALL_SECRET
            if key == "metadata":
                return _CTX_K8S_SECRET_METADATA
        if ctx == _CTX_K8S_SECRET_METADATA and key == "annotations":
            return _CTX_K8S_SECRET_ANNOTATIONS
        return _CTX_NORMAL

    def _secret_scalar_or_object(self, value: Any) -> tuple[Any, int]:
        if value is None or isinstance(value, bool) or value == "":
            return value, 0
        if isinstance(value, str) and _HASHED.fullmatch(value):
            return value, 0
        return self._hash_any(value), 1

    # ------------------------------------------------------------------ embedded documents

    def _redact_raw(self, raw: str) -> tuple[str, int]:
        stripped = raw.lstrip()
        if stripped[:1] in ("{", "["):
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict | list):
                redacted, n = self.redact(parsed)
                if n == 0:
                    return raw, 0
                return json.dumps(redacted, ensure_ascii=False, separators=(",", ":")), n
        return self._redact_text_count(raw)

    def _redact_base64_pipeline(self, value: str) -> tuple[str, int]:
        if len(value) < 8 or not value.startswith("e") or not _BASE64ISH.fullmatch(value):
            return value, 0
        try:
            decoded = base64.b64decode(value, validate=False).decode("utf-8")
            parsed = json.loads(decoded)
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return value, 0
        if not isinstance(parsed, dict):
            return value, 0
        redacted, n = self.redact(parsed)
        if n == 0:
            return value, 0
        text = json.dumps(redacted, ensure_ascii=False, separators=(",", ":"))
        return base64.b64encode(text.encode("utf-8")).decode("ascii"), n

    # ------------------------------------------------------------------ free text

    def redact_text(self, text: str) -> str:
        """Free text with the secret part of every value rule's match (``secret_rules.VALUE_RULES``:
        private keys, credentials in URLs, tokens, ``password=...``, ``Authorization: Bearer ...``)
        replaced; everything else is returned unchanged."""
        return self._redact_text_count(text)[0]

    def _redact_text_count(self, text: str) -> tuple[str, int]:
        from spintrail.secretscan import scrub_text

        return scrub_text(text, self)
