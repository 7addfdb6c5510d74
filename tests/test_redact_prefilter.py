"""The redaction prefilter: an event it passes unwalked is one the full walk would not have changed.

``scrub.may_need_redaction`` looks at an event's bytes before any walk; when it finds nothing, the event and
its bytes are kept as they are. These tests hold it against the full walk (``prefilter=False``) on events
built from keys and values chosen to sit on the edges of every rule: spellings of secret keys, words that
only look like them, account names under ``credentials``, case-folding characters, escapes, embedded
documents.
"""

from __future__ import annotations

import base64
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spintrail.scrub import Scrubber, may_need_redaction

KEY = b"prefilter-test-key-0123456789abcdef"

SECRET_KEYS = [
    "password", "dbPassword", "PASSWORD", "passwd", "passphrase", "pwd", "user_pwd", "secret",
    "clientSecret", "token", "githubToken", "x-gitlab-token", "auth", "basicAuth", "oAuth", "AUTH_",
    "authorization", "Proxy-Authorization", "apiKey", "API-KEY", "api key", "api\tkey", "x_api_key",
    "privateKey", "accessKey", "signingKey", "encryption_key", "masterKey", "credentials", "credential",
    "awsCredentials", "AWSCredentials", "AWSCREDENTIALS", "xcredentials", "X-Hub-Signature-256",
    "cookie", "Set-Cookie", "jwt", "id_jwt", "connectionString", "Connection-String",
    "\u017fecret", "to\u212aen", "customHeaders", "requestHeaders", "headers", "trigger", "other",
    "rawContent", "pipeline", "kind", "data", "stringData", "metadata", "annotations",
    "kubectl.kubernetes.io/last-applied-configuration", "name", "value", "default", "options",
]  # fmt: skip
PLAIN_KEYS = [
    "application", "account", "region", "stage", "buildNumber", "url", "user", "status", "type",
    "authentication", "tokenizer", "maxTokens", "secretName", "passwordFile", "credentialsId",
    "access_key_id", "keyId", "key", "pipelineConfigId", "passed", "compass", "caf\u00e9",
]  # fmt: skip


def _b64(value: Any) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


VALUES = [
    "prod", "Prod", "prod-east", "a1b2c3d4e5f6a7b8c9d0e1f2", "hunter2", "Bearer abc.def",
    "Authorization: Bearer x", "password=foo", "token: 'x'", "https://u:p@host/x", "https://host/x",
    "user@example.com", "Secret", "ok", "", "caf\u00e9", "\u017f", "line\nnext", 'quote " inside',
    "back\\slash", "hmac-sha256:" + "ab" * 32, '{"token": "x"}', '{"a": 1}', "not json {",
    _b64({"trigger": {"secret": "s"}}), _b64({"stages": []}), "e30=", 5, 1.5, True, False, None,
]  # fmt: skip

keys = st.sampled_from(SECRET_KEYS + PLAIN_KEYS)
scalars = st.sampled_from(VALUES)
documents = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)
events = st.dictionaries(keys, documents, min_size=1, max_size=6).map(
    lambda d: {"details": {"type": "orca:stage:complete", "application": "app"}, "content": d}
)
#: Mostly plain content with account-name credentials: events the prefilter lets through unwalked, where
#: its one rule of its own (which ``credentials`` occurrences are account names) decides.
CREDENTIAL_KEYS = [
    "credentials", "credential", "Credentials", "CREDENTIALS", "awsCredentials", "AWSCredentials",
    "AWSCREDENTIALS", "xcredentials", "aws_credentials", "aws-Credentials", "gcpCREDENTIALS", "credentials2",
    "credentials_", "CRedentials", "credentialsId",
]  # fmt: skip
QUIET_VALUES = [
    "prod", "Prod", "prod-east", "prod_2", "a1b2c3d4e5f6a7b8c9d0e1f2", "-prod", "x" * 65, "ok", "",
    "https://host/x", "user@example.com", "caf\u00e9", 7, None, True,
]  # fmt: skip
quiet_documents = st.recursive(
    st.sampled_from(QUIET_VALUES),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(CREDENTIAL_KEYS + PLAIN_KEYS), children, max_size=4),
    max_leaves=12,
)
quiet_events = st.dictionaries(
    st.sampled_from(CREDENTIAL_KEYS + PLAIN_KEYS), quiet_documents, min_size=1
).map(lambda d: {"details": {"type": "orca:stage:complete"}, "content": d})
encodings = st.sampled_from(
    [
        {"ensure_ascii": False, "separators": (",", ":")},
        {"ensure_ascii": False},
        {"ensure_ascii": True, "separators": (",", ":")},
        {"ensure_ascii": False, "indent": 2},
    ]
)


def _both(event: dict[str, Any], raw: bytes, raw_events: str) -> tuple[Any, Any]:
    fast = Scrubber(KEY, raw_events=raw_events).scrub(json.loads(raw), raw)
    slow = Scrubber(KEY, raw_events=raw_events, prefilter=False).scrub(json.loads(raw), raw)
    return fast, slow


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event=events, encoding=encodings, raw_events=st.sampled_from(["redact", "keep"]))
def test_the_prefilter_only_skips_events_the_walk_leaves_alone(
    event: dict[str, Any], encoding: dict[str, Any], raw_events: str
) -> None:
    raw = json.dumps(event, **encoding).encode("utf-8")
    fast, slow = _both(event, raw, raw_events)
    assert fast.event == slow.event
    assert fast.replaced == slow.replaced
    assert fast.secret_hashes == slow.secret_hashes
    if not may_need_redaction(raw):
        assert slow.replaced == 0 and not slow.secret_hashes
        assert fast.raw == raw  # kept exactly as received


#: Keys that only change how the keys below them are read; the rest of SECRET_KEYS hash their own value.
STRUCTURAL = {
    "kubectl.kubernetes.io/last-applied-configuration", "customHeaders", "trigger", "other",
    "requestHeaders", "headers", "rawContent", "pipeline", "kind", "data", "stringData", "metadata",
    "annotations", "name", "value", "default", "options",
}  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event=quiet_events, encoding=encodings)
def test_the_prefilter_reads_credentials_as_the_walk_does(
    event: dict[str, Any], encoding: dict[str, Any]
) -> None:
    raw = json.dumps(event, **encoding).encode("utf-8")
    fast, slow = _both(event, raw, "redact")
    assert fast.event == slow.event and fast.replaced == slow.replaced
    if not may_need_redaction(raw):
        assert slow.replaced == 0 and fast.raw == raw


@pytest.mark.parametrize("key", [k for k in SECRET_KEYS if k not in STRUCTURAL])
def test_every_secret_key_spelling_sends_the_event_through_the_walk(key: str) -> None:
    raw = json.dumps({"details": {"type": "build"}, "content": {key: "Hunter2!"}}).encode()
    assert may_need_redaction(raw)
    scrubbed = Scrubber(KEY).scrub(json.loads(raw), raw)
    # The walk decides credential(s) by the value; the case-folding spellings are only caught by the
    # prefilter's caution (the walk splits words on non-ASCII letters).
    if key not in ("xcredentials", "credential", "credentials", "\u017fecret", "to\u212aen"):
        assert scrubbed.replaced == 1 and b"Hunter2!" not in scrubbed.raw


@pytest.mark.parametrize(
    "content",
    [
        {"credentials": "prod-east", "account": "prod"},
        {"awsCredentials": "prod", "authentication": {"user": "alice@example.com"}},
        {"buildUrl": "https://ci.example.com/job/1/", "passed": None},
        {"tokenizer": "simple", "maxTokens": 5},
    ],
)
def test_clean_events_are_kept_byte_for_byte_without_a_walk(content: dict[str, Any]) -> None:
    event = {"details": {"type": "build", "application": "app"}, "content": content}
    raw = json.dumps(event, indent=1).encode()
    scrubbed = Scrubber(KEY).scrub(json.loads(raw), raw)
    assert scrubbed.replaced == 0
    if any(w in raw.decode().lower() for w in ("pass", "token")):
        # Look-alikes still force a walk; what is kept is then the walked event, re-serialized.
        assert may_need_redaction(raw)
        assert json.loads(scrubbed.raw) == event and scrubbed.raw != raw
    else:
        assert not may_need_redaction(raw)
        assert scrubbed.raw == raw


@pytest.mark.parametrize(
    "content",
    [
        {"credentials": "Prod"},  # not an account name: hashed
        {"credentials": {"user": "a"}},
        {"xcredentials": "prod"},  # "credentials" is not a word of the key
        {"AWSCREDENTIALS": "prod"},
        {"credentials": "prod", "note": "https://u:hunter2@host/"},
        {"stage": {"name": "DB_PASSWORD", "value": "hunter2"}},
        {"key": "to\u212aen=hunter2"},
    ],
)
def test_secrets_next_to_account_names_are_still_hashed(content: dict[str, Any]) -> None:
    raw = json.dumps({"details": {"type": "build"}, "content": content}, ensure_ascii=False).encode()
    assert may_need_redaction(raw)
    scrubbed = Scrubber(KEY).scrub(json.loads(raw), raw)
    assert scrubbed.replaced >= 1
    assert b"hunter2" not in scrubbed.raw and b'"Prod"' not in scrubbed.raw


def test_extra_patterns_always_walk() -> None:
    raw = json.dumps({"details": {"type": "build"}, "content": {"myOwnField": "hunter2"}}).encode()
    assert not may_need_redaction(raw)
    scrubbed = Scrubber(KEY, extra_patterns=("own_field",)).scrub(json.loads(raw), raw)
    assert scrubbed.replaced == 1 and b"hunter2" not in scrubbed.raw


@pytest.mark.parametrize(
    "event",
    [
        {"content": {"buildNumber": 123456789012345678901234567890}},  # beyond 64 bits
        {"content": {"note": "lone \ud800 surrogate"}},
        {"content": {"n": 18446744073709551615, "m": -9223372036854775808, "f": 1e16, "s": "caf\u00e9"}},
    ],
)
def test_the_redacted_event_is_serialized_without_loss(event: dict[str, Any]) -> None:
    from spintrail.scrub import serialize

    text = serialize(event)
    assert json.loads(text) == event


@pytest.mark.parametrize("raw_events", ["redact", "keep"])
def test_scrubbing_leaves_the_received_event_as_it_was(raw_events: str) -> None:
    import copy

    event = {
        "details": {"type": "orca:stage:complete"},
        "content": {
            "context": {
                "note": "deploy with password=hunter2",
                "password": "p",
                "stage": {"a": [1, {"b": 2}]},
            },
            "plain": {"x": [{"y": "z"}]},
        },
    }
    before = copy.deepcopy(event)
    raw = json.dumps(event).encode()
    scrubbed = Scrubber(KEY, raw_events=raw_events).scrub(event, raw)
    assert event == before  # what ids are derived from, and what keep stores
    assert scrubbed.replaced == 2 and "hunter2" not in json.dumps(scrubbed.event)
    assert scrubbed.event["content"]["plain"] == before["content"]["plain"]


@pytest.mark.parametrize(
    "key",
    [
        "api" + "-" * 70 + "key",  # a separator run longer than the prefilter's window
        "encryption" + " " * 60 + "key",
        "api\t\t\tkey",
        "Encryption\u00e9\u00e9Key",
        "private\n" * 3 + "key",
        "xapi_key",
    ],
)
def test_secret_keys_with_long_or_odd_separators_are_walked(key: str) -> None:
    for ensure_ascii in (True, False):
        event = {"details": {"type": "build"}, "content": {key: "Hunter2!"}}
        raw = json.dumps(event, ensure_ascii=ensure_ascii)
        assert may_need_redaction(raw.encode())
        fast = Scrubber(KEY).scrub(json.loads(raw), raw.encode())
        slow = Scrubber(KEY, prefilter=False).scrub(json.loads(raw), raw.encode())
        assert fast.event == slow.event and fast.replaced == slow.replaced == 1


@pytest.mark.parametrize(
    "content",
    [
        {"context": {"customHeaders": {"X-Team": "payments", "Accept": "json"}}},  # every value is secret
        {"trigger": {"type": "webhook", "secret": "hunter2"}},
        {"kind": "Secret", "data": {"db": "aHVudGVyMg=="}},
        {"context": {"pipeline": _b64({"trigger": {"secret": "hunter2"}})}},  # savePipeline's base64 config
        {"context": {"rawContent": '{"token": "hunter2"}'}},
        {"context": {"notes": "jwt eyJhbGciOi"}, "id_jwt": "eyJhbGciOi"},
        {"outputs": {"value": "hmac-sha256:" + "ab" * 32, "n": "x"}},
    ],
)
def test_every_known_place_alone_sends_the_event_through_the_walk(content: dict[str, Any]) -> None:
    raw = json.dumps({"details": {"type": "orca:stage:complete"}, "content": content}).encode()
    assert may_need_redaction(raw)
    fast, slow = _both(content, raw, "redact")
    assert fast.event == slow.event and fast.replaced == slow.replaced
    assert slow.replaced >= 1 or slow.secret_hashes


def test_the_prefilter_agrees_with_the_walk_on_every_shared_sample(echo_fixtures: Path) -> None:
    from spintrail.decode import DecodeError, decode_body

    checked = 0
    for path in sorted(echo_fixtures.iterdir()):
        if path.suffix not in (".json", ".txt"):
            continue
        try:
            incoming = decode_body(path.read_bytes())
        except DecodeError:
            continue  # prose samples
        for e in incoming:
            for raw_events in ("redact", "keep"):
                fast = Scrubber(KEY, raw_events=raw_events).scrub(e.event, e.raw)
                slow = Scrubber(KEY, raw_events=raw_events, prefilter=False).scrub(e.event, e.raw)
                assert fast.event == slow.event, path.name
                assert (fast.replaced, fast.secret_hashes) == (slow.replaced, slow.secret_hashes), path.name
            checked += 1
    assert checked > 600  # the 665 igor builds, and the orca and webhook samples


def test_the_prefilter_agrees_with_the_walk_on_simulated_history() -> None:
    from spintrail.decode import decode_body
    from spintrail.simulate import Simulator

    walked = clean = 0
    for event in itertools.islice(Simulator(seed=11, executions=60).events(), 1500):
        raw = json.dumps(event, separators=(",", ":")).encode()
        (e,) = decode_body(raw)
        fast = Scrubber(KEY).scrub(e.event, e.raw)
        slow = Scrubber(KEY, prefilter=False).scrub(e.event, e.raw)
        assert fast.event == slow.event and fast.replaced == slow.replaced
        assert fast.secret_hashes == slow.secret_hashes
        if may_need_redaction(raw):
            walked += 1
        else:
            clean += 1
            assert fast.raw == raw
    assert walked and clean  # both paths are exercised
