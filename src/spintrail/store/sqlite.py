"""The SQLite store: one file, WAL, one writer thread that group-commits, readers on their own connections.

A request's events are queued to the writer thread, which drains everything waiting (up to
``batch_max`` events), writes it in one transaction and commits with ``synchronous=FULL`` before any of the
waiting requests is answered. Many concurrent requests therefore share one fsync.

How events are laid out on disk (schema version 2: strings stored once, filters answered through groups of
events, raw bytes in zstd streams) is ``sqlite_layout.py``; version 1 files are converted on start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from spintrail.query import Filters
from spintrail.record import LIST_FIELDS, TEXT_FIELDS, AuditRecord
from spintrail.store import blobs, sqlite_layout
from spintrail.store.base import (
    AppendResult,
    Page,
    PreparedEvent,
    Store,
    StoreFull,
    StoreOverloaded,
    StoreStats,
    StoreUnavailable,
    Written,
    decode_cursor,
    encode_cursor,
)

log = logging.getLogger(__name__)

#: The record columns of schema version 1 (read when converting a version 1 file).
_V1_COLUMNS: tuple[str, ...] = ("event_id", "received_at", "time", *TEXT_FIELDS, *LIST_FIELDS)

#: A migration is SQL, or a function run with the connection inside the migration's transaction.
Migration = str | Callable[[sqlite3.Connection], None]

#: Versioned schema migrations, applied in order on start and recorded in ``schema_migrations``.
MIGRATIONS: list[tuple[int, Migration]] = [
    (
        1,
        """
        CREATE TABLE raw (
            id INTEGER PRIMARY KEY,
            codec INTEGER NOT NULL,
            base_id INTEGER,
            size INTEGER NOT NULL,
            sha256 BLOB NOT NULL,
            data BLOB NOT NULL
        );
        CREATE INDEX raw_base ON raw(base_id) WHERE base_id IS NOT NULL;
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            event_id TEXT NOT NULL UNIQUE,
            received_at INTEGER NOT NULL,
            time INTEGER NOT NULL,
        """
        + ",\n".join(f'            "{c}" TEXT' for c in TEXT_FIELDS)
        + ",\n"
        + ",\n".join(f"            {c} TEXT NOT NULL DEFAULT '[]'" for c in LIST_FIELDS)
        + """,
            raw_id INTEGER
        );
        CREATE INDEX events_time ON events(time, id);
        CREATE INDEX events_user ON events("user", time, id);
        CREATE INDEX events_application ON events(application, time, id);
        CREATE INDEX events_type ON events(type, time, id);
        CREATE INDEX events_status ON events(status, time, id);
        CREATE INDEX events_source ON events(source, time, id);
        CREATE INDEX events_instance ON events(spinnaker_instance, time, id);
        CREATE INDEX events_execution ON events(execution_id, time, id);
        CREATE TABLE event_tags (
            kind TEXT NOT NULL,
            value TEXT NOT NULL,
            time INTEGER NOT NULL,
            event_row INTEGER NOT NULL,
            PRIMARY KEY (kind, value, time, event_row)
        ) WITHOUT ROWID;
        CREATE INDEX event_tags_row ON event_tags(event_row);
        CREATE VIRTUAL TABLE events_fts USING fts5(text, content='', columnsize=0);
        """,
    ),
]


@dataclass(slots=True)
class _Job:
    items: Sequence[PreparedEvent]
    future: Future[list[AppendResult]] = field(default_factory=Future)


_STOP = object()


def sqlite_path(database: str) -> str:
    """The file path of a ``sqlite:///path`` URL or a plain path."""
    if database.startswith("sqlite:///"):
        return database[len("sqlite:///") :] or ":memory:"
    if database.startswith("sqlite://"):
        return database[len("sqlite://") :]
    return database


class SqliteStore(Store):
    """Events in one SQLite file."""

    backend = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        batch_max: int = 2000,
        queue_max: int = 20000,
        compression_level: int = blobs.STREAM_LEVEL,
        compression_memory: int = blobs.STREAM_MEMORY,
    ) -> None:
        super().__init__()
        self.path = str(path)
        if self.path != ":memory:":
            parent = Path(self.path).parent
            if not parent.exists():
                raise StoreUnavailable(f"directory {parent} for the database does not exist: create it first")
        self.batch_max = batch_max
        self.queue_max = queue_max
        self._queue: queue.Queue[Any] = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._closed = False
        self._layout = sqlite_layout.Writer(
            compression_level=compression_level, compression_memory=compression_memory
        )
        self._rows = sqlite_layout.Reader()
        self.commit_observer: Any = None  # callable(seconds, events) set by the app for metrics
        conn = self._connect()
        try:
            self._migrate(conn)
        finally:
            conn.close()
        self._writer = threading.Thread(target=self._run, name="spintrail-sqlite-writer", daemon=True)
        self._writer.start()

    # -- connections -------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite database {self.path}: {exc}") from exc
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
            with self._lock:
                self._readers.append(conn)
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        migrate(conn, "events", MIGRATIONS)

    def migrate_component(self, component: str, migrations: Sequence[tuple[int, Migration]]) -> None:
        """Apply another component's schema migrations (forwarding outbox, integrity log) to this file."""
        conn = self._connect()
        try:
            migrate(conn, component, migrations)
        finally:
            conn.close()

    def connect(self) -> sqlite3.Connection:
        """A new connection to the store's file (WAL, synchronous=FULL) for a component's own work."""
        return self._connect()

    # -- writes ------------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, items: Sequence[PreparedEvent]) -> Future[list[AppendResult]]:
        job = _Job(items)
        if not items:
            job.future.set_result([])
            return job.future
        with self._lock:
            if self._closed:
                raise StoreUnavailable("the store is shutting down")
            if self._pending and self._pending + len(items) > self.queue_max:
                raise StoreOverloaded(f"{self._pending} events are waiting to be committed")
            self._pending += len(items)
        self._queue.put(job)
        return job.future

    def _run(self) -> None:
        conn = self._connect()
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            jobs: list[_Job] = [first]
            count = len(first.items)
            while count < self.batch_max:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                jobs.append(nxt)
                count += len(nxt.items)
            self._commit(conn, jobs)
        conn.close()

    def _commit(self, conn: sqlite3.Connection, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        count = sum(len(j.items) for j in jobs)
        try:
            conn.execute("BEGIN IMMEDIATE")
            batch = self._layout.begin(conn, [item.record.event_id for job in jobs for item in job.items])
            written: list[Written] = []
            results = [[self._write(conn, batch, item, written) for item in job.items] for job in jobs]
            self._layout.flush(conn, batch)
            if written:
                for hook in self.write_hooks:
                    hook(conn, written)
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._layout.reset()
            if len(jobs) > 1:
                # One bad request must not fail the others that shared its commit: retry each alone.
                for job in jobs:
                    with self._lock:
                        self._pending += len(job.items)
                    self._commit(conn, [job])
            else:
                log.error("sqlite store: commit failed: %s", exc)
                jobs[0].future.set_exception(_store_error(exc))
        else:
            elapsed = time.perf_counter() - started
            if self.commit_observer is not None:
                self.commit_observer(elapsed, count)
            for job, res in zip(jobs, results, strict=True):
                job.future.set_result(res)
        finally:
            with self._lock:
                self._pending -= count

    def _write(
        self,
        conn: sqlite3.Connection,
        batch: sqlite_layout.Batch,
        item: PreparedEvent,
        written: list[Written],
    ) -> AppendResult:
        dup = self._layout.duplicate_of(conn, batch, item.record.event_id)
        if dup is not None:
            return AppendResult(dup, True)
        row_id = self._layout.write(conn, batch, item)
        written.append(Written(item, row_id))
        return AppendResult(row_id, False)

    # -- reads -------------------------------------------------------------------------------------

    def search(self, filters: Filters, *, limit: int = 100, cursor: str | None = None) -> Page:
        position = decode_cursor(cursor) if cursor else None
        conn = self._reader()
        try:
            plan = self._rows.plan(conn, filters, position)
            if plan is None:
                return Page([], None)
            rows = conn.execute(sqlite_layout.search_sql(plan), [*plan.args, limit + 1]).fetchall()
            records = self._rows.records(conn, rows[:limit])
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite read failed: {exc}") from exc
        nxt = None
        if len(rows) > limit and records:
            last = records[-1]
            assert last.id is not None
            nxt = encode_cursor(last.time, last.id)
        return Page(records, nxt)

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._reader().execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite read failed: {exc}") from exc

    def _records(self, sql: str, args: Sequence[Any] = ()) -> list[AuditRecord]:
        conn = self._reader()
        try:
            return self._rows.records(conn, conn.execute(sql, args).fetchall())
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite read failed: {exc}") from exc

    def get(self, id_: int) -> AuditRecord | None:
        if not -(2**63) <= id_ < 2**63:
            return None
        found = self._records(sqlite_layout.SELECT + " WHERE id = ?", (id_,))
        return found[0] if found else None

    def get_by_event_id(self, event_id: str) -> AuditRecord | None:
        found = self._records(
            f"{sqlite_layout.SELECT} WHERE {sqlite_layout.BY_EVENT_ID}",
            (sqlite_layout.event_id_key(event_id),),
        )
        return next((r for r in found if r.event_id == event_id), None)

    def raw(self, id_: int) -> bytes | None:
        if not -(2**63) <= id_ < 2**63:
            return None
        found = self._read("SELECT event_id FROM events WHERE id = ?", (id_,))
        if not found:
            return None
        rows = self._read(sqlite_layout.RAW_CHAIN, (id_,))
        if not rows:
            return None
        try:
            return sqlite_layout.raw_from_chain(rows, sqlite_layout.unpack_event_id(found[0][0]))
        except (ValueError, zstandard.ZstdError) as exc:
            raise StoreUnavailable(f"the raw bytes of event {id_} cannot be read: {exc}") from exc

    def execution(self, execution_id: str) -> list[AuditRecord]:
        return self._records(
            sqlite_layout.SELECT + " WHERE grp IN (SELECT id FROM groups WHERE key = ?) ORDER BY time, id",
            ("x:" + execution_id,),
        )

    def ping(self) -> None:
        self._read("SELECT 1")
        if not self._writer.is_alive():
            raise StoreUnavailable("the SQLite writer thread has stopped")

    def stats(self) -> StoreStats:
        n = self._read("SELECT count(*) FROM events")[0][0]
        raw_bytes, stored = self._read(
            "SELECT coalesce(sum(size + CASE WHEN cut IS NULL THEN 0 ELSE 36 END), 0),"
            " coalesce(sum(length(data)), 0) FROM raw"
        )[0]
        extra: dict[str, int] = {}
        if self.path != ":memory:":
            extra["file_bytes"] = sum(
                os.path.getsize(p) for p in (self.path, self.path + "-wal") if os.path.exists(p)
            )
        return StoreStats(events=n, raw_bytes=raw_bytes, stored_raw_bytes=stored, extra=extra)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(_STOP)
        self._writer.join()
        with self._lock:
            for conn in self._readers:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._readers.clear()
        self._local = threading.local()


def _v1_record(row: Sequence[Any]) -> AuditRecord:
    """A record from a schema version 1 ``events`` row (``id`` first, then ``_V1_COLUMNS``)."""
    n_text = 3 + len(TEXT_FIELDS)
    kwargs: dict[str, Any] = dict(zip(_V1_COLUMNS[:n_text], row[1 : 1 + n_text], strict=True))
    for name, value in zip(LIST_FIELDS, row[1 + n_text :], strict=True):
        kwargs[name] = json.loads(value)
    return AuditRecord(id=row[0], **kwargs)


def _store_error(exc: Exception) -> Exception:
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and ("disk is full" in text or "disk I/O" in text):
        return StoreFull(f"cannot commit: {text}")
    return StoreUnavailable(f"cannot commit: {text}")


def migrate(conn: sqlite3.Connection, component: str, migrations: Sequence[tuple[int, Migration]]) -> None:
    """Apply a component's versioned migrations once each, recorded in ``schema_migrations``."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (component TEXT NOT NULL, version INTEGER NOT NULL,"
        " applied_at INTEGER, PRIMARY KEY (component, version))"
    )
    conn.execute("BEGIN IMMEDIATE")
    try:
        done = {
            row[0]
            for row in conn.execute("SELECT version FROM schema_migrations WHERE component = ?", (component,))
        }
        for version, sql in migrations:
            if version in done:
                continue
            if callable(sql):
                sql(conn)
            else:
                for statement in _split_sql(sql):
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations(component, version, applied_at) VALUES (?, ?, ?)",
                (component, version, int(time.time() * 1000)),
            )
            log.info("sqlite: applied %s schema migration %d", component, version)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _split_sql(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _migrate_v2(conn: sqlite3.Connection) -> None:
    """Schema version 2 (``sqlite_layout.py``): convert the version 1 tables, keeping every event's id,
    record and exact bytes. The version 1 full-text index stays (its rows keep their ids)."""
    conn.execute("ALTER TABLE events RENAME TO events_v1")
    conn.execute("ALTER TABLE raw RENAME TO raw_v1")
    for index in (
        "events_time",
        "events_user",
        "events_application",
        "events_type",
        "events_status",
        "events_source",
        "events_instance",
        "events_execution",
        "raw_base",
    ):
        conn.execute(f"DROP INDEX IF EXISTS {index}")
    for statement in _split_sql(sqlite_layout.SCHEMA_V2):
        conn.execute(statement)
    count = conn.execute("SELECT count(*) FROM events_v1").fetchone()[0]
    if count == 0:
        conn.execute("DROP TABLE events_fts")
        conn.execute(sqlite_layout.FTS_V2)
    else:
        writer = sqlite_layout.Writer()
        batch = writer.begin(conn)
        cols = ", ".join(f'"{c}"' for c in _V1_COLUMNS)
        decoded: OrderedDict[int, bytes] = OrderedDict()
        cursor = conn.execute(f"SELECT id, {cols}, raw_id FROM events_v1 ORDER BY id")
        while rows := cursor.fetchmany(500):
            for row in rows:
                record = _v1_record(row[:-1])
                raw = _v1_raw(conn, row[-1], decoded) if row[-1] is not None else b""
                writer.write(conn, batch, PreparedEvent(record, raw), row_id=row[0], index_text=False)
            writer.flush(conn, batch)
        log.info("sqlite: converted %d events to schema version 2", count)
    conn.execute("DROP TABLE events_v1")
    conn.execute("DROP TABLE raw_v1")
    conn.execute("DROP TABLE event_tags")


def _v1_raw(conn: sqlite3.Connection, blob_id: int, decoded: OrderedDict[int, bytes]) -> bytes:
    """The bytes of a version 1 raw blob (delta chains), remembering recent ones for the next events."""
    chain: list[tuple[int, bytes, int]] = []
    next_id: int | None = blob_id
    base: bytes | None = None
    while next_id is not None:
        if next_id in decoded:
            base = decoded[next_id]
            break
        row = conn.execute(
            "SELECT codec, data, size, base_id FROM raw_v1 WHERE id = ?", (next_id,)
        ).fetchone()
        if row is None:
            raise StoreUnavailable(f"raw blob {next_id} is missing from the version 1 file")
        codec, data, size, base_id = row
        chain.append((codec, data, size))
        next_id = base_id if codec == blobs.CODEC_ZSTD_DELTA else None
    out = base
    for codec, data, size in reversed(chain):
        out = blobs.decompress(codec, data, size, out)
    assert out is not None
    decoded[blob_id] = out
    while len(decoded) > 256:
        decoded.popitem(last=False)
    return out


MIGRATIONS.append((2, _migrate_v2))
