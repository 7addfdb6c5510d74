"""``spintrail migrate``: a whole store copied between SQLite and PostgreSQL, ids and raw bytes kept."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from echo_gen import DAY, build_event, ingest, pipeline_run
from spintrail.query import Filters
from spintrail.store import PreparedEvent, Store, open_store
from spintrail.store.postgres import month_of
from test_cli import run

NOW = int(time.time() * 1000)

QUERIES: list[dict[str, Any]] = [
    {},
    {"q": "checkout-prod-v002"},
    {"q": "prod-v00"},
    {"q": "deploy alice"},
    {"q": '"Deploy to Prod"'},
    {"q": "OPS-77"},
    {"account": "prod"},
    {"region": "us-east-1", "type": "orca:task:*"},
    {"type": "orca:pipeline:*"},
    {"type": "build"},
    {"user": "alice@example.com", "status": "SUCCEEDED"},
    {"execution_id": "R1"},
    {"since": str(NOW - 40 * DAY), "until": str(NOW - 5 * DAY)},
]


def fill(store: Store) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for k in range(4):
        events += pipeline_run(f"R{k}", NOW - (10 * k + 1) * DAY, stages=3)
    events += [build_event(n, NOW - n * DAY) for n in range(5)]
    # A month boundary inside one execution, an odd body, NUL in a field, a big event.
    month = month_of(NOW)
    assert month is not None
    events += pipeline_run("EDGE", month.lo - 5000, stages=3)  # one run across a month boundary
    odd = build_event(99, NOW - 3 * DAY)
    odd["content"]["project"]["name"] = "nul\u0000name résumé ✓"
    events.append(odd)
    big = build_event(100, NOW - 2 * DAY)
    big["content"]["log"] = "z" * 2_000_000
    events.append(big)
    ingest(store, events)
    raw_odd = (
        b'  {"details":{"type":"git","source":"github","created":"1700000000000"},'
        b'"content":{},"eventId":"odd"}\n'
    )
    from spintrail.decode import decode_body
    from spintrail.ingest import Ingestor
    from spintrail.settings import Settings

    [inc] = decode_body(raw_odd)
    store.append([Ingestor(Settings(), store).prepare(inc, received_at=5)])
    return events


def snapshot(store: Store) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for params in QUERIES:
        page = store.search(Filters.from_params(params), limit=1000)
        out[json.dumps(params)] = [r.to_api() for r in page.records]
    out["raw"] = {r.id: store.raw(r.id) for r in store.search(Filters(), limit=1000).records if r.id}
    out["executions"] = [r.to_api() for r in store.execution("R1")]
    return out


def nul_as_pg_keeps_it(value: Any) -> Any:
    """PostgreSQL text cannot hold NUL: fields keep U+FFFD instead (the raw bytes stay exact)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {k: nul_as_pg_keeps_it(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nul_as_pg_keeps_it(v) for v in value]
    return value


def test_sqlite_to_postgresql_and_back(tmp_path: Path, pg_url: str) -> None:
    src_path = tmp_path / "source.db"
    src = open_store(str(src_path))
    fill(src)
    before = snapshot(src)
    n = src.stats().events
    src.close()

    r = run("migrate", "--from", f"sqlite:///{src_path}", "--to", pg_url, "--format", "json")
    assert r.returncode == 0, r.stderr
    [row] = json.loads(r.stdout)
    assert (row["source_events"], row["copied"], row["already_there"], row["target_events"]) == (n, n, 0, n)

    pg = open_store(pg_url)
    try:
        after = snapshot(pg)
        # Same ids, same records, same raw bytes, same search answers.
        assert after == nul_as_pg_keeps_it(before)
        # New events continue after the copied ids.
        [res] = ingest(pg, [build_event(500, NOW)])
        assert res.id > max(after["raw"])
        with_new = snapshot(pg)
    finally:
        pg.close()

    # Running it again copies nothing twice.
    again = run("migrate", "--from", str(src_path), "--to", pg_url, "--format", "json")
    assert again.returncode == 0, again.stderr
    [row] = json.loads(again.stdout)
    assert (row["copied"], row["already_there"], row["target_events"]) == (0, n, n + 1)

    # And back to a new SQLite file.
    back_path = tmp_path / "back.db"
    r = run("migrate", "--from", pg_url, "--to", str(back_path), "--format", "csv")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1].split(",")[:4] == [str(n + 1), str(n + 1), "0", str(n + 1)]
    back = open_store(str(back_path))
    try:
        assert snapshot(back) == with_new
    finally:
        back.close()


def test_migrate_refuses_what_it_cannot_do(tmp_path: Path, pg_url: str) -> None:
    db = str(tmp_path / "a.db")
    same = run("migrate", "--from", db, "--to", db)
    assert same.returncode == 2 and "same database" in same.stderr
    down = run("migrate", "--from", db, "--to", "postgresql://nobody@127.0.0.1:1/none")
    assert down.returncode == 1 and "cannot connect to PostgreSQL" in down.stderr
    # A target that already holds other events under the same ids is refused, not mixed up.
    a = open_store(db)
    ingest(a, [build_event(1, NOW)])
    a.close()
    b = open_store(pg_url)
    b.append([PreparedEvent(record=_record("someone-else"), raw=b"{}")])
    b.close()
    clash = run("migrate", "--from", db, "--to", pg_url)
    assert clash.returncode == 1 and "empty database" in clash.stderr.replace("\n", " ")


def _record(event_id: str) -> Any:
    from conftest import make_record

    return make_record(1, event_id=event_id)


def test_migrate_large_store_shows_progress(tmp_path: Path, pg_url: str) -> None:
    src_path = tmp_path / "big.db"
    src = open_store(str(src_path))
    for k in range(30):
        ingest(src, pipeline_run(f"B{k}", NOW - k * DAY, stages=4))
    src.close()
    r = run(
        "migrate",
        "--from",
        str(src_path),
        "--to",
        pg_url,
        env={"COLUMNS": "120", "TERM": os.environ.get("TERM", "xterm")},
    )
    assert r.returncode == 0, r.stderr
    assert "420" in r.stdout and "copying" in r.stderr
