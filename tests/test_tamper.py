"""Tampering by someone who can write to the database, on real SQLite files and the real PostgreSQL: each
attack ends in ``verify`` (or ``serve``) failing and naming the record or the reason, and each legitimate
path (a retention run, adopting a store from before the log, accepting a restored backup) still verifies."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import free_port, new_pg_schema
from spintrail import checkpoint, integrity, retention
from spintrail.decode import IncomingEvent
from spintrail.ingest import Ingestor
from spintrail.record import format_time
from spintrail.retention import Policy
from spintrail.settings import Settings
from spintrail.store import Store, open_store

NOW = int(time.time() * 1000)
MINUTE = 60_000


def ev(n: int, at: int, type_: str = "orca:pipeline:complete") -> dict[str, Any]:
    """A pipeline event of one deployment to account ``prod`` (so it has search tags) at ``at``."""
    return {
        "details": {"source": "orca", "type": type_, "created": str(at), "application": "checkout"},
        "content": {
            "execution": {
                "type": "PIPELINE",
                "id": f"E{n}",
                "application": "checkout",
                "name": "deploy",
                "status": "SUCCEEDED",
                "authentication": {"user": "carol@example.com"},
                "stages": [{"type": "deploy", "context": {"account": "prod", "region": "us-east-1"}}],
            },
            "executionId": f"E{n}",
        },
        "eventId": f"00000000-0000-0000-0000-{n:012d}",
    }


@dataclass
class World:
    backend: str
    database: str
    settings: Settings
    store: Store
    ingestor: Ingestor
    exported: Path

    @property
    def log(self) -> integrity.IntegrityLog:
        return self.ingestor.trust.log

    @property
    def key(self) -> str:
        trust = self.ingestor.trust
        # Only read the key once it exists: starting the signer is what some tests examine.
        return trust.signing_key(create=not self.settings.signing_key_file.exists()).verifier

    def add(self, *pairs: tuple[int, int]) -> list[int]:
        prepared = [
            self.ingestor.prepare(IncomingEvent(e, json.dumps(e).encode()))
            for e in (ev(n, at) for n, at in pairs)
        ]
        return [r.id for r in self.store.append(prepared)]

    def sign(self) -> integrity.StoredCheckpoint:
        return self.log.sign(self.ingestor.trust.signing_key().signer)

    def verify(self, *, exported: bool = False) -> integrity.Report:
        files = integrity.read_checkpoint_files([self.exported]) if exported else []
        return integrity.verify(self.store, self.ingestor.trust.conns, [self.key], exported=files)

    def rows(self, text: str) -> list[Any]:
        if self.backend == "sqlite":
            with sqlite3.connect(self.database) as conn:
                return conn.execute(text).fetchall()
        import psycopg

        with psycopg.connect(self.database) as pg:
            return pg.execute(text).fetchall()  # type: ignore[arg-type]

    def sql(self, sqlite_text: str, pg_text: str | None = None, params: tuple[Any, ...] = ()) -> None:
        """Run SQL as the attacker, behind spintrail's back (SQLite text, or PostgreSQL's when it differs)."""
        if self.backend == "sqlite":
            conn = sqlite3.connect(self.database)
            try:
                conn.execute(sqlite_text, params)
                conn.commit()
            finally:
                conn.close()
            return
        import psycopg

        with psycopg.connect(self.database, autocommit=True) as pg:
            pg.execute((pg_text or sqlite_text).replace("?", "%s"), params)  # type: ignore[arg-type]


def make_world(backend: str, tmp_path: Path, database: str) -> World:
    settings = Settings(
        database=database,
        checkpoint_dir=tmp_path / "exported",
        raw_events="keep",
        signing_key_file=tmp_path / "signing.key",
    )
    store = open_store(database)
    return World(backend, database, settings, store, Ingestor(settings, store), tmp_path / "exported")


@pytest.fixture(params=["sqlite", "postgres"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    drop = None
    if request.param == "sqlite":
        database = str(tmp_path / "tamper.db")
    else:
        database, drop = new_pg_schema()
    w = make_world(request.param, tmp_path, database)
    yield w
    w.ingestor.trust.close()
    w.store.close()
    if drop is not None:
        drop()


@pytest.fixture()
def sqlite_world(tmp_path: Path) -> Iterator[World]:
    w = make_world("sqlite", tmp_path, str(tmp_path / "tamper.db"))
    yield w
    w.ingestor.trust.close()
    w.store.close()


def named(report: integrity.Report) -> list[tuple[str, int | None]]:
    return [(p.kind, p.record) for p in report.problems]


OLD = 1_718_000_000_000  # June 2024


def test_a_deletion_marked_as_retention_is_an_unjustified_removal(world: World) -> None:
    ids = world.add(*((n, OLD + n * 1000) for n in range(1, 6)))
    world.sign()
    world.sql("DELETE FROM events WHERE id = ?", params=(ids[1],))
    world.sql(
        "UPDATE integrity_leaves SET content_removed_at = 1, content_removed_reason = 'retention'"
        " WHERE event_row = ?",
        params=(ids[1],),
    )
    for exported in (False, True):
        report = world.verify(exported=exported)
        assert named(report) == [("unjustified_removal", ids[1])], report.problems
        assert "00000000-0000-0000-0000-000000000002" in report.problems[0].message


def test_a_retention_run_is_recorded_and_justifies_what_it_removed(world: World) -> None:
    ids = world.add(*((n, OLD + n * 1000) for n in range(1, 4)), (4, NOW - MINUTE))
    world.sign()
    report = retention.run(world.store, Policy(pipeline_days=30))
    assert report.events["pipeline"] == 3  # on SQLite the newest row stays anyway: it is the recent one
    world.sign()
    result = world.verify(exported=True)
    assert result.ok, result.problems
    assert result.content_removed == 3 and result.records_checked == 1
    assert result.admin_actions == {"retention": 1}
    (run,) = integrity.admin_actions(world.ingestor.trust.conns.get(), action="retention")
    assert run.details["removed"] == [[0, 2]] and run.details["policy"]["pipeline_days"] == 30
    assert run.details["cutoffs"]["pipeline"] == run.details["now"] - 30 * 86_400_000
    # Someone then deletes the kept record and claims the same run removed it: not listed, not justified.
    world.sql("DELETE FROM events WHERE id = ?", params=(ids[3],))
    world.sql(
        "UPDATE integrity_leaves SET content_removed_reason = 'retention' WHERE event_row = ?",
        params=(ids[3],),
    )
    assert named(world.verify()) == [("record_missing", ids[3])]


def test_a_forged_retention_run_justifies_only_what_its_committed_cut_off_covers(sqlite_world: World) -> None:
    """Someone who knows the scheme appends a retention action listing a recent record: the run's own
    cut-off is before the record's committed time, so the removal stays unjustified."""
    w = sqlite_world
    ids = w.add((1, OLD), (2, NOW - MINUTE), (3, NOW))
    w.sql("DELETE FROM events WHERE id IN (?, ?)", params=(ids[0], ids[1]))
    details = {**retention.policy_details(Policy(pipeline_days=30), NOW), "class": "pipeline"}
    conn = w.ingestor.trust.conns.get()
    conn.execute("BEGIN IMMEDIATE")
    integrity.record_admin_action(conn, "retention", {**details, "removed": [[0, 1]], "events": 2})
    conn.execute("COMMIT")
    report = w.verify()
    assert named(report) == [("unjustified_removal", ids[1])]
    assert "not older than the run's pipeline cut-off" in report.problems[0].message
    assert report.content_removed == 1  # the 2024 record: the run's rules do remove it


def test_shifting_a_time_before_retention_launders_nothing(world: World) -> None:
    """A minutes-old pipeline completion whose time is set to 2015 in the store is not removed: retention
    decides on the committed time, and verify names the changed record."""
    ids = world.add(*((n, NOW - (10 - n) * MINUTE) for n in range(1, 5)))
    world.sign()
    in_2015 = 1_430_000_000_000
    world.sql(
        "UPDATE event_rows SET time = ? WHERE id = ?",
        "UPDATE events SET time = ? WHERE id = ?",
        (in_2015, ids[1]),
    )
    world.sql("UPDATE tag_rows SET time = ? WHERE event_row = ?", "SELECT ?, ?", (in_2015, ids[1]))
    report = retention.run(world.store, Policy(pipeline_days=365))
    assert report.total == 0
    result = world.verify(exported=True)
    assert not result.ok and {p.record for p in result.problems} == {ids[1]}, result.problems
    assert result.content_removed == 0
    if world.backend == "sqlite":  # `spintrail check` sees it too, without any key
        world.store.check_hooks.append(integrity.check_hook)
        found = [p for p in world.store.check(quick=True).problems if p.check == "committed_time"]
        assert len(found) == 1 and f"event {ids[1]} " in found[0].message


def test_raw_bytes_detached_from_their_record_are_named(world: World) -> None:
    ids = world.add(*((n, OLD + n * 1000) for n in range(1, 4)))
    world.sql(
        "UPDATE event_rows SET raw_id = NULL WHERE id = ?",
        "UPDATE events SET raw_id = NULL WHERE id = ?",
        (ids[1],),
    )
    assert named(world.verify()) == [("raw_detached", ids[1])]


def test_deleted_search_tags_are_named(world: World) -> None:
    ids = world.add(*((n, OLD + n * 1000) for n in range(1, 4)))
    assert world.verify().index_checked == 3
    world.sql(
        "DELETE FROM tag_rows WHERE event_row = ?", "UPDATE events SET tags = '{}' WHERE id = ?", (ids[2],)
    )
    report = world.verify()
    assert named(report) == [("index_mismatch", ids[2])]
    assert "account:prod" in report.problems[0].message


def test_a_removed_full_text_entry_is_named_on_postgresql(tmp_path: Path) -> None:
    database, drop = new_pg_schema()
    w = make_world("postgres", tmp_path, database)
    try:
        ids = w.add((1, OLD), (2, OLD + 1000))
        w.sql("UPDATE events SET tsv = NULL WHERE id = ?", params=(ids[0],))
        report = w.verify()
        assert named(report) == [("index_mismatch", ids[0])] and "full-text" in report.problems[0].message
    finally:
        w.ingestor.trust.close()
        w.store.close()
        drop()


def test_removing_the_newest_stored_checkpoint_is_caught_by_the_exported_copy(sqlite_world: World) -> None:
    w = sqlite_world
    w.add((1, OLD), (2, OLD + 1000))
    w.sign()
    w.add((3, OLD + 2000))
    newest = w.sign()
    w.sql("DELETE FROM integrity_checkpoints WHERE id = ?", params=(newest.id,))
    assert w.verify().ok  # the database alone cannot tell
    report = w.verify(exported=True)
    assert [p.kind for p in report.problems] == ["checkpoint_missing"]
    assert f"checkpoint-{newest.size:012d}" in (report.problems[0].checkpoint or "")


def test_two_signed_roots_for_one_size_are_equivocation(sqlite_world: World) -> None:
    w = sqlite_world
    w.add((1, OLD), (2, OLD + 1000))
    cp = w.sign()
    other = checkpoint.Checkpoint(
        origin=w.log.origin, size=cp.size, root=bytes(32), extensions=(f"time {format_time(NOW)}",)
    )
    forged = checkpoint.sign_checkpoint(other, w.ingestor.trust.signing_key().signer)
    report = integrity.verify(w.store, w.ingestor.trust.conns, [w.key], exported=[("copy", forged)])
    assert "equivocation" in {p.kind for p in report.problems}


def test_token_changes_are_administrative_actions_in_the_log(sqlite_world: World) -> None:
    w = sqlite_world
    w.add((1, OLD))
    tokens = w.ingestor.trust.tokens
    tokens.create("deployer", "ingest", created_by="cli")
    tokens.revoke("deployer", by="cli")
    report = w.verify()
    # The first token also turned authentication on for the store: that is recorded too.
    assert report.ok
    assert report.admin_actions == {"token_created": 1, "token_revoked": 1, "auth_mode_changed": 1}
    actions = integrity.admin_actions(w.ingestor.trust.conns.get())
    assert [(a.action, a.details.get("name") or a.details.get("to")) for a in actions] == [
        ("token_revoked", "deployer"),
        ("auth_mode_changed", "on"),
        ("token_created", "deployer"),
    ]
    # Turning authentication off is an administrative action as well.
    tokens.set_auth_state("off", by="cli", reason="auth off --yes")
    latest = integrity.admin_actions(w.ingestor.trust.conns.get())[0]
    assert (latest.action, latest.details["from"], latest.details["to"]) == ("auth_mode_changed", "on", "off")
    # Rewriting what an action says is caught (the leaf commits to its details).
    w.sql(
        "UPDATE integrity_leaves SET details = replace(details, 'deployer', 'someone')"
        " WHERE action IS NOT NULL"
    )
    assert {p.kind for p in w.verify().problems} == {"leaf_changed"}


def test_version_1_leaves_still_verify_and_retention_checks_their_record(world: World) -> None:
    """Leaves written before class and time were committed separately keep verifying; retention removes
    their records only while they match the leaf, and verify accepts the removal the run records."""
    from spintrail import merkle

    w = world
    ids = w.add((1, OLD), (2, OLD + 1000), (3, OLD + 2000), (4, NOW - MINUTE))
    chain, tree = integrity.GENESIS, merkle.CompactRange()
    for idx, row, raw_sha in w.rows("SELECT idx, event_row, raw_sha256 FROM integrity_leaves ORDER BY idx"):
        # Rewrite the log as a version 1 log (what an older release wrote).
        record = w.store.get(row)
        assert record is not None
        lh = integrity.leaf_hash_of(
            integrity.leaf_object(record, index=idx, raw_sha256=bytes(raw_sha), ingest_token=None)
        )
        chain = integrity.chain_next(chain, lh)
        tree.append(lh)
        w.sql(
            "UPDATE integrity_leaves SET version = 1, event_class = NULL, event_time = NULL,"
            " content_sha256 = NULL, raw_kept = NULL, leaf_hash = ?, chain_hash = ? WHERE idx = ?",
            params=(lh, chain, idx),
        )
    w.sql(
        "UPDATE integrity_state SET size = ?, chain_head = ?, peaks = ?",
        params=(tree.size, chain, b"".join(tree.peaks)),
    )
    w.sign()
    assert w.verify().ok
    # A changed version 1 record: retention refuses to remove it (its leaf is the only committed truth).
    w.sql('UPDATE events SET "user" = ? WHERE id = ?', params=("mallory@example.com", ids[0]))
    with pytest.raises(retention.RetentionRefused, match=f"record {ids[0]} "):
        retention.run(w.store, Policy(pipeline_days=30))
    w.sql('UPDATE events SET "user" = ? WHERE id = ?', params=("carol@example.com", ids[0]))
    assert retention.run(w.store, Policy(pipeline_days=30)).total == 3
    report = w.verify()
    assert report.ok and report.content_removed == 3, report.problems


def test_a_restored_older_backup_verifies_only_after_accept_rollback(
    sqlite_world: World, tmp_path: Path
) -> None:
    w = sqlite_world
    w.add((1, OLD), (2, OLD + 1000), (3, OLD + 2000))
    w.sign()
    backup = tmp_path / "backup.db"
    with sqlite3.connect(w.database) as src, sqlite3.connect(backup) as dst:
        src.backup(dst)
    w.add((4, OLD + 3000), (5, OLD + 4000))
    w.sign()  # exported: size 5
    w.ingestor.trust.close()
    w.store.close()
    with sqlite3.connect(backup) as src, sqlite3.connect(w.database) as dst:
        src.backup(dst)
    w = make_world("sqlite", tmp_path, w.database)
    try:
        assert {p.kind for p in w.verify(exported=True).problems} == {"truncated", "checkpoint_missing"}
        with pytest.raises(integrity.IntegrityError, match="give --to 3"):
            w.log.accept_rollback(5)
        w.ingestor.trust.accept_rollback(3)
        w.add((6, OLD + 5000), (7, OLD + 6000))
        # Until a checkpoint signed after it covers the acceptance, it excuses nothing.
        assert {p.kind for p in w.verify(exported=True).problems} == {
            "checkpoint_mismatch",
            "checkpoint_missing",
        }
        w.sign()
        report = w.verify(exported=True)
        assert report.ok, report.problems
        assert report.checkpoints_excused == 1 and report.admin_actions == {"accept_rollback": 1}
    finally:
        w.ingestor.trust.close()
        w.store.close()


def test_serve_refuses_a_store_whose_events_lack_leaves_and_adopt_fixes_it(tmp_path: Path) -> None:
    from spintrail.fulltext import index_text
    from spintrail.normalize import normalize
    from spintrail.store import PreparedEvent

    database = tmp_path / "prelog.db"
    store = open_store(str(database))  # written without the trust components: no log
    events = [ev(n, OLD + n) for n in range(1, 4)]
    records = [normalize(e, received_at=1) for e in events]
    store.append(
        [
            PreparedEvent(r, json.dumps(e).encode(), text=index_text(r, e))
            for r, e in zip(records, events, strict=True)
        ]
    )
    store.close()
    env = {"SPINTRAIL_SIGNING_KEY_FILE": str(tmp_path / "k.key"), "SPINTRAIL_PORT": str(free_port())}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        import os

        return subprocess.run(
            [sys.executable, "-m", "spintrail", *args, "--database", str(database)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "200", **env},
        )

    served = cli("serve")
    assert served.returncode == 3, served.stderr
    assert "spintrail integrity adopt" in served.stderr and "3 stored event(s)" in served.stderr
    adopted = cli("integrity", "adopt", "--format", "json")
    assert adopted.returncode == 0, adopted.stderr
    assert json.loads(adopted.stdout)[0]["events_adopted"] == 3
    verified = cli("verify", "--format", "json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout)["admin_actions"] == {"adopt": 1}
    listed = cli("integrity", "actions", "--format", "json")
    assert [a["action"] for a in json.loads(listed.stdout)] == ["adopt"]
