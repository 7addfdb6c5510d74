"""The tamper-evident log: every kind of tampering is caught and names the record, proofs check offline."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from spintrail import checkpoint, integrity, keys, merkle
from spintrail.decode import IncomingEvent
from spintrail.ingest import Ingestor
from spintrail.settings import Settings
from spintrail.signer_state import SignerRefused
from spintrail.store.sqlite import SqliteStore
from spintrail.trust import Trust


def ev(n: int, app: str = "checkout", user: str = "carol@example.com", **content: Any) -> dict[str, Any]:
    return {
        "details": {
            "source": "orca",
            "type": "orca:orchestration:complete",
            "created": str(1_718_000_000_000 + n * 1000),
            "application": app,
        },
        "content": {
            "execution": {
                "type": "ORCHESTRATION",
                "id": f"E{n}",
                "application": app,
                "description": f"Resize Server Group: {app}-prod-v{n:03d}",
                "authentication": {"user": user},
                "status": "SUCCEEDED",
                "stages": [],
            },
            "executionId": f"E{n}",
            **content,
        },
        "eventId": f"00000000-0000-0000-0000-{n:012d}",
    }


@dataclass
class Log:
    path: Path
    settings: Settings
    store: SqliteStore
    ingestor: Ingestor

    @property
    def trust(self) -> Trust:
        return self.ingestor.trust

    @property
    def key(self) -> str:
        """The verifier key (read from the key file: no signer is started, so tampering can be checked)."""
        return keys.signing_key(self.settings).verifier

    def add(self, *ns: int, **kw: Any) -> list[int]:
        prepared = [
            self.ingestor.prepare(IncomingEvent(e, json.dumps(e).encode())) for e in (ev(n, **kw) for n in ns)
        ]
        return [r.id for r in self.store.append(prepared)]

    def sign(self) -> integrity.StoredCheckpoint:
        return self.trust.log.sign(self.trust.signing_key().signer)

    def verify(self, **kw: Any) -> integrity.Report:
        keys = kw.pop("keys", [self.key])
        return integrity.verify(self.store, self.trust.conns, keys, **kw)

    def sql(self, text: str, params: tuple[Any, ...] = ()) -> list[Any]:
        conn = sqlite3.connect(self.path)
        try:
            rows = conn.execute(text, params).fetchall()
            conn.commit()
            return rows
        finally:
            conn.close()


@pytest.fixture()
def log(tmp_path: Path) -> Iterator[Log]:
    path = tmp_path / "log.db"
    settings = Settings(database=str(path), checkpoint_dir=tmp_path / "exported", raw_events="keep")
    store = SqliteStore(path)
    result = Log(path, settings, store, Ingestor(settings, store))
    yield result
    result.trust.close()
    store.close()


def kinds(report: integrity.Report) -> set[str]:
    return {p.kind for p in report.problems}


def test_a_clean_log_verifies_and_its_root_is_the_rfc6962_root_of_its_leaves(log: Log) -> None:
    log.add(*range(1, 8))
    log.sign()
    log.add(*range(8, 12))
    log.sign()
    report = log.verify()
    assert report.ok, report.problems
    assert report.leaves == 11 and report.records_checked == 11 and report.raw_checked == 11
    assert report.checkpoints_checked == 2 and report.latest_verified["size"] == 11
    hashes = log.trust.log.leaf_hashes(11)
    assert log.trust.log.state().root == merkle.root_from_leaf_hashes(hashes)
    # The leaf commits to the retention class, the time and the hash of the content: the record, the
    # SHA-256 of the kept raw bytes, whether they were kept, and the ingest token.
    rec = log.store.get(3)
    assert rec is not None
    idx, raw_sha, token, lh = log.trust.log.leaf_row(3)  # type: ignore[misc]
    assert raw_sha == hashlib.sha256(log.store.raw(3) or b"").digest() and token is None
    obj, content = integrity.record_leaf(rec, index=idx, raw_sha256=raw_sha, raw_kept=True, ingest_token=None)
    assert lh == integrity.leaf_hash_of(obj)
    assert obj["class"] == "pipeline" and obj["time"] == rec.time and content["raw_kept"] is True
    assert integrity.leaf_data(obj).startswith(b"spintrail-leaf/v2\n")


def test_a_changed_byte_in_a_record_is_named(log: Log) -> None:
    log.add(*range(1, 6))
    log.sign()
    log.sql("UPDATE events SET user = 'mallory@example.com' WHERE id = 3")
    report = log.verify()
    assert [(p.kind, p.record, p.event_id, p.leaf) for p in report.problems] == [
        ("record_changed", 3, "00000000-0000-0000-0000-000000000003", 2)
    ]
    assert "record 3" in report.problems[0].message


def test_changed_raw_bytes_are_named(log: Log) -> None:
    log.add(*range(1, 4))
    raw_id = log.sql("SELECT raw_id FROM events WHERE id = 2")[0][0]
    data = log.sql("SELECT data FROM raw WHERE id = ?", (raw_id,))[0][0]
    log.sql("UPDATE raw SET data = ? WHERE id = ?", (data[:-1] + bytes([data[-1] ^ 1]), raw_id))
    problems = log.verify().problems
    # Raw bytes are blocks of a zstd stream: a changed block also changes what the later blocks of its
    # frame decompress to (record 3 here), never the earlier ones.
    later = log.sql("SELECT event_row FROM raw WHERE id >= ? AND base_id IS NOT NULL", (raw_id,))
    frame = {r for (r,) in later}
    assert ("raw_changed", 2) in [(p.kind, p.record) for p in problems]
    assert {(p.kind, p.record) for p in problems} <= {("raw_changed", r) for r in frame | {2}}


def test_a_deleted_middle_record_is_named(log: Log) -> None:
    log.add(*range(1, 6))
    log.sql("DELETE FROM events WHERE id = 3")
    problems = log.verify().problems
    assert [(p.kind, p.record, p.leaf) for p in problems] == [("record_missing", 3, 2)]


def test_a_middle_record_deleted_with_its_leaf_is_named(log: Log) -> None:
    log.add(*range(1, 6))
    log.sign()
    log.sql("DELETE FROM events WHERE id = 3")
    log.sql("DELETE FROM integrity_leaves WHERE idx = 2")
    report = log.verify()
    assert {"leaf_missing", "chain_broken", "checkpoint_mismatch"} == kinds(report)
    missing = next(p for p in report.problems if p.kind == "leaf_missing")
    assert missing.leaf == 2 and "record 2" in missing.message and "record 4" in missing.message


def test_reordered_records_are_named(log: Log) -> None:
    log.add(*range(1, 6))
    # Swap the positions of two records in the log.
    log.sql("UPDATE integrity_leaves SET idx = -1 WHERE idx = 1")
    log.sql("UPDATE integrity_leaves SET idx = 1 WHERE idx = 3")
    log.sql("UPDATE integrity_leaves SET idx = 3 WHERE idx = -1")
    report = log.verify()
    # Each leaf commits to its index: both moved leaves are named.
    changed = sorted(p.record for p in report.problems if p.kind in ("record_changed", "leaf_changed"))
    assert changed == [2, 4]
    assert "chain_broken" in kinds(report)


def test_swapped_record_contents_are_named(log: Log) -> None:
    log.add(1, 2, 3, user="alice@example.com")
    log.add(4, user="bob@example.com")
    log.sql("UPDATE events SET user = 'bob@example.com' WHERE id = 2")
    log.sql("UPDATE events SET user = 'alice@example.com' WHERE id = 4")
    assert sorted(p.record for p in log.verify().problems) == [2, 4]


def test_a_consistent_rewrite_without_the_key_is_caught_by_the_signed_checkpoints(log: Log) -> None:
    log.add(*range(1, 9))
    log.sign()
    rewrite_record(log, 4, user="mallory@example.com")
    report = log.verify()
    assert kinds(report) == {"checkpoint_mismatch"}
    assert "size 8" in report.problems[0].message


def test_a_truncated_tail_is_caught_by_an_exported_checkpoint(log: Log, tmp_path: Path) -> None:
    log.add(*range(1, 6))
    log.sign()
    log.add(*range(6, 11))
    log.sign()  # exported to checkpoint_dir: a copy outside the database
    # Someone with the database removes the last four records and every trace of them.
    truncate(log, 6)
    log.sql("DELETE FROM integrity_checkpoints WHERE size > 6")
    assert log.verify().ok  # the database alone is consistent again ...
    exported = integrity.read_checkpoint_files([tmp_path / "exported"])
    report = log.verify(exported=exported)  # ... the exported copy is not
    assert kinds(report) == {"truncated", "checkpoint_missing"}
    (problem,) = [p for p in report.problems if p.kind == "truncated"]
    assert problem.leaf == 6
    assert "leaves 6..9" in problem.message and "record 6" in problem.message


def test_a_swapped_signing_key_is_caught(log: Log, tmp_path: Path) -> None:
    log.add(*range(1, 5))
    log.sign()
    trusted = log.key
    # Someone rewrites a record and re-signs everything with a key of their own.
    rewrite_record(log, 2, user="mallory@example.com")
    log.sql("DELETE FROM integrity_checkpoints")
    forged, _ = checkpoint.generate_signer_key("spintrail-attacker")
    with pytest.raises(SignerRefused):  # spintrail's own signer will not sign the rewritten log
        log.trust.log.sign(forged)
    sign_with_own_tool(log, forged)
    report = log.verify(keys=[trusted], exported=integrity.read_checkpoint_files([tmp_path / "exported"]))
    assert {"unknown_key", "checkpoint_mismatch"} <= kinds(report)
    unknown = next(p for p in report.problems if p.kind == "unknown_key")
    assert unknown.checkpoint and "stored checkpoint" in unknown.checkpoint


def test_a_replayed_old_checkpoint_is_caught(log: Log) -> None:
    log.add(1, 2, 3)
    old = log.sign()
    log.add(4, 5, 6)
    log.sign()
    log.sql(
        "INSERT INTO integrity_checkpoints(size, root, created_at, note) VALUES (?, ?, ?, ?)",
        (old.size, old.root, old.created_at + 10_000_000, old.note),
    )
    report = log.verify()
    (problem,) = report.problems
    assert problem.kind == "replayed" and problem.checkpoint == "stored checkpoint #3"


def test_a_record_inserted_behind_spintrail_is_named(log: Log) -> None:
    log.add(1, 2)
    cols = [f'"{r[1]}"' for r in log.sql("PRAGMA table_info(events)") if r[1] not in ("id", "event_id")]
    log.sql(
        f"INSERT INTO events(event_id, {', '.join(cols)})"
        f" SELECT 'forged-event', {', '.join(cols)} FROM events WHERE id = 1"
    )
    problems = log.verify().problems
    assert [(p.kind, p.event_id) for p in problems] == [("not_logged", "forged-event")]


def test_a_deletion_disguised_as_retention_is_named(log: Log, tmp_path: Path) -> None:
    """Marking a leaf as removed by retention does not justify a removal: only a recorded retention run
    whose committed cut-off covers the leaf's committed class and time does."""
    log.add(*range(1, 6))
    log.sign()
    log.sql("DELETE FROM events WHERE id = 2")
    log.sql(
        "UPDATE integrity_leaves SET content_removed_at = 1, content_removed_reason = 'retention'"
        " WHERE event_row = 2"
    )
    for exported in ([], integrity.read_checkpoint_files([tmp_path / "exported"])):
        report = log.verify(exported=exported)
        assert [(p.kind, p.record, p.leaf) for p in report.problems] == [("unjustified_removal", 2, 1)]
        assert "00000000-0000-0000-0000-000000000002" in report.problems[0].message


def test_raw_bytes_can_be_dropped_without_breaking_the_log(tmp_path: Path) -> None:
    settings = Settings(database=str(tmp_path / "d.db"), raw_events="drop")
    store = SqliteStore(tmp_path / "d.db")
    ing = Ingestor(settings, store)
    e = ev(1)
    store.append([ing.prepare(IncomingEvent(e, json.dumps(e).encode()))])
    assert store.raw(1) is None
    report = integrity.verify(store, ing.trust.conns, [ing.trust.signing_key().verifier])
    assert report.ok and report.raw_not_kept == 1
    ing.trust.close()
    store.close()


def test_the_log_resumes_across_restarts_and_concurrent_writers(tmp_path: Path) -> None:
    """Leaf index = commit order, gap-free, with the persisted peaks, whoever writes."""
    path = tmp_path / "c.db"
    settings = Settings(database=str(path))
    stores = [SqliteStore(path, batch_max=7) for _ in range(2)]
    ingestors = [Ingestor(settings, s) for s in stores]

    def write(k: int) -> None:
        for n in range(k * 1000, k * 1000 + 60, 3):
            batch = [ev(n + i) for i in range(3)]
            ingestors[k % 2].store.append(
                [ingestors[k % 2].prepare(IncomingEvent(e, json.dumps(e).encode())) for e in batch]
            )

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in ingestors:
        i.trust.close()
    for s in stores:
        s.close()
    store = SqliteStore(path)
    ing = Ingestor(settings, store)
    e = ev(99999)
    store.append([ing.prepare(IncomingEvent(e, json.dumps(e).encode()))])
    ing.trust.log.sign(ing.trust.signing_key().signer)
    report = integrity.verify(store, ing.trust.conns, [ing.trust.signing_key().verifier])
    assert report.ok, report.problems
    assert report.leaves == 241
    rows = [r[0] for r in store.connect().execute("SELECT event_row FROM integrity_leaves ORDER BY idx")]
    assert rows == sorted(rows)  # leaf order is commit order
    ing.trust.close()
    store.close()


def test_events_stored_before_the_log_existed_get_leaves_only_by_adopt(tmp_path: Path) -> None:
    from spintrail.normalize import normalize
    from spintrail.store import PreparedEvent

    path = tmp_path / "old.db"
    store = SqliteStore(path)
    from spintrail.fulltext import index_text

    old = [ev(n) for n in range(1, 303)]  # more than one adopt chunk
    records = [normalize(e, received_at=1) for e in old]
    store.append(
        [
            PreparedEvent(r, json.dumps(e).encode(), text=index_text(r, e))
            for r, e in zip(records, old, strict=True)
        ]
    )
    settings = Settings(database=str(path))
    ing = Ingestor(settings, store)
    # Opening the store never gives events leaves: verify names them.
    assert ing.trust.log.state().size == 0
    assert ing.trust.log.unlogged_events() == (302, [e["eventId"] for e in old[:5]])
    key = ing.trust.signing_key().verifier
    assert {p.kind for p in integrity.verify(store, ing.trust.conns, [key]).problems} == {"not_logged"}
    outcome = ing.trust.log.adopt(chunk=200)
    assert outcome["events_adopted"] == 302 and outcome["removals_acknowledged"] == 0
    assert ing.trust.log.adopt()["events_adopted"] == 0  # once only
    e = ev(99999)
    store.append([ing.prepare(IncomingEvent(e, json.dumps(e).encode()))])
    report = integrity.verify(store, ing.trust.conns, [key])
    assert report.ok, report.problems
    # 302 events, one adopt action per chunk of 200, one new event.
    assert report.leaves == 305 and report.admin_actions == {"adopt": 2}
    ing.trust.close()
    store.close()


# --------------------------------------------------------------------------------------------- proofs


def test_evidence_bundle_checks_offline_and_any_change_to_it_fails(log: Log) -> None:
    log.add(*range(1, 12))
    record = log.store.get(5)
    assert record is not None
    bundle = log.trust.log.proof_bundle(record, signer=log.trust.signing_key().signer, include_raw=True)
    result = integrity.verify_bundle(bundle, log.key)
    assert result.ok, result.problems
    assert "entry 4" in result.summary and "size 11" in result.summary

    def broken(change: Any) -> integrity.BundleResult:
        copy = json.loads(json.dumps(bundle))
        change(copy)
        return integrity.verify_bundle(copy, log.key)

    assert not broken(lambda b: b["record"].update(user="mallory@example.com")).ok
    assert not broken(lambda b: b["leaf"]["data"].update(user="mallory@example.com")).ok
    # A version 2 leaf commits to its content by hash, and to the class and time beside it.
    assert bundle["leaf"]["data"]["v"] == 2 and bundle["leaf"]["content"]["event_id"] == record.event_id
    mallory = {"user": "mallory@example.com"}
    assert not broken(lambda b: (b["leaf"]["content"].update(mallory), b["record"].update(mallory))).ok
    assert not broken(lambda b: b["leaf"]["data"].update(time=1)).ok
    assert not broken(lambda b: b["leaf"].pop("content")).ok
    assert not broken(lambda b: b["leaf"].update(index=3)).ok
    assert not broken(lambda b: b["inclusion_proof"].reverse()).ok
    assert not broken(lambda b: b.update(raw=b["raw"][:-4] + "AAA=")).ok
    assert not integrity.verify_bundle(bundle, checkpoint.generate_signer_key("someone-else")[1]).ok


def test_proof_of_a_changed_record_is_refused(log: Log) -> None:
    log.add(1, 2)
    log.sql("UPDATE events SET user = 'mallory@example.com' WHERE id = 2")
    record = log.store.get(2)
    assert record is not None
    with pytest.raises(integrity.IntegrityError, match="changed after it was stored"):
        log.trust.log.proof_bundle(record, signer=log.trust.signing_key().signer)


def test_consistency_proofs_show_the_log_only_grew(log: Log) -> None:
    log.add(*range(1, 6))
    old = log.sign()
    log.add(*range(6, 20))
    new = log.sign()
    bundle = log.trust.log.consistency_bundle(old, new)
    assert integrity.verify_bundle(bundle, log.key).ok
    with pytest.raises(integrity.IntegrityError, match="replayed"):
        log.trust.log.consistency_bundle(new, old)
    # A checkpoint of a different history (a fork) is not consistent with the new one.
    rewrite_record(log, 2, user="mallory@example.com")
    with pytest.raises(SignerRefused):
        log.sign()
    forked = sign_with_own_tool(log, log.trust.signing_key().signer)  # someone who stole the key
    forked_bundle = {**bundle, "old": old.note, "new": forked}
    forked_bundle["proof"] = log.trust.log.consistency_bundle(old, forked)["proof"]
    assert not integrity.verify_bundle(forked_bundle, log.key).ok


def test_proof_and_verify_proof_from_the_command_line(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    events = tmp_path / "events.ndjson"
    events.write_text("\n".join(json.dumps(ev(n)) for n in range(1, 6)) + "\n")
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "200"}

    def run(*args: str, cwd: Path = tmp_path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "spintrail", *args],
            capture_output=True,
            text=True,
            cwd=cwd,
            env=env,
            timeout=120,
        )

    assert run("import", str(events), "--database", str(db)).returncode == 0
    key = run("keys", "show", "--database", str(db)).stdout.strip()
    assert key.count("+") >= 2
    bundle = tmp_path / "bundle.json"
    r = run("proof", "00000000-0000-0000-0000-000000000003", "--output", str(bundle), "--database", str(db))
    assert r.returncode == 1 and "spintrail checkpoint" in r.stderr  # proof only reads: it signs nothing
    assert run("checkpoint", "--database", str(db)).returncode == 0
    r = run("proof", "00000000-0000-0000-0000-000000000003", "--output", str(bundle), "--database", str(db))
    assert r.returncode == 0, r.stderr
    # The third party has only the bundle and the key: an empty directory, no database, no settings.
    elsewhere = tmp_path / "auditor"
    elsewhere.mkdir()
    (elsewhere / "bundle.json").write_bytes(bundle.read_bytes())
    r = run("verify-proof", "bundle.json", "--key", key, "--format", "json", cwd=elsewhere)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["ok"] is True
    assert list(elsewhere.iterdir()) == [elsewhere / "bundle.json"]
    forged = json.loads(bundle.read_text())
    forged["record"]["user"] = "mallory@example.com"
    (elsewhere / "forged.json").write_text(json.dumps(forged))
    r = run("verify-proof", "forged.json", "--key", key, cwd=elsewhere)
    assert r.returncode == 1 and "user" in r.stdout
    # consistency between the proof's checkpoint (size 5) and a later one; verify names a changed record
    events.write_text("\n".join(json.dumps(ev(n)) for n in range(6, 9)) + "\n")
    assert run("import", str(events), "--database", str(db)).returncode == 0
    assert run("checkpoint", "--database", str(db)).returncode == 0
    r = run("consistency", "5", "8", "--database", str(db), "--key", key, "-o", str(tmp_path / "c.json"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert run("verify-proof", "c.json", "--key", key, cwd=tmp_path).returncode == 0
    sqlite3.connect(db).execute("UPDATE events SET user = 'x' WHERE id = 2").connection.commit()
    r = run("verify", "--database", str(db), "--key", key, "--format", "json")
    report = json.loads(r.stdout)
    assert r.returncode == 1 and report["leaves"] == 8
    assert [(p["kind"], p["event_id"]) for p in report["problems"]] == [
        ("record_changed", "00000000-0000-0000-0000-000000000002")
    ]


# --------------------------------------------------------------------------------------------- checkpoints


def test_checkpoints_every_n_events_and_when_idle_exported_and_announced(log: Log, tmp_path: Path) -> None:
    seen: list[int] = []
    log.trust.log.listeners.append(lambda cp: seen.append(cp.size))
    cper = integrity.Checkpointer(
        log.trust.log, log.trust.signing_key().signer, every_events=5, every_seconds=3600
    )
    assert cper.run_once() is not None  # the first one at once
    assert cper.run_once() is None
    log.add(1, 2, 3, 4)
    assert cper.run_once() is None
    log.add(5)
    assert cper.run_once() is not None
    idle = integrity.Checkpointer(
        log.trust.log, log.trust.signing_key().signer, every_events=5, every_seconds=0.01
    )
    idle.start()
    threading.Event().wait(0.3)
    idle.stop()
    assert seen[:2] == [0, 5] and seen[2:] and set(seen[2:]) == {5}  # idle checkpoints keep coming
    files = sorted((tmp_path / "exported").glob("checkpoint-*.txt"))
    assert len(files) == len(seen)
    latest = (tmp_path / "exported" / "latest.txt").read_text()
    cp = checkpoint.open_checkpoint(latest, log.key, origin=log.trust.origin)
    assert cp.size == 5 and integrity.checkpoint_time(cp) is not None


# --------------------------------------------------------------------------------------------- helpers


def _leaves_from(log: Log, start: int) -> None:
    """Recompute every leaf from ``start`` and the head, as someone who knows the scheme but not the key."""
    conn = log.store.connect()
    rows = conn.execute(
        "SELECT idx, event_row, raw_sha256, ingest_token, raw_kept FROM integrity_leaves ORDER BY idx"
    ).fetchall()
    chain = integrity.GENESIS
    tree = merkle.CompactRange()
    conn.execute("BEGIN IMMEDIATE")
    for idx, row, raw_sha, token, kept in rows:
        if idx >= start and row is not None:
            record = log.store.get(row)
            assert record is not None
            obj, _ = integrity.record_leaf(
                record, index=idx, raw_sha256=raw_sha, raw_kept=bool(kept), ingest_token=token
            )
            lh = integrity.leaf_hash_of(obj)
            conn.execute(
                "UPDATE integrity_leaves SET leaf_hash = ?, event_class = ?, event_time = ?,"
                " content_sha256 = ? WHERE idx = ?",
                (lh, obj["class"], obj["time"], bytes.fromhex(obj["content_sha256"]), idx),
            )
        else:
            lh = conn.execute("SELECT leaf_hash FROM integrity_leaves WHERE idx = ?", (idx,)).fetchone()[0]
        chain = integrity.chain_next(chain, lh)
        tree.append(lh)
        conn.execute("UPDATE integrity_leaves SET chain_hash = ? WHERE idx = ?", (chain, idx))
    conn.execute(
        "UPDATE integrity_state SET size = ?, chain_head = ?, peaks = ? WHERE id = 1",
        (tree.size, chain, b"".join(tree.peaks)),
    )
    conn.execute("COMMIT")
    conn.close()


def sign_with_own_tool(log: Log, signer: str) -> str:
    """Sign and store a checkpoint of the log as the database holds it, as an attacker's own tool would."""
    conn = sqlite3.connect(log.path)
    state = integrity.load_state(conn)
    cp = checkpoint.Checkpoint(origin=log.trust.origin, size=state.size, root=state.root)
    note = checkpoint.sign_checkpoint(cp, signer)
    with conn:
        conn.execute(
            "INSERT INTO integrity_checkpoints(size, root, created_at, note) VALUES (?, ?, ?, ?)",
            (state.size, state.root, 1, note),
        )
    conn.close()
    return note


def rewrite_record(log: Log, row: int, **fields: Any) -> None:
    for name, value in fields.items():
        log.sql(f'UPDATE events SET "{name}" = ? WHERE id = ?', (value, row))
    idx = log.sql("SELECT idx FROM integrity_leaves WHERE event_row = ?", (row,))[0][0]
    _leaves_from(log, idx)


def truncate(log: Log, keep: int) -> None:
    log.sql("DELETE FROM events WHERE id > ?", (keep,))
    log.sql("DELETE FROM integrity_leaves WHERE idx >= ?", (keep,))
    _leaves_from(log, keep)
