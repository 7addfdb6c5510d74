"""`spintrail check` finds every kind of inconsistency; `spintrail backup` copies a live store."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Server
from loadgen import post_json, stage_event
from spintrail.store.sqlite import SqliteStore
from test_cli import run

CHECKS = {"integrity_check", "event_raw", "delta_base", "raw_sha256", "strings", "tags", "fulltext"}


def filled_store(path: Path, n: int = 120) -> None:
    """A store with delta chains, tags and full text, written through the real ingest path."""
    from spintrail.decode import IncomingEvent
    from spintrail.ingest import Ingestor
    from spintrail.settings import Settings

    store = SqliteStore(path)
    ingestor = Ingestor(Settings(database=str(path)), store)
    events = [stage_event(i) for i in range(n)]
    store.append([ingestor.prepare(IncomingEvent(event=e, raw=json.dumps(e).encode())) for e in events])
    store.close()


def problems(path: Path, **kwargs: Any) -> list[tuple[str, str]]:
    store = SqliteStore(path)
    try:
        return [(p.check, p.message) for p in store.check(**kwargs).problems]
    finally:
        store.close()


def test_a_sound_store_passes_every_check(tmp_path: Path) -> None:
    db = tmp_path / "ok.db"
    filled_store(db)
    store = SqliteStore(db)
    try:
        seen: list[tuple[int, int]] = []
        report = store.check(progress=lambda done, total: seen.append((done, total)))
    finally:
        store.close()
    assert report.ok, report.problems
    assert set(report.checks) == CHECKS
    assert report.checks["event_raw"] == 120 and report.checks["raw_sha256"] == 120
    assert report.checks["delta_base"] > 90, "stage events of one run should be stored as deltas"
    assert report.checks["tags"] >= 240 and report.checks["fulltext"] == 120
    assert seen[-1] == (120, 120)


@pytest.mark.parametrize(
    ("damage", "check", "words"),
    [
        (
            "UPDATE raw SET sha256 = zeroblob(32) WHERE id = 3",
            "raw_sha256",
            "does not match its recorded SHA-256",
        ),
        ("UPDATE raw SET size = size + 1 WHERE id = 4", "raw_sha256", "4"),
        ("UPDATE raw SET data = x'00112233' WHERE id = 5", "raw_sha256", "cannot be decompressed"),
        ("DELETE FROM raw WHERE id = 10", "event_raw", "points to raw blob 10, which does not exist"),
        ("DELETE FROM raw WHERE id = 10", "delta_base", "has base 10, which does not exist"),
        ("UPDATE events SET raw_id = NULL WHERE id = 7", "event_raw", "event 7 ("),
        ("UPDATE events SET raw_id = 8 WHERE id = 9", "event_raw", "raw blob 8 is shared by 2 events"),
        ("UPDATE events SET raw_id = 8 WHERE id = 9", "event_raw", "raw blob 9 belongs to no event"),
        ("UPDATE raw SET base_id = 50 WHERE id = 12", "delta_base", "not older than itself"),
        ("UPDATE raw SET codec = 9 WHERE id = 13", "delta_base", "unknown codec 9"),
        ("UPDATE event_rows SET user = 987654 WHERE id = 15", "strings", "event 15 ("),
        (
            "DELETE FROM event_tags WHERE event_row = 20 AND kind = 'account'",
            "tags",
            "missing from the tag index",
        ),
        (
            "INSERT INTO event_tags VALUES ('account', 'ghost', 1, 99999)",
            "tags",
            "event 99999, which does not exist",
        ),
        ("UPDATE event_tags SET time = 5 WHERE event_row = 21", "tags", "does not match event 21"),
        (
            "INSERT INTO events_fts(rowid, text) VALUES (4242, 'stray')",
            "fulltext",
            "row 4242, which is not an event",
        ),
    ],
)
def test_each_kind_of_damage_is_reported(tmp_path: Path, damage: str, check: str, words: str) -> None:
    db = tmp_path / "bad.db"
    filled_store(db, 60)
    conn = sqlite3.connect(db)
    conn.execute(damage)
    conn.commit()
    conn.close()
    found = problems(db)
    assert any(c == check and words in m for c, m in found), found


def test_damaged_pages_fail_the_integrity_check(tmp_path: Path) -> None:
    db = tmp_path / "pages.db"
    filled_store(db, 200)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'events_time'").fetchone()[0]
    conn.close()
    with db.open("r+b") as fp:  # scribble over an index page, as a bad disk would
        fp.seek((root - 1) * page_size + 100)
        fp.write(b"\xff" * 200)
    found = problems(db)
    assert any(c == "integrity_check" for c, _ in found), found


def test_many_problems_are_counted_not_all_listed(tmp_path: Path) -> None:
    db = tmp_path / "many.db"
    filled_store(db, 80)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE raw SET sha256 = zeroblob(32)")
    conn.commit()
    conn.close()
    found = [m for c, m in problems(db) if c == "raw_sha256"]
    assert len(found) == 21 and found[-1] == "... and 60 more problems of this kind"
    assert not [c for c, _ in problems(db, quick=True) if c == "raw_sha256"], "--quick skips the raw blobs"
    conn = sqlite3.connect(db)
    conn.execute("UPDATE raw SET codec = 7 WHERE id = 3")
    conn.commit()
    conn.close()
    assert [c for c, _ in problems(db, quick=True)] == ["delta_base"], "--quick still checks the references"


def test_check_command_reports_and_exits_1_on_problems(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    filled_store(db, 30)
    ok = run("check", "--database", str(db), "--format", "json")
    assert ok.returncode == 0, ok.stderr
    rows = json.loads(ok.stdout)
    assert {r["check"] for r in rows} == CHECKS and {r["status"] for r in rows} == {"ok"}
    assert "store is consistent" in ok.stderr
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM raw WHERE id = 2")
    conn.commit()
    conn.close()
    bad = run("check", "--database", str(db), "--format", "csv")
    assert bad.returncode == 1
    assert "event_raw" in bad.stdout and "points to raw blob 2, which does not exist" in bad.stdout
    assert "problem(s) found" in bad.stderr and "docs/operations.md" in bad.stderr
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    out = run("check", "--database", str(garbage))
    assert out.returncode == 1 and "file is not a database" in out.stderr
    assert "Traceback" not in out.stderr


def test_backup_of_a_live_store_is_complete_and_consistent(server: Server, tmp_path: Path) -> None:
    stop = threading.Event()
    acked: list[str] = []

    def ingest() -> None:
        n = 0
        with httpx.Client(timeout=10) as c:
            while not stop.is_set():
                r = post_json(c, server.url, [stage_event(n + i) for i in range(5)])
                assert r.status_code == 200
                acked.extend(e["event_id"] for e in r.json()["events"])
                n += 5

    t = threading.Thread(target=ingest)
    t.start()
    try:
        while len(acked) < 200:
            stop.wait(0.02)
        before = len(acked)
        target = tmp_path / "backups" / "spintrail-backup.db"
        target.parent.mkdir()
        out = run("backup", str(target), "--database", server.database)
        after = len(acked)
    finally:
        stop.set()
        t.join()
    assert out.returncode == 0, out.stderr
    assert f"backup written to {target}" in out.stderr
    assert sorted(p.name for p in target.parent.iterdir()) == ["spintrail-backup.db"], "one file, no -wal"
    conn = sqlite3.connect(target)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    in_backup = {r[0] for r in conn.execute("SELECT event_id FROM events")}
    conn.close()
    assert set(acked[:before]) <= in_backup and len(in_backup) <= after
    assert f"{len(in_backup)} events" in out.stderr
    assert not problems(target)

    again = run("backup", str(target), "--database", server.database)
    assert again.returncode == 1 and "already exists" in again.stderr
    pg = run("backup", str(tmp_path / "x.db"), "--database", "postgresql://127.0.0.1/test")
    assert pg.returncode == 2 and "pg_dump" in pg.stderr

    # Restoring is copying the file into place: a server started on it, with the installation's signing
    # key, serves the events.
    restored = tmp_path / "restored.db"
    restored.write_bytes(target.read_bytes())
    refused = subprocess.run(
        [sys.executable, "-m", "spintrail", "serve", "--database", str(restored), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "1000"},
    )
    assert refused.returncode == 3 and "signing_key_file" in refused.stderr  # a new key would be a 2nd one
    srv = Server(str(restored), env={"SPINTRAIL_SIGNING_KEY_FILE": server.database + ".signing-key"}).start()
    try:
        first = acked[0]
        got = srv.get(f"/api/v1/events/{first}")
        assert got.status_code == 200 and got.json()["event"]["event_id"] == first
    finally:
        srv.stop()


def test_check_hooks_of_other_components_are_run(tmp_path: Path) -> None:
    from spintrail.store.base import CheckProblem

    db = tmp_path / "hooks.db"
    filled_store(db, 5)
    store = SqliteStore(db)
    try:
        store.check_hooks.append(
            lambda conn: [
                CheckProblem("outbox", f"{conn.execute('SELECT count(*) FROM events').fetchone()[0]} seen")
            ]
        )
        report = store.check(quick=True)
    finally:
        store.close()
    assert [(p.check, p.message) for p in report.problems] == [("outbox", "5 seen")]


def test_check_scales_linearly(tmp_path: Path) -> None:
    """Every check is one pass or a join on an index: 10,000 events take about a second, not minutes."""
    import time

    from conftest import make_record
    from spintrail.store.base import PreparedEvent

    store = SqliteStore(tmp_path / "big.db")
    try:
        store.append(
            [
                PreparedEvent(
                    make_record(n, execution_id=f"E{n // 10}", accounts=["prod"]),
                    json.dumps({"n": n, "stage": "x" * 100}).encode(),
                    f"deploy {n}",
                )
                for n in range(10_000)
            ]
        )
        t0 = time.perf_counter()
        report = store.check()
        seconds = time.perf_counter() - t0
    finally:
        store.close()
    assert report.ok and report.checks["event_raw"] == 10_000
    assert seconds < 8, f"check of 10,000 events took {seconds:.1f}s"


def test_check_on_postgresql_names_a_planted_inconsistency(pg_url: str, tmp_path: Path) -> None:
    import psycopg
    from typer.testing import CliRunner

    from echo_gen import ingest, pipeline_run
    from spintrail.cli import app as cli
    from spintrail.store import open_store

    store = open_store(pg_url)
    try:
        ingest(store, pipeline_run("R1", 1_718_000_000_000, stages=2))
    finally:
        store.close()
    runner = CliRunner()
    good = runner.invoke(cli, ["check", "--database", pg_url, "--format", "csv"])
    assert good.exit_code == 0, good.output
    assert "raw_sha256" in good.output and "tags" in good.output
    with psycopg.connect(pg_url, autocommit=True) as conn:
        query = "SELECT id FROM events WHERE cardinality(tags) > 0 ORDER BY id LIMIT 1"
        tagged = conn.execute(query).fetchone()
        conn.execute("UPDATE events SET tags = '{}' WHERE id = %s", tagged)
        conn.execute("DELETE FROM event_ids WHERE id = 2")
        conn.execute("UPDATE events SET raw_id = 999999 WHERE id = 3")
    bad = runner.invoke(cli, ["check", "--database", pg_url, "--format", "csv"])
    assert bad.exit_code == 1, bad.output
    out = " ".join(bad.output.split())
    assert "event 2 (" in out and "missing from event_ids" in out
    assert "event 3 (" in out and "raw blob 999999, which does not exist" in out
    assert f"event {tagged[0]}:" in out and "missing from its tags" in out
