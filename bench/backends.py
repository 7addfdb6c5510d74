"""What differs between store backends in the benchmark: fresh databases, the storage ceiling, sizes.

``--database`` is ``sqlite`` (fresh files in a scratch directory), a directory for those files, or a
``postgresql://`` URL of a server where the benchmark may create (and afterwards drop) its own databases.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


def is_postgres(database: str) -> bool:
    return database.startswith(("postgresql://", "postgres://"))


@dataclass
class Backend:
    """Where the benchmark makes its databases."""

    spec: str
    scratch: Path
    made: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return "postgresql" if is_postgres(self.spec) else "sqlite"

    def fresh(self, label: str) -> str:
        """A new empty database; the value to pass as spintrail's ``database`` setting."""
        if is_postgres(self.spec):
            import psycopg

            name = f"spintrail_bench_{label}_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(self.spec, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            self.made.append(name)
            parts = urlsplit(self.spec)
            return urlunsplit(parts._replace(path="/" + name))
        folder = self.scratch / f"{label}-{uuid.uuid4().hex[:6]}"
        folder.mkdir(parents=True)
        return str(folder / "spintrail.db")

    def drop(self, database: str) -> None:
        """Remove a database made by ``fresh``."""
        if is_postgres(database):
            import psycopg

            name = urlsplit(database).path.lstrip("/")
            if name not in self.made:
                return
            with psycopg.connect(self.spec, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            self.made.remove(name)
        else:
            shutil.rmtree(Path(database).parent, ignore_errors=True)

    def close(self) -> None:
        for name in list(self.made):
            parts = urlsplit(self.spec)
            self.drop(urlunsplit(parts._replace(path="/" + name)))


def exists(database: str) -> bool:
    """Whether a database named by ``--query-db`` is there already (a SQLite file, a PostgreSQL database)."""
    if not is_postgres(database):
        return Path(database).exists()
    import psycopg

    name = urlsplit(database).path.lstrip("/")
    with psycopg.connect(_maintenance_url(database), autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


def create_kept(database: str) -> None:
    """Create the database a ``--query-db`` URL names (kept after the run, for the next one to reuse)."""
    if not is_postgres(database):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        return
    import psycopg

    name = urlsplit(database).path.lstrip("/")
    if not name:
        raise SystemExit(f"--query-db {database}: name the database to fill and keep in the URL's path")
    with psycopg.connect(_maintenance_url(database), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')


def settle(database: str) -> None:
    """After a bulk fill, bring a database to the state a running installation keeps it in.

    PostgreSQL: ``VACUUM (ANALYZE)``, what autovacuum does on its own some time after the rows arrive;
    a query right after a fast bulk load would otherwise be planned on statistics of a much smaller
    table. SQLite: a WAL checkpoint.
    """
    if is_postgres(database):
        import psycopg

        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE)")
        return
    conn = sqlite3.connect(database, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def _maintenance_url(database: str) -> str:
    """The same server's ``postgres`` database (to create or look up others)."""
    return urlunsplit(urlsplit(database)._replace(path="/postgres"))


@contextlib.contextmanager
def backend(spec: str, scratch: Path | None = None) -> Iterator[Backend]:
    """The backend named by ``--database``; scratch files live under ``scratch`` (or a temp directory)."""
    own = scratch is None
    if scratch is None:
        scratch = Path(tempfile.mkdtemp(prefix="spintrail-bench-", dir=os.environ.get("SPINTRAIL_BENCH_TMP")))
    if not is_postgres(spec) and spec not in ("", "sqlite"):
        scratch = Path(spec)
        scratch.mkdir(parents=True, exist_ok=True)
        own = False
    b = Backend(spec if is_postgres(spec) else "sqlite", scratch)
    try:
        yield b
    finally:
        b.close()
        if own:
            shutil.rmtree(scratch, ignore_errors=True)


def storage_ceiling(database: str, rows: Sequence[bytes], group: int) -> float:
    """Events per second of a plain loop inserting ``rows`` with the store's durability, ``group`` per commit.

    SQLite: WAL with synchronous=FULL, as the store. PostgreSQL: synchronous_commit on (the default).
    """
    if is_postgres(database):
        import psycopg

        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute("CREATE TABLE ceiling (id bigserial PRIMARY KEY, body bytea NOT NULL)")
            started = time.perf_counter()
            for i in range(0, len(rows), group):
                with conn.transaction(), conn.cursor() as cur:
                    for body in rows[i : i + group]:
                        cur.execute("INSERT INTO ceiling(body) VALUES (%s)", (body,))
            elapsed = time.perf_counter() - started
        return len(rows) / elapsed
    conn = sqlite3.connect(database, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE ceiling (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
    started = time.perf_counter()
    for i in range(0, len(rows), group):
        conn.execute("BEGIN")
        for body in rows[i : i + group]:
            conn.execute("INSERT INTO ceiling(body) VALUES (?)", (body,))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return len(rows) / elapsed


def size_breakdown(database: str) -> tuple[int, dict[str, int]]:
    """(bytes on disk, bytes per table or index) of a database after a checkpoint."""
    if is_postgres(database):
        import psycopg

        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
            total = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
            rows = conn.execute(
                "SELECT c.relname,"
                " pg_relation_size(c.oid) + coalesce(pg_total_relation_size(c.reltoastrelid), 0)"
                " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')"
                " AND c.relkind IN ('r', 'i', 'm', 'p') ORDER BY 2 DESC"
            ).fetchall()
        return int(total), {name: int(size) for name, size in rows if size}
    conn = sqlite3.connect(database, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        parts = {
            name: int(size)
            for name, size in conn.execute(
                "SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC"
            ).fetchall()
        }
    finally:
        conn.close()
    total = sum(os.path.getsize(p) for p in (database, database + "-wal") if os.path.exists(p))
    return total, parts
