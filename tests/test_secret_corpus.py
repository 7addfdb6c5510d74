"""A corpus of secrets in the places pipelines leak them, and of values that only look like secrets.

Every secret, sent to a real server in plain, batched, wrapped, flattened, gzip and Splunk HEC bodies, must be
absent from what the store keeps (the decompressed raw bytes, the full-text index terms, the event rows), the
API, the event pages, exports and what is forwarded, and must be found by its hash (``/api/v1/hash``,
``spintrail hash``). Every look-alike must come back unchanged and be found by search.
"""

from __future__ import annotations

import base64
import gzip
import json
import random
import re
import sqlite3
import string
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Server
from spintrail.decode import IncomingEvent
from spintrail.ingest import Ingestor
from spintrail.settings import Settings
from spintrail.store.sqlite import SqliteStore

ADMIN = "admin-token-for-the-corpus-tests"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
#: The Splunk route: the admin token serves as the HEC token too (API authentication comes first).
HEC_TOKEN = ADMIN

_rng = random.Random(14)


def _chars(alphabet: str, n: int) -> str:
    return "".join(_rng.choice(alphabet) for _ in range(n))


def alnum(n: int) -> str:
    return _chars(string.ascii_letters + string.digits, n)


def b64(n: int) -> str:
    return _chars(string.ascii_letters + string.digits + "+/", n)


def pem(kind: str) -> str:
    body = "\n".join(b64(64) for _ in range(5))
    return f"-----BEGIN {kind}-----\n{body}\n-----END {kind}-----"


def jwt() -> str:
    header = base64.urlsafe_b64encode(b'{"alg":"RS256","typ":"JWT"}').decode().rstrip("=")
    claims = base64.urlsafe_b64encode(
        json.dumps({"sub": alnum(12), "iss": "ci", "exp": 1900000000}).encode()
    ).decode()
    return f"{header}.{claims.rstrip('=')}.{_chars(string.ascii_letters + string.digits + '-_', 43)}"


def akia() -> str:
    return "AKIA" + _chars(string.ascii_uppercase + "234567", 16)


def password() -> str:
    return "Pw" + alnum(14) + "!x"


# --------------------------------------------------------------------------------------------- the corpus

#: (case, the secret, what to put in a stage context given the secret). A case's event carries one secret.
Case = tuple[str, str, Callable[[str], dict[str, Any]]]


def _cases() -> list[Case]:
    pw = password
    c: list[Case] = []

    def add(name: str, secret: str, ctx: Callable[[str], dict[str, Any]]) -> None:
        c.append((name, secret, ctx))

    # private keys
    add("pem-param", pem("RSA PRIVATE KEY"), lambda s: {"parameters": {"ssh_key": s}})
    add(
        "pem-free-text",
        pem("PRIVATE KEY"),
        lambda s: {"parameters": {"notes": f"use this key:\n{s}\nthanks"}},
    )
    add("openssh-command", pem("OPENSSH PRIVATE KEY"), lambda s: {"command": f"cat > id <<EOF\n{s}\nEOF"})
    add(
        "ec-configmap",
        pem("EC PRIVATE KEY"),
        lambda s: {"manifests": [{"kind": "ConfigMap", "data": {"k": s}}]},
    )
    add("pgp-judgment", pem("PGP PRIVATE KEY BLOCK"), lambda s: {"judgmentInput": f"key: {s}"})
    add("encrypted-key", pem("ENCRYPTED PRIVATE KEY"), lambda s: {"bake": {"extra": s}})
    # credentials in URLs
    add(
        "url-artifact", pw(), lambda s: {"artifact": {"reference": f"https://deploy:{s}@nexus.acme.io/a.jar"}}
    )
    add("url-git-clone", pw(), lambda s: {"command": f"git clone https://bot:{s}@git.acme.io/org/r.git"})
    add(
        "url-dsn-env",
        pw(),
        lambda s: {"env": [{"name": "DATABASE_URL", "value": f"postgresql://app:{s}@db/a"}]},
    )
    add("url-redis-text", pw(), lambda s: {"description": f"cache at redis://:{s}@cache:6379/0 now"})
    add(
        "url-github-token",
        "ghp_" + alnum(36),
        lambda s: {"artifact": {"reference": f"https://{s}@github.com/o/r"}},
    )
    add("query-jwt", jwt(), lambda s: {"url": f"https://hooks.acme.io/deploy?jwt={s}&env=prod"})
    add("query-token", alnum(28), lambda s: {"url": f"https://status.acme.io/api/push?token={s}"})
    add(
        "query-api-key", alnum(32), lambda s: {"notification": {"address": f"https://x.io/n?a=1&api_key={s}"}}
    )
    add(
        "query-access-token",
        alnum(30),
        lambda s: {"command": f"curl 'https://api.acme.io/v1?access_token={s}'"},
    )
    add(
        "query-sas-sig",
        b64(43),
        lambda s: {"artifact": {"reference": f"https://acct.blob.core.windows.net/c/b?sv=1&sig={s}"}},
    )
    add(
        "query-client-secret",
        alnum(34),
        lambda s: {"url": f"https://login.acme.io/t?client_id=ci&client_secret={s}"},
    )
    # JWTs
    add("jwt-free-text", jwt(), lambda s: {"judgmentInput": f"the token was {s} please rotate"})
    add("jwt-bearer-header", jwt(), lambda s: {"customHeaders": {"Authorization": f"Bearer {s}"}})
    add("jwt-id-token", jwt(), lambda s: {"oauth": {"idToken": s}})
    # cloud keys
    add("aws-akia-env", akia(), lambda s: {"env": [{"name": "AWS_ACCESS_KEY_ID", "value": s}]})
    add("aws-akia-command", akia(), lambda s: {"command": f"export AWS_ACCESS_KEY_ID={s}; aws s3 ls"})
    add(
        "aws-secret-command",
        b64(40),
        lambda s: {"command": f"AWS_SECRET_ACCESS_KEY={s} aws s3 cp a s3://b/a"},
    )
    add("aws-secret-bake", b64(40), lambda s: {"bake": {"aws_secret_access_key": s}})
    add(
        "gcp-sa-json-string",
        pem("PRIVATE KEY"),
        lambda s: {
            "parameters": {
                "gcp": json.dumps(
                    {
                        "type": "service_account",
                        "project_id": "acme",
                        "private_key": s,
                        "client_email": "ci@acme.iam",
                    }
                )
            }
        },
    )
    add(
        "gcp-sa-object",
        pem("PRIVATE KEY"),
        lambda s: {
            "parameters": {
                "gcpCredentials": {"type": "service_account", "private_key": s, "client_email": "ci@acme.iam"}
            }
        },
    )
    add(
        "gcp-api-key",
        "AIza" + _chars(string.ascii_letters + string.digits + "-_", 35),
        lambda s: {"url": f"https://maps.googleapis.com/maps/api/geocode/json?key={s}"},
    )
    add(
        "azure-storage",
        b64(86) + "==",
        lambda s: {
            "env": [
                {
                    "name": "STORAGE",
                    "value": f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={s};"
                    "EndpointSuffix=core.windows.net",
                }
            ]
        },
    )
    add(
        "azure-servicebus",
        b64(43) + "=",
        lambda s: {
            "parameters": {
                "bus": "Endpoint=sb://ns.servicebus.windows"
                f".net/;SharedAccessKeyName=Root;SharedAccessKey={s}"
            }
        },
    )
    add(
        "adonet-password",
        pw(),
        lambda s: {"parameters": {"connection": f"Server=tcp:db;User ID=u;Password={s};"}},
    )
    # source hosts and CI
    add(
        "github-token-curl",
        "ghp_" + alnum(36),
        lambda s: {"command": f'curl -H "Authorization: token {s}" https://api.github.com/user'},
    )
    add(
        "github-fine-grained",
        "github_pat_" + alnum(22) + "_" + alnum(59),
        lambda s: {"parameters": {"gh": s}},
    )
    add("github-oauth-text", "gho_" + alnum(36), lambda s: {"description": f"rotated {s} yesterday"})
    add("gitlab-pat", "glpat-" + alnum(20), lambda s: {"parameters": {"gitlab": s}})
    add(
        "gitlab-runner",
        "glrt-" + alnum(24),
        lambda s: {"command": f"gitlab-runner register --registration-token {s}"},
    )
    add("bitbucket-app-password", "ATBB" + alnum(32), lambda s: {"parameters": {"bb": s}})
    add(
        "npm-token",
        "npm_" + alnum(36),
        lambda s: {"files": {".npmrc": f"//registry.npmjs.org/:_authToken={s}\n"}},
    )
    add(
        "pypi-token",
        "pypi-AgEIcHlwaS5vcmc" + alnum(70),
        lambda s: {"command": f"twine upload -u __token__ -p {s} d/*"},
    )
    # chat webhooks
    add(
        "slack-webhook",
        f"https://hooks.slack.com/services/T{alnum(8)}/B{alnum(10)}/{alnum(24)}",
        lambda s: {"notifications": [{"type": "slack", "address": s}]},
    )
    add(
        "slack-bot-token",
        "xoxb-" + "".join(_chars(string.digits, 12)) + "-" + alnum(24),
        lambda s: {"parameters": {"slack": s}},
    )
    add(
        "teams-webhook",
        "https://acme.webhook.office.com/webhookb2/"
        + str(uuid.UUID(int=_rng.getrandbits(128)))
        + "@"
        + str(uuid.UUID(int=_rng.getrandbits(128)))
        + "/IncomingWebhook/"
        + _chars("0123456789abcdef", 32)
        + "/"
        + str(uuid.UUID(int=_rng.getrandbits(128))),
        lambda s: {"notifications": [{"type": "teams", "address": s}]},
    )
    add(
        "discord-webhook",
        "https://discord.com/api/webhooks/" + _chars(string.digits, 18) + "/" + alnum(68),
        lambda s: {"url": s, "method": "POST"},
    )
    # command lines
    add("docker-login-p", pw(), lambda s: {"command": f"docker login -u ci -p {s} registry.acme.io && make"})
    add(
        "docker-login-password-eq",
        pw(),
        lambda s: {"args": ["sh", "-c", f"docker login --password={s} reg.io"]},
    )
    add("podman-login", pw(), lambda s: {"command": f"podman login -u ci -p '{s}' quay.io"})
    add(
        "helm-repo-password",
        pw(),
        lambda s: {"command": f"helm repo add acme https://charts.acme.io --username ci --password {s}"},
    )
    add("mysql-p", pw(), lambda s: {"command": f"mysql -h db -u root -p{s} app < dump.sql"})
    add("sshpass", pw(), lambda s: {"command": f"sshpass -p {s} ssh deploy@host uptime"})
    add("curl-user", pw(), lambda s: {"command": f"curl -u deploy:{s} https://nexus.acme.io/upload"})
    add("api-key-flag", alnum(32), lambda s: {"command": f"datadog-ci deploy --api-key {s} --env prod"})
    add(
        "client-secret-flag",
        alnum(40),
        lambda s: {"command": f"az login --service-principal --client-secret {s}"},
    )
    # headers
    add(
        "basic-auth-header",
        base64.b64encode(f"ci:{password()}".encode()).decode(),
        lambda s: {"customHeaders": {"Authorization": f"Basic {s}"}},
    )
    add(
        "basic-auth-curl",
        base64.b64encode(f"ops:{password()}".encode()).decode(),
        lambda s: {"command": f"curl -H 'Authorization: Basic {s}' https://jenkins.acme.io/job/x/build"},
    )
    add(
        "cookie-header-text",
        "JSESSIONID=" + alnum(32),
        lambda s: {"command": f"curl -H 'Cookie: {s}' https://a.io"},
    )
    # secret-looking keys
    add("key-db-pass", pw(), lambda s: {"parameters": {"DB_PASS": s}})
    add("key-dbPassword", pw(), lambda s: {"parameters": {"dbPassword": s}})
    add("key-x-api-key", alnum(32), lambda s: {"webhook": {"headers": {"x-api-key": s}}})
    add("key-ssh-key-env", alnum(40), lambda s: {"env": [{"name": "SSH_KEY", "value": s}]})
    add(
        "key-client-secret-nested",
        alnum(36),
        lambda s: {"auth": {"oauth2": {"client_id": "ci", "client_secret": s}}},
    )
    add("key-jenkins-token", alnum(34), lambda s: {"jenkins": {"parameters": {"token": s}}})
    add("key-env-value-form", pw(), lambda s: {"env": [{"value": s, "name": "API_TOKEN"}]})
    add(
        "generic-yaml-text",
        alnum(30),
        lambda s: {"manifestText": f"config:\n  apiKey: {s}\n  region: us-east-1\n"},
    )
    add("generic-judgment", pw(), lambda s: {"judgmentInput": f"approved, old password={s} is rotated"})
    add(
        "k8s-secret-data",
        base64.b64encode(password().encode()).decode(),
        lambda s: {
            "manifests": [
                {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "data": {"pw": s}}
            ]
        },
    )
    add(
        "k8s-secret-string-data",
        pw(),
        lambda s: {"manifests": [{"kind": "Secret", "metadata": {"name": "x"}, "stringData": {"token": s}}]},
    )
    return c


CASES = _cases()


def _decoded_k8s(secret: str) -> str:
    return base64.b64decode(secret).decode()


#: (key, value) pairs that look like secrets to a careless rule and must be kept as they are.
LOOKALIKES: list[tuple[str, str]] = [
    ("commit", "9fceb02d0ae598e95dc970b74767f19372d61af8"),
    ("sha", "b5f3c2a1e8d94f7a6c0b1d2e3f4a5b6c7d8e9f01"),
    ("hash", "e83c5163316f89bfbde7d9ab23ca2e25604af290"),
    ("imageDigest", "sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945"),
    ("digest", "sha256:0b0f8c36b1f8d3f1f4c6a3e7d9b2a1c0e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0"),
    (
        "image",
        "registry:5000/checkout@sha256:1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e",
    ),
    ("image", "gcr.io/acme/payments:v2.14.0-rc.1"),
    ("executionId", "0b3f9c1e-7a2d-4e5f-9b8c-1d2e3f4a5b6c"),
    ("pipelineConfigId", "f47ac10b-58cc-4372-a567-0e02b2c3d479"),
    ("requestId", "6ba7b810-9dad-11d1-80b4-00c04fd430c8"),
    ("amiId", "ami-0abcdef1234567890"),
    ("baseAmi", "ami-04b9e92b5572fa0d1"),
    ("instanceId", "i-0123456789abcdef0"),
    ("instance", "i-0fedcba9876543210"),
    ("serverGroup", "checkout-prod-v042"),
    ("serverGroupName", "payments-main-canary-v007"),
    ("asgName", "search-staging-v113"),
    ("cluster", "checkout-prod"),
    ("moniker", "ledger-main-blue"),
    ("roleArn", "arn:aws:iam::123456789012:role/spinnaker-deploy"),
    ("secretArn", "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-pass-AbCdEf"),
    ("topicArn", "arn:aws:sns:eu-west-1:123456789012:deploys"),
    ("jiraKey", "OPS-1234"),
    ("ticket", "CHG-20931"),
    ("issue", "PLAT-77"),
    ("caBundle", base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----").decode()),
    ("userData", base64.b64encode(b"#!/bin/bash\necho hello > /tmp/x\n").decode()),
    ("payloadB64", "eyJhIjoxLCJiIjoidHdvIn0="),
    ("version", "1.32.4"),
    ("chartVersion", "v2.14.0-rc.1+build.7"),
    ("spinnakerVersion", "2025.1.3"),
    ("user", "carol.nguyen@acme.io"),
    ("approver", "ops-oncall@acme.io"),
    ("lastModifiedBy", "deploy-bot@acme.iam.gserviceaccount.com"),
    ("command", "docker run -p 8080:80 -p 9090:9090 acme/checkout:1.2"),
    ("command", "ssh -p 22 deploy@bastion.acme.io uptime"),
    ("command", 'kubectl patch deployment checkout -p \'{"spec":{"replicas":3}}\''),
    ("command", 'kubectl patch svc web --type merge -p \'{"metadata":{"labels":{"a":"b"}}}\''),
    ("command", "echo $REG_PASSWORD | docker login --password-stdin -u ci registry.acme.io"),
    ("command", 'curl -H "Authorization: Bearer $DEPLOY_TOKEN" -X POST status.acme.io/api'),
    ("command", "mysql -h db -P 3306 -u readonly app -e 'select 1'"),
    ("script", "git clone git@github.com:acme/checkout.git && make test"),
    ("note", "mirror at ssh://git@git.acme.io:2222/acme/checkout.git"),
    ("note", "see https://wiki.acme.io/deploys?page=3&sort=asc for details"),
    ("secretName", "checkout-tls"),
    ("passwordFile", "/etc/spinnaker/secrets/db-password"),
    ("tokenType", "bearer"),
    ("credentials", "aws-prod"),
    ("account", "gce-staging"),
    ("keyPair", "spinnaker-keypair"),
    ("sshKeyName", "deploy-key-2024"),
    ("apiVersion", "apps/v1"),
    ("maxTokens", "4096"),
    ("tokenizer", "whitespace"),
    ("passwordPolicy", "rotate-90d"),
    ("secretKeyRefName", "db-credentials"),
    ("region", "us-east-1"),
    ("description", "password rotation is scheduled for Friday, no secret in here"),
    ("description", "tokens are issued by vault; the api key lives in the secret store"),
    ("template", "password: ${DB_PASSWORD}"),
    ("template", "api_key: {{ vault.api_key }}"),
    ("notes", "bypass the cache; 12 passed, 0 failed"),
    ("branch", "feature/rotate-secrets"),
]


def _context_for_lookalike(key: str, value: str) -> dict[str, Any]:
    return {key: value}


def _event(n: int, ctx: dict[str, Any], *, kind: str = "orca:stage:complete") -> dict[str, Any]:
    execution_id = f"01HCORPUS{n:05d}"
    return {
        "details": {
            "source": "orca",
            "type": kind,
            "created": str(1_718_400_000_000 + n * 1000),
            "application": "checkout",
        },
        "content": {
            "executionId": execution_id,
            "stageId": f"s{n}",
            "context": ctx,
            "execution": {
                "type": "PIPELINE",
                "id": execution_id,
                "application": "checkout",
                "name": "Deploy",
                "authentication": {"user": "carol@acme.io"},
                "trigger": {"type": "manual", "user": "carol@acme.io"},
                "stages": [{"type": "wait", "name": "Wait", "context": {"waitTime": 5}}],
            },
        },
        "eventId": str(uuid.UUID(int=7_000_000 + n)),
    }


def _k8s_reference_event(n: int) -> dict[str, Any]:
    """References to secrets (not their values) in a deploy manifest: all kept."""
    return _event(
        n,
        {
            "manifests": [
                {
                    "kind": "Deployment",
                    "spec": {
                        "template": {
                            "spec": {
                                "imagePullSecrets": [{"name": "regcred"}],
                                "containers": [
                                    {
                                        "env": [
                                            {
                                                "name": "DB_PASSWORD",
                                                "valueFrom": {
                                                    "secretKeyRef": {"name": "db-secret", "key": "password"}
                                                },
                                            }
                                        ]
                                    }
                                ],
                                "volumes": [{"name": "tls", "secret": {"secretName": "checkout-tls"}}],
                            }
                        }
                    },
                }
            ]
        },
    )


# --------------------------------------------------------------------------------------------- the load


def _wrapped(event: dict[str, Any]) -> bytes:
    return json.dumps({"eventName": "spinnaker_events", "payload": event}).encode()


def _flattened(event: dict[str, Any]) -> bytes:
    flat = dict(event)
    flat["details"] = json.dumps(event["details"])
    flat["content"] = json.dumps(event["content"])
    return json.dumps(flat).encode()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("corpus")
    db = base / "c.db"
    secret_events = [_event(i, ctx(secret)) for i, (_, secret, ctx) in enumerate(CASES)]
    lookalike_events = [
        _event(1000 + i, _context_for_lookalike(k, v)) for i, (k, v) in enumerate(LOOKALIKES)
    ] + [_k8s_reference_event(2000)]
    server = Server(
        str(db),
        env={
            "SPINTRAIL_ADMIN_TOKEN": ADMIN,
            "SPINTRAIL_HEC_TOKENS": HEC_TOKEN,
            "SPINTRAIL_CHECKPOINT_SECONDS": "3600",
        },
    ).start()
    try:
        # Most secrets in one newline-delimited batch; the rest one body each, in every other shape.
        routes: dict[str, list[int]] = {"batch": [], "wrapped": [], "flattened": [], "gzip": [], "hec": []}
        shapes = ["wrapped", "flattened", "gzip", "hec"]
        for i in range(len(secret_events)):
            routes[shapes[i % 4] if i % 3 == 0 else "batch"].append(i)
        body = "\n".join(json.dumps(secret_events[i]) for i in routes["batch"])
        assert server.post(body, headers=AUTH).status_code == 200
        for i in routes["wrapped"]:
            assert server.post(_wrapped(secret_events[i]), headers=AUTH).status_code == 200
        for i in routes["flattened"]:
            assert server.post(_flattened(secret_events[i]), headers=AUTH).status_code == 200
        for i in routes["gzip"]:
            r = server.post(
                gzip.compress(json.dumps(secret_events[i]).encode()),
                headers={**AUTH, "Content-Encoding": "gzip"},
            )
            assert r.status_code == 200, r.text
        for i in routes["hec"]:
            r = httpx.post(
                server.url + "/services/collector/event",
                content=json.dumps({"event": secret_events[i], "sourcetype": "spinnaker"}).encode(),
                headers={"Authorization": f"Splunk {HEC_TOKEN}"},
                timeout=30,
            )
            assert r.status_code == 200, r.text
        look_bodies = [json.dumps(e, separators=(",", ":")).encode() for e in lookalike_events]
        assert server.post(b"\n".join(look_bodies), headers=AUTH).status_code == 200
        client = httpx.Client(base_url=server.url, headers=AUTH, timeout=60)
        yield {
            "client": client,
            "server": server,
            "db": db,
            "secret_events": secret_events,
            "lookalike_events": lookalike_events,
            "lookalike_bodies": look_bodies,
            "routes": routes,
        }
        client.close()
    finally:
        server.stop()


def _secret_forms(name: str, secret: str) -> list[str]:
    forms = [secret]
    if name == "k8s-secret-data":
        forms.append(_decoded_k8s(secret))
    if name == "gcp-sa-json-string":  # inside a JSON string its newlines are escapes
        forms = [secret.replace("\n", "\\n")]
    return forms


def _needles(name: str, secret: str) -> list[str]:
    """What must not appear: the secret, and for multi-line keys each line of their body."""
    needles = _secret_forms(name, secret)
    if "PRIVATE KEY" in secret:
        needles += [line for line in secret.splitlines() if not line.startswith("-----")]
    return needles


def _terms(db: Path) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        conn.execute("CREATE VIRTUAL TABLE temp.vocab USING fts5vocab(main, 'events_fts', 'row')")
        return {r[0] for r in conn.execute("SELECT term FROM temp.vocab")}
    finally:
        conn.close()


def test_the_corpus_is_large_and_covers_every_place() -> None:
    assert len(CASES) >= 60 and len(LOOKALIKES) >= 60
    assert len({s for _, s, _ in CASES}) == len(CASES)


def test_no_secret_is_kept_anywhere_in_the_store(corpus: dict[str, Any]) -> None:
    db: Path = corpus["db"]
    store = SqliteStore(db)
    try:
        ids = [r[0] for r in store.connect().execute("SELECT id FROM events ORDER BY id")]
        raws = [store.raw(i) or b"" for i in ids]
        records = [json.dumps(store.get(i).to_api()) for i in ids]  # type: ignore[union-attr]
    finally:
        store.close()
    assert len(ids) == len(CASES) + len(LOOKALIKES) + 1
    kept = b"\n".join(raws).decode("utf-8")
    rows = "\n".join(records)
    terms = _terms(db)
    leaks = []
    for name, secret, _ in CASES:
        for needle in _needles(name, secret):
            if needle in kept or needle in rows:
                leaks.append(name)
            words = [w.lower() for w in re.findall(r"\w+", needle) if len(w) >= 12]
            if any(w in terms for w in words):
                leaks.append(name + " (index term)")
    assert not leaks
    files = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*") if p.is_file())
    assert not [n for n, s, _ in CASES if s.encode() in files]


def test_no_secret_in_the_api_pages_proofs_or_exports(corpus: dict[str, Any]) -> None:
    server: httpx.Client = corpus["client"]
    texts: list[str] = []
    for event in corpus["secret_events"]:
        eid = event["eventId"]
        paths = [
            f"/api/v1/events/{eid}/raw",
            f"/api/v1/events/{eid}",
            f"/api/v1/integrity/proof/{eid}?raw=true",
            f"/events/{eid}",
        ]
        for path in paths:
            r = server.get(path, headers=AUTH)
            assert r.status_code == 200, (path, r.status_code)
            texts.append(r.text)
    for fmt in ("ndjson", "csv"):
        r = server.get(f"/api/v1/export?format={fmt}&limit=100000", headers=AUTH)
        assert r.status_code == 200, r.text
        texts.append(r.text)
    texts.append(server.get("/api/v1/events?limit=1000", headers=AUTH).text)
    texts.append(server.get("/search?q=checkout", headers=AUTH).text)
    everything = "\n".join(texts)
    # JSON answers escape newlines and slashes may be escaped in HTML: look for each line of a key too.
    leaks = [name for name, s, _ in CASES for needle in _needles(name, s) if needle in everything]
    leaks += [name for name, s, _ in CASES if json.dumps(s)[1:-1] in everything]
    assert not leaks
    # Where a secret was, its hash is.
    raw = server.get(f"/api/v1/events/{corpus['secret_events'][0]['eventId']}/raw", headers=AUTH).json()
    assert raw["content"]["context"]["parameters"]["ssh_key"].startswith("hmac-sha256:")
    # and the rest of a command stays readable
    docker = next(i for i, (n, _, _) in enumerate(CASES) if n == "docker-login-p")
    cmd = server.get(f"/api/v1/events/{corpus['secret_events'][docker]['eventId']}/raw", headers=AUTH).json()
    assert re.fullmatch(
        r"docker login -u ci -p hmac-sha256:[0-9a-f]{64} registry\.acme\.io && make",
        cmd["content"]["context"]["command"],
    )


def test_every_secret_is_found_by_its_hash(corpus: dict[str, Any]) -> None:
    client: httpx.Client = corpus["client"]
    missing = []
    for i, (name, secret, _) in enumerate(CASES):
        want = corpus["secret_events"][i]["eventId"]
        for form in _secret_forms(name, secret):
            r = client.post("/api/v1/hash", json={"value": form})
            assert r.status_code == 200
            if want not in [e["event_id"] for e in r.json()["events"]]:
                missing.append((name, form[:20]))
    assert not missing
    # The command line finds one too (from the database file, as an operator would).
    name, secret, _ = next(c for c in CASES if c[0] == "key-db-pass")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "spintrail",
            "hash",
            secret,
            "--database",
            str(corpus["db"]),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)) == 1


def test_lookalikes_are_kept_byte_for_byte_and_found_by_search(corpus: dict[str, Any]) -> None:
    server: httpx.Client = corpus["client"]
    not_found = []
    for event, body, (key, value) in zip(
        corpus["lookalike_events"], corpus["lookalike_bodies"], [*LOOKALIKES, ("", "")], strict=False
    ):
        raw = server.get(f"/api/v1/events/{event['eventId']}/raw", headers=AUTH)
        assert raw.content == body, key  # nothing in it was secret: the bytes as received
        if not value:
            continue
        r = server.get("/api/v1/events", params={"q": value, "limit": 50}, headers=AUTH)
        if event["eventId"] not in [e["event_id"] for e in r.json()["events"]]:
            not_found.append((key, value))
    assert not not_found
    references = corpus["lookalike_events"][-1]
    got = server.get(f"/api/v1/events/{references['eventId']}/raw", headers=AUTH).json()
    assert got == references


def test_forwarded_output_holds_no_secret(corpus: dict[str, Any], tmp_path: Path) -> None:
    """What forwarding sends (the redacted event and the record) delivered to a Splunk stand-in over HTTP."""
    from spintrail.sinks import Delivery, HecSink, HecSinkConfig
    from splunk_standin import SplunkStandin

    store = SqliteStore(tmp_path / "f.db")
    ingestor = Ingestor(Settings(database=str(tmp_path / "f.db")), store)
    deliveries = []
    for i, event in enumerate(corpus["secret_events"]):
        p = ingestor.prepare(IncomingEvent(event, json.dumps(event).encode()))
        assert p.event is not None
        deliveries.append(Delivery(i, p.record.event_id, p.record.to_api(), p.event, p.record.time))
    token = "7b1d1f33-0000-4000-8000-000000000014"
    with SplunkStandin((token,), indexes={"main"}) as hec:
        sink = HecSink(HecSinkConfig(name="splunk", url=hec.url, token=token, payload="both"))
        sink.send(deliveries)
        sink.close()
        sent = b"".join(r.body for r in hec.event_requests()).decode()
    assert sent.count('"event_id"') >= len(deliveries)
    leaks = [n for n, s, _ in CASES for needle in _needles(n, s) if needle in sent]
    leaks += [n for n, s, _ in CASES if json.dumps(s)[1:-1] in sent]
    assert not leaks
    ingestor.trust.close()
    store.close()
