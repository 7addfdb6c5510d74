"""The compiled secret scan: every rule is declared with its source and compiles into one database, reports
are confirmed where they sit, and an event holding no secret is never changed (property tests drawn from
look-alikes and ordinary Spinnaker values, not from the rules)."""

from __future__ import annotations

import base64
import json
import re
import string
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spintrail import secretscan
from spintrail.redact import Redactor
from spintrail.scrub import Scrubber
from spintrail.secret_rules import KEY_RULES, VALUE_RULES

KEY = b"scan-test-key-0123456789abcdef"
HASH = re.compile(r"hmac-sha256:[0-9a-f]{64}")


@pytest.fixture(scope="module")
def scrubber() -> Scrubber:
    return Scrubber(KEY)


def test_every_rule_has_an_id_a_source_and_a_context() -> None:
    for rules in (VALUE_RULES, KEY_RULES):
        assert len({r.id for r in rules}) == len(rules)
    for rule in VALUE_RULES:
        assert rule.source and rule.context, rule.id
        groups = re.compile(rule.pattern).groupindex
        assert {"s", "bare"} & set(groups), rule.id
        if rule.key_group:
            assert rule.key_group in groups
    assert all(r.source for r in KEY_RULES)


def test_one_scan_reports_each_rule_where_it_starts() -> None:
    text = json.dumps({"a": "x https://u:pw1234@h.io/ y", "b": "AKIAABCDEFGHIJKLMNOP"})
    hits = secretscan.scan_hits(text)
    names = {VALUE_RULES[i].id for i, _, _ in hits if i < len(VALUE_RULES)}
    assert {"url-userinfo", "aws-access-key-id"} <= names
    start = next(s for i, s, _ in hits if i < len(VALUE_RULES) and VALUE_RULES[i].id == "aws-access-key-id")
    assert text[start:].startswith("AKIA")


def test_offsets_are_characters_in_non_ascii_text(scrubber: Scrubber) -> None:
    event = {"note": "déploiement ☃ ghp_" + "a1" * 18 + " fini", "user": "zoë"}
    done = scrubber.scrub(event, orjson.dumps(event))
    assert done.replaced == 1
    assert done.event["note"].startswith("déploiement ☃ hmac-sha256:") and done.event["note"].endswith(
        " fini"
    )
    assert done.event["user"] == "zoë"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("docker login -u ci -p s3cr3tPW reg.io", "s3cr3tPW"),
        ("docker login --password=s3cr3tPW reg.io", "s3cr3tPW"),
        ('helm repo add a https://c.io --password "s3 cr3t"', "s3 cr3t"),
        ("mysql -u root -ps3cr3tPW app", "s3cr3tPW"),
        ("sshpass -p s3cr3tPW ssh host", "s3cr3tPW"),
        ("curl -u bob:s3cr3tPW https://x.io", "s3cr3tPW"),
        (
            "https://hooks.slack.com/services/T0000/B0000/abcdefghijklmnopqrstuvwx",
            "T0000/B0000/abcdefghijklmnopqrstuvwx",
        ),
        ("see ?jwt=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig-part_1", "eyJhbGciOiJIUzI1NiJ9"),
        ("DB_PASS=hunter2hunter2 ./run", "hunter2hunter2"),
        ("x-api-key: k-123456789", "k-123456789"),
    ],
)
def test_value_rules_replace_only_the_secret(scrubber: Scrubber, text: str, secret: str) -> None:
    out = scrubber.text(text)
    assert out is not None and secret not in out
    assert HASH.search(out)
    assert scrubber.text(out) == out  # redacting twice changes nothing
    prefix = text.split(secret)[0]
    assert out.startswith(prefix.split("eyJ")[0])


@pytest.mark.parametrize(
    "text",
    [
        "docker run -p 8080:80 app",
        "ssh -p 22 deploy@host",
        'kubectl patch deploy x -p \'{"spec":{"replicas":3}}\'',
        "echo $PW | docker login --password-stdin reg.io",
        "docker login -u ci -p $REG_PASSWORD reg.io",
        "password: ${DB_PASSWORD}",
        'curl -H "Authorization: Bearer $TOKEN" x.io',
        "max_tokens=4096 token_count: 12 password_file=/etc/pw",
        "arn:aws:secretsmanager:us-east-1:1:secret:db-pass-AbCdEf",
        "git@github.com:acme/app.git and https://user@host.io/x",
    ],
)
def test_bound_rules_leave_look_alikes(scrubber: Scrubber, text: str) -> None:
    assert scrubber.text(text) == text


def test_key_rules_cover_every_spelling() -> None:
    r = Redactor(KEY)
    for key in ("DB_PASS", "dbPassword", "x-api-key", "SSH_KEY", "client_secret", "PGPASSWORD", "basicAuth",
                "client-key-data", "X-Hub-Signature-256", "idToken"):  # fmt: skip
        assert r._classify(key) != 0, key
    plain = ("secretKeyRef", "imagePullSecrets", "keyPair", "jiraKey", "passwordFile", "tokenType",
             "secretName", "maxTokens", "authentication", "secretArn", "apiVersion", "passed")  # fmt: skip
    for key in plain:
        assert r._classify(key) == 0, key


def test_kubernetes_secret_data_is_indexed_decoded_too(scrubber: Scrubber) -> None:
    event = {"manifests": [{"kind": "Secret", "data": {"pw": "aHVudGVyMg=="}, "metadata": {"name": "x"}}]}
    done = scrubber.scrub(event, orjson.dumps(event))
    assert scrubber.hash_value("hunter2") in done.secret_hashes
    assert scrubber.hash_value("aHVudGVyMg==") in done.secret_hashes
    assert done.event["manifests"][0]["metadata"] == {"name": "x"}


def test_a_basic_credential_is_found_by_what_it_decodes_to(scrubber: Scrubber) -> None:
    credential = base64.b64encode(b"deploy:hunter2hunter2").decode()
    for event in (
        {"customHeaders": {"Authorization": f"Basic {credential}"}},
        {"command": f"curl -H 'Authorization: Basic {credential}' https://ci.io"},
    ):
        done = scrubber.scrub(event, orjson.dumps(event))
        assert credential not in json.dumps(done.event)
        for form in ("deploy:hunter2hunter2", "hunter2hunter2"):
            assert scrubber.hash_value(form) in done.secret_hashes, (event, form)


def test_escaped_or_wrapped_bytes_are_not_trusted_as_the_event(scrubber: Scrubber) -> None:
    event = {"details": {"type": "x"}, "content": {"password": "hunter2hunter2"}}
    flattened = json.dumps({"details": json.dumps(event["details"]), "content": json.dumps(event["content"])})
    done = scrubber.scrub(event, flattened.encode())
    assert b"hunter2hunter2" not in done.raw and done.event["content"]["password"].startswith("hmac-sha256:")
    escaped = b'{"details":{"type":"x"},"content":{"p\\u0061ssword":"hunter2hunter2"}}'
    done = scrubber.scrub(json.loads(escaped), escaped)
    assert b"hunter2hunter2" not in done.raw


# --------------------------------------------------------------------------------------------- properties

_HEX = "0123456789abcdef"
_words = st.text(string.ascii_lowercase, min_size=2, max_size=10)
_lookalike_values = st.one_of(
    st.text(_HEX, min_size=40, max_size=40),  # commit SHAs
    st.text(_HEX, min_size=64, max_size=64).map(lambda h: "sha256:" + h),  # image digests
    st.uuids().map(str),
    st.text(_HEX, min_size=17, max_size=17).map(lambda h: "ami-" + h),
    st.text(_HEX, min_size=17, max_size=17).map(lambda h: "i-" + h),
    st.tuples(_words, _words, st.integers(0, 999)).map(lambda t: f"{t[0]}-{t[1]}-v{t[2]:03d}"),
    st.tuples(st.integers(10**11, 10**12 - 1), _words).map(lambda t: f"arn:aws:iam::{t[0]}:role/{t[1]}"),
    st.tuples(st.sampled_from(["OPS", "CHG", "PLAT"]), st.integers(1, 99999)).map(lambda t: f"{t[0]}-{t[1]}"),
    st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(0, 30)).map(
        lambda t: f"{t[0]}.{t[1]}.{t[2]}"
    ),
    st.tuples(_words, _words).map(lambda t: f"{t[0]}@{t[1]}.io"),
    st.tuples(st.integers(1, 65535), st.integers(1, 65535)).map(lambda t: f"docker run -p {t[0]}:{t[1]} app"),
    st.integers(1, 65535).map(lambda p: f"ssh -p {p} deploy@host"),
    st.integers(1, 9).map(lambda n: f'kubectl patch deploy web -p \'{{"spec":{{"replicas":{n}}}}}\''),
    st.tuples(st.integers(1000, 9999), st.text(_HEX, min_size=64, max_size=64)).map(
        lambda t: f"registry:{t[0]}/app@sha256:{t[1]}"
    ),
    st.binary(min_size=1, max_size=40).map(lambda b: __import__("base64").b64encode(b).decode()),
    st.text(string.ascii_letters + string.digits + " -_.,:/", max_size=40),
)
_ordinary_keys = st.sampled_from(
    ["name", "type", "account", "region", "cluster", "serverGroup", "image", "commit", "digest", "ticket",
     "jiraKey", "user", "status", "application", "stack", "detail", "amiName", "instanceId", "version",
     "command", "secretName", "passwordFile", "tokenType", "keyPair", "secretKeyRef", "imagePullSecrets",
     "maxTokens", "notes", "stageId", "refId", "requisiteStageRefIds"]
)  # fmt: skip
_values: Any = st.recursive(
    st.one_of(_lookalike_values, st.integers(), st.booleans(), st.none()),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_ordinary_keys, children, max_size=5),
    max_leaves=25,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=st.dictionaries(_ordinary_keys, _values, max_size=6))
def test_property_an_event_holding_no_secret_is_never_changed(content: dict[str, Any]) -> None:
    content["credentials"] = "aws-prod"  # orca's account field
    event = {"details": {"source": "orca", "type": "orca:stage:complete"}, "content": content, "eventId": "e"}
    raw = json.dumps(event).encode()
    done = Scrubber(KEY).scrub(event, raw)
    assert done.replaced == 0
    assert done.event == event
    assert done.raw == raw  # the bytes as received


@settings(max_examples=100, deadline=None)
@given(text=st.lists(_lookalike_values, min_size=1, max_size=6).map(" ".join))
def test_property_free_text_of_look_alikes_is_never_changed(text: str) -> None:
    assert Scrubber(KEY).text(text) == text


def test_repeated_places_and_the_hashes_written_match_the_redacted_text(scrubber: Scrubber) -> None:
    """A webhook's headers repeated in each stage's context are redacted alike everywhere, and the hashes
    the scrub says it wrote are exactly those in the redacted event (what the look-up index is fed)."""
    headers = {"Authorization": "Bearer 3ASAkpew8FXnB63pt9oIfIHWvTco3RXK13HGc60Y", "X-Team": "deploys"}
    stage = {"type": "webhook", "context": {"customHeaders": headers, "url": "https://hooks.example.com/x"}}
    event = {
        "details": {"type": "orca:stage:complete"},
        "content": {
            "stages": [stage, {**stage, "name": "again"}, stage],
            "trigger": {"parameters": {"DB_PASSWORD": "hunter2-hunter2", "note": "token=abcdEFGH12345678"}},
        },
    }
    raw = orjson.dumps(event)
    done = scrubber.scrub(json.loads(raw), raw)
    assert done.replaced == 3 * 2 + 2
    redacted = done.event["content"]
    assert {json.dumps(s["context"]["customHeaders"]) for s in redacted["stages"]} == {
        json.dumps({k: scrubber.hash_value(v) for k, v in headers.items()})
    }
    assert orjson.loads(done.raw) == done.event
    assert set(done.secret_hashes) >= set(HASH.findall(done.raw.decode()))
    written = secretscan.scrub_json(raw.decode(), scrubber.redactor)
    assert written.hashes() == set(HASH.findall(written.text)) == secretscan.hashes_in(written.text)
    assert scrubber.hash_value("hunter2-hunter2") in written.hashes()


def test_places_remembered_across_events_give_the_same_result_and_keep_no_secret() -> None:
    """A place seen in an earlier event is redacted alike from memory, the hashes its Basic credential adds
    to the index included; what is remembered holds the redacted form, never the secret."""
    scrubber = Scrubber(KEY)
    basic = base64.b64encode(b"deployer:s3cret-Pa55word").decode()
    headers = {"Authorization": f"Basic {basic}", "X-Api-Key": "k-9f8e7d6c5b4a39281706"}
    event = {
        "details": {"type": "orca:stage:complete"},
        "content": {"context": {"requestHeaders": headers, "db_password": "hunter2-hunter2"}},
    }
    raw = orjson.dumps(event)
    first = scrubber.scrub(json.loads(raw), raw)
    again = scrubber.scrub(json.loads(raw), raw)
    assert first.replaced == again.replaced == 3
    assert (first.raw, first.event, first.secret_hashes) == (again.raw, again.event, again.secret_hashes)
    assert scrubber.hash_value("s3cret-Pa55word") in again.secret_hashes
    memo = secretscan._memo(scrubber.redactor)
    assert memo.places
    remembered = repr((memo.places, memo.scans))
    for secret in (basic, "k-9f8e7d6c5b4a39281706", "hunter2-hunter2", "s3cret-Pa55word"):
        assert secret not in remembered
