"""Query latency over the HTTP API on a filled database (the server pinned to the server core).

Parameters are drawn from the stored records themselves (random ids), so every query asks about a user,
application, account or server group that exists. Each kind runs once per parameter after a warm-up
pass; the report gives p50 and p95 over the parameters.

The export streams ``GET /api/v1/export`` (NDJSON) and stops after the wanted rows when the server has that
endpoint, else it pages through ``GET /api/v1/events`` 1000 rows at a time. The dashboard's aggregates
(``GET /api/v1/dashboard``, 30 days) are measured when the server has them.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.events import DAY_MS, END_MS


@dataclass
class QueryResult:
    key: str
    title: str
    target_ms: float | None
    times_ms: list[float] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    note: str = ""

    def pct(self, p: float) -> float:
        if not self.times_ms:
            return float("nan")
        xs = sorted(self.times_ms)
        if len(xs) == 1:
            return xs[0]
        return statistics.quantiles(xs, n=100, method="inclusive")[int(p) - 1]


def newest_time(database: str) -> int:
    """The event time of the newest stored record (what "the last 7 days" count back from)."""
    from spintrail.query import Filters
    from spintrail.store import open_store

    store = open_store(database)
    try:
        page = store.search(Filters(), limit=1)
        return page.records[0].time if page.records else END_MS
    finally:
        store.close()


def sample_records(database: str, n: int, *, seed: int = 5) -> list[dict[str, Any]]:
    """``n`` random stored records (as the API shows them)."""
    from spintrail.store import open_store

    store = open_store(database)
    try:
        total = store.stats().events
        rng = random.Random(seed)
        out = []
        tries = 0
        while len(out) < n and tries < n * 20:
            tries += 1
            rec = store.get(rng.randint(1, max(total, 1)))
            if rec is not None:
                out.append(rec.to_api())
        return out
    finally:
        store.close()


def server_paths(client: httpx.Client) -> set[str]:
    """The paths the server's OpenAPI description lists."""
    try:
        return set(client.get("/openapi.json").json().get("paths", {}))
    except (httpx.HTTPError, ValueError):
        return set()


def run_queries(
    url: str,
    records: list[dict[str, Any]],
    *,
    per_kind: int = 30,
    export_rows: int = 100_000,
    exports: int = 3,
    end_ms: int = END_MS,
) -> list[QueryResult]:
    """Measure every query kind against the server at ``url``."""
    rng = random.Random(7)
    client = httpx.Client(base_url=url, timeout=600)
    paths = server_paths(client)

    def pick(pred: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        xs = [r for r in records if pred(r)]
        rng.shuffle(xs)
        return xs[:per_kind]

    events = "/api/v1/events"
    since_7d = end_ms - 7 * DAY_MS
    users = pick(lambda r: bool(r["user"]))
    aa = pick(lambda r: bool(r["application"]) and bool(r["accounts"]))
    sgs = pick(lambda r: bool(r["server_groups"]))
    ex = pick(lambda r: bool(r["execution_id"]))
    raws = pick(lambda r: r["id"] is not None)
    kinds: list[tuple[QueryResult, list[tuple[str, dict[str, Any]]]]] = [
        (
            QueryResult("user_7d", "user, last 7 days", 100),
            [(events, {"user": r["user"], "since": since_7d}) for r in users],
        ),
        (
            QueryResult("app_account", "application and account", 100),
            [(events, {"application": r["application"], "account": r["accounts"][0]}) for r in aa],
        ),
        (
            QueryResult("server_group", "server group", 100),
            [(events, {"server_group": r["server_groups"][0]}) for r in sgs],
        ),
        (
            QueryResult("fulltext_sg", "full text: a server-group name", 300),
            [(events, {"q": r["server_groups"][0]}) for r in sgs],
        ),
        (
            QueryResult("timeline", "one execution's timeline", 100),
            [(f"/api/v1/executions/{r['execution_id']}", {}) for r in ex],
        ),
        (
            QueryResult("raw", "one event's raw bytes", 100),
            [(f"/api/v1/events/{r['id']}/raw", {}) for r in raws],
        ),
    ]
    if "/api/v1/dashboard" in paths:
        window = {"since": end_ms - 30 * DAY_MS, "until": end_ms}
        apps = sorted({r["application"] for r in records if r["application"]})
        calls = [("/api/v1/dashboard", window)] * 5
        calls += [("/api/v1/dashboard", {**window, "application": a}) for a in apps[: max(per_kind - 5, 1)]]
        kinds.append((QueryResult("dashboard_30d", "dashboard, 30 days", 300), calls))

    results = []
    for res, calls in kinds:
        for path, params in calls[:5]:  # warm-up
            client.get(path, params=params)
        for path, params in calls:
            t = time.perf_counter()
            resp = client.get(path, params=params)
            res.times_ms.append((time.perf_counter() - t) * 1000)
            if resp.status_code != 200:
                res.note = f"HTTP {resp.status_code}: {resp.text[:200]}"
            elif "json" in resp.headers.get("content-type", ""):
                body = resp.json()
                if isinstance(body, dict) and "events" in body:
                    res.rows.append(len(body["events"]))
        results.append(res)

    streamed = "/api/v1/export" in paths
    how = "streamed NDJSON from /api/v1/export" if streamed else "keyset pages of 1000"
    exp = QueryResult("export", f"export {export_rows:,} rows ({how})", None)
    for _ in range(exports):
        t = time.perf_counter()
        exp.rows.append(export(client, export_rows, streamed=streamed))
        exp.times_ms.append((time.perf_counter() - t) * 1000)
    results.append(exp)
    client.close()
    return results


def export(
    client: httpx.Client, rows: int, *, streamed: bool, on_page: Callable[[], None] | None = None
) -> int:
    """Read up to ``rows`` records, newest first; returns the rows read."""
    if streamed:
        got = 0
        with client.stream("GET", "/api/v1/export", params={"format": "ndjson"}) as resp:
            resp.raise_for_status()
            for line in resp.iter_lines():
                if line:
                    got += 1
                    if got >= rows:
                        break
        return got
    got = 0
    cursor = None
    while got < rows:
        params: dict[str, str | int] = {"limit": 1000}
        if cursor:
            params["cursor"] = cursor
        resp = client.get("/api/v1/events", params=params)
        resp.raise_for_status()
        body = resp.json()
        got += len(body["events"])
        cursor = body["next_cursor"]
        if on_page is not None:
            on_page()
        if not cursor:
            break
    return got
