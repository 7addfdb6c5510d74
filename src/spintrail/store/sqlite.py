"""The SQLite store: one file, WAL, one writer thread that group-commits, readers on their own connections.

A request's events are queued to the writer thread, which drains everything waiting (up to
``batch_max`` events), writes it in one transaction and commits with ``synchronous=FULL`` before any of the
waiting requests is answered. Many concurrent requests therefore share one fsync.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import queue
import sqlite3
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spintrail import fulltext, private
from spintrail.query import COLUMN_FILTERS, LIST_FILTERS, Filters, type_pattern
from spintrail.record import LIST_FIELDS, TEXT_FIELDS, AuditRecord
from spintrail.store import blobs
from spintrail.store.base import (
    DAY,
    DAY_NUMBER_SQL,
    KEYS_MIGRATIONS_SQL,
    AppendResult,
    CheckReport,
    IndexChecker,
    IndexState,
    Page,
    PreparedEvent,
    Store,
    StoreFull,
    StoreMissing,
    StoreNeedsMigration,
    StoreOverloaded,
    StoreStats,
    StoreUnavailable,
    Written,
    check_fields,
    day_name,
    decode_cursor,
    encode_cursor,
    expected_tags,
    natural_key_digest,
)

log = logging.getLogger(__name__)

_KEYS_MIGRATIONS = [(v, q.format(blob="BLOB")) for v, q in KEYS_MIGRATIONS_SQL]

_RECORD_COLUMNS: tuple[str, ...] = ("event_id", "received_at", "time", *TEXT_FIELDS, *LIST_FIELDS)
_SELECT = "SELECT id, " + ", ".join(f'"{c}"' for c in _RECORD_COLUMNS) + " FROM event_rows"

#: Columns of ``event_rows`` that hold the id of a string in ``strings`` (list fields: their JSON text).
_INTERNED: tuple[str, ...] = (*TEXT_FIELDS, *LIST_FIELDS)
#: Indexes that hold every row (the others leave out rows whose column is NULL).
_FULL_INDEXES = frozenset({"events_event_id", "events_time"})
#: Characters (bytes, for a UUID) at the end of an event id that its index holds.
_EVENT_ID_KEY = 8
#: Indexes on ``event_rows`` (name, columns). Every index entry ends with the row id, so ``(column, time)``
#: serves ``ORDER BY time, id`` as ``(column, time, id)`` did, 3 bytes an entry smaller.
_INDEXES: tuple[tuple[str, str], ...] = (
    # Event ids are unique (the writer looks an id up before it inserts, in the write transaction); the
    # index holds only their last 8 characters or bytes (random in a UUID).
    ("events_event_id", f"substr(event_id, -{_EVENT_ID_KEY})"),
    ("events_time", "time"),
    ("events_user", '"user", time'),
    ("events_application", "application, time"),
    ("events_type", "type, time"),
    ("events_status", "status, time"),
    ("events_source", "source, time"),
    ("events_instance", "spinnaker_instance, time"),
    ("events_execution", "execution_id, time"),
    ("events_stage_type", "stage_type, time"),
)


#: ``event_rows.event_id`` as text: a canonical UUID is stored as its 16 bytes (20 fewer than its text).
_EVENT_ID_TEXT = (
    "CASE WHEN typeof(r.event_id) = 'blob' THEN lower(substr(hex(r.event_id), 1, 8) || '-' ||"
    " substr(hex(r.event_id), 9, 4) || '-' || substr(hex(r.event_id), 13, 4) || '-' ||"
    " substr(hex(r.event_id), 17, 4) || '-' || substr(hex(r.event_id), 21)) ELSE r.event_id END"
)


def stored_event_id(event_id: str) -> str | bytes:
    """How ``event_rows`` stores an event id: a canonical (lowercase) UUID as its 16 bytes, others as text."""
    if len(event_id) == 36:
        try:
            parsed = uuid.UUID(event_id)
        except ValueError:
            return event_id
        if str(parsed) == event_id:
            return parsed.bytes
    return event_id


def event_id_text(stored: str | bytes) -> str:
    return str(uuid.UUID(bytes=bytes(stored))) if isinstance(stored, bytes) else stored


def _interned_layout() -> str:
    """Schema version 3: every text and list value stored once, in ``strings``; rows hold its id.

    Most values repeat (applications, users, types, stage names, descriptions, execution ids, the JSON of
    an event's account list), so a row shrinks to small integers and each filter index to (integer, time,
    id). ``events`` becomes a view with the text values (writable through triggers), for everything that
    reads records by SQL (retention, checks, copies, the tamper-evident log); the store itself reads
    ``event_rows`` and turns ids into text with a cache. Older files are converted in place, every id and
    value kept.
    """
    cols = ", ".join(f'"{c}"' for c in _INTERNED)
    union = " UNION ".join(f'SELECT "{c}" AS v FROM events' for c in _INTERNED)
    lookups = ", ".join(f'(SELECT id FROM strings WHERE value = e."{c}")' for c in _INTERNED)
    view = ", ".join(f'(SELECT value FROM strings WHERE id = r."{c}") AS "{c}"' for c in _INTERNED)
    # A filter on a column never matches NULL: rows without the value are left out of its index.
    indexes = ";\n".join(
        f"CREATE INDEX {name} ON event_rows({on})"
        + (f' WHERE "{on.split(",")[0].strip(chr(34))}" IS NOT NULL' if name not in _FULL_INDEXES else "")
        for name, on in _INDEXES
    )
    new_ids = ", ".join(f'(SELECT id FROM strings WHERE value = NEW."{c}")' for c in _INTERNED)
    sets = ", ".join(f'"{c}" = (SELECT id FROM strings WHERE value = NEW."{c}")' for c in _INTERNED)
    return f"""
        CREATE TABLE strings (id INTEGER PRIMARY KEY, value TEXT NOT NULL UNIQUE);
        INSERT INTO strings(value) SELECT v FROM ({union}) WHERE v IS NOT NULL ORDER BY v;
        CREATE TABLE event_rows (
            id INTEGER PRIMARY KEY,
            event_id TEXT NOT NULL,
            received_at INTEGER NOT NULL,
            time INTEGER NOT NULL,
            {", ".join(f'"{c}" INTEGER' for c in _INTERNED)},
            raw_id INTEGER
        );
        INSERT INTO event_rows(id, event_id, received_at, time, {cols}, raw_id)
            SELECT e.id, spintrail_event_id(e.event_id), e.received_at, e.time, {lookups}, e.raw_id
            FROM events e ORDER BY e.id;
        DROP TABLE events;
        CREATE VIEW events AS SELECT r.id AS id, {_EVENT_ID_TEXT} AS event_id, r.received_at AS received_at,
            r.time AS time, {view}, r.raw_id AS raw_id FROM event_rows r;
        {indexes};
        CREATE TRIGGER events_insert INSTEAD OF INSERT ON events BEGIN
            {_intern_new()};
            INSERT INTO event_rows(id, event_id, received_at, time, {cols}, raw_id)
                VALUES (NEW.id, NEW.event_id, NEW.received_at, NEW.time, {new_ids}, NEW.raw_id);
        END;
        CREATE TRIGGER events_update INSTEAD OF UPDATE ON events BEGIN
            {_intern_new()};
            UPDATE event_rows SET id = NEW.id,
                event_id = CASE WHEN NEW.event_id IS OLD.event_id THEN event_id ELSE NEW.event_id END,
                received_at = NEW.received_at,
                time = NEW.time, {sets}, raw_id = NEW.raw_id WHERE id = OLD.id;
        END;
        CREATE TRIGGER events_delete INSTEAD OF DELETE ON events BEGIN
            DELETE FROM event_rows WHERE id = OLD.id;
        END
    """


def _intern_new() -> str:
    news = " UNION ALL ".join(f'SELECT NEW."{c}" AS v' for c in _INTERNED)
    return f"INSERT OR IGNORE INTO strings(value) SELECT v FROM ({news}) WHERE v IS NOT NULL"


def _interned_tags() -> str:
    """Schema version 6: a tag is the id of its text ``kind:value`` in ``strings`` (a third of its bytes).

    ``event_tags`` stays as a view (writable through triggers) with kind and value as text.
    """
    tag = "(SELECT id FROM strings WHERE value = {k} || ':' || {v})"
    return f"""
        INSERT OR IGNORE INTO strings(value) SELECT DISTINCT kind || ':' || value FROM event_tags;
        CREATE TABLE tag_rows (
            tag INTEGER NOT NULL,
            time INTEGER NOT NULL,
            event_row INTEGER NOT NULL,
            PRIMARY KEY (tag, time, event_row)
        ) WITHOUT ROWID;
        INSERT OR IGNORE INTO tag_rows(tag, time, event_row)
            SELECT {tag.format(k="t.kind", v="t.value")}, t.time, t.event_row FROM event_tags t;
        DROP TABLE event_tags;
        CREATE VIEW event_tags AS SELECT substr(s.value, 1, instr(s.value, ':') - 1) AS kind,
            substr(s.value, instr(s.value, ':') + 1) AS value, t.time AS time, t.event_row AS event_row
            FROM tag_rows t JOIN strings s ON s.id = t.tag;
        CREATE TRIGGER event_tags_insert INSTEAD OF INSERT ON event_tags BEGIN
            INSERT OR IGNORE INTO strings(value) VALUES (NEW.kind || ':' || NEW.value);
            INSERT OR IGNORE INTO tag_rows(tag, time, event_row)
                VALUES ({tag.format(k="NEW.kind", v="NEW.value")}, NEW.time, NEW.event_row);
        END;
        CREATE TRIGGER event_tags_update INSTEAD OF UPDATE ON event_tags BEGIN
            INSERT OR IGNORE INTO strings(value) VALUES (NEW.kind || ':' || NEW.value);
            UPDATE tag_rows SET tag = {tag.format(k="NEW.kind", v="NEW.value")}, time = NEW.time,
                event_row = NEW.event_row
            WHERE tag = {tag.format(k="OLD.kind", v="OLD.value")} AND time = OLD.time
                AND event_row = OLD.event_row;
        END;
        CREATE TRIGGER event_tags_delete INSTEAD OF DELETE ON event_tags BEGIN
            DELETE FROM tag_rows WHERE tag = {tag.format(k="OLD.kind", v="OLD.value")} AND time = OLD.time
                AND event_row = OLD.event_row;
        END
    """


#: Versioned schema migrations, applied in order on start and recorded in ``schema_migrations``.
MIGRATIONS: list[tuple[int, str]] = [
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
    # Raw bytes are written as blocks of long-lived zstd streams (store/blobs.py): a blob's predecessor in
    # its frame (base_id) belongs to another execution's event, so each blob names its own event, which
    # retention asks before it removes a blob. Rows written before have no event_row (delta chains stay
    # within one execution, where retention finds their event by execution id).
    (2, "ALTER TABLE raw ADD COLUMN event_row INTEGER"),
    (3, _interned_layout()),
    # The tag index by event row doubled the tags (118 B per event): an event's tags are its list values,
    # so retention deletes them by their key and counts by list value go through the interned lists.
    (4, "DROP INDEX IF EXISTS event_tags_row"),
    # zstd dictionaries that stream frames start from (store/blobs.py), found by the id a frame names.
    (
        5,
        "CREATE TABLE raw_dicts (id INTEGER PRIMARY KEY, dict_id INTEGER NOT NULL UNIQUE,"
        " data BLOB NOT NULL)",
    ),
    (6, _interned_tags()),
    # The full-text entry of an event no longer holds its event id (unique to each event, it was a quarter
    # of the index); a search term that is an event id finds its event through the id index instead. Rows
    # from this id on are indexed so (retention must remove exactly the text that was indexed).
    (
        7,
        """
        CREATE TABLE store_meta (name TEXT PRIMARY KEY, value INTEGER);
        INSERT INTO store_meta(name, value)
            SELECT 'fts_event_id_cut_from', coalesce(max(id), 0) + 1 FROM event_rows
        """,
    ),
]

#: Event ids at least this long are left out of the full-text entry of their event (shorter ones might be
#: parts of other words).
FTS_EVENT_ID_CUT = 16


def fts_text(text: str, event_id: str) -> str:
    """The full-text entry the SQLite store indexes for an event whose ingest text is ``text``."""
    if len(event_id) >= FTS_EVENT_ID_CUT and event_id in text:
        return text.replace(event_id, " ")
    return text


def fts_cut_from(conn: sqlite3.Connection) -> int:
    """The first row whose full-text entry was made by ``fts_text`` (the ones before hold their event id)."""
    try:
        row = conn.execute("SELECT value FROM store_meta WHERE name = 'fts_event_id_cut_from'").fetchone()
    except sqlite3.OperationalError:
        return 2**63 - 1
    return int(row[0]) if row else 2**63 - 1


#: Indexes for the web pages and reports (stage-type filters), kept as their own component so they
#: version independently of the events schema.
REPORT_MIGRATIONS: list[tuple[int, str]] = [
    # Since schema version 3 the index is on event_rows, made with the others (this is then a no-op).
    (1, "CREATE INDEX IF NOT EXISTS events_stage_type ON event_rows(stage_type, time)"),
    # The dashboard and reports look up the run events (pipeline/orchestration starting, complete,
    # failed) of hundreds of executions at once: about 2 of each execution's ~45 rows.
    (2, "CREATE INDEX IF NOT EXISTS events_execution_type ON event_rows(execution_id, type)"),
]

#: A raw blob and the blobs it needs (its stream frame or delta chain), newest first.
_CHAIN_SQL = f"""
    WITH RECURSIVE chain(id, n) AS (
        SELECT ?, 0
        UNION ALL
        SELECT raw.base_id, chain.n + 1 FROM raw JOIN chain ON raw.id = chain.id
        WHERE raw.codec IN ({", ".join(str(c) for c in blobs.CHAINED)}) AND raw.base_id IS NOT NULL
          AND chain.n < ?
    )
    SELECT raw.id, raw.codec, raw.data, raw.size, raw.base_id FROM chain JOIN raw ON raw.id = chain.id
"""
#: Found through the index of the id's last characters. (``+event_id``: without it SQLite substitutes the
#: id for the column in the indexed expression and no longer sees the index.)
_EVENT_ID_WHERE = f"substr(event_id, -{_EVENT_ID_KEY}) = ? AND +event_id = ?"
_BY_EVENT_ID = f"SELECT id FROM event_rows WHERE {_EVENT_ID_WHERE}"


def _event_id_args(event_id: str) -> tuple[str | bytes, str | bytes]:
    stored = stored_event_id(event_id)
    return stored[-_EVENT_ID_KEY:], stored


_INSERT = (
    "INSERT INTO event_rows(id, "
    + ", ".join(f'"{c}"' for c in _RECORD_COLUMNS)
    + ", raw_id) VALUES ("
    + ", ".join("?" for _ in range(len(_RECORD_COLUMNS) + 2))
    + ")"
)
_DAY_MS = 86_400_000
#: Periods up to this many days are counted day by day (``count_by(..., ["day"])``); longer ones grouped.
_MAX_DAYS_COUNTED = 1000
_TAG_KIND = {field_name: kind for kind, field_name in LIST_FILTERS.items()}


@dataclass(slots=True)
class _Job:
    items: Sequence[PreparedEvent]
    future: Future[list[AppendResult]] = field(default_factory=Future)


_STOP = object()


@dataclass
class _Purge:
    """A request to the writer: remove the strings no row or tag refers to any more (after retention)."""

    future: Future[int] = field(default_factory=Future)


#: Bytes the WAL is cut back to after a checkpoint (SQLite ``journal_size_limit``).
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024


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
        read_only: bool = False,
    ) -> None:
        super().__init__()
        self.path = str(path)
        self.read_only = read_only
        if read_only and (self.path == ":memory:" or not Path(self.path).is_file()):
            raise StoreMissing(f"there is no SQLite database at {self.path}")
        if self.path != ":memory:":
            parent = Path(self.path).parent
            if not parent.exists():
                raise StoreUnavailable(f"directory {parent} for the database does not exist: create it first")
            private.create_file(self.path)  # 0600; SQLite gives -wal and -shm the same mode
        self.batch_max = batch_max
        self.queue_max = queue_max
        self._queue: queue.Queue[Any] = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._closed = False
        self._streams = blobs.Streams()
        self._ids = _StringIds()  # writer: value -> id
        self._values = _StringValues()  # readers: id -> value
        self._dicts: dict[int, bytes] = {}  # zstd dictionaries by id, for readers
        self._trained: Any = None  # a dictionary trained in the background, not yet stored
        self._training: threading.Thread | None = None
        self._fts_cut_from = 2**63 - 1  # see fts_cut_from (read when the writer starts)
        self._next_id: int | None = None  # the next event row id within the writer's transaction
        self._new_raw_ids: set[int] = set()  # raw blobs written in the writer's transaction
        self.commit_observer: Any = None  # callable(seconds, events) set by the app for metrics
        self.disk_full = False  # the last commit failed for lack of disk space
        self._disk_full_logged = 0.0
        self._writer: threading.Thread | None = None
        conn = self._connect()
        try:
            if read_only:
                for component, migrations in (
                    ("events", MIGRATIONS),
                    ("events-reports", REPORT_MIGRATIONS),
                    ("events-keys", _KEYS_MIGRATIONS),
                ):
                    require_migrated(conn, self.path, component, migrations)
            else:
                self._migrate(conn)
        finally:
            conn.close()
        if not read_only:
            self._writer = threading.Thread(target=self._run, name="spintrail-sqlite-writer", daemon=True)
            self._writer.start()

    # -- connections -------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            if self.read_only:
                # mode=ro: SQLite never writes the file or its WAL (it only maps the -shm index).
                uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?mode=ro"
                conn = sqlite3.connect(
                    uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30
                )
                conn.execute("PRAGMA busy_timeout=30000")
                return conn
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
        # Schema version 3 stores canonical UUID event ids as bytes (see stored_event_id).
        conn.create_function("spintrail_event_id", 1, stored_event_id, deterministic=True)
        migrate(conn, "events", MIGRATIONS)
        migrate(conn, "events-reports", REPORT_MIGRATIONS)
        migrate(conn, "events-keys", _KEYS_MIGRATIONS)

    def migrate_component(self, component: str, migrations: Sequence[tuple[int, str]]) -> None:
        """Apply another component's schema migrations (forwarding outbox, integrity log) to this file;
        read-only, check that they were applied."""
        conn = self._connect()
        try:
            if self.read_only:
                require_migrated(conn, self.path, component, migrations)
            else:
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
            if self._writer is None:
                raise StoreUnavailable(f"{self.path} is open read-only")
            if self._pending and self._pending + len(items) > self.queue_max:
                raise StoreOverloaded(f"{self._pending} events are waiting to be committed")
            self._pending += len(items)
        self._queue.put(job)
        return job.future

    def _run(self) -> None:
        conn = self._writer_connection()
        self._load_dictionary(conn)
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            if isinstance(first, _Purge):
                self._purge_strings(conn, first)
                continue
            held: _Purge | None = None
            jobs: list[_Job] = [first]
            count = len(first.items)
            deadline = time.monotonic() + self.commit_wait
            while count < self.batch_max:
                nxt = self.next_job(self._queue, deadline)
                if nxt is None:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                if isinstance(nxt, _Purge):
                    held = nxt  # after this group's commit
                    break
                jobs.append(nxt)
                count += len(nxt.items)
            try:
                self._commit(conn, jobs)
            except Exception as exc:
                # The writer must outlive anything a commit can raise (a failed ROLLBACK, a broken
                # connection): fail what is still waiting, start again on a fresh connection.
                log.exception("sqlite store: writer error, reopening the connection: %s", exc)
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(_store_error(exc))
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
                self._streams.clear()
                self._ids.clear()
                conn = self._writer_connection()
                self._load_dictionary(conn)
            if held is not None:
                self._purge_strings(conn, held)
        conn.close()

    def purge_strings(self) -> int:
        """Remove the text values no event or tag refers to any more (retention calls this after it removed
        events, so that their users, descriptions and other values do not outlive them); returns how many.

        It runs in the writer, between group commits, so that no event being written can refer to a value
        as it is removed; the value with the highest id is always kept, so ids are never reused.
        """
        job = _Purge()
        with self._lock:
            if self._closed:
                raise StoreUnavailable("the store is shutting down")
            self._queue.put(job)  # under the lock: never behind the writer's stop
        return job.future.result()

    def _purge_strings(self, conn: sqlite3.Connection, job: _Purge) -> None:
        refs = " UNION ".join(f'SELECT "{c}" FROM event_rows WHERE "{c}" IS NOT NULL' for c in _INTERNED)
        try:
            conn.execute("BEGIN IMMEDIATE")
            removed = conn.execute(
                f"DELETE FROM strings WHERE id < (SELECT max(id) FROM strings) AND id NOT IN ({refs}"
                " UNION SELECT tag FROM tag_rows)"
            ).rowcount
            conn.execute("COMMIT")
        except Exception as exc:  # the writer goes on; retention reports the failure
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            job.future.set_exception(_store_error(exc) if isinstance(exc, sqlite3.Error) else exc)
            return
        finally:
            self._ids.clear()  # its ids may be gone: the writer looks values up again
        job.future.set_result(removed)

    def _writer_connection(self) -> sqlite3.Connection:
        while True:
            try:
                conn = self._connect()
                # After a checkpoint the WAL is cut back to this size, so one huge group commit does not
                # keep its disk space forever.
                conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
                return conn
            except (StoreUnavailable, sqlite3.Error) as exc:
                log.error("sqlite store: cannot open the writer connection, retrying: %s", exc)
                time.sleep(1)

    def _load_dictionary(self, conn: sqlite3.Connection) -> None:
        with contextlib.suppress(sqlite3.Error):
            row = conn.execute("SELECT data FROM raw_dicts ORDER BY id DESC LIMIT 1").fetchone()
            if row is not None:
                self._streams.use_dictionary(bytes(row[0]))

    def _train(self, samples: list[bytes]) -> None:
        """Train the frame-start dictionary off the writer thread (seconds of CPU, once)."""
        self._trained = blobs.train_dictionary(samples)

    def _store_dictionary(self, conn: sqlite3.Connection) -> None:
        """Store a dictionary trained in the background (committed before any frame uses it), then use it."""
        trained, self._trained = self._trained, None
        data = trained.as_bytes()
        try:
            conn.execute(
                "INSERT OR IGNORE INTO raw_dicts(dict_id, data) VALUES (?, ?)", (trained.dict_id(), data)
            )
            row = conn.execute(
                "SELECT data FROM raw_dicts WHERE dict_id = ?", (trained.dict_id(),)
            ).fetchone()
        except sqlite3.Error as exc:
            log.warning("sqlite store: cannot store the raw compression dictionary: %s", exc)
            return
        if row is not None and bytes(row[0]) == data:
            self._streams.use_dictionary(data)
            log.info("sqlite store: new raw stream frames start from dictionary %d", trained.dict_id())

    def _commit(self, conn: sqlite3.Connection, jobs: list[_Job]) -> None:
        if self._trained is not None and not conn.in_transaction:
            self._store_dictionary(conn)
        started = time.perf_counter()
        new_blobs: set[str] = set()
        count = sum(len(j.items) for j in jobs)
        self._ids.begin()
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._fts_cut_from = fts_cut_from(conn)  # retention may rebuild the index (and move it)
            seen: dict[str, int] = {}
            self._next_id = None
            self._new_raw_ids = set()
            written: list[Written] = []
            results = [
                [self._write(conn, item, seen, new_blobs, written) for item in job.items] for job in jobs
            ]
            if written:
                for hook in self.write_hooks:
                    hook(conn, written)
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._streams.discard(new_blobs)
            self._ids.rollback()
            if _is_disk_full(exc):
                # Not a bad request: every job of the group fails alike, no point retrying each alone.
                self._note_disk_full(exc, count)
                for job in jobs:
                    job.future.set_exception(_store_error(exc))
            elif len(jobs) > 1:
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
            if self.disk_full:
                self.disk_full = False
                log.warning("sqlite store: disk space is back, commits to %s resumed", self.path)
            if self.commit_observer is not None:
                self.commit_observer(elapsed, count)
            for job, res in zip(jobs, results, strict=True):
                job.future.set_result(res)
        finally:
            with self._lock:
                self._pending -= count

    def _note_disk_full(self, exc: Exception, count: int) -> None:
        now = time.monotonic()
        if not self.disk_full or now - self._disk_full_logged > 60:
            log.error(
                "sqlite store: DISK FULL: cannot commit %d events to %s (%s). Ingest answers 507 and "
                "acknowledges nothing until space is freed on that filesystem; commits resume by themselves.",
                count,
                self.path,
                exc,
            )
            self._disk_full_logged = now
        self.disk_full = True

    def _write(
        self,
        conn: sqlite3.Connection,
        item: PreparedEvent,
        seen: dict[str, int],
        new_blobs: set[str],
        written: list[Written],
    ) -> AppendResult:
        rec = item.record
        if rec.event_id in seen:
            return AppendResult(seen[rec.event_id], True)
        row = conn.execute(_BY_EVENT_ID, _event_id_args(rec.event_id)).fetchone()
        if row is not None:
            return AppendResult(row[0], True)
        natural = natural_key_digest(item)
        if natural is not None:
            row = conn.execute("SELECT event_row FROM event_keys WHERE key = ?", (natural,)).fetchone()
            if row is not None:
                return AppendResult(row[0], True)
        # The id SQLite would give (the highest + 1), known without asking once the transaction has one.
        row_id = item.id
        if row_id is None:
            if self._next_id is None:
                self._next_id = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM event_rows").fetchone()[0]
            row_id = self._next_id
        raw_id: int | None = None
        new_ids = self._new_raw_ids  # blobs written in this transaction (they exist)
        if item.keep_raw:
            key = blobs.stream_key(
                rec.pipeline_config_id, rec.application, rec.execution_id, rec.source, rec.type
            )
            if self._streams.sample(item.raw) and self._training is None:
                self._training = threading.Thread(
                    target=self._train,
                    args=(self._streams.take_samples(),),
                    name="spintrail-raw-dict",
                    daemon=True,
                )
                self._training.start()
            blob = self._streams.compress(
                key,
                item.raw,
                rec.time,
                lambda blob_id: (
                    blob_id in new_ids
                    or conn.execute("SELECT 1 FROM raw WHERE id = ?", (blob_id,)).fetchone() is not None
                ),
                rec.event_id.encode("utf-8", "surrogatepass"),
            )
            raw_id = conn.execute(
                "INSERT INTO raw(codec, base_id, size, sha256, data, event_row) VALUES (?, ?, ?, ?, ?, ?)",
                (blob.codec, blob.prev, blob.size, blob.sha256, blob.data, row_id),
            ).lastrowid
            assert raw_id is not None
            new_blobs.add(key)
            new_ids.add(raw_id)
            self._streams.stored(key, blob, raw_id)
        intern = self._ids.id_of
        values: list[Any] = [stored_event_id(rec.event_id), rec.received_at, rec.time]
        values += [intern(conn, getattr(rec, c)) for c in TEXT_FIELDS]
        values += [intern(conn, json.dumps(getattr(rec, c), ensure_ascii=False)) for c in LIST_FIELDS]
        row_id = conn.execute(_INSERT, (row_id, *values, raw_id)).lastrowid
        assert row_id is not None
        if self._next_id is not None:
            self._next_id = max(self._next_id, row_id + 1)
        tags = [
            (intern(conn, f"{kind}:{value}"), rec.time, row_id)
            for kind, field_name in LIST_FILTERS.items()
            for value in dict.fromkeys(getattr(rec, field_name))
        ]
        if tags:
            conn.executemany("INSERT OR IGNORE INTO tag_rows(tag, time, event_row) VALUES (?, ?, ?)", tags)
        if item.text:
            text = fts_text(item.text, rec.event_id) if row_id >= self._fts_cut_from else item.text
            conn.execute("INSERT INTO events_fts(rowid, text) VALUES (?, ?)", (row_id, text))
        if natural is not None:
            conn.execute("INSERT INTO event_keys(key, event_row) VALUES (?, ?)", (natural, row_id))
        if item.provenance is not None:
            conn.execute(
                "INSERT INTO event_provenance(event_row, provenance) VALUES (?, ?)", (row_id, item.provenance)
            )
        rec.id = row_id
        seen[rec.event_id] = row_id
        written.append(Written(item, row_id))
        return AppendResult(row_id, False)

    # -- reads -------------------------------------------------------------------------------------

    def search(self, filters: Filters, *, limit: int = 100, cursor: str | None = None) -> Page:
        at = decode_cursor(cursor) if cursor else None
        if at is not None and filters.until is not None and at[0] < filters.until:
            # The cursor is then the tighter upper bound and must be the only one: given both, SQLite may
            # bound its index range by ``until`` and step through every row between it and the cursor.
            filters = dataclasses.replace(filters, until=None)
        where, args = self._where(filters)
        if where is None:
            return Page([], None)
        if at is not None:
            where.append("(time, id) < (?, ?)")
            args += list(at)
        sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY time DESC, id DESC LIMIT ?"
        rows = self._read(sql, [*args, limit + 1])
        records = self._records(rows[:limit])
        nxt = None
        if len(rows) > limit and records:
            last = records[-1]
            assert last.id is not None
            nxt = encode_cursor(last.time, last.id)
        return Page(records, nxt)

    def _where(self, f: Filters) -> tuple[list[str] | None, list[Any]]:
        """Conditions on ``event_rows`` (text values are matched through ``strings``)."""
        where: list[str] = []
        args: list[Any] = []
        # Text values become their string ids first, so that one value is an equality on the column's
        # (column, time, id) index, walked in time order without sorting; a value never stored matches
        # nothing.
        for name, column in COLUMN_FILTERS.items():
            values = getattr(f, name)
            if values:
                marks = ", ".join("?" for _ in values)
                found = [r[0] for r in self._read(f"SELECT id FROM strings WHERE value IN ({marks})", values)]
                if not found:
                    return None, []
                where.append(_in(column, found))
                args += found
        if f.type:
            ors = []
            type_args: list[Any] = []
            for value in f.type:
                text, prefix = type_pattern(value)
                if prefix:
                    ors.append("(value >= ? AND value < ?)")
                    type_args += [text, text + "\U0010ffff"]
                else:
                    ors.append("value = ?")
                    type_args.append(text)
            found = [r[0] for r in self._read("SELECT id FROM strings WHERE " + " OR ".join(ors), type_args)]
            if not found:
                return None, []
            where.append(_in("type", found))
            args += found
        for name in LIST_FILTERS:
            values = getattr(f, name)
            if values:
                marks = ", ".join("?" for _ in values)
                tags = [f"{name}:{v}" for v in values]
                found = [r[0] for r in self._read(f"SELECT id FROM strings WHERE value IN ({marks})", tags)]
                if not found:
                    return None, []
                where.append(f"id IN (SELECT event_row FROM tag_rows WHERE {_in('tag', found)})")
                args += found
        if f.q is not None:
            terms = fulltext.fts5_terms(f.q)
            if not terms:
                return None, []
            # A term that is an event id also finds its event (ids are not in the full-text entries).
            plain: list[str] = []
            for term, phrase in terms:
                found = self._read(_BY_EVENT_ID, _event_id_args(term))
                if found:
                    where.append("(id = ? OR id IN (SELECT rowid FROM events_fts WHERE events_fts MATCH ?))")
                    args += [found[0][0], phrase]
                else:
                    plain.append(phrase)
            if plain:
                where.append("id IN (SELECT rowid FROM events_fts WHERE events_fts MATCH ?)")
                args.append(" AND ".join(plain))
        if f.since is not None:
            where.append("time >= ?")
            args.append(f.since)
        if f.until is not None:
            where.append("time < ?")
            args.append(f.until)
        return where, args

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._reader().execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite read failed: {exc}") from exc

    def _texts(self, ids: Iterable[Any]) -> Callable[[Any], Any]:
        """A function from string id to value (``None`` stays ``None``) for every id of ``ids``."""
        cache = self._values
        local: dict[Any, Any] = {None: None}
        missing = []
        for sid in set(ids):
            if sid in local:
                continue
            value = cache.get(sid)
            if value is None:
                missing.append(sid)
            else:
                local[sid] = value
        for k in range(0, len(missing), 500):
            part = missing[k : k + 500]
            marks = ", ".join("?" * len(part))
            found = self._read(f"SELECT id, value FROM strings WHERE id IN ({marks})", part)
            local.update(found)
            cache.add(found)
        return local.__getitem__

    def _records(self, rows: Sequence[Sequence[Any]]) -> list[AuditRecord]:
        n_text = 4 + len(TEXT_FIELDS)
        text = self._texts(v for row in rows for v in row[4:])
        out = []
        for row in rows:
            kwargs: dict[str, Any] = {
                "event_id": event_id_text(row[1]),
                "received_at": row[2],
                "time": row[3],
            }
            for name, value in zip(TEXT_FIELDS, row[4:n_text], strict=True):
                kwargs[name] = text(value)
            for name, value in zip(LIST_FIELDS, row[n_text:], strict=True):
                kwargs[name] = json.loads(text(value))
            out.append(AuditRecord(id=row[0], **kwargs))
        return out

    def get(self, id_: int) -> AuditRecord | None:
        rows = self._read(_SELECT + " WHERE id = ?", (id_,))
        return self._records(rows)[0] if rows else None

    def provenance(self, ids: Sequence[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            marks = ", ".join("?" * len(chunk))
            sql = f"SELECT event_row, provenance FROM event_provenance WHERE event_row IN ({marks})"
            out.update((int(r[0]), r[1]) for r in self._read(sql, chunk))
        return out

    def get_by_event_id(self, event_id: str) -> AuditRecord | None:
        rows = self._read(
            _SELECT + f" WHERE {_EVENT_ID_WHERE}",
            _event_id_args(event_id),
        )
        return self._records(rows)[0] if rows else None

    def index_checker(self) -> IndexChecker:
        return _SqliteIndexChecker(self._connect())

    def raw(self, id_: int) -> bytes | None:
        rows = self._read("SELECT raw_id, event_id FROM event_rows WHERE id = ?", (id_,))
        if not rows or rows[0][0] is None:
            return None
        return self._blob(rows[0][0], event_id_text(rows[0][1]))

    def _blob(self, blob_id: int, event_id: str) -> bytes:
        # The blob and every blob before it in its frame (or delta chain), in one statement.
        rows = self._read(_CHAIN_SQL, (blob_id, blobs.FRAME_MAX_EVENTS * 4))
        chain = {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}
        try:
            return blobs.BlobReader(chain.get, dictionary=self._dictionary).read(blob_id, event_id)
        except (LookupError, ValueError) as exc:
            raise StoreUnavailable(f"raw blob {blob_id} cannot be read: {exc}") from exc

    def _dictionary(self, dict_id: int) -> bytes | None:
        data = self._dicts.get(dict_id)
        if data is None:
            rows = self._read("SELECT data FROM raw_dicts WHERE dict_id = ?", (dict_id,))
            if not rows:
                return None
            data = self._dicts[dict_id] = bytes(rows[0][0])
        return data

    def execution(self, execution_id: str) -> list[AuditRecord]:
        found = self._read("SELECT id FROM strings WHERE value = ?", (execution_id,))
        if not found:
            return []
        rows = self._read(_SELECT + " WHERE execution_id = ? ORDER BY time, id", (found[0][0],))
        return self._records(rows)

    def select(self, filters: Filters, fields: Sequence[str]) -> Iterator[tuple[Any, ...]]:
        check_fields(fields)
        where, args = self._where(filters)
        if where is None:
            return
        # After the first page the position is the upper bound (see ``search``): without ``until``.
        later, later_args = self._where(dataclasses.replace(filters, until=None))
        assert later is not None
        exprs = [DAY_NUMBER_SQL.format(t="time") if f == DAY else f'"{f}"' for f in fields]
        texts = [i for i, f in enumerate(fields) if f in TEXT_FIELDS]
        lists = [i for i, f in enumerate(fields) if f in LIST_FIELDS]
        days = [i for i, f in enumerate(fields) if f == DAY]
        position: tuple[int, int] | None = None
        chunk = 2000
        parsed: dict[int, list[str]] = {}
        while True:
            conds = list(where if position is None else later)
            page_args = list(args if position is None else later_args)
            if position is not None:
                conds.append("(time, id) < (?, ?)")
                page_args += list(position)
            sql = f"SELECT time, id, {', '.join(exprs)} FROM event_rows"
            sql += (" WHERE " + " AND ".join(conds) if conds else "") + " ORDER BY time DESC, id DESC LIMIT ?"
            rows = self._read(sql, [*page_args, chunk])
            text = self._texts(row[2 + i] for row in rows for i in (*texts, *lists))
            for row in rows:
                values = list(row[2:])
                for i in texts:
                    values[i] = text(values[i])
                for i in lists:
                    sid = values[i]
                    if sid not in parsed:
                        parsed[sid] = json.loads(text(sid))
                    values[i] = list(parsed[sid])
                for i in days:
                    values[i] = day_name(values[i])
                yield tuple(values)
            if len(rows) < chunk:
                return
            position = (rows[-1][0], rows[-1][1])

    def count_by(
        self, filters: Filters, by: Sequence[str], *, limit: int | None = None
    ) -> list[tuple[tuple[Any, ...], int]]:
        check_fields(by)
        list_fields = [f for f in by if f in LIST_FIELDS]
        if len(list_fields) > 1:
            return super().count_by(filters, by, limit=limit)
        where, args = self._where(filters)
        if where is None:
            return []
        if list(by) == [DAY]:
            per_day = self._count_days(filters)
            if per_day is not None:
                return per_day[:limit] if limit is not None else per_day
        # Days are grouped by their number (no date formatting per row) and named once per group below.
        exprs = [DAY_NUMBER_SQL.format(t="time") if f == DAY else f'"{f}"' for f in by]
        days = [i for i, f in enumerate(by) if f == DAY]
        sql = f"SELECT {', '.join(exprs)}, count(*) AS n FROM event_rows"
        sql += (" WHERE " + " AND ".join(where) if where else "") + " GROUP BY "
        sql += ", ".join(str(i + 1) for i in range(len(by)))
        rows = self._read(sql, args)
        ids = [i for i, f in enumerate(by) if f in TEXT_FIELDS or f in LIST_FIELDS]
        text = self._texts(row[i] for row in rows for i in ids)
        counts: dict[tuple[Any, ...], int] = {}
        for row in rows:
            key = [text(v) if i in ids else v for i, v in enumerate(row[:-1])]
            for i in days:
                key[i] = day_name(key[i])
            if list_fields:
                # One count per distinct value of the event's list (as its tags are).
                at = by.index(list_fields[0])
                for value in dict.fromkeys(json.loads(key[at])):
                    key[at] = value
                    counts[tuple(key)] = counts.get(tuple(key), 0) + row[-1]
            else:
                counts[tuple(key)] = counts.get(tuple(key), 0) + row[-1]
        # As ORDER BY n DESC, <the values> would sort them (NULL first).
        out = sorted(counts.items(), key=lambda kn: (-kn[1], [(v is not None, v) for v in kn[0]]))
        return out[:limit] if limit is not None else out

    def _count_days(self, filters: Filters) -> list[tuple[tuple[Any, ...], int]] | None:
        """Matching records per UTC day, one index range count per day of the period (``None`` when the
        period is too long for that). Much cheaper than grouping every row: SQLite would sort them all."""
        # The period bounds each day's range below; left in the conditions, SQLite could take them for
        # the index range instead and read the whole period once per day.
        where, args = self._where(dataclasses.replace(filters, since=None, until=None))
        if where is None:
            return []
        lo, hi = filters.since, filters.until
        if lo is None or hi is None:
            bounds = "SELECT (SELECT min(time) FROM event_rows), (SELECT max(time) FROM event_rows)"
            first, last = self._read(bounds)[0]
            if first is None:
                return []
            lo = first if lo is None else lo
            hi = last + 1 if hi is None else hi
        if hi <= lo:
            return []
        first_day, last_day = lo // _DAY_MS, (hi - 1) // _DAY_MS
        if last_day - first_day > _MAX_DAYS_COUNTED or not -(2**62) < lo < hi < 2**62:
            return None
        conds = " AND ".join([*where, f"time >= max(d.n * {_DAY_MS}, {lo})"])
        conds += f" AND time < min((d.n + 1) * {_DAY_MS}, {hi})"
        sql = (
            f"WITH RECURSIVE d(n) AS (SELECT {first_day} UNION ALL SELECT n + 1 FROM d WHERE n < {last_day})"
            f" SELECT d.n, (SELECT count(*) FROM event_rows WHERE {conds}) AS c FROM d"
        )
        counts = [((day_name(n),), c) for n, c in self._read(sql, args) if c]
        counts.sort(key=lambda kv: (-kv[1], kv[0]))
        return counts

    def tail(self, after_id: int, filters: Filters | None = None, *, limit: int = 100) -> list[AuditRecord]:
        where, args = self._where(filters or Filters())
        if where is None:
            return []
        sql = _SELECT + " WHERE " + " AND ".join(["id > ?", *where]) + " ORDER BY id LIMIT ?"
        return self._records(self._read(sql, [after_id, *args, limit]))

    def last_id(self) -> int:
        return int(self._read("SELECT coalesce(max(id), 0) FROM event_rows")[0][0])

    def ping(self) -> None:
        self._read("SELECT 1")
        if self._writer is not None and not self._writer.is_alive():
            raise StoreUnavailable("the SQLite writer thread has stopped")

    def stats(self) -> StoreStats:
        n = self._read("SELECT count(*) FROM event_rows")[0][0]
        raw_bytes, stored = self._read(
            "SELECT coalesce(sum(size), 0), coalesce(sum(length(data)), 0) FROM raw"
        )[0]
        extra: dict[str, int] = {}
        if self.path != ":memory:":
            extra["file_bytes"] = sum(
                os.path.getsize(p) for p in (self.path, self.path + "-wal") if os.path.exists(p)
            )
        return StoreStats(events=n, raw_bytes=raw_bytes, stored_raw_bytes=stored, extra=extra)

    def check(
        self, *, quick: bool = False, progress: Callable[[int, int], None] | None = None
    ) -> CheckReport:
        from spintrail.store.sqlite_check import check_sqlite

        conn = self._connect()
        try:
            return check_sqlite(conn, quick=quick, progress=progress, hooks=self.check_hooks)
        except sqlite3.DatabaseError as exc:
            report = CheckReport(backend=self.backend)
            report.add("integrity_check", f"the database cannot be read: {exc}")
            return report
        finally:
            conn.close()

    def backup(self, target: str, *, progress: Callable[[int, int], None] | None = None) -> tuple[int, int]:
        """Copy the store to ``target`` with SQLite's online backup API; returns (pages, events) copied."""
        from spintrail.store.sqlite_backup import backup_sqlite

        conn = self._connect()
        try:
            return backup_sqlite(conn, target, progress=progress)
        finally:
            conn.close()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._writer is not None:
            self._queue.put(_STOP)
            self._writer.join()
        with self._lock:
            for conn in self._readers:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._readers.clear()
        self._local = threading.local()


class _StringIds:
    """The writer's map from text value to its id in ``strings``, adding values as they first appear.

    Ids added in a transaction that rolls back are forgotten (``begin`` / ``rollback``).
    """

    MAX = 100_000  # about 15 MiB of values at most

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._added: list[str] = []

    def id_of(self, conn: sqlite3.Connection, value: str | None) -> int | None:
        if value is None:
            return None
        sid = self._ids.get(value)
        if sid is not None:
            return sid
        row = conn.execute("SELECT id FROM strings WHERE value = ?", (value,)).fetchone()
        if row is not None:
            sid = int(row[0])
        else:
            sid = conn.execute("INSERT INTO strings(value) VALUES (?)", (value,)).lastrowid
            assert sid is not None
            self._added.append(value)
        if len(self._ids) >= self.MAX:
            self._ids.clear()
        self._ids[value] = sid
        return sid

    def begin(self) -> None:
        self._added.clear()

    def rollback(self) -> None:
        for value in self._added:
            self._ids.pop(value, None)
        self._added.clear()

    def clear(self) -> None:
        self._ids.clear()
        self._added.clear()


class _StringValues(dict[int, str]):
    """The readers' cache from string id to value (ids are never reused, values never change)."""

    MAX = 100_000  # about 15 MiB of values at most

    def add(self, pairs: Sequence[tuple[int, str]]) -> None:
        if len(self) + len(pairs) > self.MAX:
            self.clear()
        self.update(pairs)


def _in(column: str, ids: Sequence[int]) -> str:
    if len(ids) == 1:
        return f'"{column}" = ?'
    return f'"{column}" IN ({", ".join("?" for _ in ids)})'


def _is_disk_full(exc: Exception) -> bool:
    return isinstance(_store_error(exc), StoreFull)


def _store_error(exc: Exception) -> Exception:
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and ("disk is full" in text or "disk I/O" in text):
        return StoreFull(f"cannot commit: {text}")
    return StoreUnavailable(f"cannot commit: {text}")


def migrate(conn: sqlite3.Connection, component: str, migrations: Sequence[tuple[int, str]]) -> None:
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


def require_migrated(
    conn: sqlite3.Connection, path: str, component: str, migrations: Sequence[tuple[int, str]]
) -> None:
    """Raise ``StoreNeedsMigration`` unless every migration of ``component`` was applied to the file."""
    try:
        done = {
            row[0]
            for row in conn.execute("SELECT version FROM schema_migrations WHERE component = ?", (component,))
        }
    except sqlite3.OperationalError:  # no schema_migrations table: not a spintrail store (yet)
        done = set()
    except sqlite3.DatabaseError as exc:
        raise StoreUnavailable(f"cannot read SQLite database {path}: {exc}") from exc
    missing = [v for v, _ in migrations if v not in done]
    if missing:
        raise StoreNeedsMigration(
            f"{path} needs a schema upgrade ({component} version {missing[0]}"
            f"{'+' if len(missing) > 1 else ''}) that a read-only command does not make: open it once "
            "with `spintrail serve` (on a copy, to keep the original as it is), then run this again"
        )


class _SqliteIndexChecker(IndexChecker):
    """Tags are looked up exactly (tag, time, row); the full-text index is contentless, so the rows it holds
    are read once into a temporary table (the database file is not written)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS verify_fts_docs (doc INTEGER PRIMARY KEY)")
        conn.execute(
            "CREATE VIRTUAL TABLE IF NOT EXISTS temp.verify_fts_vocab"
            " USING fts5vocab(main, events_fts, instance)"
        )
        conn.execute("DELETE FROM temp.verify_fts_docs")
        conn.execute("INSERT OR IGNORE INTO temp.verify_fts_docs SELECT doc FROM temp.verify_fts_vocab")

    def state(self, record: AuditRecord) -> IndexState:
        out = IndexState()
        for tag in expected_tags(record):
            found = self.conn.execute(
                "SELECT 1 FROM tag_rows WHERE tag = (SELECT id FROM strings WHERE value = ?) AND time = ?"
                " AND event_row = ?",
                (tag, record.time, record.id),
            ).fetchone()
            if found is None:
                out.missing_tags.append(tag)
        out.has_text = (
            self.conn.execute("SELECT 1 FROM temp.verify_fts_docs WHERE doc = ?", (record.id,)).fetchone()
            is not None
        )
        return out

    def close(self) -> None:
        self.conn.close()


def _split_sql(script: str) -> list[str]:
    """The statements of a script (a trigger's body keeps its inner semicolons)."""
    out: list[str] = []
    buf = ""
    for part in script.split(";"):
        buf += part + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \n;"):
                out.append(buf.strip().rstrip(";"))
            buf = ""
    if buf.strip(" \n;"):
        out.append(buf.strip().rstrip(";"))
    return out
