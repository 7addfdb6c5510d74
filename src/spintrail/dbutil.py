"""SQL helpers for components that keep their own tables in the store's database (tokens, access log,
tamper-evident log): one spelling of a statement for both backends, transactions, blobs, connections.

Statements are written with ``?`` placeholders; on PostgreSQL (psycopg) they become ``%s``.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

#: Seconds between two log lines about the same ongoing database problem.
LOG_INTERVAL = 30.0


def is_sqlite(conn: Any) -> bool:
    return isinstance(conn, sqlite3.Connection)


def dialect(conn: Any) -> str:
    """``sqlite`` or ``postgresql``."""
    return "sqlite" if is_sqlite(conn) else "postgresql"


def sql(conn: Any, text: str) -> str:
    """``text`` with the placeholder style of ``conn``."""
    return text if is_sqlite(conn) else text.replace("?", "%s")


def execute(conn: Any, text: str, params: Sequence[Any] = ()) -> Any:
    """Run one statement; returns the cursor."""
    return conn.execute(sql(conn, text), tuple(params))


def rows(conn: Any, text: str, params: Sequence[Any] = ()) -> list[Any]:
    return list(execute(conn, text, params).fetchall())


def one(conn: Any, text: str, params: Sequence[Any] = ()) -> Any:
    """The first row, or ``None``."""
    return execute(conn, text, params).fetchone()


def as_bytes(value: Any) -> bytes:
    """A blob column as bytes (psycopg gives memoryview for bytea)."""
    return bytes(value) if value is not None else b""


@contextmanager
def transaction(conn: Any, *, lock: str | None = None) -> Iterator[Any]:
    """A write transaction. On SQLite it takes the write lock at once (``BEGIN IMMEDIATE``) so a
    read-then-write sequence is serialized with every other writer; on PostgreSQL ``lock`` names a table
    locked in SHARE ROW EXCLUSIVE mode for the same effect."""
    if is_sqlite(conn):
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    else:
        with conn.transaction():
            if lock:
                conn.execute(f"LOCK TABLE {lock} IN SHARE ROW EXCLUSIVE MODE")
            yield conn


def migrate(store: Any, component: str, migrations: Mapping[str, Sequence[tuple[int, str]]]) -> None:
    """Apply a component's migrations for the store's backend (``sqlite`` or ``postgresql``)."""
    backend = getattr(store, "backend", "")
    if backend not in migrations:
        raise RuntimeError(f"{component}: no schema for the {backend or 'unknown'} store backend")
    store.migrate_component(component, migrations[backend])


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database cannot be reached now (connection refused or lost, server
    restarting), as opposed to a bug or bad data: the request gets 503 and the work is retried."""
    from spintrail.store.base import StoreUnavailable

    if isinstance(exc, StoreUnavailable):
        return True
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


class Throttled:
    """Logs a repeated problem once per ``interval`` seconds (with how often it recurred), and its end."""

    def __init__(self, logger: logging.Logger, what: str, interval: float = LOG_INTERVAL) -> None:
        self._log = logger
        self._what = what
        self._interval = interval
        self._last = 0.0
        self._since: float | None = None
        self._count = 0
        self._lock = threading.Lock()

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            now = time.monotonic()
            self._count += 1
            if self._since is None:
                self._since = now
            elif now - self._last < self._interval:
                return
            count, self._count, self._last = self._count, 0, now
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        more = f" ({count} times in {self._interval:g} s)" if count > 1 else ""
        self._log.error("%s failed: %s%s; retrying", self._what, reason, more)

    def succeeded(self) -> None:
        if self._since is None:
            return
        with self._lock:
            since, self._since, self._count, self._last = self._since, None, 0, 0.0
        if since is not None:
            self._log.warning("%s works again after %.0f s", self._what, time.monotonic() - since)


def _is_lost(conn: Any) -> bool:
    """A psycopg connection closed or broken by the server going away (SQLite connections are never)."""
    return not is_sqlite(conn) and bool(getattr(conn, "closed", False) or getattr(conn, "broken", False))


class Connections:
    """One connection per thread to the store's database, for a component's reads and small writes.

    A connection the database dropped (restart, outage) is replaced by a new one at the next ``get``.
    """

    def __init__(self, store: Any) -> None:
        self._store = store
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def get(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is not None and _is_lost(conn):
            with self._lock, contextlib.suppress(ValueError):
                self._all.remove(conn)
            with contextlib.suppress(Exception):
                conn.close()
            conn = self._local.conn = None
        if conn is None:
            conn = self._store.connect()
            if not is_sqlite(conn):
                conn.autocommit = True
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                with contextlib.suppress(Exception):  # closing is best effort
                    conn.close()
            self._all.clear()
        self._local = threading.local()
