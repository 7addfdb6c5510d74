"""Storage: the append-only event store and its backends (SQLite by default, PostgreSQL by URL)."""

from __future__ import annotations

from spintrail.store.base import (
    AppendResult,
    CheckProblem,
    CheckReport,
    Page,
    PreparedEvent,
    Store,
    StoreError,
    StoreFull,
    StoreMissing,
    StoreNeedsMigration,
    StoreOverloaded,
    StoreStats,
    StoreUnavailable,
)

__all__ = [
    "AppendResult",
    "CheckProblem",
    "CheckReport",
    "Page",
    "PreparedEvent",
    "Store",
    "StoreError",
    "StoreFull",
    "StoreMissing",
    "StoreNeedsMigration",
    "StoreOverloaded",
    "StoreStats",
    "StoreUnavailable",
    "open_store",
]


def open_store(
    database: str,
    *,
    batch_max: int = 2000,
    queue_max: int = 20000,
    pool_size: int = 10,
    read_only: bool = False,
) -> Store:
    """Open the store a ``database`` setting names: a SQLite path or ``sqlite:///`` URL, or ``postgresql://``.

    ``pool_size`` is the most read connections a PostgreSQL store opens. A ``read_only`` store never
    writes, creates or migrates anything (SQLite: ``mode=ro``; PostgreSQL: read-only transactions) and
    raises ``StoreNeedsMigration`` when the schema is older than this version.
    """
    if database.startswith(("postgresql://", "postgres://")):
        from spintrail.store.postgres import PostgresStore

        return PostgresStore(
            database, batch_max=batch_max, queue_max=queue_max, pool_size=pool_size, read_only=read_only
        )
    from spintrail.store.sqlite import SqliteStore, sqlite_path

    return SqliteStore(sqlite_path(database), batch_max=batch_max, queue_max=queue_max, read_only=read_only)
