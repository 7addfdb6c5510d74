"""The forwarding outbox: ordered positions, and per sink a committed cursor, a lease and dead letters.

Design (at-least-once, in order, exact):

- Every stored event has an **outbox position**, a number that grows in commit order with no event ever
  appearing behind a position a reader has already passed. In SQLite that is simply ``events.id``: one
  writer at a time (the store's writer, or another process under ``BEGIN IMMEDIATE``) assigns ids and commits
  in the same order, so nothing needs writing. In PostgreSQL a sequence is *not* commit-ordered across
  concurrent transactions (replica A may take id 100, replica B id 101 and commit first), so a cursor over
  ``events.id`` could skip 100. There a write hook (``store.write_hooks``) takes the next positions from a
  one-row counter (``sink_outbox_head``) inside the events' transaction and records ``(seq, event_row)`` in
  ``sink_outbox``: the counter's row lock is held until COMMIT, so positions are gap-free and committed in
  order, and they commit or roll back with the events.
- Each sink has one row in ``sink_state``: ``delivered_up_to`` (the committed cursor: every position up to
  it was delivered or dead-lettered), counters, the last error, a pause, and a **lease** (``owner``,
  ``lease_until``). Only the lease owner delivers; a replica takes a sink only when its lease has expired
  (``SELECT ... FOR UPDATE SKIP LOCKED`` in PostgreSQL, ``BEGIN IMMEDIATE`` in SQLite), and every write is
  fenced with ``WHERE owner = me``, so a replica that lost its lease cannot move the cursor.
- ``sink_dead_letters`` holds the events a sink refused (with the reason); delivery skips them.

:class:`Outbox` is the small backend interface; :class:`SqliteOutbox` and :class:`PostgresOutbox`
implement it.
"""

from __future__ import annotations

import abc
import contextlib
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from spintrail.store.base import Store, Written

#: ``paused_until`` of a sink paused until someone resumes it by hand.
PAUSED_UNTIL_RESUMED = 2**62

Start = Literal["now", "beginning"]

_STATE_COLUMNS = (
    "sink",
    "delivered_up_to",
    "delivered",
    "dead_letters",
    "owner",
    "lease_until",
    "paused_until",
    "pause_reason",
    "last_error",
    "last_error_kind",
    "last_error_at",
    "last_delivered_at",
    "created_at",
)
_SELECT_STATE = "SELECT " + ", ".join(_STATE_COLUMNS) + " FROM sink_state"


def now_ms() -> int:
    return int(time.time() * 1000)


def new_owner() -> str:
    """A name for this delivering process: host, pid and a random part (a restarted process is new)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(slots=True)
class SinkState:
    """One sink's committed delivery state."""

    sink: str
    delivered_up_to: int
    delivered: int
    dead_letters: int
    owner: str | None
    lease_until: int | None
    paused_until: int | None
    pause_reason: str | None
    last_error: str | None
    last_error_kind: str | None
    last_error_at: int | None
    last_delivered_at: int | None
    created_at: int

    def paused(self, at: int) -> bool:
        return self.paused_until is not None and self.paused_until > at


@dataclass(slots=True)
class DeadLetter:
    """An event a sink refused: where it was, which event, why, and when."""

    sink: str
    position: int
    event_row: int
    event_id: str
    reason: str
    failed_at: int


@dataclass(slots=True)
class Pending:
    """An outbox position waiting for a sink, and the store id of its event."""

    position: int
    event_row: int


class Outbox(abc.ABC):
    """Outbox positions and per-sink cursors, leases and dead letters in one database.

    Methods are safe to call from one thread at a time per instance (each worker opens its own).
    """

    backend: str = ""
    _lock_clause = ""

    def __init__(self) -> None:
        self._mutex = threading.Lock()

    # -- dialect ---------------------------------------------------------------------------------------

    @abc.abstractmethod
    def _execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        """Run one statement (``?`` placeholders); returns a cursor."""

    @abc.abstractmethod
    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        """A write transaction; rolls back on error."""

    def _now(self) -> int:
        """The clock leases are measured with (the database's where several machines share it)."""
        return now_ms()

    @abc.abstractmethod
    def _head(self) -> int:
        """The highest outbox position committed so far (0 when empty)."""

    def head(self) -> int:
        """The highest outbox position committed so far (0 when empty)."""
        with self._mutex:
            return self._head()

    @abc.abstractmethod
    def pending(self, after: int, limit: int) -> list[Pending]:
        """Up to ``limit`` positions after ``after``, in order."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection."""

    def attach(self, store: Store) -> None:  # noqa: B027 - only PostgreSQL needs a hook
        """Make ``store`` record outbox positions for the events it writes (nothing to do in SQLite)."""

    def prune(self, sinks: Sequence[str]) -> int:
        """Forget positions every one of ``sinks`` is past; returns how many (nothing to do in SQLite)."""
        return 0

    # -- sink state ------------------------------------------------------------------------------------

    def backlog(self, state: SinkState) -> int:
        """Positions not yet delivered to the sink (dead letters ahead of the cursor counted)."""
        return max(0, self.head() - state.delivered_up_to)

    def ensure(self, sink: str, start: Start = "now") -> SinkState:
        """The sink's state, created at the current head (``now``) or at 0 (``beginning``) if new."""
        with self._mutex:
            found = self._state(sink)
            if found is not None:
                return found
            with self._transaction():
                cursor = self._head() if start == "now" else 0
                self._execute(
                    "INSERT INTO sink_state(sink, delivered_up_to, delivered, dead_letters, created_at)"
                    " VALUES (?, ?, 0, 0, ?) ON CONFLICT (sink) DO NOTHING",
                    (sink, cursor, now_ms()),
                )
            state = self._state(sink)
            assert state is not None
            return state

    def state(self, sink: str) -> SinkState | None:
        with self._mutex:
            return self._state(sink)

    def _state(self, sink: str) -> SinkState | None:
        row = self._execute(_SELECT_STATE + " WHERE sink = ?", (sink,)).fetchone()
        return SinkState(*row) if row else None

    def states(self) -> dict[str, SinkState]:
        with self._mutex:
            rows = self._execute(_SELECT_STATE + " ORDER BY sink").fetchall()
        return {row[0]: SinkState(*row) for row in rows}

    def claim(self, sink: str, owner: str, lease_ms: int) -> SinkState | None:
        """Take or renew the sink's lease; ``None`` while another owner's lease runs."""
        with self._mutex, self._transaction():
            row = self._execute(_SELECT_STATE + " WHERE sink = ?" + self._lock_clause, (sink,)).fetchone()
            if row is None:
                return None
            state = SinkState(*row)
            at = self._now()
            if state.owner not in (None, owner) and (state.lease_until or 0) > at:
                return None
            state.owner, state.lease_until = owner, at + lease_ms
            self._execute(
                "UPDATE sink_state SET owner = ?, lease_until = ? WHERE sink = ?",
                (owner, state.lease_until, sink),
            )
            return state

    def release(self, sink: str, owner: str) -> None:
        """Give the lease up so another replica can take over at once."""
        with self._mutex, self._transaction():
            self._execute(
                "UPDATE sink_state SET owner = NULL, lease_until = NULL WHERE sink = ? AND owner = ?",
                (sink, owner),
            )

    def advance(self, sink: str, owner: str, position: int, delivered: int, lease_ms: int) -> bool:
        """Commit the cursor at ``position`` after ``delivered`` more deliveries; renews the lease.

        False (nothing changed) when ``owner`` no longer holds the lease.
        """
        with self._mutex, self._transaction():
            at = self._now()
            cur = self._execute(
                "UPDATE sink_state SET delivered_up_to = ?, delivered = delivered + ?, lease_until = ?,"
                " last_delivered_at = CASE WHEN ? > 0 THEN ? ELSE last_delivered_at END"
                " WHERE sink = ? AND owner = ? AND delivered_up_to <= ?",
                (position, delivered, at + lease_ms, delivered, at, sink, owner, position),
            )
            return bool(cur.rowcount == 1)

    def record_error(self, sink: str, owner: str, kind: str, message: str) -> bool:
        with self._mutex, self._transaction():
            cur = self._execute(
                "UPDATE sink_state SET last_error = ?, last_error_kind = ?, last_error_at = ?"
                " WHERE sink = ? AND owner = ?",
                (message[:2000], kind, now_ms(), sink, owner),
            )
            return bool(cur.rowcount == 1)

    def pause(self, sink: str, owner: str, until: int, reason: str) -> bool:
        """Stop delivery until ``until`` (epoch ms; :data:`PAUSED_UNTIL_RESUMED` for a manual resume)."""
        with self._mutex, self._transaction():
            cur = self._execute(
                "UPDATE sink_state SET paused_until = ?, pause_reason = ?, last_error = ?,"
                " last_error_kind = 'auth', last_error_at = ? WHERE sink = ? AND owner = ?",
                (until, reason[:2000], reason[:2000], now_ms(), sink, owner),
            )
            return bool(cur.rowcount == 1)

    def resume(self, sink: str) -> bool:
        """Lift a pause now (any process may); False when the sink has no state yet."""
        with self._mutex, self._transaction():
            cur = self._execute(
                "UPDATE sink_state SET paused_until = NULL, pause_reason = NULL WHERE sink = ?", (sink,)
            )
            return bool(cur.rowcount == 1)

    def dead_letter(
        self, sink: str, owner: str, letters: Sequence[tuple[int, int, str]], reason: str
    ) -> bool:
        """Set ``(position, event_row, event_id)`` aside with ``reason``; delivery skips them from now on."""
        with self._mutex, self._transaction():
            at = now_ms()
            cur = self._execute(
                "UPDATE sink_state SET dead_letters = dead_letters + ?, last_error = ?,"
                " last_error_kind = 'rejected', last_error_at = ? WHERE sink = ? AND owner = ?",
                (len(letters), reason[:2000], at, sink, owner),
            )
            if cur.rowcount != 1:
                return False
            for position, row, event_id in letters:
                self._execute(
                    "INSERT INTO sink_dead_letters(sink, position, event_row, event_id, reason, failed_at)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (sink, position) DO NOTHING",
                    (sink, position, row, event_id, reason[:2000], at),
                )
            return True

    def dead_positions(self, sink: str, after: int, upto: int) -> set[int]:
        """Dead-lettered positions in ``(after, upto]``."""
        with self._mutex:
            rows = self._execute(
                "SELECT position FROM sink_dead_letters WHERE sink = ? AND position > ? AND position <= ?",
                (sink, after, upto),
            ).fetchall()
        return {r[0] for r in rows}

    def dead_letters(self, sink: str, limit: int = 1000) -> list[DeadLetter]:
        """The sink's dead letters, oldest first."""
        with self._mutex:
            rows = self._execute(
                "SELECT sink, position, event_row, event_id, reason, failed_at FROM sink_dead_letters"
                " WHERE sink = ? ORDER BY position LIMIT ?",
                (sink, limit),
            ).fetchall()
        return [DeadLetter(*r) for r in rows]

    def forget_dead_letter(self, sink: str, position: int) -> None:
        """Remove a dead letter (it was re-sent successfully)."""
        with self._mutex, self._transaction():
            cur = self._execute(
                "DELETE FROM sink_dead_letters WHERE sink = ? AND position = ?", (sink, position)
            )
            if cur.rowcount:
                self._execute(
                    "UPDATE sink_state SET dead_letters = dead_letters - 1"
                    " WHERE sink = ? AND dead_letters > 0",
                    (sink,),
                )


# ------------------------------------------------------------------------------------------------- SQLite

SQLITE_MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE sink_state (
            sink TEXT PRIMARY KEY,
            delivered_up_to INTEGER NOT NULL,
            delivered INTEGER NOT NULL DEFAULT 0,
            dead_letters INTEGER NOT NULL DEFAULT 0,
            owner TEXT,
            lease_until INTEGER,
            paused_until INTEGER,
            pause_reason TEXT,
            last_error TEXT,
            last_error_kind TEXT,
            last_error_at INTEGER,
            last_delivered_at INTEGER,
            created_at INTEGER NOT NULL
        );
        CREATE TABLE sink_dead_letters (
            sink TEXT NOT NULL,
            position INTEGER NOT NULL,
            event_row INTEGER NOT NULL,
            event_id TEXT NOT NULL,
            reason TEXT NOT NULL,
            failed_at INTEGER NOT NULL,
            PRIMARY KEY (sink, position)
        ) WITHOUT ROWID;
        """,
    ),
]


class SqliteOutbox(Outbox):
    """The outbox in the store's SQLite file: positions are ``events.id``."""

    backend = "sqlite"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        from spintrail.store.sqlite import migrate

        self.path = str(path)
        if self.path != ":memory:" and not Path(self.path).exists():
            raise FileNotFoundError(
                f"no spintrail database at {self.path}: start `spintrail serve` once or check --database"
            )
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA busy_timeout=30000")
        has_events = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type IN ('table', 'view') AND name = 'events'"
        ).fetchone()
        if not has_events:
            self._conn.close()
            raise FileNotFoundError(f"{self.path} is not a spintrail database (it has no events table)")
        migrate(self._conn, "forwarding", SQLITE_MIGRATIONS)

    def _execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self._conn.execute(sql, tuple(args))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _head(self) -> int:
        return int(self._conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0])

    def pending(self, after: int, limit: int) -> list[Pending]:
        with self._mutex:
            rows = self._conn.execute(
                "SELECT id FROM events WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
            ).fetchall()
        return [Pending(r[0], r[0]) for r in rows]

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()


# --------------------------------------------------------------------------------------------- PostgreSQL

POSTGRES_SCHEMA = """
CREATE TABLE IF NOT EXISTS sink_outbox_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL
);
INSERT INTO sink_outbox_head(id, seq)
    SELECT 1, 0 WHERE NOT EXISTS (SELECT 1 FROM sink_outbox_head);
CREATE TABLE IF NOT EXISTS sink_outbox (
    seq BIGINT PRIMARY KEY,
    event_row BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS sink_state (
    sink TEXT PRIMARY KEY,
    delivered_up_to BIGINT NOT NULL,
    delivered BIGINT NOT NULL DEFAULT 0,
    dead_letters BIGINT NOT NULL DEFAULT 0,
    owner TEXT,
    lease_until BIGINT,
    paused_until BIGINT,
    pause_reason TEXT,
    last_error TEXT,
    last_error_kind TEXT,
    last_error_at BIGINT,
    last_delivered_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS sink_dead_letters (
    sink TEXT NOT NULL,
    position BIGINT NOT NULL,
    event_row BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    failed_at BIGINT NOT NULL,
    PRIMARY KEY (sink, position)
)
"""

#: Serializes schema creation across replicas starting at once.
_SCHEMA_LOCK_KEY = 0x5E1C_0B0C


def postgres_hook(conn: Any, written: list[Written]) -> None:
    """Write hook for the PostgreSQL store: give the events just written the next outbox positions.

    Runs inside the events' transaction. ``UPDATE ... RETURNING`` on the one counter row locks it until
    COMMIT, so concurrent writers (other replicas) take positions one transaction after another and
    positions become visible in order, with no gaps.
    """
    n = len(written)
    if not n:
        return
    top = conn.execute("UPDATE sink_outbox_head SET seq = seq + %s WHERE id = 1 RETURNING seq", (n,))
    last = int(top.fetchone()[0])
    first = last - n + 1
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO sink_outbox(seq, event_row) VALUES (%s, %s)",
            [(first + i, w.id) for i, w in enumerate(written)],
        )


class PostgresOutbox(Outbox):
    """The outbox in PostgreSQL: positions from ``sink_outbox`` (filled by :func:`postgres_hook`)."""

    backend = "postgresql"
    _lock_clause = " FOR UPDATE SKIP LOCKED"

    def __init__(self, dsn: str) -> None:
        super().__init__()
        import psycopg

        self.dsn = dsn
        self._conn = psycopg.connect(dsn, autocommit=True)
        with self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
            for statement in (s.strip() for s in POSTGRES_SCHEMA.split(";")):
                if statement:
                    self._conn.execute(statement)

    def _execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self._conn.execute(sql.replace("?", "%s"), tuple(args))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._conn.transaction():
            yield

    def _now(self) -> int:
        row = self._conn.execute("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint").fetchone()
        return int(row[0])

    def _head(self) -> int:
        return int(self._conn.execute("SELECT seq FROM sink_outbox_head WHERE id = 1").fetchone()[0])

    def pending(self, after: int, limit: int) -> list[Pending]:
        with self._mutex:
            rows = self._conn.execute(
                "SELECT seq, event_row FROM sink_outbox WHERE seq > %s ORDER BY seq LIMIT %s", (after, limit)
            ).fetchall()
        return [Pending(r[0], r[1]) for r in rows]

    def attach(self, store: Store) -> None:
        if postgres_hook not in store.write_hooks:
            store.write_hooks.append(postgres_hook)

    def prune(self, sinks: Sequence[str]) -> int:
        if not sinks:
            return 0
        with self._mutex, self._transaction():
            row = self._conn.execute(
                "SELECT min(delivered_up_to), count(*) FROM sink_state WHERE sink = ANY(%s)", (list(sinks),)
            ).fetchone()
            if row is None or row[0] is None or row[1] < len(sinks):
                return 0  # a configured sink has no cursor yet: keep everything
            cur = self._conn.execute("DELETE FROM sink_outbox WHERE seq <= %s", (row[0],))
            return int(cur.rowcount)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()


def is_postgres(database: str) -> bool:
    return database.startswith(("postgresql://", "postgres://"))


def open_outbox(database: str) -> Outbox:
    """The outbox of the database a ``database`` setting names (the store's own file or server)."""
    if is_postgres(database):
        return PostgresOutbox(database)
    from spintrail.store.sqlite import sqlite_path

    return SqliteOutbox(sqlite_path(database))
