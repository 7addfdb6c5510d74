"""The trust tables and their SQL on the real PostgreSQL (127.0.0.1:5432, database ``test``): tokens, the
access log, the redacted-value index, and the tamper-evident log's hook, checkpoints and proofs.

The store backend for PostgreSQL lives in its own module; here a minimal stand-in provides only what the
trust components ask of a store (``backend``, ``connect``, ``migrate_component``), in a schema of its own.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spintrail import accesslog, dbutil, integrity, keys, scrub, tokens
from spintrail.normalize import normalize
from spintrail.settings import Settings
from spintrail.signer_state import SignerGuard, SignerState
from spintrail.store.base import PreparedEvent, Written

psycopg = pytest.importorskip("psycopg")
URL = "postgresql://postgres@127.0.0.1:5432/test"
pytestmark = pytest.mark.postgres


class SchemaStore:
    """What trust needs of a store, on a fresh PostgreSQL schema."""

    backend = "postgresql"

    def __init__(self, schema: str) -> None:
        self.schema = schema

    def connect(self) -> Any:
        conn = psycopg.connect(URL, autocommit=True)
        conn.execute(f"SET search_path TO {self.schema}")
        return conn

    def migrate_component(self, component: str, migrations: list[tuple[int, str]]) -> None:
        with self.connect() as conn, conn.transaction():
            for _version, script in migrations:
                for statement in (s.strip() for s in script.split(";")):
                    if statement:
                        conn.execute(statement)


@pytest.fixture()
def pg() -> Iterator[SchemaStore]:
    try:
        admin = psycopg.connect(URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable at {URL}: {exc}")
    schema = "trust_" + uuid.uuid4().hex[:12]
    admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield SchemaStore(schema)
    finally:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


def test_trust_tables_and_log_on_postgresql(pg: SchemaStore, tmp_path: Path) -> None:
    for component, migrations in (
        ("trust_meta", keys.MIGRATIONS),
        ("tokens", tokens.MIGRATIONS),
        ("access_log", accesslog.MIGRATIONS),
        ("integrity", integrity.MIGRATIONS),
        ("redaction", scrub.MIGRATIONS),
    ):
        dbutil.migrate(pg, component, migrations)
    conns = dbutil.Connections(pg)
    conn = conns.get()
    settings = Settings(database=URL)
    install_id = keys.installation_id(conn)
    assert keys.installation_id(conn) == install_id
    key = keys.redaction_key(conn, settings)
    assert len(key) == 32 and keys.redaction_key(conn, settings) == key

    store_tokens = tokens.TokenStore(conns, settings)
    secret = store_tokens.create("echo", "ingest", ["checkout"])
    assert store_tokens.lookup(secret) == tokens.TokenInfo("echo", "ingest", frozenset({"checkout"}))
    with pytest.raises(tokens.TokenError, match="exists already"):
        store_tokens.create("echo", "viewer")
    store_tokens.touch({"echo": 5})
    store_tokens.revoke("echo")
    assert store_tokens.lookup(secret).revoked  # type: ignore[union-attr]
    assert store_tokens.active_count() == 0 and store_tokens.list()[0].last_used_at == 5

    access = accesslog.AccessLog(conns)
    access.record(accesslog.Access(principal="aud", action="raw", path="/x"))
    access.record(accesslog.Access(principal="aud", action="proof", path="/y"))
    assert [a.action for a in access.list(action="proof")] == ["proof"]
    assert [a.action for a in access.list(limit=1)] == ["proof"]

    log = integrity.IntegrityLog(pg, conns, f"spintrail/{install_id}")  # type: ignore[arg-type]
    scrubber = scrub.Scrubber(key)
    written = []
    for n in range(1, 8):
        event = {
            "details": {
                "source": "orca",
                "type": "orca:pipeline:starting",
                "created": str(1_718_000_000_000 + n),
            },
            "content": {
                "execution": {"id": f"E{n}", "application": "checkout", "trigger": {"secret": "s3cret"}}
            },
            "eventId": f"e-{n}",
        }
        scrubbed = scrubber.scrub(event, json.dumps(event).encode())
        record = normalize(scrubbed.event, received_at=1)
        item = PreparedEvent(
            record, scrubbed.raw, raw_sha256=scrubbed.raw_sha256, secret_hashes=scrubbed.secret_hashes
        )
        written.append(Written(item, n))
    writer = pg.connect()
    for group in (written[:3], written[3:]):  # two group commits
        with writer.transaction():
            scrub.index_hook(writer, group)
            log.hook(writer, group)
    writer.close()
    assert log.state().size == 7
    assert log.state().root == integrity.merkle.root_from_leaf_hashes(log.leaf_hashes(7))
    assert scrub.records_with(conn, scrubber.hash_value("s3cret")) == list(range(1, 8))

    signer, verifier = integrity.notes.generate_signer_key("spintrail-pg")
    log.guard = SignerGuard(SignerState(tmp_path, verifier, log.origin))
    log.guard.start(conn, first_use=True)
    first = log.sign(signer)
    assert first.size == 7 and log.checkpoint_of_size(7) == first
    record = written[2].item.record
    bundle = log.proof_bundle(record, signer=signer)
    assert integrity.verify_bundle(bundle, verifier).ok
    with writer_transaction(pg) as w:
        log.hook(w, [Written(written[0].item, 100)])
    second = log.sign(signer)
    assert integrity.verify_bundle(log.consistency_bundle(first, second), verifier).ok
    # An administrative action is a leaf too, appended in the caller's transaction.
    with writer_transaction(pg) as w:
        index = integrity.record_admin_action(w, "token_created", {"name": "ci", "role": "ingest"})
    assert index == 8 and log.state().size == 9
    assert [(a.action, a.details["name"]) for a in integrity.admin_actions(conn)] == [("token_created", "ci")]
    conns.close()


class writer_transaction:
    def __init__(self, pg: SchemaStore) -> None:
        self.conn = pg.connect()
        self.tx = self.conn.transaction()

    def __enter__(self) -> Any:
        self.tx.__enter__()
        return self.conn

    def __exit__(self, *exc: Any) -> None:
        self.tx.__exit__(*exc)
        self.conn.close()
