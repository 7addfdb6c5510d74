"""Retention on both backends: per-class ages, delta chains kept intact, exact full-text removal, and on
PostgreSQL whole partitions dropped."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import Server
from echo_gen import DAY, build_event, ingest, pipeline_run, prepare
from spintrail import retention
from spintrail.query import Filters
from spintrail.retention import Policy, event_class
from spintrail.store import Store
from test_cli import run

NOW = int(time.time() * 1000)


def month_start_before(ms: int) -> int:
    """One hour into the first day of the calendar month (UTC) that holds ``ms``."""
    d = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return int(dt.datetime(d.year, d.month, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)


def all_events(store: Store) -> list[Any]:
    return store.search(Filters(), limit=1000).records


def count_raw(store: Store) -> int:
    if store.backend == "sqlite":
        conn = store.connect()  # type: ignore[attr-defined]
        try:
            return int(conn.execute("SELECT count(*) FROM raw").fetchone()[0])
        finally:
            conn.close()
    return int(store._read("SELECT count(*) FROM raw")[0][0])  # type: ignore[attr-defined]


def stale_fts_rows(store: Store) -> int:
    """SQLite: full-text entries whose event is gone (an inexact delete would leave some)."""
    conn = store.connect()  # type: ignore[attr-defined]
    try:
        conn.execute(
            "CREATE VIRTUAL TABLE IF NOT EXISTS temp.v USING fts5vocab(main, events_fts, 'instance')"
        )
        return int(
            conn.execute("SELECT count(*) FROM temp.v WHERE doc NOT IN (SELECT id FROM events)").fetchone()[0]
        )
    finally:
        conn.close()


def fresh(store: Store, n: int = 0) -> None:
    """A recent event of another execution: on SQLite the newest row is never removed (ids are not reused)."""
    ingest(store, [build_event(100_000 + n, NOW)])


def test_event_classes() -> None:
    assert event_class("orca:task:complete") == "task"
    assert event_class("orca:stage:starting") == "stage"
    assert event_class("orca:pipeline:failed") == "pipeline"
    assert event_class("orca:orchestration:complete") == "pipeline"
    assert [event_class(t) for t in ("build", "git", "manual", None, "mcp:tool:x", "orca:taskx")] == [
        "other"
    ] * 6


def test_removes_each_class_at_its_age_and_keeps_the_rest(store: Store) -> None:
    old_run = pipeline_run("OLD", NOW - 400 * DAY)  # every class past 1 year except pipelines (7 years)
    mid_run = pipeline_run("MID", NOW - 100 * DAY)  # tasks past 90 days; the rest kept
    new_run = pipeline_run("NEW", NOW - 2 * DAY)
    builds = [build_event(1, NOW - 500 * DAY), build_event(2, NOW - 10 * DAY)]
    ingest(store, old_run + mid_run + new_run + builds)
    before = {r.event_id: r for r in all_events(store)}
    report = retention.run(store, Policy(), now_ms=NOW)
    after = {r.event_id: r for r in all_events(store)}

    def expect_kept(r: Any) -> bool:
        cls = event_class(r.type)
        age = NOW - r.time
        return age < {"task": 90, "stage": 365, "pipeline": 2555, "other": 365}[cls] * DAY

    assert set(after) == {e for e, r in before.items() if expect_kept(r)}
    removed = [r for e, r in before.items() if e not in after]
    assert report.events == {
        cls: sum(1 for r in removed if event_class(r.type) == cls) for cls in retention.CLASSES
    }
    assert report.events["task"] == 16 and report.events["stage"] == 4 and report.events["other"] == 1
    assert report.events["pipeline"] == 0
    # Every surviving event still has its exact bytes (their delta bases were kept where needed).
    originals = {
        e["eventId"]: json.dumps(e, separators=(",", ":")).encode() for e in old_run + mid_run + new_run
    }
    for r in after.values():
        if r.event_id in originals:
            assert store.raw(r.id) == originals[r.event_id]
    # Removed events are gone from every query.
    assert store.search(Filters.from_params({"execution_id": "OLD", "type": "orca:task:*"})).records == []
    assert store.search(Filters.from_params({"q": "checkout-build-1"})).records == []
    assert len(store.search(Filters.from_params({"q": "checkout-build-2"})).records) == 1
    assert store.get_by_event_id(removed[0].event_id) is None
    assert store.get(removed[0].id) is None
    # A removed event sent again is stored again (its id claim went with it).
    again = [e for e in old_run if e["details"]["type"].startswith("orca:task:")][:1]
    assert ingest(store, again)[0].duplicate is False
    fresh(store)
    # A second run finds nothing more to remove but that one.
    second = retention.run(store, Policy(), now_ms=NOW)
    assert second.events["task"] == 1 and second.total == 1
    if store.backend == "sqlite":
        assert stale_fts_rows(store) == 0
        conn = store.connect()  # type: ignore[attr-defined]
        try:
            orphans = "SELECT count(*) FROM event_tags WHERE event_row NOT IN (SELECT id FROM events)"
            assert conn.execute(orphans).fetchone()[0] == 0
        finally:
            conn.close()


def test_zero_days_keeps_forever_and_dry_run_removes_nothing(store: Store) -> None:
    ingest(store, [*pipeline_run("ANCIENT", NOW - 3000 * DAY), build_event(1, NOW - 3000 * DAY)])
    fresh(store)
    n = len(all_events(store)) - 1
    forever = Policy(task_days=0, stage_days=0, pipeline_days=0, other_days=0)
    assert retention.run(store, forever, now_ms=NOW).total == 0
    dry = retention.run(store, Policy(), now_ms=NOW, dry_run=True)
    assert dry.total == n and dry.raw_blobs is None
    assert len(all_events(store)) == n + 1
    keep_tasks = retention.run(store, Policy(task_days=0), now_ms=NOW)
    assert keep_tasks.events["task"] == 0 and keep_tasks.total == n - 8
    left = all_events(store)
    assert {event_class(r.type) for r in left if r.time < NOW} == {"task"}
    for r in left:
        assert store.raw(r.id) is not None


def test_delta_chain_bases_survive_until_their_last_dependent_goes(store: Store) -> None:
    # One execution's task events, one per day: each raw blob is a delta of the previous one. Raw streams
    # break at a change of calendar month, so the ten days start on the first of a month (whatever today is).
    start = month_start_before(NOW - 100 * DAY)
    events = []
    for day in range(10):
        e = pipeline_run("CHAIN", start + day * DAY, stages=1)[1]  # a task event
        e["eventId"] = f"chain-{day}"
        e["details"]["created"] = str(start + day * DAY)
        e["content"]["execution"]["stages"].append({"id": f"grow-{day}", "context": {"n": "y" * 200 * day}})
        events.append(e)
    results = ingest(store, events)
    fresh(store)
    raws = {r.id: store.raw(r.id) for r in results}
    assert count_raw(store) == 11
    # Days 0-4 are past 95 days: their events go, their blobs stay as bases of days 5-9.
    report = retention.run(store, Policy(task_days=95), now_ms=start + 95 * DAY + 4 * DAY + DAY // 2)
    assert report.events["task"] == 5
    left = [r for r in all_events(store) if r.id in raws]
    assert len(left) == 5
    for r in left:
        assert store.raw(r.id) == raws[r.id]
    assert count_raw(store) == 11 and report.raw_blobs == 0
    # When the rest go too, the whole chain goes.
    report = retention.run(store, Policy(task_days=1), now_ms=NOW)
    assert report.events["task"] == 5 and report.raw_blobs == 10
    assert count_raw(store) == 1
    # A new event of the same execution, once its cached base is gone, starts a new chain.
    late = dict(events[-1], eventId="late")
    [r] = ingest(store, [late])
    assert store.raw(r.id) == json.dumps(late, separators=(",", ":")).encode()
    if store.backend == "sqlite":
        assert stale_fts_rows(store) == 0


def test_text_recomputed_for_every_body_shape_matches_what_was_indexed(tmp_path: Path) -> None:
    from spintrail.decode import decode_body
    from spintrail.ingest import Ingestor
    from spintrail.settings import Settings
    from spintrail.store.sqlite import SqliteStore

    e = pipeline_run("SHAPES", NOW - 200 * DAY, stages=1)[1]
    flat = {**e, "details": json.dumps(e["details"]), "content": json.dumps(e["content"])}
    bodies = [
        json.dumps(e, indent=2),
        json.dumps({"eventName": "spinnaker_events", "payload": e}),
        json.dumps(flat),
        json.dumps({"instance": "prod-eu", "event": e}),
    ]
    store = SqliteStore(tmp_path / "shapes.db")
    try:
        ing = Ingestor(Settings(), store)
        for k, body in enumerate(bodies):
            [incoming] = decode_body(body.encode())
            incoming.event["eventId"] = f"shape-{k}"
            p = ing.prepare(incoming, received_at=1)
            store.append([p])
            assert retention.recompute_text(p.record, incoming.raw) == p.text
        fresh(store)
        assert retention.run(store, Policy(task_days=30), now_ms=NOW).events["task"] == len(bodies)
        assert stale_fts_rows(store) == 0 and len(all_events(store)) == 1
    finally:
        store.close()


def test_sqlite_undecodable_raw_rebuilds_the_index(tmp_path: Path) -> None:
    from spintrail.store.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "odd.db")
    try:
        [odd] = prepare(store, [build_event(1, NOW - 400 * DAY)])
        odd.raw = b"\xff not json at all"
        keep = prepare(store, [build_event(2, NOW)])
        store.append([odd, *keep])
        report = retention.run(store, Policy(), now_ms=NOW)
        assert report.events["other"] == 1 and report.fts_rebuilt
        assert stale_fts_rows(store) == 0
        assert [r.event_id for r in store.search(Filters.from_params({"q": "checkout-build"})).records] == [
            keep[0].record.event_id
        ]
    finally:
        store.close()


def test_postgres_drops_whole_partitions_past_every_limit(pg_url: str) -> None:
    from spintrail.store.postgres import PostgresStore, month_of

    store = PostgresStore(pg_url)
    try:
        very_old = NOW - 9 * 365 * DAY  # past every class's limit, pipelines included
        kept_month = NOW - 3 * 365 * DAY  # tasks and stages past, pipelines kept
        ingest(store, [*pipeline_run("V", very_old), build_event(1, very_old + 5000)])
        ingest(store, pipeline_run("K", kept_month))
        old_part = month_of(very_old + 1000)
        kept_part = month_of(kept_month + 1000)
        assert old_part is not None and kept_part is not None

        def tables() -> set[str]:
            return {
                r[0]
                for r in store._read("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
            }

        assert {old_part.events_table, old_part.raw_table, kept_part.events_table} <= tables()
        dry = retention.run(store, Policy(), now_ms=NOW, dry_run=True)
        assert dry.partitions_dropped == [old_part.events_table]
        assert old_part.events_table in tables()
        report = retention.run(store, Policy(), now_ms=NOW)
        assert report.partitions_dropped == [old_part.events_table]
        assert report.events == dry.events == {"task": 16, "stage": 8, "pipeline": 2, "other": 1}
        assert old_part.events_table not in tables() and old_part.raw_table not in tables()
        assert kept_part.events_table in tables()
        left = all_events(store)
        assert {(r.execution_id, event_class(r.type)) for r in left} == {("K", "pipeline")}
        for r in left:
            assert store.raw(r.id) is not None
        # The id claims of the dropped events are gone too: sent again, they are stored again.
        assert ingest(store, pipeline_run("V", very_old)[:1])[0].duplicate is False
        assert store._read("SELECT count(*) FROM event_ids")[0][0] == 3
    finally:
        store.close()


def test_retention_command_on_both_backends(tmp_path: Path, pg_url: str) -> None:
    from spintrail.store import open_store

    for db in (str(tmp_path / "cmd.db"), pg_url):
        store = open_store(db)
        try:
            ingest(store, pipeline_run("CMD", NOW - 120 * DAY))
        finally:
            store.close()
        dry = run("retention", "--database", db, "--dry-run", "--format", "json")
        assert dry.returncode == 0, dry.stderr
        rows = {r["class"]: r for r in json.loads(dry.stdout)}
        assert rows["task"]["events"] == 8 and rows["task"]["keep_days"] == 90
        assert rows["total"]["raw_blobs"] is None
        real = run(
            "retention", "--database", db, "--task-days", "200", "--stage-days", "100", "--format", "csv"
        )
        assert real.returncode == 0, real.stderr
        assert real.stdout.splitlines()[0] == ",".join(retention.REPORT_COLUMNS)
        assert "stage,100," in real.stdout and ",4," in real.stdout
        if "://" not in db:
            table = run("retention", "--database", db)
            assert table.returncode == 0 and "total" in table.stdout
    bad = run("retention", "--database", str(tmp_path / "nope" / "x.db"))
    assert bad.returncode == 1 and "does not exist" in bad.stderr


def test_retention_runs_inside_the_server_when_configured(server_factory: Any, tmp_path: Path) -> None:
    db = str(tmp_path / "auto.db")
    server: Server = server_factory(
        db, env={"SPINTRAIL_RETENTION_INTERVAL_HOURS": "0.0003", "SPINTRAIL_RETENTION_TASK_DAYS": "30"}
    )
    old = [e for e in pipeline_run("AUTO", NOW - 60 * DAY) if e["details"]["type"].startswith("orca:task")]
    assert server.post(old).json()["stored"] == len(old)
    assert server.post(build_event(1, NOW)).json()["stored"] == 1
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if not server.get("/api/v1/events?execution_id=AUTO").json()["events"]:
            break
        time.sleep(0.2)
    assert server.get("/api/v1/events?execution_id=AUTO").json()["events"] == []


def test_retention_while_a_writer_appends_to_the_same_chain(store: Store) -> None:
    """A cached delta base removed by retention between two commits is never used as a base."""
    first = pipeline_run("RACE", NOW - 200 * DAY, stages=1)
    tasks = [e for e in first if e["details"]["type"].startswith("orca:task")]
    ingest(store, tasks[:1])  # the writer now caches its blob as the base of the execution's tasks
    fresh(store)
    assert retention.run(store, Policy(task_days=30), now_ms=NOW).raw_blobs == 1
    late = dict(tasks[1], eventId="late-task")
    [r] = ingest(store, [late])
    assert store.raw(r.id) == json.dumps(late, separators=(",", ":")).encode()


def test_sqlite_retention_keeps_the_fts_exact_with_many_events(tmp_path: Path) -> None:
    from spintrail.store.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "many.db")
    try:
        for k in range(6):
            ingest(store, pipeline_run(f"M{k}", NOW - (50 + 20 * k) * DAY, stages=3))
        retention.run(store, Policy(task_days=60, stage_days=90), now_ms=NOW, batch=7)
        assert stale_fts_rows(store) == 0
        conn = sqlite3.connect(store.path)
        try:
            conn.execute("INSERT INTO events_fts(events_fts) VALUES ('integrity-check')")
        finally:
            conn.close()
    finally:
        store.close()


def test_sqlite_never_hands_a_removed_id_to_a_new_event(tmp_path: Path) -> None:
    from spintrail.store.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "ids.db")
    try:
        [old] = ingest(store, [build_event(1, NOW - 900 * DAY)])
        # The newest row stays until a newer one arrives: its id would otherwise go to the next event.
        assert retention.run(store, Policy(), now_ms=NOW).total == 0
        [new] = ingest(store, [build_event(2, NOW)])
        assert retention.run(store, Policy(), now_ms=NOW).total == 1
        [newer] = ingest(store, [build_event(3, NOW)])
        assert old.id < new.id < newer.id
        assert store.get(old.id) is None
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_retention_keeps_the_tamper_evident_log_verifiable(
    server_factory: Any, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """Retention removes content, never leaves: verify afterwards reports the records as removed by
    retention, not as deleted, and every remaining record still checks out."""
    import json as _json
    import subprocess
    import sys

    from test_receive import event

    database = str(tmp_path / "v.db") if backend == "sqlite" else request.getfixturevalue("pg_url")
    key = tmp_path / "signing.key"
    env = {"SPINTRAIL_SIGNING_KEY_FILE": str(key), "SPINTRAIL_CHECKPOINT_EVENTS": "2"}
    server = server_factory(database, env=env)
    old = [event(n) for n in range(4)]  # 2024: older than a day
    assert server.post(old).json()["stored"] == 4
    server.stop()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        import os

        return subprocess.run(
            [sys.executable, "-m", "spintrail", *args, "--database", database],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **env},
        )

    r = cli("retention", "--pipeline-days", "1", "--format", "json")
    assert r.returncode == 0, r.stderr
    r = cli("verify", "--format", "json")
    report = _json.loads(r.stdout)
    assert report["problems"] == [], report["problems"]
    # SQLite keeps its newest event until a newer one arrives (ids are never reused): 3 or 4 removed.
    # The run itself is a leaf of the log (per batch), naming the leaves it removed and its cut-offs.
    assert report["admin_actions"] == {"retention": report["leaves"] - 4}
    assert report["content_removed"] >= 3
    assert report["content_removed"] + report["records_checked"] == 4


def test_sqlite_retention_takes_the_text_values_of_removed_events_along(tmp_path: Path) -> None:
    """Values are stored once (``strings``): those only removed events used must not outlive them."""
    import re

    from spintrail.store import open_store

    store = open_store(str(tmp_path / "s.db"))

    def values() -> set[str]:
        conn = store.connect()  # type: ignore[attr-defined]
        try:
            return {v for (v,) in conn.execute("SELECT value FROM strings")}
        finally:
            conn.close()

    try:
        ingest(store, [build_event(1, NOW - 500 * DAY), build_event(2, NOW - 10 * DAY)])
        fresh(store)
        old_only = {v for v in values() if re.search(r"checkout-build-1(?!\d)", v)}
        kept = {v for v in values() if re.search(r"checkout-build-2(?!\d)", v)}
        assert old_only and kept
        report = retention.run(store, Policy(), now_ms=NOW)
        assert report.events["other"] == 1 and report.strings_removed >= len(old_only)
        assert not old_only & values() and kept <= values()
        # The writer forgot the removed ids: the same values stored again read back as themselves.
        (again,) = ingest(store, [build_event(1, NOW - 5 * DAY)])
        found = store.search(Filters.from_params({"q": "checkout-build-1"})).records
        assert again.id in [r.id for r in found]
        record = json.dumps(store.get(again.id).to_api())  # type: ignore[union-attr]
        assert re.search(r"checkout-build-1(?!\d)", record)
        assert old_only <= values()
    finally:
        store.close()
