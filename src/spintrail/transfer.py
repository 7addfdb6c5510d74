"""Copy a whole store to another (SQLite to PostgreSQL, or back): records, exact raw bytes, tags and text.

Events are read in id order and appended to the target with their ids kept, so links and references to
``/api/v1/events/<id>`` stay valid. The target compresses raw bytes its own way (delta chains within a month
on PostgreSQL) and rebuilds tags and full-text entries from the records; the text indexed is recomputed
exactly as ingest made it (``retention.recompute_text``). Re-running the copy stores nothing twice: events
already in the target are recognised by their event id.

The tamper-evident log moves with the events (``copy_integrity``): its leaves, head and signed checkpoints
are copied as they are, with the installation's id and recorded signing key (``trust_meta``), so the
target's log has the same origin and root and verifies against checkpoints signed before the move with the
same verifier key. The target's servers must sign with the source's key file (and keep its signer state).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from spintrail import dbutil, fulltext, integrity, keys
from spintrail.record import LIST_FIELDS, TEXT_FIELDS, AuditRecord
from spintrail.retention import recompute_text, sqlite_blob, sqlite_reader
from spintrail.store import PreparedEvent, Store, StoreError
from spintrail.store.blobs import BlobReader

REPORT_COLUMNS = ("source_events", "copied", "already_there", "target_events", "seconds")
_COLUMNS = ("id", "event_id", "received_at", "time", *TEXT_FIELDS, *LIST_FIELDS)


class TransferError(Exception):
    """The copy cannot go on; the message says why and what to do."""


@dataclass(slots=True)
class TransferReport:
    source_events: int = 0
    copied: int = 0
    already_there: int = 0
    target_events: int = 0
    seconds: float = 0.0

    def row(self) -> dict[str, Any]:
        return {
            c: round(v, 2) if isinstance(v, float) else v for c in REPORT_COLUMNS for v in [getattr(self, c)]
        }


def iter_events(store: Store, batch: int = 500) -> Iterator[list[tuple[AuditRecord, bytes | None]]]:
    """Every record of a store with its raw bytes, in id order, ``batch`` at a time."""
    if store.backend == "postgresql":
        after = 0
        while True:
            rows = store.export_batch(after, batch)  # type: ignore[attr-defined]
            if not rows:
                return
            yield rows
            after = rows[-1][0].id
    elif store.backend == "sqlite":
        yield from _iter_sqlite(store, batch)
    else:  # pragma: no cover
        raise TransferError(f"cannot read a {store.backend} store")


def _iter_sqlite(store: Any, batch: int) -> Iterator[list[tuple[AuditRecord, bytes | None]]]:
    conn = store.connect()
    cache = sqlite_reader(conn)
    cols = ", ".join(f'"{c}"' for c in _COLUMNS)
    try:
        after = 0
        while True:
            rows = conn.execute(
                f"SELECT {cols}, raw_id FROM events WHERE id > ? ORDER BY id LIMIT ?", (after, batch)
            ).fetchall()
            if not rows:
                return
            out = []
            for row in rows:
                values = dict(zip(_COLUMNS, row[:-1], strict=True))
                for name in LIST_FIELDS:
                    values[name] = json.loads(values[name])
                rec = AuditRecord(**values)
                raw = _sqlite_blob(conn, row[-1], cache, rec.event_id) if row[-1] is not None else None
                out.append((rec, raw))
            yield out
            after = rows[-1][0]
    finally:
        conn.close()


def _sqlite_blob(conn: Any, blob_id: int, cache: BlobReader, event_id: str) -> bytes:
    out = sqlite_blob(conn, blob_id, cache, event_id)
    if out is None:
        raise TransferError(f"raw blob {blob_id} is missing in the source: the source store is damaged")
    return out


@dataclass(slots=True)
class IntegrityCopy:
    """What ``copy_integrity`` copied, and the key the target's checkpoints are signed with."""

    leaves: int = 0
    checkpoints: int = 0
    #: The verifier key of the installation (``None``: the source never recorded one).
    verifier_key: str | None = None


_LOG_TABLES = (("integrity_leaves", "idx"), ("integrity_state", "id"), ("integrity_checkpoints", "id"))


def _columns(conn: Any, table: str) -> list[str]:
    cur = dbutil.execute(conn, f"SELECT * FROM {table} WHERE 1 = 0")
    cur.fetchall()
    return [d[0] for d in cur.description]


def _has_log(conn: Any) -> bool:
    try:
        row = dbutil.one(
            conn, "SELECT count(*) FROM schema_migrations WHERE component = ?", (integrity.COMPONENT,)
        )
    except Exception:
        return False
    return bool(row and row[0])


#: Log columns that PostgreSQL types as boolean and SQLite as integer.
_BOOLEAN_COLUMNS = frozenset({"raw_kept"})


def copy_integrity(source: Store, target: Store, *, batch: int = 5000) -> IntegrityCopy:
    """Copy the tamper-evident log (leaves, head, checkpoints) and ``trust_meta`` to ``target``, as they
    are; safe to run again. Call after the events are copied (leaves name events by id)."""
    out = IntegrityCopy()
    src, dst = source.connect(), None
    try:
        if not _has_log(src):
            return out
        dbutil.migrate(target, "trust_meta", keys.MIGRATIONS)
        dbutil.migrate(target, integrity.COMPONENT, integrity.MIGRATIONS)
        dst = target.connect()
        if not dbutil.is_sqlite(dst):
            dst.autocommit = True
        _copy_meta(src, dst)
        for table, key in _LOG_TABLES:
            cols = [c for c in _columns(src, table) if c in set(_columns(dst, table))]
            names = ", ".join(cols)
            marks = ", ".join("?" for _ in cols)
            insert = f"INSERT INTO {table}({names}) VALUES ({marks}) ON CONFLICT ({key}) DO NOTHING"
            if table == "integrity_state":
                updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c != key)
                insert = insert.replace("DO NOTHING", f"DO UPDATE SET {updates}")
            last = None
            while True:
                where, args = (f" WHERE {key} > ?", [last]) if last is not None else ("", [])
                rows = dbutil.rows(
                    src, f"SELECT {names} FROM {table}{where} ORDER BY {key} LIMIT ?", (*args, batch)
                )
                if not rows:
                    break
                values = [tuple(r) for r in rows]
                flags = [i for i, c in enumerate(cols) if c in _BOOLEAN_COLUMNS]
                if flags and not dbutil.is_sqlite(dst):  # SQLite keeps booleans as 0/1
                    values = [
                        tuple(bool(v) if i in flags and v is not None else v for i, v in enumerate(r))
                        for r in values
                    ]
                with dbutil.transaction(dst):
                    dst.cursor().executemany(dbutil.sql(dst, insert), values)
                last = rows[-1][cols.index(key)]
                if table == "integrity_leaves":
                    out.leaves += len(rows)
                elif table == "integrity_checkpoints":
                    out.checkpoints += len(rows)
        if not dbutil.is_sqlite(dst):  # ids were given: the sequence continues after them
            dbutil.execute(
                dst,
                "SELECT setval(pg_get_serial_sequence('integrity_checkpoints', 'id'),"
                " greatest(coalesce(max(id), 0), 1), max(id) IS NOT NULL) FROM integrity_checkpoints",
            )
        out.verifier_key = keys.installation_key(dst)
        return out
    finally:
        src.close()
        if dst is not None:
            dst.close()


def _copy_meta(src: Any, dst: Any) -> None:
    """The installation id, redaction key and signing key record, which the copied log depends on."""
    try:
        rows = dbutil.rows(src, "SELECT name, value FROM trust_meta ORDER BY name")
    except Exception:  # no trust tables in the source
        return
    for name, value in rows:
        theirs = dbutil.one(dst, "SELECT value FROM trust_meta WHERE name = ?", (name,))
        if theirs is None:
            with dbutil.transaction(dst):
                dbutil.execute(
                    dst,
                    "INSERT INTO trust_meta(name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                    (name, dbutil.as_bytes(value)),
                )
        elif dbutil.as_bytes(theirs[0]) != dbutil.as_bytes(value):
            raise TransferError(
                f"the target belongs to another installation (its {name} differs from the source's): copy "
                "into an empty database"
            )


def copy_store(
    source: Store, target: Store, *, batch: int = 500, progress: Callable[[int], None] | None = None
) -> TransferReport:
    """Copy every event of ``source`` into ``target`` (ids kept); safe to run again."""
    started = time.perf_counter()
    report = TransferReport(source_events=source.stats().events)
    for rows in iter_events(source, batch):
        prepared = []
        for rec, raw in rows:
            text = recompute_text(rec, raw)
            if text is None:
                text = fulltext.index_text(rec, {})
            prepared.append(
                PreparedEvent(record=rec, raw=raw if raw is not None else b"", text=text, id=rec.id)
            )
        try:
            results = target.append(prepared)
        except StoreError as exc:
            if "unique" in str(exc).lower() or "duplicate key" in str(exc).lower():
                raise TransferError(
                    f"the target already holds other events under the ids being copied ({exc}). Copy into "
                    "an empty database, or one filled only by an earlier run of this command, before any "
                    "server writes to it."
                ) from exc
            raise
        dup = sum(1 for r in results if r.duplicate)
        report.copied += len(results) - dup
        report.already_there += dup
        if progress is not None:
            progress(len(results))
    report.target_events = target.stats().events
    report.seconds = time.perf_counter() - started
    return report
