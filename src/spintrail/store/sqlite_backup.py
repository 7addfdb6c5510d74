"""Online backup of the SQLite store: a consistent copy taken while the server keeps ingesting.

The copy is made with SQLite's backup API from inside one read transaction, so it is the store exactly as
of one commit (WAL lets the writer go on meanwhile) and never restarts however busy the server is. It is
written beside the target as ``<target>.partial``, synced, checked with ``PRAGMA quick_check`` and only
then renamed into place: a file at the target path is always a complete, consistent backup.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from spintrail import private

PAGES_PER_STEP = 1024


class BackupError(Exception):
    """The backup could not be made; the message says why and what to do."""


def backup_sqlite(
    conn: sqlite3.Connection,
    target: str | os.PathLike[str],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Copy the database of ``conn`` to ``target`` (which must not exist); returns the pages copied."""
    dest_path = Path(target)
    if dest_path.exists():
        raise BackupError(f"{dest_path} already exists: choose a new path (backups are never overwritten)")
    if not dest_path.parent.is_dir():
        raise BackupError(f"directory {dest_path.parent} does not exist: create it first")
    partial = dest_path.with_name(dest_path.name + ".partial")
    partial.unlink(missing_ok=True)
    private.create_file(partial)  # a backup holds everything the store does: readable by its owner only
    dest = sqlite3.connect(partial, isolation_level=None)
    pages = 0
    try:
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # hold one snapshot for the copy

        def step(status: int, remaining: int, total: int) -> None:
            nonlocal pages
            pages = total
            if progress is not None:
                progress(total - remaining, total)

        conn.backup(dest, pages=PAGES_PER_STEP, progress=step)
        conn.execute("ROLLBACK")
        # A single self-contained file: no -wal beside it to forget when copying the backup elsewhere.
        dest.execute("PRAGMA journal_mode=DELETE")
        result = dest.execute("PRAGMA quick_check").fetchone()[0]
        if result != "ok":
            raise BackupError(f"the copy failed its check ({result}): run `spintrail check` on the store")
        events = dest.execute("SELECT count(*) FROM events").fetchone()[0]
        dest.close()
        with open(partial, "rb+") as fp:
            os.fsync(fp.fileno())
        os.replace(partial, dest_path)
        _fsync_dir(dest_path.parent)
    except (sqlite3.Error, OSError) as exc:
        raise BackupError(f"backup to {dest_path} failed: {exc}") from exc
    finally:
        with contextlib.suppress(sqlite3.Error):
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        dest.close()
        partial.unlink(missing_ok=True)
    return pages, events


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
