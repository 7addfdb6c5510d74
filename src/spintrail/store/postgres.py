"""The PostgreSQL store: several stateless spintrail replicas on one shared database.

Same contract as the SQLite store (``store/base.py``). Each process has one writer thread that drains its
queue into one transaction (group commit) and answers the waiting requests only after COMMIT returned with
``synchronous_commit=on``; reads use a connection pool. Idempotency across replicas: every event id is
claimed in the non-partitioned ``event_ids`` table with ``INSERT ... ON CONFLICT DO NOTHING`` inside the
writer's transaction, so two replicas receiving the same event at the same moment store it once (the loser
waits for the winner's commit and then sees a duplicate; nothing else of the event is written).

Schema for years of data: ``events`` and ``raw`` are range-partitioned by month on the event ``time`` (epoch
ms), with a default partition each so no event is ever refused. Partitions for the current and the next two
months are created at start and every hour; the writer creates the partition of any other month (within
``PARTITION_PAST_YEARS`` back and a year ahead) when an event for it arrives, moving rows that the default
partition holds for that month. Raw delta chains (``store/blobs.py``) never cross a month, so retention can
drop a month of events together with its raw bytes.

Errors: a lost or refused connection makes the writer answer ``StoreUnavailable`` (ingest answers 503, echo
retries) and reconnect in the background; while it cannot connect, new writes fail at once with the reason.
A connection lost during a group commit is retried once on a new connection: if the first COMMIT did reach
the database, the retry finds every event already stored (duplicates) and loses nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import psycopg.conninfo
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from spintrail.query import COLUMN_FILTERS, LIST_FILTERS, Filters, type_pattern
from spintrail.record import LIST_FIELDS, TEXT_FIELDS, AuditRecord
from spintrail.store import blobs, pg_text
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

_KEYS_MIGRATIONS = [(v, q.format(blob="BYTEA")) for v, q in KEYS_MIGRATIONS_SQL]

_RECORD_COLUMNS: tuple[str, ...] = ("event_id", "received_at", "time", *TEXT_FIELDS, *LIST_FIELDS)
_SELECT_COLUMNS = "id, " + ", ".join(f'"{c}"' for c in _RECORD_COLUMNS)
_SELECT = f"SELECT {_SELECT_COLUMNS} FROM events"
_TEXT_COLUMNS = frozenset({"event_id", *TEXT_FIELDS})
_INSERT_COLUMNS = ("id", *_RECORD_COLUMNS, "tags", "raw_id", "tsv")
#: Rows a server-side cursor hands over per round trip (exports, ``select``).
FETCH_ROWS = 2000
_DAY_MS = 86_400_000
#: Periods up to this many days are counted day by day (``count_by(..., ["day"])``); longer ones grouped.
_MAX_DAYS_COUNTED = 1000

#: Months further back than this get no partition of their own (their events go to the default partition).
PARTITION_PAST_YEARS = 15
#: Months created ahead at start and every hour.
PARTITIONS_AHEAD = 2
_INT64 = (-(2**63), 2**63 - 1)
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")
#: Failures worth one more try of the whole group (a deadlock, a serialization failure, a lock timeout).
_RETRYABLE = (pg_errors.TransactionRollback, pg_errors.DeadlockDetected, pg_errors.LockNotAvailable)

#: Versioned schema migrations of the ``events`` component, applied in order and recorded in
#: ``schema_migrations`` (shared with the other components' migrations).
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE SEQUENCE events_id_seq;
        CREATE SEQUENCE raw_id_seq;
        CREATE TABLE event_ids (
            event_id text COLLATE "C" PRIMARY KEY,
            id bigint NOT NULL UNIQUE,
            time bigint NOT NULL
        );
        CREATE TABLE raw (
            id bigint NOT NULL,
            time bigint NOT NULL,
            codec smallint NOT NULL,
            base_id bigint,
            size bigint NOT NULL,
            sha256 bytea NOT NULL,
            data bytea NOT NULL,
            PRIMARY KEY (id, time)
        ) PARTITION BY RANGE (time);
        ALTER TABLE raw ALTER COLUMN data SET STORAGE EXTERNAL;
        CREATE INDEX raw_base ON raw (base_id) WHERE base_id IS NOT NULL;
        CREATE TABLE raw_default PARTITION OF raw DEFAULT;
        CREATE TABLE events (
            id bigint NOT NULL,
            event_id text COLLATE "C" NOT NULL,
            received_at bigint NOT NULL,
            time bigint NOT NULL,
        """
        + "\n".join(f'            "{c}" text COLLATE "C",' for c in TEXT_FIELDS)
        + "\n"
        + "\n".join(f"            {c} text[] NOT NULL DEFAULT '{{}}'," for c in LIST_FIELDS)
        + """
            tags text[] NOT NULL DEFAULT '{}',
            raw_id bigint,
            tsv tsvector,
            PRIMARY KEY (time, id)
        ) PARTITION BY RANGE (time);
        CREATE TABLE events_default PARTITION OF events DEFAULT;
        CREATE INDEX events_user ON events ("user", time, id);
        CREATE INDEX events_application ON events (application, time, id);
        CREATE INDEX events_type ON events (type, time, id);
        CREATE INDEX events_status ON events (status, time, id);
        CREATE INDEX events_source ON events (source, time, id);
        CREATE INDEX events_instance ON events (spinnaker_instance, time, id);
        CREATE INDEX events_execution ON events (execution_id, time, id);
        CREATE INDEX events_tags ON events USING gin (tags);
        CREATE INDEX events_tsv ON events USING gin (tsv);
        """,
    ),
]


#: Indexes for the dashboard and reports (stage-type filters), their own component as on SQLite. Without
#: it a dashboard's "deploy stages started in the period" reads every stage-start event of the period.
REPORT_MIGRATIONS: list[tuple[int, str]] = [
    (1, "CREATE INDEX IF NOT EXISTS events_stage_type ON events (stage_type, time, id)"),
    # The dashboard and reports look up the run events (pipeline/orchestration starting, complete,
    # failed) of hundreds of executions at once: about 2 of each execution's ~45 rows.
    (2, "CREATE INDEX IF NOT EXISTS events_execution_type ON events (execution_id, type)"),
]


@dataclass(slots=True)
class _Job:
    items: Sequence[PreparedEvent]
    future: Future[list[AppendResult]] = field(default_factory=Future)


_STOP = object()


@dataclass(frozen=True, slots=True)
class Month:
    """One monthly partition: its name suffix (``YYYYMM``) and bounds in epoch ms, ``lo`` included."""

    key: str
    lo: int
    hi: int

    @property
    def events_table(self) -> str:
        return f"events_p{self.key}"

    @property
    def raw_table(self) -> str:
        return f"raw_p{self.key}"


def month_of(ms: int) -> Month | None:
    """The month holding the instant ``ms`` (UTC), or ``None`` for times outside the calendar."""
    try:
        dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return _month(dt.year, dt.month)


def _month(year: int, month: int) -> Month | None:
    if not 1 <= year <= 9998:
        return None
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return Month(f"{year:04d}{month:02d}", int(start.timestamp() * 1000), int(end.timestamp() * 1000))


def months_ahead(now_ms: int, ahead: int = PARTITIONS_AHEAD) -> list[Month]:
    """The current month and the ``ahead`` next ones."""
    dt = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
    out = []
    for k in range(ahead + 1):
        n = dt.month - 1 + k
        m = _month(dt.year + n // 12, n % 12 + 1)
        if m is not None:
            out.append(m)
    return out


def _in_window(month: Month, now_ms: int) -> bool:
    return now_ms - PARTITION_PAST_YEARS * 366 * 86_400_000 <= month.lo <= now_ms + 366 * 86_400_000


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://..."
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def clean_text(value: str | None) -> str | None:
    """Text PostgreSQL can hold: NUL and lone surrogates become U+FFFD (the raw bytes keep the original)."""
    if value is None or not _BAD_TEXT.search(value):
        return value
    return _BAD_TEXT.sub("\ufffd", value)


def _clamp(n: int) -> int:
    return max(_INT64[0], min(_INT64[1], n))


def migrate(conn: psycopg.Connection[Any], component: str, migrations: Sequence[tuple[int, str]]) -> None:
    """Apply a component's versioned migrations once each, recorded in ``schema_migrations``.

    Safe when several replicas start at once: the whole run holds a transaction-scoped advisory lock, and
    PostgreSQL's DDL is transactional, so a migration is applied completely or not at all.
    """
    with conn.transaction():
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext(coalesce(current_schema(), '') || ':spintrail:migrate'))"
        )
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (component text NOT NULL, version integer NOT NULL,"
            " applied_at bigint, PRIMARY KEY (component, version))"
        )
        done = {
            row[0]
            for row in conn.execute(
                "SELECT version FROM schema_migrations WHERE component = %s", (component,)
            ).fetchall()
        }
        for version, script in migrations:
            if version in done:
                continue
            conn.execute(script.encode())
            conn.execute(
                "INSERT INTO schema_migrations(component, version, applied_at) VALUES (%s, %s, %s)",
                (component, version, int(time.time() * 1000)),
            )
            log.info("postgresql: applied %s schema migration %d", component, version)


def require_migrated(
    conn: psycopg.Connection[Any], where: str, component: str, migrations: Sequence[tuple[int, str]]
) -> None:
    """Raise ``StoreNeedsMigration`` unless every migration of ``component`` was applied."""
    try:
        if conn.execute("SELECT to_regclass('schema_migrations')").fetchone()[0] is None:  # type: ignore[index]
            done: set[int] = set()
        else:
            done = {
                row[0]
                for row in conn.execute(
                    "SELECT version FROM schema_migrations WHERE component = %s", (component,)
                ).fetchall()
            }
    except psycopg.Error as exc:
        raise StoreUnavailable(f"cannot read {where}: {str(exc).strip()}") from exc
    missing = [v for v, _ in migrations if v not in done]
    if missing:
        raise StoreNeedsMigration(
            f"{where} needs a schema upgrade ({component} version {missing[0]}"
            f"{'+' if len(missing) > 1 else ''}) that a read-only command does not make: start "
            "`spintrail serve` on it once, then run this again"
        )


class PostgresStore(Store):
    """Events in a PostgreSQL database shared by any number of spintrail processes."""

    backend = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        batch_max: int = 2000,
        queue_max: int = 20000,
        pool_size: int = 10,
        connect_timeout: float = 5.0,
        read_only: bool = False,
    ) -> None:
        super().__init__()
        self.read_only = read_only
        self.url = url
        self.safe_url = redact_url(url)
        self.batch_max = batch_max
        self.queue_max = queue_max
        self.connect_timeout = connect_timeout
        self._queue: queue.Queue[Any] = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._closed = False
        self._down: str | None = None
        self._cache = blobs.DeltaCache()
        self._conn: psycopg.Connection[Any] | None = None
        self._months: set[str] = set()
        self._month_retry: dict[str, float] = {}
        self._ahead_at = 0.0
        self.commit_observer: Any = None  # callable(seconds, events) set by the app for metrics
        self._writer: threading.Thread | None = None
        conn = self._open_connection(autocommit=True, role="setup")
        try:
            if read_only:
                for component, migrations in (
                    ("events", MIGRATIONS),
                    ("events-reports", REPORT_MIGRATIONS),
                    ("events-keys", _KEYS_MIGRATIONS),
                ):
                    require_migrated(conn, self.safe_url, component, migrations)
            else:
                self._setup(conn)
        finally:
            conn.close()
        self._pool = ConnectionPool(
            conninfo=url,
            min_size=1,
            max_size=max(1, pool_size),
            kwargs={
                "autocommit": True,
                "application_name": "spintrail",
                "connect_timeout": max(1, round(connect_timeout)),
                **self._session_options(),
            },
            check=ConnectionPool.check_connection,
            timeout=connect_timeout,
            name="spintrail-read",
            open=True,
        )
        if not read_only:
            self._writer = threading.Thread(target=self._run, name="spintrail-pg-writer", daemon=True)
            self._writer.start()

    def _session_options(self) -> dict[str, str]:
        """Connection options: a read-only store's sessions run every transaction read-only."""
        if not self.read_only:
            return {}
        given = str(psycopg.conninfo.conninfo_to_dict(self.url).get("options") or "")
        return {"options": f"{given} -c default_transaction_read_only=on".strip()}

    def _setup(self, conn: psycopg.Connection[Any]) -> None:
        """Create or upgrade the tables and the partitions ahead (``conn`` is closed afterwards)."""
        try:
            migrate(conn, "events", MIGRATIONS)
            migrate(conn, "events-reports", REPORT_MIGRATIONS)
            migrate(conn, "events-keys", _KEYS_MIGRATIONS)
        except psycopg.Error as exc:
            raise StoreUnavailable(
                f"cannot create the spintrail tables in {self.safe_url}: {exc}. Check that the user may "
                "create tables in the schema the URL selects."
            ) from exc
        conn.autocommit = False
        try:
            self._ensure_ahead(conn)
        except psycopg.Error as exc:  # the writer tries again within the hour
            log.warning("postgresql: cannot create the partitions ahead now: %s", exc)

    # -- connections -------------------------------------------------------------------------------

    def _open_connection(self, *, autocommit: bool, role: str) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(
                self.url,
                autocommit=autocommit,
                connect_timeout=max(1, round(self.connect_timeout)),
                application_name=f"spintrail-{role}",
                **self._session_options(),
            )
        except psycopg.Error as exc:
            raise StoreUnavailable(
                f"cannot connect to PostgreSQL at {self.safe_url}: {str(exc).strip()}"
            ) from exc
        return conn

    def connect(self) -> psycopg.Connection[Any]:
        """A new connection (autocommit; use ``with conn.transaction():``) for a component's own work."""
        return self._open_connection(autocommit=True, role="component")

    def migrate_component(self, component: str, migrations: Sequence[tuple[int, str]]) -> None:
        """Apply another component's schema migrations (forwarding outbox, integrity log) to this database."""
        conn = self.connect()
        try:
            if self.read_only:
                require_migrated(conn, self.safe_url, component, migrations)
            else:
                migrate(conn, component, migrations)
        finally:
            conn.close()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            with self._pool.connection() as conn:
                yield conn
        except PoolTimeout:
            raise StoreUnavailable(f"PostgreSQL is not answering: {self._why_down()}") from None
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"PostgreSQL read failed: {str(exc).strip()}") from exc

    def _read(self, query: str, args: Sequence[Any] | dict[str, Any] | None = None) -> list[Any]:
        with self._reading() as conn:
            return conn.execute(query, args).fetchall()

    def _why_down(self) -> str:
        """The reason PostgreSQL cannot be reached, from a fresh connection attempt."""
        try:
            conn = psycopg.connect(self.url, connect_timeout=2, application_name="spintrail-ping")
        except psycopg.Error as exc:
            return f"cannot connect to {self.safe_url}: {str(exc).strip()}"
        conn.close()
        return f"no connection to {self.safe_url} became free in time (the pool is busy)"

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
                raise StoreUnavailable(f"{self.safe_url} is open read-only")
            if self._down is not None:
                raise StoreUnavailable(self._down)
            if self._pending and self._pending + len(items) > self.queue_max:
                raise StoreOverloaded(f"{self._pending} events are waiting to be committed")
            self._pending += len(items)
        self._queue.put(job)
        return job.future

    def _run(self) -> None:
        stop = False
        while not stop:
            try:
                first = self._queue.get(timeout=0.5 if self._down else 5.0)
            except queue.Empty:
                self._idle()
                continue
            if first is _STOP:
                break
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
                jobs.append(nxt)
                count += len(nxt.items)
            try:
                self._commit(jobs, attempt=0)
            except BaseException as exc:  # pragma: no cover - a bug; never leave a request waiting
                log.exception("postgresql writer: unexpected failure")
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(StoreUnavailable(f"cannot commit: {exc}"))
            finally:
                with self._lock:
                    self._pending -= count
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    def _idle(self) -> None:
        """Between batches: check the connection (reconnect when lost); keep partitions ahead."""
        try:
            conn = self._writer_conn()
        except StoreUnavailable:
            return
        try:
            conn.execute("SELECT 1")
            conn.rollback()
        except psycopg.Error as exc:
            log.warning("postgresql: writer connection lost (%s); reconnecting", str(exc).strip())
            self._drop_conn()
            with contextlib.suppress(StoreUnavailable):
                self._writer_conn()
            return
        if time.monotonic() - self._ahead_at > 3600:
            try:
                self._ensure_ahead(conn)
            except psycopg.Error as exc:
                log.warning("postgresql: cannot create the partitions ahead now: %s", str(exc).strip())
                self._ahead_at = time.monotonic()
                if conn.closed or conn.broken:
                    self._drop_conn()
                else:
                    with contextlib.suppress(psycopg.Error):
                        conn.rollback()

    def _writer_conn(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        self._drop_conn()
        try:
            conn = self._open_connection(autocommit=False, role="writer")
            conn.execute("SET synchronous_commit TO on")
            conn.commit()
        except (StoreUnavailable, psycopg.Error) as exc:
            reason = str(exc) if isinstance(exc, StoreUnavailable) else f"PostgreSQL: {exc}"
            if self._down is None:
                log.error("postgresql store unavailable: %s", reason)
            self._down = reason
            raise StoreUnavailable(reason) from exc
        if self._down is not None:
            log.warning("postgresql store reachable again")
        self._down = None
        self._conn = conn
        return conn

    def _drop_conn(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None

    def _commit(self, jobs: list[_Job], attempt: int) -> None:
        try:
            conn = self._writer_conn()
        except StoreUnavailable as exc:
            for job in jobs:
                job.future.set_exception(exc)
            return
        started = time.perf_counter()
        new_blobs: set[int] = set()
        try:
            self._prepare_partitions(conn, jobs)
            results, written = self._write_group(conn, jobs, new_blobs)
            if written:
                for hook in self.write_hooks:
                    hook(conn, written)
            conn.commit()
        except Exception as exc:
            self._cache.forget(new_blobs)
            broken = conn.closed or conn.broken
            if broken:
                self._drop_conn()
            else:
                with contextlib.suppress(psycopg.Error):
                    conn.rollback()
            retry_all = broken or isinstance(exc, _RETRYABLE)
            if retry_all and attempt == 0:
                log.warning("postgresql: group commit failed (%s); retrying once", str(exc).strip())
                self._commit(jobs, attempt=1)
            elif broken:
                err = StoreUnavailable(f"lost the connection to PostgreSQL: {str(exc).strip()}")
                for job in jobs:
                    job.future.set_exception(err)
            elif len(jobs) > 1:
                # One bad request must not fail the others that shared its commit: retry each alone.
                for job in jobs:
                    self._commit([job], attempt)
            else:
                log.error("postgresql store: commit failed: %s", exc)
                jobs[0].future.set_exception(_store_error(exc))
        else:
            for w in written:
                w.item.record.id = w.id
            if self.commit_observer is not None:
                self.commit_observer(time.perf_counter() - started, sum(len(j.items) for j in jobs))
            for job, res in zip(jobs, results, strict=True):
                job.future.set_result(res)

    def _write_group(
        self, conn: psycopg.Connection[Any], jobs: list[_Job], new_blobs: set[int]
    ) -> tuple[list[list[AppendResult]], list[Written]]:
        items = [item for job in jobs for item in job.items]
        eids = [clean_text(it.record.event_id) or "" for it in items]
        first: dict[str, int] = {}
        for k, e in enumerate(eids):
            first.setdefault(e, k)
        known: dict[str, int] = dict(
            conn.execute(
                "SELECT event_id, id FROM event_ids WHERE event_id = ANY(%s)", (list(first),)
            ).fetchall()
        )
        # A natural key already stored (the live copy of a backfilled event, or the other way round), or
        # repeated in this group, makes the event a duplicate of the first.
        digests = [natural_key_digest(it) for it in items]
        later_of: dict[str, str] = {}
        if any(d is not None for d in digests):
            by_key: dict[bytes, int] = dict(
                conn.execute(
                    "SELECT key, event_row FROM event_keys WHERE key = ANY(%s)",
                    ([d for d in digests if d is not None],),
                ).fetchall()
            )
            first_with: dict[bytes, str] = {}
            for k, d in enumerate(digests):
                e = eids[k]
                if d is None or e in known or first[e] != k:
                    continue
                if d in by_key:
                    known[e] = by_key[d]
                elif d in first_with:
                    later_of[e] = first_with[d]
                    known[e] = 0
                else:
                    first_with[d] = e
        candidates = [(e, k) for e, k in first.items() if e not in known]
        fresh: list[tuple[int, int, int]] = []  # (item index, event row id, raw id)
        if candidates:
            n = len(candidates)
            allocated = conn.execute(
                "SELECT nextval('events_id_seq'), nextval('raw_id_seq') FROM generate_series(1, %s)", (n,)
            ).fetchall()
            row_ids = sorted(r[0] for r in allocated)
            raw_ids = sorted(r[1] for r in allocated)
            preset = [items[k].id for _, k in candidates]
            chosen = [p if p is not None else r for p, r in zip(preset, row_ids, strict=True)]
            claimed = {
                r[0]
                for r in conn.execute(
                    # Claimed in event id order: replicas claiming overlapping sets never deadlock.
                    "INSERT INTO event_ids(event_id, id, time)"
                    " SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[]) AS u(e, i, t) ORDER BY e"
                    " ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
                    (
                        [e for e, _ in candidates],
                        chosen,
                        [_clamp(items[k].record.time) for _, k in candidates],
                    ),
                ).fetchall()
            }
            raced = [e for e, _ in candidates if e not in claimed]
            if raced:
                # Another replica committed these between our lookup and our claim: duplicates.
                known.update(
                    conn.execute(
                        "SELECT event_id, id FROM event_ids WHERE event_id = ANY(%s)", (raced,)
                    ).fetchall()
                )
            fresh = [
                (k, row_id, raw_id)
                for (e, k), row_id, raw_id in zip(candidates, chosen, raw_ids, strict=True)
                if e in claimed
            ]
            if any(p is not None for p in preset):
                conn.execute(
                    "SELECT setval('events_id_seq', greatest(%s, (SELECT last_value FROM events_id_seq)))",
                    (max(row_id for _, row_id, _ in fresh) if fresh else 1,),
                )
        new_ids: dict[str, int] = {eids[k]: row_id for k, row_id, _ in fresh}
        written: list[Written] = []
        if fresh:
            self._write_rows(conn, [(items[k], row_id, raw_id) for k, row_id, raw_id in fresh], new_blobs)
            written = [Written(items[k], row_id) for k, row_id, _ in fresh]
            keyed = [(digests[k], row_id) for k, row_id, _ in fresh if digests[k] is not None]
            if keyed:
                conn.execute(
                    "INSERT INTO event_keys(key, event_row) SELECT * FROM unnest(%s::bytea[], %s::bigint[])"
                    " ON CONFLICT DO NOTHING",
                    ([d for d, _ in keyed], [r for _, r in keyed]),
                )
            marked = [(row_id, items[k].provenance) for k, row_id, _ in fresh if items[k].provenance]
            if marked:
                conn.execute(
                    "INSERT INTO event_provenance(event_row, provenance)"
                    " SELECT * FROM unnest(%s::bigint[], %s::text[]) ON CONFLICT DO NOTHING",
                    ([r for r, _ in marked], [p for _, p in marked]),
                )
        for e, f in later_of.items():
            known[e] = new_ids.get(f, known.get(f, 0))
        results: list[list[AppendResult]] = []
        pos = 0
        for job in jobs:
            res = []
            for _ in job.items:
                e = eids[pos]
                if e in new_ids and first[e] == pos:
                    res.append(AppendResult(new_ids[e], False))
                else:
                    res.append(AppendResult(known.get(e, new_ids.get(e, 0)), True))
                pos += 1
            results.append(res)
        return results, written

    def _write_rows(
        self,
        conn: psycopg.Connection[Any],
        rows: list[tuple[PreparedEvent, int, int]],
        new_blobs: set[int],
    ) -> None:
        keys: list[str | None] = []
        bounds: dict[str, Month] = {}
        for item, _, _ in rows:
            rec = item.record
            key = blobs.delta_key(rec.execution_id, rec.type)
            month = month_of(rec.time)
            # A chain never crosses a month, so a month's raw partition can be dropped on its own.
            keys.append(f"{key}\x00{month.key if month else 'none'}" if key else None)
            if key and month:
                bounds[keys[-1] or ""] = month
        self._check_bases(conn, keys, bounds)
        raw_rows = []
        event_rows = []
        for (item, row_id, raw_id), key in zip(rows, keys, strict=True):
            rec = item.record
            t = _clamp(rec.time)
            if item.keep_raw:
                base = self._cache.base_for(key)
                blob = blobs.compress(item.raw, base[1] if base else None, base[0] if base else None)
                raw_rows.append((raw_id, t, blob.codec, blob.base_id, blob.size, blob.sha256, blob.data))
                new_blobs.add(raw_id)
                self._cache.remember(key, raw_id, item.raw, base[2] + 1 if base else 0)
            else:
                raw_id = None  # raw_events = drop: the record and its hash only
            tags = list(
                dict.fromkeys(
                    f"{kind}:{clean_text(value)}"
                    for kind, field_name in LIST_FILTERS.items()
                    for value in getattr(rec, field_name)
                )
            )
            event_rows.append(
                (
                    row_id,
                    clean_text(rec.event_id),
                    _clamp(rec.received_at),
                    t,
                    *(clean_text(getattr(rec, c)) for c in TEXT_FIELDS),
                    *([clean_text(v) for v in getattr(rec, c)] for c in LIST_FIELDS),
                    tags,
                    raw_id,
                    pg_text.tsvector(item.text) if item.text else None,
                )
            )
        with conn.cursor() as cur:
            with cur.copy("COPY raw (id, time, codec, base_id, size, sha256, data) FROM STDIN") as copy:
                for r in raw_rows:
                    copy.write_row(r)
            cols = ", ".join(f'"{c}"' for c in _INSERT_COLUMNS)
            with cur.copy(f"COPY events ({cols}) FROM STDIN") as copy:
                for r in event_rows:
                    copy.write_row(r)

    def _check_bases(
        self, conn: psycopg.Connection[Any], keys: list[str | None], bounds: dict[str, Month]
    ) -> None:
        """Lock the cached delta bases this batch will use; forget those retention has removed.

        ``FOR KEY SHARE`` keeps retention from deleting a base until this transaction ends; retention locks
        the blobs it deletes first and checks for referencing blobs afterwards, so either side sees the other.
        """
        wanted: dict[int, Month] = {}
        for key in dict.fromkeys(k for k in keys if k):
            base = self._cache.base_for(key)
            if base is not None and key in bounds:
                wanted[base[0]] = bounds[key]
            elif base is not None:
                self._cache.forget({base[0]})
        if not wanted:
            return
        ids = list(wanted)
        alive = {
            r[0]
            for r in conn.execute(
                "SELECT r.id FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[]) AS u(id, lo, hi)"
                " JOIN raw r ON r.id = u.id AND r.time >= u.lo AND r.time < u.hi ORDER BY r.id"
                " FOR KEY SHARE OF r",
                (ids, [wanted[i].lo for i in ids], [wanted[i].hi for i in ids]),
            ).fetchall()
        }
        gone = set(ids) - alive
        if gone:
            self._cache.forget(gone)

    # -- partitions --------------------------------------------------------------------------------

    def _load_months(self, conn: psycopg.Connection[Any]) -> None:
        rows = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'events'::regclass"
        ).fetchall()
        conn.commit()
        self._months = {r[0][len("events_p") :] for r in rows if r[0].startswith("events_p")}

    def _ensure_ahead(self, conn: psycopg.Connection[Any]) -> None:
        self._load_months(conn)
        for month in months_ahead(int(time.time() * 1000)):
            if month.key not in self._months:
                self._create_month(conn, month)
        self._ahead_at = time.monotonic()

    def _prepare_partitions(self, conn: psycopg.Connection[Any], jobs: list[_Job]) -> None:
        now = int(time.time() * 1000)
        missing: dict[str, Month] = {}
        seen: set[int] = set()
        for job in jobs:
            for item in job.items:
                bucket = item.record.time // 86_400_000
                if bucket in seen:
                    continue
                seen.add(bucket)
                month = month_of(item.record.time)
                if month is None or month.key in self._months or month.key in missing:
                    continue
                if _in_window(month, now) and self._month_retry.get(month.key, 0) <= time.monotonic():
                    missing[month.key] = month
        for month in missing.values():
            try:
                self._create_month(conn, month)
            except psycopg.Error as exc:
                if conn.closed or conn.broken:
                    raise
                with contextlib.suppress(psycopg.Error):
                    conn.rollback()
                log.warning(
                    "postgresql: cannot create partition %s now (%s); its events go to the default "
                    "partition until it exists",
                    month.events_table,
                    str(exc).strip(),
                )
                self._month_retry[month.key] = time.monotonic() + 600

    def _create_month(self, conn: psycopg.Connection[Any], month: Month) -> None:
        """Create the month's partitions of ``events`` and ``raw``, moving rows the default ones hold."""
        ev, rw = sql.Identifier(month.events_table), sql.Identifier(month.raw_table)
        bounds = sql.SQL("FOR VALUES FROM ({}) TO ({})").format(sql.Literal(month.lo), sql.Literal(month.hi))
        with conn.transaction():
            conn.execute("SET LOCAL lock_timeout = '2s'")
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(coalesce(current_schema(), '') || ':spintrail:parts'))"
            )
            exists = conn.execute("SELECT to_regclass(%s)", (month.events_table,)).fetchone()
            if exists is not None and exists[0] is not None:
                self._months.add(month.key)
                return
            stray = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM events_default WHERE time >= %s AND time < %s)"
                " OR EXISTS (SELECT 1 FROM raw_default WHERE time >= %s AND time < %s)",
                (month.lo, month.hi, month.lo, month.hi),
            ).fetchone()
            if stray is None or not stray[0]:
                conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF raw {}").format(rw, bounds))
                conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF events {}").format(ev, bounds))
            else:
                # Writers first lock the parent, then the partition: take the parents first too.
                conn.execute("LOCK TABLE events, raw IN SHARE ROW EXCLUSIVE MODE")
                for parent, table in (("raw", rw), ("events", ev)):
                    p = sql.Identifier(parent)
                    d = sql.Identifier(parent + "_default")
                    conn.execute(
                        sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING STORAGE)").format(
                            table, p
                        )
                    )
                    conn.execute(
                        sql.SQL(
                            "WITH moved AS (DELETE FROM {} WHERE time >= %s AND time < %s RETURNING *)"
                            " INSERT INTO {} SELECT * FROM moved"
                        ).format(d, table),
                        (month.lo, month.hi),
                    )
                    conn.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} {}").format(p, table, bounds))
            log.info("postgresql: created partition %s", month.events_table)
        self._months.add(month.key)

    # -- reads -------------------------------------------------------------------------------------

    def search(self, filters: Filters, *, limit: int = 100, cursor: str | None = None) -> Page:
        where, args = self._where(filters)
        if where is None:
            return Page([], None)
        if cursor:
            t, i = decode_cursor(cursor)
            where.append("(time, id) < (%s, %s)")
            args += [_clamp(t), _clamp(i)]
        query = _SELECT + (" WHERE " + " AND ".join(where) if where else "")
        query += " ORDER BY time DESC, id DESC LIMIT %s"
        rows = self._read(query, [*args, limit + 1])
        records = [_row_to_record(r) for r in rows[:limit]]
        nxt = None
        if len(rows) > limit and records:
            last = records[-1]
            assert last.id is not None
            nxt = encode_cursor(last.time, last.id)
        return Page(records, nxt)

    def _where(self, f: Filters) -> tuple[list[str] | None, list[Any]]:
        where: list[str] = []
        args: list[Any] = []
        for name, column in COLUMN_FILTERS.items():
            values = getattr(f, name)
            if len(values) == 1:
                # Plain equality lets the (column, time, id) index give the order: no sort of every match.
                where.append(f'"{column}" = %s')
                args.append(clean_text(values[0]))
            elif values:
                where.append(f'"{column}" = ANY(%s)')
                args.append([clean_text(v) for v in values])
        if f.type:
            ors = []
            for value in f.type:
                text, prefix = type_pattern(clean_text(value) or "")
                if prefix:
                    ors.append("(type >= %s AND type < %s)")
                    args += [text, text + "\U0010ffff"]
                else:
                    ors.append("type = %s")
                    args.append(text)
            where.append("(" + " OR ".join(ors) + ")")
        for name in LIST_FILTERS:
            values = getattr(f, name)
            if values:
                where.append("tags && %s::text[]")
                args.append([f"{name}:{clean_text(v)}" for v in values])
        if f.q is not None:
            match = pg_text.tsquery(f.q)
            if match is None:
                return None, []
            where.append("tsv @@ %s::tsquery")
            args.append(match)
        if f.since is not None:
            where.append("time >= %s")
            args.append(_clamp(f.since))
        if f.until is not None:
            where.append("time < %s")
            args.append(_clamp(f.until))
        return where, args

    def _by_key(self, column: str, value: Any) -> list[Any]:
        # event_ids gives (time, id): the lookup reaches one partition only.
        return self._read(
            f"SELECT {', '.join('e.' + c.strip() for c in _SELECT_COLUMNS.split(','))}, e.raw_id"
            f" FROM event_ids i JOIN events e ON e.time = i.time AND e.id = i.id WHERE i.{column} = %s",
            (value,),
        )

    def get(self, id_: int) -> AuditRecord | None:
        if not _INT64[0] <= id_ <= _INT64[1]:
            return None
        rows = self._by_key("id", id_)
        return _row_to_record(rows[0]) if rows else None

    def provenance(self, ids: Sequence[int]) -> dict[int, str]:
        rows = self._read(
            "SELECT event_row, provenance FROM event_provenance WHERE event_row = ANY(%s)", (list(ids),)
        )
        return {int(r[0]): r[1] for r in rows}

    def get_by_event_id(self, event_id: str) -> AuditRecord | None:
        rows = self._by_key("event_id", clean_text(event_id))
        return _row_to_record(rows[0]) if rows else None

    def index_checker(self) -> IndexChecker:
        return _PostgresIndexChecker(self)

    def raw(self, id_: int) -> bytes | None:
        if not _INT64[0] <= id_ <= _INT64[1]:
            return None
        rows = self._read(
            "SELECT e.raw_id, e.time FROM event_ids i JOIN events e ON e.time = i.time AND e.id = i.id"
            " WHERE i.id = %s",
            (id_,),
        )
        if not rows or rows[0][0] is None:
            return None
        return self._blob(rows[0][0], rows[0][1])

    def _blob(self, blob_id: int, event_time: int, conn: psycopg.Connection[Any] | None = None) -> bytes:
        """The bytes of one raw blob: its chain lies in the month of its event, read in one query."""
        month = month_of(event_time)
        lo, hi = (month.lo, month.hi) if month else (_INT64[0], _INT64[1])
        query = """
            WITH RECURSIVE chain(id, codec, data, size, base_id, depth) AS (
                SELECT id, codec, data, size, base_id, 0 FROM raw
                 WHERE id = %(id)s AND time >= %(lo)s AND time < %(hi)s
                UNION ALL
                SELECT r.id, r.codec, r.data, r.size, r.base_id, c.depth + 1 FROM chain c
                  JOIN raw r ON r.id = c.base_id AND r.time >= %(lo)s AND r.time < %(hi)s
                 WHERE c.codec = %(delta)s AND c.depth < %(longest)s
            )
            SELECT codec, data, size, base_id FROM chain ORDER BY depth DESC"""
        params = {
            "id": blob_id,
            "lo": lo,
            "hi": hi,
            "delta": blobs.CODEC_ZSTD_DELTA,
            "longest": 2 * blobs.MAX_CHAIN + 2,
        }
        rows = conn.execute(query, params).fetchall() if conn is not None else self._read(query, params)
        if not rows or (rows[0][0] == blobs.CODEC_ZSTD_DELTA):
            raise StoreUnavailable(f"raw blob {blob_id} (or a base of it) is missing")
        out: bytes | None = None
        for codec, data, size, _ in rows:
            out = blobs.decompress(codec, bytes(data), size, out)
        assert out is not None
        return out

    def execution(self, execution_id: str) -> list[AuditRecord]:
        rows = self._read(_SELECT + " WHERE execution_id = %s ORDER BY time, id", (clean_text(execution_id),))
        return [_row_to_record(r) for r in rows]

    # -- aggregates and scans (the contract's defaults would read whole records page by page) ------------

    @contextlib.contextmanager
    def _streaming(self, query: str, args: Sequence[Any]) -> Iterator[psycopg.Cursor[Any]]:
        """A server-side cursor over ``query``: rows come ``FETCH_ROWS`` at a time, however many match.

        It holds one pooled connection and one read transaction (a consistent snapshot) until the caller
        stops iterating; PostgreSQL readers never block writers.
        """
        with self._reading() as conn:
            try:
                with conn.transaction(), conn.cursor(name="spintrail_scan") as cur:
                    cur.itersize = FETCH_ROWS
                    cur.execute(query, args)
                    yield cur
            except psycopg.OperationalError as exc:
                raise StoreUnavailable(f"PostgreSQL read failed: {str(exc).strip()}") from exc

    def iter_search(self, filters: Filters, *, page_size: int = 1000) -> Iterator[AuditRecord]:
        """Every matching record, newest first, streamed from one server-side cursor (bounded memory)."""
        where, args = self._where(filters)
        if where is None:
            return
        query = _SELECT + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY time DESC, id DESC"
        with self._streaming(query, args) as cur:
            cur.itersize = max(1, page_size)
            for row in cur:
                yield _row_to_record(row)

    def select(self, filters: Filters, fields: Sequence[str]) -> Iterator[tuple[Any, ...]]:
        """Keyset pages of ``FETCH_ROWS``: one round trip answers the usual few hundred rows of a report
        (a server-side cursor would take five), and memory stays bounded however many match."""
        check_fields(fields)
        where, args = self._where(filters)
        if where is None:
            return
        exprs = [DAY_NUMBER_SQL.format(t="time") if f == DAY else f'"{f}"' for f in fields]
        days = [i for i, f in enumerate(fields) if f == DAY]
        lists = [i for i, f in enumerate(fields) if f in LIST_FIELDS]
        position: tuple[int, int] | None = None
        while True:
            conds, page_args = list(where), list(args)
            if position is not None:
                conds.append("(time, id) < (%s, %s)")
                page_args += list(position)
            query = f"SELECT time, id, {', '.join(exprs)} FROM events"
            query += " WHERE " + " AND ".join(conds) if conds else ""
            rows = self._read(query + " ORDER BY time DESC, id DESC LIMIT %s", [*page_args, FETCH_ROWS])
            for row in rows:
                values = list(row[2:])
                for i in days:
                    values[i] = day_name(values[i])
                for i in lists:
                    values[i] = list(values[i] or [])
                yield tuple(values)
            if len(rows) < FETCH_ROWS:
                return
            position = (rows[-1][0], rows[-1][1])

    def count_by(
        self, filters: Filters, by: Sequence[str], *, limit: int | None = None
    ) -> list[tuple[tuple[Any, ...], int]]:
        check_fields(by)
        if list(by) == [DAY]:
            per_day = self._count_days(filters)
            if per_day is not None:
                return per_day[:limit] if limit is not None else per_day
        where, args = self._where(filters)
        if where is None:
            return []
        exprs: list[str] = []
        order: list[str] = []
        joins: list[str] = []
        for k, f in enumerate(by, 1):
            if f == DAY:
                exprs.append(DAY_NUMBER_SQL.format(t="e.time"))
                order.append(f"{k} NULLS FIRST")
            elif f in LIST_FIELDS:
                # Each distinct value of the list once per record, as the contract says.
                joins.append(f' CROSS JOIN LATERAL (SELECT DISTINCT v FROM unnest(e."{f}") AS u(v)) AS l{k}')
                exprs.append(f"l{k}.v")
                order.append(f'l{k}.v COLLATE "C" NULLS FIRST')
            else:
                exprs.append(f'e."{f}"')
                text = f in _TEXT_COLUMNS
                order.append(f'e."{f}" COLLATE "C" NULLS FIRST' if text else f"{k} NULLS FIRST")
        query = f"SELECT {', '.join(exprs)}, count(*) AS n FROM events AS e" + "".join(joins)
        query += (" WHERE " + " AND ".join(where) if where else "")
        query += f" GROUP BY {', '.join(str(k) for k in range(1, len(by) + 1))}"
        query += f" ORDER BY n DESC, {', '.join(order)}"
        if limit is not None:
            query += " LIMIT %s"
            args = [*args, limit]
        days = [i for i, f in enumerate(by) if f == DAY]
        out: list[tuple[tuple[Any, ...], int]] = []
        for row in self._read(query, args):
            key = list(row[:-1])
            for i in days:
                key[i] = day_name(key[i])
            out.append((tuple(key), int(row[-1])))
        return out

    def _count_days(self, filters: Filters) -> list[tuple[tuple[Any, ...], int]] | None:
        """Matching records per UTC day as one index range count per day of the period, when the filters
        are plain column equalities (an index of (column, time, id) counts each day without reading rows);
        ``None`` otherwise, or when the period is too long for that."""
        rest = dataclasses.replace(filters, since=None, until=None)
        if (
            rest.q is not None
            or rest.type
            or any(getattr(rest, n) for n in LIST_FILTERS)
            or any(len(getattr(rest, n)) > 1 for n in COLUMN_FILTERS)
        ):
            return None
        where, args = self._where(rest)
        if where is None:
            return []
        lo, hi = filters.since, filters.until
        if lo is None or hi is None:
            first, last = self._read("SELECT min(time), max(time) FROM events")[0]
            if first is None:
                return []
            lo = first if lo is None else lo
            hi = last + 1 if hi is None else hi
        lo, hi = _clamp(lo), _clamp(hi)
        if hi <= lo:
            return []
        first_day, last_day = lo // _DAY_MS, (hi - 1) // _DAY_MS
        if last_day - first_day > _MAX_DAYS_COUNTED or not -(2**62) < lo < hi < 2**62:
            return None
        conds = " AND ".join(
            [
                *where,
                f"time >= greatest(d * {_DAY_MS}, {lo}::bigint)",
                f"time < least((d + 1) * {_DAY_MS}, {hi}::bigint)",
            ]
        )
        query = (
            f"SELECT d, (SELECT count(*) FROM events WHERE {conds})"
            f" FROM generate_series({first_day}::bigint, {last_day}::bigint) AS d"
        )
        counts = [((day_name(d),), int(c)) for d, c in self._read(query, args) if c]
        counts.sort(key=lambda kv: (-kv[1], kv[0]))
        return counts

    def tail(self, after_id: int, filters: Filters | None = None, *, limit: int = 100) -> list[AuditRecord]:
        """Records stored after ``after_id``, oldest first: ``event_ids`` walks the ids in order and gives
        each one's partition key, so only the new rows are read."""
        where, args = self._where(filters or Filters())
        if where is None:
            return []
        # The filters name the columns unqualified: give them the events' columns only.
        joined = (
            "SELECT e.* FROM event_ids AS i JOIN events AS e ON e.time = i.time AND e.id = i.id"
            " WHERE i.id > %s"
        )
        query = f"SELECT {_SELECT_COLUMNS} FROM ({joined}) AS e"
        query += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id LIMIT %s"
        rows = self._read(query, [_clamp(max(after_id, -1)), *args, limit])
        return [_row_to_record(r) for r in rows]

    def last_id(self) -> int:
        return int(self._read("SELECT coalesce(max(id), 0) FROM event_ids")[0][0])

    def ping(self) -> None:
        if self._down is not None:
            raise StoreUnavailable(self._down)
        if self._writer is not None and not self._writer.is_alive():
            raise StoreUnavailable("the PostgreSQL writer thread has stopped")
        try:
            with self._pool.connection(timeout=2) as conn:
                conn.execute("SELECT 1")
        except PoolTimeout:
            raise StoreUnavailable(f"PostgreSQL is not answering: {self._why_down()}") from None
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"PostgreSQL is not answering: {str(exc).strip()}") from exc

    def stats(self) -> StoreStats:
        n = self._read("SELECT count(*) FROM events")[0][0]
        raw_bytes, stored = self._read(
            "SELECT coalesce(sum(size), 0), coalesce(sum(length(data)), 0) FROM raw"
        )[0]
        table_bytes, partitions = self._read(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0),"
            " count(*) FILTER (WHERE c.relname ~ '^events_p[0-9]{6}$') FROM pg_class c"
            " WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'"
        )[0]
        return StoreStats(
            events=n,
            raw_bytes=int(raw_bytes),
            stored_raw_bytes=int(stored),
            extra={"table_bytes": int(table_bytes), "partitions": int(partitions)},
        )

    def export_batch(self, after_id: int, limit: int) -> list[tuple[AuditRecord, bytes | None]]:
        """The next records by id after ``after_id``, with their raw bytes (for copying a whole store)."""
        with self._reading() as conn:
            keys = conn.execute(
                "SELECT time, id FROM event_ids WHERE id > %s ORDER BY id LIMIT %s", (after_id, limit)
            ).fetchall()
            if not keys:
                return []
            cols = ", ".join("e." + c.strip() for c in _SELECT_COLUMNS.split(","))
            rows = conn.execute(
                f"SELECT {cols}, e.raw_id FROM unnest(%s::bigint[], %s::bigint[]) AS u(time, id)"
                " JOIN events e ON e.time = u.time AND e.id = u.id ORDER BY e.id",
                ([k[0] for k in keys], [k[1] for k in keys]),
            ).fetchall()
            out: list[tuple[AuditRecord, bytes | None]] = []
            for row in rows:
                rec = _row_to_record(row)
                raw_id = row[-1]
                out.append((rec, self._blob(raw_id, rec.time, conn) if raw_id is not None else None))
            return out

    def check(
        self, *, quick: bool = False, progress: Callable[[int, int], None] | None = None
    ) -> CheckReport:
        from spintrail.store.postgres_check import check_postgres

        conn = self._open_connection(autocommit=True, role="check")
        try:
            return check_postgres(
                conn, quick=quick, progress=progress, hooks=self.check_hooks, clean=clean_text
            )
        except psycopg.Error as exc:
            report = CheckReport(backend=self.backend)
            report.add("schema", f"the database cannot be read: {str(exc).strip()}")
            return report
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
        self._pool.close()


def _row_to_record(row: Sequence[Any]) -> AuditRecord:
    n = 1 + len(_RECORD_COLUMNS)
    kwargs: dict[str, Any] = dict(zip(_RECORD_COLUMNS, row[1:n], strict=True))
    for name in LIST_FIELDS:
        kwargs[name] = list(kwargs[name] or [])
    return AuditRecord(id=row[0], **kwargs)


def _store_error(exc: Exception) -> Exception:
    if isinstance(exc, pg_errors.DiskFull):
        return StoreFull(f"cannot commit: {str(exc).strip()}")
    return StoreUnavailable(f"cannot commit: {str(exc).strip()}")


class _PostgresIndexChecker(IndexChecker):
    """The tags and the full-text vector live in the event's own row."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    def state(self, record: AuditRecord) -> IndexState:
        rows = self.store._read(
            "SELECT e.tags, e.tsv IS NOT NULL FROM event_ids i"
            " JOIN events e ON e.time = i.time AND e.id = i.id WHERE i.id = %s",
            (record.id,),
        )
        if not rows:
            return IndexState()
        want = expected_tags(record)
        have = list(rows[0][0] or [])
        return IndexState(
            missing_tags=[t for t in want if t not in have],
            extra_tags=[t for t in have if t not in want],
            has_text=bool(rows[0][1]),
        )
