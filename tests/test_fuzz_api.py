"""The HTTP API fuzzed from its own OpenAPI description (schemathesis): no 500s, no crash, and a refused
ingest request stores nothing. Bounded: a few examples per operation."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Server

schemathesis = pytest.importorskip("schemathesis")
GenerationMode = schemathesis.GenerationMode

ADMIN = "fuzz-admin-token"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    db = tmp_path_factory.mktemp("fuzz") / "f.db"
    server = Server(
        str(db), env={"SPINTRAIL_ADMIN_TOKEN": ADMIN, "SPINTRAIL_CHECKPOINT_SECONDS": "3600"}
    ).start()
    event = {
        "details": {
            "source": "orca",
            "type": "orca:pipeline:starting",
            "created": "1718370000000",
            "application": "a",
        },
        "content": {"execution": {"id": "E1", "type": "PIPELINE", "application": "a", "stages": []}},
        "eventId": str(uuid.UUID(int=1)),
    }
    assert server.post(json.dumps(event), headers=AUTH).status_code == 200
    yield server
    server.stop()


def _log_size(server: Server) -> int:
    return int(server.get("/api/v1/integrity/checkpoints?limit=1", headers=AUTH).json()["log_size"])


def fuzz_operation(live: Server, operation: Any, failures: list[str], statuses: Counter[int]) -> None:
    ingest = operation.method.upper() == "POST" and operation.path.startswith("/api/v1/events")
    strategy = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(GenerationMode.NEGATIVE)

    @given(case=strategy)
    @settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        before = _log_size(live) if ingest else 0
        response = case.call(base_url=live.url, headers=AUTH, timeout=60)
        where = f"{case.method} {case.formatted_path}"
        statuses[response.status_code] += 1
        if response.status_code >= 500:
            failures.append(f"{where}: {response.status_code} {response.text[:300]}")
        if ingest and response.status_code != 200 and _log_size(live) != before:
            failures.append(f"{where}: refused with {response.status_code} but stored events")
        assert live.proc is not None and live.proc.poll() is None, f"the server crashed on {where}"

    run()


def test_no_request_makes_the_server_fail(live: Server) -> None:
    """Every operation of /openapi.json with generated parameters and bodies."""
    schema = schemathesis.openapi.from_url(live.url + "/openapi.json")
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    operations = 0
    for result in schema.get_all_operations():
        operations += 1
        fuzz_operation(live, result.ok(), failures, statuses)
    assert not failures, "\n".join(failures[:20])
    assert operations >= 12
    # The fuzzing reached the handlers: accepted, refused and not-found answers all occurred.
    assert statuses[200] and statuses[400] + statuses[422] and statuses[404], statuses


NASTY = [
    "99999999999999999999999",
    "-99999999999999999999999",
    "-1",
    "0",
    "",
    " ",
    "'",
    '"',
    "\\",
    "%00",
    "null",
    "[]",
    "{}",
    "1e309",
    "NaN",
    "9" * 400,
    "ü" * 50,
    "../../etc/passwd",
    "*",
    "a:b",
    "MTox",
]


def test_nasty_values_in_every_parameter(live: Server) -> None:
    """Deterministic edge values in each query and path parameter of every operation."""
    spec = httpx.get(live.url + "/openapi.json", timeout=10).json()
    failures = []
    client = httpx.Client(timeout=60, headers=AUTH)
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            params = [p for p in op.get("parameters", []) if p["in"] in ("query", "path")]
            for param in params:
                for value in NASTY:
                    url = live.url + path
                    for p in (q for q in params if q["in"] == "path"):
                        filled = quote(value, safe="") or "x" if p is param else "1"
                        url = url.replace("{" + p["name"] + "}", filled)
                    query = {param["name"]: value} if param["in"] == "query" else {}
                    r = client.request(method.upper(), url, params=query)
                    if r.status_code >= 500:
                        failures.append(f"{method.upper()} {path} {param['name']}={value!r}: {r.status_code}")
    client.close()
    assert not failures, "\n".join(failures[:30])


_VALID = json.dumps(
    {
        "details": {
            "source": "orca",
            "type": "orca:stage:complete",
            "created": "1718370000000",
            "application": "a",
        },
        "content": {
            "execution": {"id": "E2", "type": "PIPELINE", "stages": [{"type": "wait", "context": {}}]}
        },
    }
).encode()


@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda cut, junk: _VALID[:cut] + junk + _VALID[cut:],
            st.integers(0, len(_VALID)),
            st.binary(max_size=8),
        ),
    ),
    gzip_it=st.booleans(),
)
@settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_ingest_bodies_fuzzed_over_http(live: Server, body: bytes, gzip_it: bool) -> None:
    """Random and mutated bodies: a clear 2xx or 4xx, and a refused body stores nothing."""
    import gzip

    before = _log_size(live)
    headers = {**AUTH, "Content-Type": "application/json"}
    if gzip_it:
        body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
    r = httpx.post(live.url + "/api/v1/events", content=body, headers=headers, timeout=60)
    assert r.status_code in (200, 400, 413, 415), r.text
    if r.status_code == 200:
        assert _log_size(live) == before + r.json()["stored"]
    else:
        assert r.json()["message"] and _log_size(live) == before


def test_the_server_is_still_sound_after_fuzzing(live: Server) -> None:
    assert httpx.get(live.url + "/readyz", timeout=10).status_code == 200
    report = httpx.post(live.url + "/api/v1/integrity/verify", headers=AUTH, timeout=60).json()
    assert report["ok"], report["problems"]


_HEC_VALID = b'{"event":' + _VALID + b',"fields":{"spinnaker_instance":"prod"},"time":1718370000.5}'

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def _hostile(kind: str, n: int) -> bytes:
    """Bodies built to break parsers: deep nesting, huge numbers, escapes no database stores."""
    if kind == "deep":
        return b'{"event":' + b"[" * n + b"]" * n + b"}"
    if kind == "digits":
        return b'{"event":{"details":{"type":"t"}},"fields":{"n":' + b"9" * n + b"}}"
    if kind == "escapes":
        return _HEC_VALID.replace(b'"prod"', b'"\\udfff\\u0000' + b"\\ud800" * (n % 7) + b'"')
    return b'{"event":"' + b"\\" * (n % 2) + b'x"}' * (n % 5 + 1)


@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda cut, junk: _HEC_VALID[:cut] + junk + _HEC_VALID[cut:],
            st.integers(0, len(_HEC_VALID)),
            st.binary(max_size=8),
        ),
        st.builds(
            lambda event, fields: json.dumps({"event": event, "fields": fields}).encode(),
            _json_values,
            _json_values,
        ),
        st.builds(
            _hostile,
            st.sampled_from(["deep", "digits", "escapes", "concatenated"]),
            st.sampled_from([1, 10, 1000, 10_000, 100_000]),
        ),
    ),
    gzip_it=st.booleans(),
)
@settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_splunk_bodies_fuzzed_over_http(live: Server, body: bytes, gzip_it: bool) -> None:
    """The Splunk-compatible route: a clear 2xx or 4xx with a HEC `code` always, `Retry-After` on a 503,
    and a refused body stores nothing."""
    import gzip

    before = _log_size(live)
    headers = {**AUTH, "Content-Type": "application/json"}
    if gzip_it:
        body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
    r = httpx.post(live.url + "/services/collector/event", content=body, headers=headers, timeout=60)
    assert r.status_code in (200, 400, 413, 415, 503), r.text[:300]
    answer = r.json()
    assert isinstance(answer["code"], int) and answer["text"], answer
    if r.status_code == 503:
        assert answer["code"] == 9 and int(r.headers["Retry-After"]) >= 1
    if r.status_code == 200:
        assert answer["code"] == 0 and _log_size(live) >= before
    else:
        assert answer["code"] != 0 and _log_size(live) == before
