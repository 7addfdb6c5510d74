"""The SQLite store's consistency check: storage integrity, and that events, raw bytes, tags and text agree.

Everything is read in one snapshot (a read transaction), so the check runs beside a live server without
stopping ingest and without taking the write lock. Checks, in order:

- ``integrity_check``: SQLite's ``PRAGMA integrity_check`` (``quick_check`` with ``quick``): pages, b-trees,
  indexes, UNIQUE and NOT NULL constraints;
- ``event_raw``: every event has its raw blob, and every raw blob belongs to exactly one event (or, once
  retention removed its event, is still needed by a later blob of its frame or chain);
- ``delta_base``: every delta blob's base, and every stream blob's predecessor in its frame, exists and is
  older than the blob (no cycles);
- ``raw_sha256``: every raw blob decompresses to its recorded size and SHA-256 (skipped with ``quick``);
- ``strings``: every text value an event names (by id) is stored;
- ``tags``: the tag index holds exactly each event's list values (accounts, regions, ...), at its time;
- ``fulltext``: the full-text index can be read end to end and indexes no row that is not an event
  (skipped with ``quick``).

Components with their own tables (forwarding outbox, tamper-evident log) add ``check_hooks``.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable

from spintrail.query import LIST_FILTERS
from spintrail.store import blobs
from spintrail.store.base import MAX_LISTED, CheckHook, CheckListing, CheckReport


def check_sqlite(
    conn: sqlite3.Connection,
    *,
    quick: bool = False,
    progress: Callable[[int, int], None] | None = None,
    hooks: list[CheckHook] | None = None,
) -> CheckReport:
    """Check the store behind ``conn`` (a connection of its own, not in a transaction)."""
    report = CheckReport(backend="sqlite")
    conn.execute("BEGIN")
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # start the snapshot now
        _integrity(conn, report, quick)
        tables = {
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
        }
        if {"events", "raw", "event_tags"} <= tables:
            _event_raw(conn, report)
            _delta_base(conn, report)
            if not quick:
                _raw_sha256(conn, report, progress)
            if "event_rows" in tables:
                _strings(conn, report)
            _tags(conn, report)
            if "events_fts" in tables and not quick:
                _fulltext(conn, report)
        else:
            report.add("schema", "the events tables are missing: this is not a spintrail database")
        for hook in hooks or []:
            report.problems.extend(hook(conn))
    finally:
        conn.execute("ROLLBACK")
    return report


def _integrity(conn: sqlite3.Connection, report: CheckReport, quick: bool) -> None:
    pragma = "quick_check" if quick else "integrity_check"
    rows = [r[0] for r in conn.execute(f"PRAGMA {pragma}({MAX_LISTED})")]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    report.checks["integrity_check"] = pages
    if rows != ["ok"]:
        for row in rows:
            report.add("integrity_check", f"{pragma}: {row}")


def _event_raw(conn: sqlite3.Connection, report: CheckReport) -> None:
    listing = CheckListing(report, "event_raw")
    report.checks["event_raw"] = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    for id_, event_id, raw_id in conn.execute(
        "SELECT e.id, e.event_id, e.raw_id FROM events e"
        " LEFT JOIN raw r ON r.id = e.raw_id WHERE r.id IS NULL"
    ):
        what = "has no raw blob" if raw_id is None else f"points to raw blob {raw_id}, which does not exist"
        listing.add(f"event {id_} ({event_id}) {what}")
    for raw_id, n in conn.execute(
        "SELECT raw_id, count(*) FROM events WHERE raw_id IS NOT NULL GROUP BY raw_id HAVING count(*) > 1"
    ):
        listing.add(f"raw blob {raw_id} is shared by {n} events")
    for (raw_id,) in conn.execute(
        # NOT IN builds one temporary index of the subquery (events.raw_id has none): O(n log n). A blob
        # whose event retention removed stays while a later blob of its frame (or a delta) needs it.
        "SELECT id FROM raw WHERE id NOT IN (SELECT raw_id FROM events WHERE raw_id IS NOT NULL)"
        " AND (id NOT IN (SELECT base_id FROM raw WHERE base_id IS NOT NULL)"
        "      OR event_row IN (SELECT id FROM events))"
    ):
        listing.add(f"raw blob {raw_id} belongs to no event")
    listing.close()


def _delta_base(conn: sqlite3.Connection, report: CheckReport) -> None:
    listing = CheckListing(report, "delta_base")
    report.checks["delta_base"] = conn.execute(
        "SELECT count(*) FROM raw WHERE codec IN (?, ?)", blobs.CHAINED
    ).fetchone()[0]
    for id_, base_id in conn.execute(
        "SELECT r.id, r.base_id FROM raw r LEFT JOIN raw b ON b.id = r.base_id"
        " WHERE (r.codec = ? AND (b.id IS NULL OR r.base_id >= r.id))"
        " OR (r.codec = ? AND r.base_id IS NOT NULL AND (b.id IS NULL OR r.base_id >= r.id))",
        blobs.CHAINED,
    ):
        if base_id is None:
            listing.add(f"delta blob {id_} names no base")
        elif base_id >= id_:
            listing.add(f"delta blob {id_} has base {base_id}, which is not older than itself")
        else:
            listing.add(f"delta blob {id_} has base {base_id}, which does not exist")
    for id_, codec in conn.execute(
        f"SELECT id, codec FROM raw WHERE codec NOT IN ({', '.join('?' for _ in blobs.CODECS)})", blobs.CODECS
    ):
        listing.add(f"raw blob {id_} has unknown codec {codec}")
    listing.close()


def _raw_sha256(
    conn: sqlite3.Connection, report: CheckReport, progress: Callable[[int, int], None] | None
) -> None:
    listing = CheckListing(report, "raw_sha256")
    total = conn.execute("SELECT count(*) FROM raw").fetchone()[0]
    report.checks["raw_sha256"] = total
    fetcher = conn.cursor()

    def fetch(id_: int) -> blobs.Row | None:
        row = fetcher.execute("SELECT codec, data, size, base_id FROM raw WHERE id = ?", (id_,)).fetchone()
        return (row[0], row[1], row[2], row[3]) if row else None

    # Blobs are read in id order, so the reader decompresses each stream frame and delta chain once.
    def dictionary(dict_id: int) -> bytes | None:
        row = fetcher.execute("SELECT data FROM raw_dicts WHERE dict_id = ?", (dict_id,)).fetchone()
        return bytes(row[0]) if row else None

    reader = blobs.BlobReader(fetch, dictionary=dictionary)
    # A stream block leaves its event id out: it is read with the id of the event that names it. A blob kept
    # after retention removed its event (a later blob of its frame needs it) is only decompressed.
    rows = conn.execute(
        "SELECT r.id, r.sha256, e.event_id FROM raw r"
        " LEFT JOIN events e ON e.id = r.event_row AND e.raw_id = r.id ORDER BY r.id"
    )
    for done, (id_, sha, event_id) in enumerate(rows, start=1):
        try:
            out = reader.read(id_, event_id)
        except blobs.NeedsEventId:
            pass
        except Exception as exc:  # zstd errors, missing bases, unknown codecs: all reported the same way
            listing.add(f"raw blob {id_} cannot be decompressed: {exc}")
        else:
            if hashlib.sha256(out).digest() != bytes(sha):
                listing.add(f"raw blob {id_} does not match its recorded SHA-256")
        if progress is not None and (done % 1000 == 0 or done == total):
            progress(done, total)
    listing.close()


def _strings(conn: sqlite3.Connection, report: CheckReport) -> None:
    from spintrail.store.sqlite import _INTERNED

    listing = CheckListing(report, "strings")
    report.checks["strings"] = conn.execute("SELECT count(*) FROM strings").fetchone()[0]
    missing = " OR ".join(
        f'(r."{c}" IS NOT NULL AND NOT EXISTS (SELECT 1 FROM strings s WHERE s.id = r."{c}"))'
        for c in _INTERNED
    )
    for (id_,) in conn.execute(f"SELECT r.id FROM event_rows r WHERE {missing}"):
        event_id = conn.execute("SELECT event_id FROM events WHERE id = ?", (id_,)).fetchone()[0]
        listing.add(f"event {id_} ({event_id}) names a text value that is not stored")
    listing.close()


def _tags(conn: sqlite3.Connection, report: CheckReport) -> None:
    listing = CheckListing(report, "tags")
    expected = " UNION ALL ".join(
        f"SELECT e.id AS event_row, '{kind}' AS kind, j.value AS value, e.time AS time"
        f" FROM events e, json_each(e.{column}) j"
        for kind, column in LIST_FILTERS.items()
    )
    report.checks["tags"] = conn.execute("SELECT count(*) FROM event_tags").fetchone()[0]
    missing = f"SELECT event_row, kind, value, time FROM ({expected}) EXCEPT"
    missing += " SELECT event_row, kind, value, time FROM event_tags"
    for row, kind, value, _ in conn.execute(missing):
        listing.add(f"event {row}: {kind} {value!r} is missing from the tag index")
    extra = f"SELECT event_row, kind, value, time FROM event_tags EXCEPT SELECT * FROM ({expected})"
    for row, kind, value, time in conn.execute(extra):
        exists = conn.execute("SELECT time FROM events WHERE id = ?", (row,)).fetchone()
        if exists is None:
            listing.add(f"tag {kind} {value!r} points to event {row}, which does not exist")
        else:
            listing.add(f"tag {kind} {value!r} at time {time} does not match event {row}")
    listing.close()


def _fulltext(conn: sqlite3.Connection, report: CheckReport) -> None:
    listing = CheckListing(report, "fulltext")
    try:
        conn.execute(
            "CREATE VIRTUAL TABLE IF NOT EXISTS temp.events_fts_check"
            " USING fts5vocab(main, events_fts, instance)"
        )
        # One pass over every indexed term: reads the whole index, so a damaged one fails here.
        conn.execute("CREATE TEMP TABLE fts_docs AS SELECT DISTINCT doc FROM temp.events_fts_check")
        report.checks["fulltext"] = conn.execute("SELECT count(*) FROM temp.fts_docs").fetchone()[0]
        for (doc,) in conn.execute(
            "SELECT doc FROM temp.fts_docs WHERE doc NOT IN (SELECT id FROM events) ORDER BY doc"
        ):
            listing.add(f"the full-text index holds row {doc}, which is not an event")
    except sqlite3.DatabaseError as exc:
        listing.add(f"the full-text index cannot be read: {exc}")
    listing.close()
