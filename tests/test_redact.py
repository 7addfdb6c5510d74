"""Secret redaction: key patterns, known Spinnaker places, false positives, and the sample echo events."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import pytest

from spintrail.redact import DEFAULT_SECRET_KEY_PATTERNS, HASH_PREFIX, Redactor

KEY = b"installation-key-0123456789abcdef"
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "echo"


@pytest.fixture
def redactor() -> Redactor:
    return Redactor(KEY)


def _hmac(value: str, key: bytes = KEY) -> str:
    return HASH_PREFIX + hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def _fixture(relative: str) -> Any:
    if not FIXTURES.is_dir():
        pytest.skip(f"sample echo events not available at {FIXTURES}")
    return json.loads((FIXTURES / relative).read_text(encoding="utf-8"))


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


# --------------------------------------------------------------------------------------------------- hashing


def test_hash_value_is_prefixed_hmac_sha256_of_the_utf8_value(redactor: Redactor) -> None:
    assert redactor.hash_value("s3cr\u00e9t") == _hmac("s3cr\u00e9t")
    assert redactor.hash_value("x").startswith("hmac-sha256:") and len(redactor.hash_value("x")) == 12 + 64


@pytest.mark.parametrize("key", [KEY, b"k" * 64, b"a longer key than one SHA-256 block, " * 3])
def test_hash_value_is_rfc2104_hmac_for_keys_of_every_length(key: bytes) -> None:
    for value in ("", "x", "s3cr\u00e9t", "p" * 200):
        assert Redactor(key).hash_value(value) == _hmac(value, key)


def test_equal_secrets_correlate_under_one_key_and_differ_under_another(redactor: Redactor) -> None:
    event = {"a": {"password": "hunter2"}, "b": [{"apiKey": "hunter2"}]}
    out, count = redactor.redact(event)
    assert count == 2
    assert out["a"]["password"] == out["b"][0]["apiKey"] == _hmac("hunter2")
    other, _ = Redactor(b"another-installation-key-000000").redact(event)
    assert other["a"]["password"] != out["a"]["password"]


def test_key_must_be_long_enough_bytes() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes, got 3"):
        Redactor(b"abc")
    with pytest.raises(TypeError, match="must be bytes, got str"):
        Redactor("a-string-key-that-is-long")  # type: ignore[arg-type]


def test_invalid_extra_pattern_is_reported_by_name() -> None:
    with pytest.raises(ValueError, match=r"invalid secret key pattern '\(unclosed'"):
        Redactor(KEY, extra_patterns=["(unclosed"])


# ---------------------------------------------------------------------------------------------- key patterns


@pytest.mark.parametrize(
    "key",
    [
        "password", "DB_PASSWORD", "passwd", "dbPwd", "passphrase", "secret", "clientSecret",
        "secretAccessKey", "aws_secret_access_key", "api_key", "apiKey", "APIKey", "x-api-key", "apikey",
        "privateKey", "private_key", "ssh-private-key", "accessKey", "token", "accessToken", "access_token",
        "githubtoken", "X-Gitlab-Token", "Authorization", "proxy-authorization", "Cookie", "set-cookie",
        "x-hub-signature", "X-Hub-Signature-256", "jwt", "connectionString", "auth", "basic_auth",
        "signingKey",
    ],
)  # fmt: skip
def test_secret_looking_keys_are_redacted(redactor: Redactor, key: str) -> None:
    out, count = redactor.redact({key: "the-value", "keep": "me"})
    assert out == {key: _hmac("the-value"), "keep": "me"}
    assert count == 1


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("tokenizer", "bpe"),
        ("inputTokenCount", 1234),
        ("outputTokenCount", 99),
        ("maxTokens", 4096),
        ("tokenType", "Bearer"),
        ("token_expires_at", "2024-06-15T12:00:00Z"),
        ("secretName", "db-credentials"),
        ("secretKeyRef", {"name": "db", "key": "password"}),
        ("secret", {"secretName": "tls-cert", "defaultMode": 420}),
        ("imagePullSecrets", [{"name": "regcred"}]),
        ("passwordFile", "/etc/app/password"),
        ("credentialsId", "jenkins-github-creds"),
        ("authorizationUrl", "https://idp.example.com/authorize"),
        ("accessKeyId", "AKIAEXAMPLE"),
        ("authentication", {"user": "alice@example.com", "allowedAccounts": ["prod"]}),
        ("author", {"name": "alice"}),
        ("credentials", "prod"),
        ("credentials", "my-aws_account-2"),
        ("password", None),
        ("secret", True),
        ("token", ""),
    ],
)
def test_false_positives_are_kept(redactor: Redactor, key: str, value: Any) -> None:
    event = {key: value}
    out, count = redactor.redact(event)
    assert out == event
    assert count == 0


def test_credentials_is_redacted_only_when_it_is_not_an_account_name(redactor: Redactor) -> None:
    event = {
        "context": {"credentials": "prod", "account": "prod"},
        "job": {"credentials": {"username": "ci", "password": "pw"}},
        "git": {"credentials": "ghp_AbCdEf0123456789AbCdEf0123456789"},
        "hex": {"credentials": "0123456789abcdef0123456789abcdef01234567"},
        "basic": {"credential": "ci:pw"},
    }
    out, count = redactor.redact(event)
    assert out["context"] == {"credentials": "prod", "account": "prod"}
    assert out["job"]["credentials"] == _hmac('{"password":"pw","username":"ci"}')
    assert out["git"]["credentials"] == _hmac("ghp_AbCdEf0123456789AbCdEf0123456789")
    assert out["hex"]["credentials"].startswith(HASH_PREFIX)
    assert out["basic"]["credential"] == _hmac("ci:pw")
    assert count == 4


def test_non_string_secrets_are_hashed_over_canonical_json(redactor: Redactor) -> None:
    out, count = redactor.redact(
        {
            "pin": {"password": 12345},
            "obj": {"secret": {"b": [1, 2], "a": "x"}},
            "same_obj": {"secret": {"a": "x", "b": [1, 2]}},
            "list": {"tokens_token": ["t1", 7, {"k": "v"}, None]},
        }
    )
    assert out["pin"]["password"] == _hmac("12345")
    assert out["obj"]["secret"] == out["same_obj"]["secret"] == _hmac('{"a":"x","b":[1,2]}')
    assert out["list"]["tokens_token"] == [_hmac("t1"), _hmac("7"), _hmac('{"k":"v"}'), None]
    assert count == 6


def test_name_value_pairs_with_a_secret_name_hide_the_value(redactor: Redactor) -> None:
    env = [
        {"name": "DB_PASSWORD", "value": "hunter2"},
        {"name": "LOG_LEVEL", "value": "debug"},
        {"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}},
    ]
    params = [{"name": "deployToken", "default": "abc", "options": [{"value": "abc"}], "label": "Token"}]
    out, count = redactor.redact({"env": env, "parameterConfig": params})
    assert out["env"][0] == {"name": "DB_PASSWORD", "value": _hmac("hunter2")}
    assert out["env"][1:] == env[1:]
    assert out["parameterConfig"][0]["default"] == _hmac("abc")
    assert out["parameterConfig"][0]["options"] == [_hmac('{"value":"abc"}')]
    assert out["parameterConfig"][0]["label"] == "Token"
    assert count == 3


def test_extra_patterns_add_keys_and_are_not_overridden_by_exemptions() -> None:
    redactor = Redactor(KEY, extra_patterns=[r"session_?id", r"^pin$"])
    out, count = redactor.redact({"sessionId": "abc", "pin": "1234", "pinned": True, "spin": "x"})
    assert out == {"sessionId": _hmac("abc"), "pin": _hmac("1234"), "pinned": True, "spin": "x"}
    assert count == 2


def test_default_patterns_are_published_strings() -> None:
    assert all(isinstance(p, str) for p in DEFAULT_SECRET_KEY_PATTERNS)
    assert any("pass" in p for p in DEFAULT_SECRET_KEY_PATTERNS)


def test_already_hashed_values_are_not_hashed_again(redactor: Redactor) -> None:
    once, first = redactor.redact({"password": "p", "customHeaders": {"X-Key": "k"}})
    twice, second = redactor.redact(once)
    assert twice == once
    assert (first, second) == (2, 0)


# -------------------------------------------------------------------------------------------- known places


def test_all_webhook_custom_headers_are_redacted(redactor: Redactor) -> None:
    context = {
        "url": "https://hooks.example.com/deploy",
        "method": "POST",
        "customHeaders": {"Authorization": "Bearer abc", "X-Team": "payments", "X-Multi": ["a", "b"]},
        "payload": {"service": "myapp"},
    }
    out, count = redactor.redact({"content": {"context": context}})
    headers = out["content"]["context"]["customHeaders"]
    assert headers == {
        "Authorization": _hmac("Bearer abc"),
        "X-Team": _hmac("payments"),
        "X-Multi": [_hmac("a"), _hmac("b")],
    }
    assert out["content"]["context"]["url"] == context["url"]
    assert out["content"]["context"]["payload"] == context["payload"]
    assert count == 4


def test_trigger_secret_and_other_secret_are_redacted(redactor: Redactor) -> None:
    trigger = {"type": "git", "source": "github", "secret": "gh-webhook", "other": {"secret": "gh-webhook"}}
    out, count = redactor.redact({"content": {"execution": {"trigger": trigger}}})
    got = out["content"]["execution"]["trigger"]
    assert got["secret"] == got["other"]["secret"] == _hmac("gh-webhook")
    assert got["type"] == "git" and got["source"] == "github"
    assert count == 2


def test_trigger_parameters_with_secret_names_are_redacted(redactor: Redactor) -> None:
    params = {"jiraTicket": "OPS-1234", "dbPassword": "pw", "deploy_token": "tok", "region": "us-east-1"}
    out, count = redactor.redact({"trigger": {"parameters": params}})
    assert out["trigger"]["parameters"] == {
        "jiraTicket": "OPS-1234",
        "dbPassword": _hmac("pw"),
        "deploy_token": _hmac("tok"),
        "region": "us-east-1",
    }
    assert count == 2


def test_request_header_signatures_cookies_and_authorization_are_redacted(redactor: Redactor) -> None:
    headers = {
        "accept": ["application/json"],
        "authorization": ["Basic dXNlcjpwYXNz"],
        "Cookie": ["SESSION=abc"],
        "x-hub-signature": ["sha1=0123"],
        "X-Hub-Signature-256": ["sha256=4567"],
        "x-slack-signature": ["v0=89ab"],
        "user-agent": ["okhttp/4.12.0"],
    }
    out, count = redactor.redact({"details": {"requestHeaders": headers}})
    got = out["details"]["requestHeaders"]
    assert got["accept"] == ["application/json"] and got["user-agent"] == ["okhttp/4.12.0"]
    for name in ("authorization", "Cookie", "x-hub-signature", "X-Hub-Signature-256", "x-slack-signature"):
        assert got[name] == [_hmac(headers[name][0])]
    assert count == 5


def _secret_manifest(value: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "db",
            "namespace": "prod",
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": json.dumps({"data": {"DB_URL": value}}),
                "owner": "payments",
            },
        },
        "type": "Opaque",
        "data": {"DB_URL": value, "USER": "YWRtaW4="},
        "stringData": {"extra": "plain-" + value},
    }


def test_kubernetes_secret_manifests_are_redacted_wherever_they_appear(redactor: Redactor) -> None:
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"A": "b"}}
    context = {
        "manifests": [_secret_manifest("c2VjcmV0MQ=="), config_map],
        "outputs.manifests": [_secret_manifest("c2VjcmV0Mg==")],
        "kato.tasks": [{"resultObjects": [{"manifests": [_secret_manifest("c2VjcmV0Mw==")]}]}],
    }
    out, count = redactor.redact({"content": {"context": context}})
    dump = _dump(out)
    for value in ("c2VjcmV0MQ==", "c2VjcmV0Mg==", "c2VjcmV0Mw==", "YWRtaW4="):
        assert value not in dump
    first = out["content"]["context"]["manifests"][0]
    assert first["metadata"]["name"] == "db" and first["metadata"]["annotations"]["owner"] == "payments"
    assert first["data"]["DB_URL"] == _hmac("c2VjcmV0MQ==")
    assert list(first["data"]) == ["DB_URL", "USER"]
    assert out["content"]["context"]["manifests"][1] == config_map
    assert count == 3 * 4  # data x2, stringData x1, last-applied annotation x1 per Secret


def test_known_places_can_be_turned_off() -> None:
    event = {
        "customHeaders": {"X-Team": "payments", "X-Api-Key": "k"},
        "manifest": _secret_manifest("c2VjcmV0"),
    }
    out, count = Redactor(KEY, known_places=False).redact(event)
    # the key pattern still applies to X-Api-Key
    assert out["customHeaders"] == {"X-Team": "payments", "X-Api-Key": _hmac("k")}
    assert out["manifest"]["data"]["DB_URL"] == "c2VjcmV0"
    assert count == 1


def test_raw_content_is_redacted_like_the_event(redactor: Redactor) -> None:
    raw_with_secret = json.dumps({"ref": "refs/heads/main", "hook": {"config": {"secret": "gh-secret"}}})
    raw_plain = '{"ref": "refs/heads/main",  "after": "abc"}'
    event = {"a": {"rawContent": raw_with_secret}, "b": {"rawContent": raw_plain}}
    event["c"] = {"rawContent": "token=abc"}
    out, count = redactor.redact(event)
    parsed = json.loads(out["a"]["rawContent"])
    assert parsed == {"ref": "refs/heads/main", "hook": {"config": {"secret": _hmac("gh-secret")}}}
    assert out["b"]["rawContent"] == raw_plain  # untouched byte for byte when nothing is secret
    assert out["c"]["rawContent"] == "token=" + _hmac("abc")
    assert count == 2


def test_base64_pipeline_of_save_pipeline_stage_is_redacted(redactor: Redactor) -> None:
    pipeline = {"name": "deploy", "triggers": [{"type": "git", "secret": "s3"}], "stages": []}
    encoded = base64.b64encode(json.dumps(pipeline).encode()).decode()
    out, count = redactor.redact({"context": {"pipeline": encoded, "pipeline.name": "deploy"}})
    decoded = json.loads(base64.b64decode(out["context"]["pipeline"]))
    assert decoded == {"name": "deploy", "triggers": [{"type": "git", "secret": _hmac("s3")}], "stages": []}
    assert count == 1
    plain = base64.b64encode(b'{"name": "deploy"}').decode()
    assert redactor.redact({"pipeline": plain}) == ({"pipeline": plain}, 0)
    assert redactor.redact({"pipeline": "myapp-pipeline"}) == ({"pipeline": "myapp-pipeline"}, 0)


# ------------------------------------------------------------------------------------------ copy semantics


def test_input_is_not_mutated_and_key_order_is_kept(redactor: Redactor) -> None:
    event = {
        "z": 1,
        "password": "p",
        "a": {"y": [{"token": "t", "b": 2, "a": 1}], "customHeaders": {"Z": "1", "A": "2"}},
        "m": None,
    }
    before = copy.deepcopy(event)
    out, _ = redactor.redact(event)
    assert event == before
    assert out is not event and out["a"] is not event["a"] and out["a"]["y"][0] is not event["a"]["y"][0]
    assert list(out) == ["z", "password", "a", "m"]
    assert list(out["a"]) == ["y", "customHeaders"]
    assert list(out["a"]["y"][0]) == ["token", "b", "a"]
    assert list(out["a"]["customHeaders"]) == ["Z", "A"]


def test_scalars_and_non_dict_roots_pass_through(redactor: Redactor) -> None:
    assert redactor.redact("text") == ("text", 0)
    assert redactor.redact(None) == (None, 0)
    assert redactor.redact([1, {"password": "p"}]) == ([1, {"password": _hmac("p")}], 1)


def test_ten_thousand_levels_of_nesting_do_not_blow_the_stack(redactor: Redactor) -> None:
    depth = 10_000
    root: dict[str, Any] = {}
    node = root
    for i in range(depth):
        child: dict[str, Any] = {}
        node["level"] = [child] if i % 2 else child
        node = child
    node["password"] = "deep-secret"
    node["note"] = "kept"
    deep_secret = {"a": {"b": {}}}
    inner = deep_secret["a"]["b"]
    for _ in range(depth):
        inner["x"] = {}
        inner = inner["x"]
    root["credentials"] = deep_secret  # a deep object hashed whole over its canonical JSON

    out, count = redactor.redact(root)

    assert count == 2
    assert out["credentials"].startswith(HASH_PREFIX)
    cur: Any = out
    for i in range(depth):
        cur = cur["level"][0] if i % 2 else cur["level"]
    assert cur == {"password": _hmac("deep-secret"), "note": "kept"}


# ------------------------------------------------------------------------------------------------ free text


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Bearer eyJhbGciOi.payload.sig", "eyJhbGciOi.payload.sig"),
        ("curl -H 'Authorization: Basic dXNlcjpwYXNz' https://x", "dXNlcjpwYXNz"),
        ('{"authorization": "Splunk 1234-abcd"}', "1234-abcd"),
        ("GET /hook?password=hunter2&user=bob", "hunter2"),
        ("db_password: 's3 cret'", "s3 cret"),
        ('{"apiKey": "k-123", "name": "x"}', "k-123"),
        ("X-Auth-Token=tok123 next", "tok123"),
        ("clone https://bob:pa55@github.com/org/repo.git", "pa55"),
        ("Cookie: SESSION=abc; theme=dark", "SESSION=abc; theme=dark"),
        ("X-Hub-Signature-256: sha256=deadbeef", "sha256=deadbeef"),
        ("sent bearer abc.def-ghi to the api", "abc.def-ghi"),
    ],
)
def test_redact_text_hides_the_secret_part(redactor: Redactor, text: str, secret: str) -> None:
    out = redactor.redact_text(text)
    assert secret not in out
    assert _hmac(secret) in out
    assert redactor.redact_text(out) == out  # already redacted text stays as it is


@pytest.mark.parametrize(
    "text",
    [
        "tokenizer=bpe max_tokens=5 token_count=3",
        "the password policy requires 12 characters",
        "deployed myapp-prod-v009 to us-east-1 with credentials prod",
        "https://github.com/org/repo.git",
        '{"secret": null, "password": true}',
    ],
)
def test_redact_text_leaves_ordinary_text_alone(redactor: Redactor, text: str) -> None:
    assert redactor.redact_text(text) == text


ADVERSARIAL_TEXTS = ["a.a." * 50_000, "a-a-" * 50_000, "x://" * 50_000, "Authorization: " * 20_000]


@pytest.mark.parametrize("text", ADVERSARIAL_TEXTS)
def test_redact_text_stays_fast_on_adversarial_input(redactor: Redactor, text: str) -> None:
    started = time.perf_counter()
    redactor.redact_text(text)
    assert time.perf_counter() - started < 2.0


def test_lone_surrogates_from_json_escapes_can_be_hashed(redactor: Redactor) -> None:
    event = json.loads('{"password": "\\ud800x"}')
    out, count = redactor.redact(event)
    assert count == 1 and out["password"].startswith(HASH_PREFIX)


# ----------------------------------------------------------------------------------------- sample events


def test_git_webhook_fixture_keeps_no_signature_value(redactor: Redactor) -> None:
    event = _fixture("synthetic/git__synthetic__github-push-wrapping-real-payload.json")
    signature = event["details"]["requestHeaders"]["x-hub-signature"][0]
    assert signature in _dump(event)
    out, count = redactor.redact(event)
    assert signature not in _dump(out)
    assert out["details"]["requestHeaders"]["x-hub-signature"] == [_hmac(signature)]
    assert out["content"]["repository"] == event["content"]["repository"]
    assert count == 1


def test_real_pipeline_configs_keep_no_git_trigger_secret(redactor: Redactor) -> None:
    engine = "related/policy-engine/policyengine_input__spinnaker.execution__"
    before = _fixture(engine + "pipelines.before__armory-docs.json")
    out, _ = redactor.redact(before)
    assert out["input"]["pipeline"]["triggers"][0]["secret"] == _hmac("spinnaker")

    save = _fixture(engine + "stages.before.savePipeline__armory-docs.json")
    original = json.loads(base64.b64decode(save["input"]["stage"]["context"]["pipeline"]))
    assert original["triggers"][0]["secret"] == "spinnaker"
    out, count = redactor.redact(save)
    pipeline = json.loads(base64.b64decode(out["input"]["stage"]["context"]["pipeline"]))
    assert pipeline["triggers"][0]["secret"] == _hmac("spinnaker")
    assert pipeline["triggers"][0]["slug"] == "hostname"
    assert count == 1


DEPLOY_MANIFEST_CONTEXT = (
    "related/orca_stage_context_deployManifest__spinnaker-orca__deploy-manifest-context.json"
)


def test_secrets_injected_into_a_real_pipeline_event_do_not_survive(redactor: Redactor) -> None:
    event = _fixture("synthetic/orca_pipeline_starting__synthetic__deploy-to-prod.json")
    execution = event["content"]["execution"]
    execution["trigger"]["secret"] = "inv-trigger-secret"
    execution["trigger"]["parameters"]["dbPassword"] = "inv-db-password"
    execution["stages"].append(
        {
            "type": "webhook",
            "name": "Notify",
            "context": {
                "url": "https://hooks.example.com",
                "customHeaders": {"Authorization": "Bearer inv-bearer", "X-Custom": "inv-custom-header"},
            },
        }
    )
    deploy = _fixture(DEPLOY_MANIFEST_CONTEXT)
    deploy["manifests"].append(_secret_manifest("aW52LW1hbmlmZXN0"))
    deploy["outputs.manifests"].append(_secret_manifest("aW52LW91dHB1dA=="))
    deploy["kato.tasks"][0]["resultObjects"][0].setdefault("manifests", []).append(
        _secret_manifest("aW52LWthdG8=")
    )
    execution["stages"].append({"type": "deployManifest", "name": "Deploy", "context": deploy})
    event["details"]["requestHeaders"] = {"Authorization": ["Basic aW52LWJhc2lj"]}

    out, count = redactor.redact(event)

    dump = _dump(out)
    invented = [
        "inv-trigger-secret", "inv-db-password", "inv-bearer", "inv-custom-header", "aW52LW1hbmlmZXN0",
        "aW52LW91dHB1dA==", "aW52LWthdG8=", "aW52LWJhc2lj",
    ]  # fmt: skip
    assert [s for s in invented if s in dump] == []
    assert count >= len(invented)
    assert out["content"]["execution"]["trigger"]["parameters"]["jiraTicket"] == "OPS-1234"
    assert out["content"]["execution"]["stages"][0] == execution["stages"][0]


REAL_EXECUTION = "related/orca_execution_PIPELINE_aws-createServerGroup__spinnaker-orca__pipelinetrigger.json"


def test_raw_text_of_a_real_execution_is_left_unchanged(redactor: Redactor) -> None:
    event = _fixture(REAL_EXECUTION)
    text = json.dumps(event, indent=2)
    assert redactor.redact_text(text) == text


def test_sample_events_without_secrets_pass_through_unchanged(redactor: Redactor) -> None:
    if not FIXTURES.is_dir():
        pytest.skip(f"sample echo events not available at {FIXTURES}")
    with_secrets = {
        "git__synthetic__github-push-wrapping-real-payload.json",
        "policyengine_input__spinnaker.execution__pipelines.before__armory-docs.json",
        "policyengine_input__spinnaker.execution__stages.before.savePipeline__armory-docs.json",
    }
    checked = 0
    for path in sorted(FIXTURES.rglob("*.json")):
        if path.name in with_secrets:
            continue
        event = json.loads(path.read_text(encoding="utf-8"))
        out, count = redactor.redact(event)
        assert (path.name, count) == (path.name, 0)
        assert out == event, path.name
        checked += 1
    assert checked >= 40


def test_multi_megabyte_event_is_redacted_in_one_fast_pass(redactor: Redactor) -> None:
    stage = {
        "type": "webhook",
        "context": {
            "customHeaders": {"Authorization": "Bearer x"},
            "kato.tasks": [{"resultObjects": [{"manifests": [_secret_manifest("c2VjcmV0")]}]}],
            "notes": ["deploy"] * 40,
        },
        "outputs": {"serverGroup": "myapp-prod-v009", "tokenizer": "none"},
    }
    event = {"content": {"execution": {"stages": [copy.deepcopy(stage) for _ in range(4000)]}}}
    assert len(json.dumps(event)) > 3_000_000
    started = time.perf_counter()
    _, count = redactor.redact(event)
    elapsed = time.perf_counter() - started
    assert count == 4000 * 5
    assert elapsed < 5.0
