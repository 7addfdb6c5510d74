"""Storage: the append-only event store and its backends (SQLite by default, PostgreSQL by URL)."""

from __future__ import annotations

from spintrail.store.base import (
    AppendResult,
    Page,
    PreparedEvent,
    Store,
    StoreError,
    StoreFull,
    StoreOverloaded,
    StoreStats,
    StoreUnavailable,
)

__all__ = [
    "AppendResult",
    "Page",
    "PreparedEvent",
    "Store",
    "StoreError",
    "StoreFull",
    "StoreOverloaded",
    "StoreStats",
    "StoreUnavailable",
    "open_store",
]


def open_store(
    database: str, *, batch_max: int = 2000, queue_max: int = 20000, **sqlite_options: int
) -> Store:
    """Open the store a ``database`` setting names: a SQLite path or ``sqlite:///`` URL, or ``postgresql://``.

    ``sqlite_options`` (``compression_level``, ``compression_memory``) tune the SQLite store's raw streams.
    """
    if database.startswith(("postgresql://", "postgres://")):
        from spintrail.store.postgres import PostgresStore

        return PostgresStore(database, batch_max=batch_max, queue_max=queue_max)
    from spintrail.store.sqlite import SqliteStore, sqlite_path

    return SqliteStore(sqlite_path(database), batch_max=batch_max, queue_max=queue_max, **sqlite_options)
