"""The signer signs only histories it extended, with the installation's one key; verifying changes nothing.

Real SQLite files and the real PostgreSQL server; real ``spintrail serve`` processes only where their
refusal to start is the point.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import free_port
from spintrail import integrity, keys
from spintrail.cli import app as cli
from spintrail.decode import IncomingEvent
from spintrail.ingest import Ingestor
from spintrail.settings import Settings
from spintrail.signer_state import SignerRefused, state_for
from spintrail.store import open_store
from spintrail.trust import Trust
from test_integrity import ev


def fill(settings: Settings, *ns: int, sign: bool = True) -> None:
    """Store events ``ns`` the way the server does, and sign a checkpoint of them."""
    store = open_store(settings.database)
    try:
        ingestor = Ingestor(settings, store)
        prepared = [ingestor.prepare(IncomingEvent(e, json.dumps(e).encode())) for e in map(ev, ns)]
        store.append(prepared)
        if sign:
            trust: Trust = ingestor.trust
            trust.log.sign(trust.signing_key().signer)
        ingestor.trust.close()
    finally:
        store.close()


def serve(database: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Start ``spintrail serve``; it is expected to refuse, so it must exit on its own."""
    return subprocess.run(
        [sys.executable, "-m", "spintrail", "serve", "--port", str(free_port()), "--database", database],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "SPINTRAIL_LOG_LEVEL": "warning", "COLUMNS": "1000", **env},
        timeout=60,
    )


def wipe_and_rewrite(db: Path) -> None:
    """An attacker with the database: change a record, drop the whole log and rebuild it from the edited
    events with spintrail's own `integrity adopt`."""
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE events SET user = 'mallory@example.com' WHERE id = 2")
        for table in ("integrity_leaves", "integrity_state", "integrity_checkpoints"):
            conn.execute(f"DELETE FROM {table}")
    conn.close()
    store = open_store(str(db))
    trust = Trust(store, Settings(database=str(db)))
    try:
        assert trust.log.adopt(by="mallory")["events_adopted"] > 0
    finally:
        trust.close()
        store.close()


def test_serve_refuses_a_wiped_and_rewritten_log(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    fill(Settings(database=str(db)), 1, 2, 3, 4)
    wipe_and_rewrite(db)
    r = serve(str(db), tmp_path)
    assert r.returncode == 3, r.stderr
    assert "not an extension" in r.stderr and "refusing to start" in r.stderr
    assert sqlite3.connect(db).execute("SELECT count(*) FROM integrity_checkpoints").fetchone() == (0,)


def test_serve_refuses_with_only_checkpoint_dir_remembering_the_head(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    exported = tmp_path / "exported"
    settings = Settings(database=str(db), checkpoint_dir=exported, signer_state_dir=tmp_path / "state")
    fill(settings, 1, 2, 3, 4)
    wipe_and_rewrite(db)
    for f in (tmp_path / "state").iterdir():  # a state directory that was not kept
        f.unlink()
    r = serve(str(db), tmp_path, SPINTRAIL_CHECKPOINT_DIR=str(exported))
    assert r.returncode == 3, r.stderr
    assert "latest.txt" in r.stderr and "not an extension" in r.stderr


def test_a_missing_state_with_a_known_key_and_a_log_refuses(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    fill(Settings(database=str(db)), 1, 2)
    for f in tmp_path.glob("spintrail-signer-*.json"):
        f.unlink()
    r = serve(str(db), tmp_path)
    assert r.returncode == 3, r.stderr
    assert "is missing" in r.stderr and "signer_state_dir" in r.stderr


def test_a_replica_with_a_new_state_volume_joins_only_at_a_checkpoint_its_key_signed(tmp_path: Path) -> None:
    """signer_join: a replica added later (no state of its own) starts at the newest checkpoint the
    installation's key signed, and still refuses a log that does not extend it, or one with no such
    checkpoint."""
    db = tmp_path / "audit.db"
    first = Settings(database=str(db), signer_state_dir=tmp_path / "first")
    fill(first, 1, 2, 3)
    fill(first, 4, sign=False)  # one leaf after the last checkpoint
    added = first.model_copy(update={"signer_state_dir": tmp_path / "added"})
    store = open_store(str(db))
    try:
        with pytest.raises(SignerRefused, match="is missing"):
            Trust(store, added).signing_key()  # off by default, as for a single server
        joined = Trust(store, added.model_copy(update={"signer_join": True}))
        cp = joined.log.sign(joined.signing_key().signer)
        assert cp.size == 4 and list((tmp_path / "added").glob("spintrail-signer-*.json"))
        joined.close()
    finally:
        store.close()
    # The same replica, on a log whose checkpoints were wiped (nothing signed to join at), refuses.
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DELETE FROM integrity_checkpoints")
    conn.close()
    late = first.model_copy(update={"signer_state_dir": tmp_path / "late", "signer_join": True})
    store = open_store(str(db))
    try:
        with pytest.raises(SignerRefused, match="is missing"):
            Trust(store, late).signing_key()
    finally:
        store.close()


def test_a_restore_from_an_older_backup_points_at_accept_rollback(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    settings = Settings(database=str(db))
    fill(settings, 1, 2)
    backup = tmp_path / "backup.db"
    src = sqlite3.connect(db)
    src.backup(sqlite3.connect(backup))
    src.close()
    fill(settings, 3, 4, 5)
    os.replace(backup, db)
    store = open_store(str(db))
    trust = Trust(store, settings)
    with pytest.raises(SignerRefused, match=r"accept-rollback --to 2"):
        trust.signing_key()
    # The explicit decision resets the head; then the restored log is signed and grows again.
    state_for(settings, keys.signing_key(settings).verifier, trust.origin).accept(2, trust.log.state().root)
    trust.log.sign(trust.signing_key().signer)
    assert trust.log.latest() is not None and trust.log.latest().size == 2  # type: ignore[union-attr]
    trust.close()
    store.close()


def test_the_signer_refuses_a_log_rewritten_while_it_runs(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    settings = Settings(database=str(db))
    fill(settings, 1, 2, 3)
    store = open_store(str(db))
    ingestor = Ingestor(settings, store)
    trust = ingestor.trust
    signer = trust.signing_key().signer
    conn = sqlite3.connect(db)
    with conn:  # a different leaf 1, and a head recomputed to match it
        conn.execute("UPDATE integrity_leaves SET leaf_hash = zeroblob(32) WHERE idx = 1")
        hashes = [bytes(r[0]) for r in conn.execute("SELECT leaf_hash FROM integrity_leaves ORDER BY idx")]
        from spintrail import merkle

        tree = merkle.CompactRange()
        tree.extend(hashes)
        conn.execute("UPDATE integrity_state SET peaks = ?", (b"".join(tree.peaks),))
    conn.close()
    with pytest.raises(SignerRefused, match="not an extension"):
        trust.log.sign(signer)
    ingestor.trust.close()
    store.close()


def test_a_second_replica_from_another_directory_refuses(pg_url: str, tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    fill(Settings(database=pg_url, signing_key_file=first / "spintrail-signing.key"), 1, 2)
    r = serve(pg_url, second)
    assert r.returncode == 3, r.stderr
    assert "signing_key_file" in r.stderr and "spintrail-signing.key" in r.stderr
    assert not (second / "spintrail-signing.key").exists()
    # A replica with its own, different key file is refused too.
    other = second / "other.key"
    keys.signing_key(Settings(database=pg_url, signing_key_file=other))
    r = serve(pg_url, second, SPINTRAIL_SIGNING_KEY_FILE=str(other))
    assert r.returncode == 3 and "signing_key_file" in r.stderr and "other.key" in r.stderr


# --------------------------------------------------------------------------------------------- read-only


def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


@pytest.fixture()
def live_sqlite(tmp_path: Path) -> Iterator[tuple[Path, Settings, str]]:
    """A store with signed events whose latest writes are still in the WAL (its writer is open)."""
    db = tmp_path / "audit.db"
    settings = Settings(database=str(db))
    fill(settings, 1, 2, 3)
    store = open_store(str(db))
    ingestor = Ingestor(settings, store)
    store.append([ingestor.prepare(IncomingEvent(e, json.dumps(e).encode())) for e in map(ev, (4, 5))])
    ingestor.trust.log.sign(ingestor.trust.signing_key().signer)
    verifier = ingestor.trust.signing_key().verifier
    assert Path(str(db) + "-wal").stat().st_size > 0
    yield db, settings, verifier
    ingestor.trust.close()
    store.close()


def test_verifying_leaves_the_sqlite_file_and_wal_byte_identical(
    live_sqlite: tuple[Path, Settings, str], tmp_path: Path
) -> None:
    db, _, verifier = live_sqlite
    wal = Path(str(db) + "-wal")
    before = (digest(db), digest(wal))
    runner = CliRunner()
    for args in (
        ["verify", "--key", verifier],
        ["check"],
        ["proof", "00000000-0000-0000-0000-000000000002", "-o", str(tmp_path / "p.json")],
        ["consistency", "3", "latest", "--key", verifier],
    ):
        result = runner.invoke(cli, [*args, "--database", str(db)])
        assert result.exit_code == 0, (args, result.output)
        assert (digest(db), digest(wal)) == before, args


def test_proof_on_a_copy_without_the_key_creates_no_key(
    live_sqlite: tuple[Path, Settings, str], tmp_path: Path
) -> None:
    db, _, verifier = live_sqlite
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    copy = copy_dir / "audit.db"
    src = sqlite3.connect(db)
    src.backup(sqlite3.connect(copy))
    src.close()
    out = tmp_path / "b.json"
    args = ["proof", "00000000-0000-0000-0000-000000000004", "-o", str(out), "--database", str(copy)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in copy_dir.iterdir() if "key" in p.name) == []
    bundle = json.loads((tmp_path / "b.json").read_text())
    assert integrity.verify_bundle(bundle, verifier).ok


def test_verify_does_not_migrate_an_older_store(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    fill(Settings(database=str(db)), 1)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DELETE FROM schema_migrations WHERE component = 'integrity'")
    conn.close()
    before = digest(db)
    result = CliRunner().invoke(cli, ["verify", "--key", "x+1+y", "--database", str(db)])
    assert result.exit_code == 2 and "schema upgrade" in result.output
    assert digest(db) == before


def test_verify_on_postgresql_runs_read_only(pg_url: str, tmp_path: Path) -> None:
    settings = Settings(database=pg_url, signing_key_file=tmp_path / "signing.key")
    fill(settings, 1, 2, 3)
    store = open_store(pg_url, read_only=True)
    try:
        with store.connect() as conn:
            assert conn.execute("SHOW default_transaction_read_only").fetchone()[0] == "on"
            with pytest.raises(Exception, match="read-only"):
                conn.execute("DELETE FROM integrity_checkpoints")
    finally:
        store.close()
    verifier = keys.signing_key(settings).verifier
    result = CliRunner().invoke(cli, ["verify", "--key", verifier, "--database", pg_url, "--no-raw"])
    assert result.exit_code == 0, result.output


# --------------------------------------------------------------------------------------------- migrate


def test_a_migrated_store_verifies_against_checkpoints_signed_before_the_move(
    pg_url: str, tmp_path: Path
) -> None:
    db = tmp_path / "audit.db"
    exported = tmp_path / "exported"
    settings = Settings(database=str(db), checkpoint_dir=exported)
    fill(settings, 1, 2, 3)
    fill(settings, 4, 5)
    verifier = keys.signing_key(settings).verifier
    runner = CliRunner()
    moved = runner.invoke(cli, ["migrate", "--from", str(db), "--to", pg_url])
    assert moved.exit_code == 0, moved.output
    text = " ".join(moved.output.split())
    assert "5 leaves and 2 signed checkpoints copied" in text
    assert verifier.split("+")[1] in text
    assert f"signing_key_file={db}.signing-key" in "".join(moved.output.split())
    args = ["verify", "--key", verifier, "--checkpoints", str(exported), "--database", pg_url]
    result = runner.invoke(cli, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["leaves"] == 5 and report["checkpoints_checked"] == 4  # 2 stored + 2 exported
    # The target's servers sign on with the source's key and signer state; another key is refused.
    on_target = Settings(database=pg_url, signing_key_file=Path(f"{db}.signing-key"), checkpoint_dir=exported)
    fill(on_target, 6)
    with pytest.raises(SignerRefused, match="signing_key_file"):
        fill(Settings(database=pg_url, signing_key_file=tmp_path / "new.key"), 7, sign=True)


def test_an_installation_from_before_the_signer_state_starts_it_from_its_own_checkpoints(
    tmp_path: Path,
) -> None:
    db = tmp_path / "audit.db"
    settings = Settings(database=str(db))
    fill(settings, 1, 2, 3)
    conn = sqlite3.connect(db)
    with conn:  # as an earlier version left it: no recorded key, no state file
        conn.execute("DELETE FROM trust_meta WHERE name = ?", (keys.INSTALLATION_KEY,))
    conn.close()
    (state_file,) = tmp_path.glob("spintrail-signer-*.json")
    state_file.unlink()
    backup = tmp_path / "before.db"
    src = sqlite3.connect(db)
    src.backup(sqlite3.connect(backup))
    src.close()
    # Untouched: the signer starts its state from the log, which extends the checkpoint it signed.
    fill(settings, 4)
    assert state_file.exists()
    # Rewritten (and the head recomputed), same start: the newest checkpoint this key signed refuses it.
    state_file.unlink()
    os.replace(backup, db)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE integrity_leaves SET leaf_hash = zeroblob(32) WHERE idx = 0")
    conn.close()
    store = open_store(str(db))
    trust = Trust(store, settings)
    with pytest.raises(SignerRefused, match="stored checkpoint #1"):
        trust.signing_key()
    trust.close()
    store.close()


def test_a_wiped_and_rewritten_log_on_postgresql_is_refused(pg_url: str, tmp_path: Path) -> None:
    import psycopg

    settings = Settings(database=pg_url, signing_key_file=tmp_path / "signing.key")
    fill(settings, 1, 2, 3)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE events SET \"user\" = 'mallory@example.com' WHERE id = 2")
        conn.execute("TRUNCATE integrity_leaves, integrity_state, integrity_checkpoints")
    store = open_store(pg_url)
    trust = Trust(store, settings)
    try:
        trust.log.adopt(by="mallory")  # the attacker rebuilds the log from the edited events
        with pytest.raises(SignerRefused, match="not an extension"):
            trust.signing_key()
        assert trust.log.latest() is None
    finally:
        trust.close()
        store.close()
