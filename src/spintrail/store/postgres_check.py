"""The PostgreSQL store's consistency check: events, their ids, raw bytes and tags agree.

Everything is read in one snapshot (a ``REPEATABLE READ READ ONLY`` transaction), beside a live server.
Checks, in order:

- ``event_ids``: every event has its row in ``event_ids`` (same event id and time), and every row there
  names an event;
- ``event_raw``: every raw blob an event names exists, belongs to that event only, and every raw blob
  belongs to an event (or, once retention removed its event, is still the base of a later blob);
- ``delta_base``: every delta blob's base exists and is older than the blob, and every codec is known;
- ``raw_sha256``: every raw blob decompresses to its recorded size and SHA-256 (skipped with ``quick``);
- ``tags``: each event's tag array holds exactly its list values (accounts, regions, ...).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from spintrail.query import LIST_FILTERS
from spintrail.store import blobs
from spintrail.store.base import CheckHook, CheckListing, CheckReport


def check_postgres(
    conn: Any,
    *,
    quick: bool = False,
    progress: Callable[[int, int], None] | None = None,
    hooks: list[CheckHook] | None = None,
    clean: Callable[[str], str | None] = lambda v: v,
) -> CheckReport:
    """Check the store behind ``conn`` (a connection of its own, autocommit, not in a transaction).

    ``clean`` is how the writer cleans a text value before storing it (tags are compared cleaned)."""
    report = CheckReport(backend="postgresql")
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
            ).fetchall()
        }
        if not {"events", "raw", "event_ids"} <= tables:
            report.add("schema", "the events tables are missing: this is not a spintrail database")
            return report
        _event_ids(conn, report)
        _event_raw(conn, report)
        _delta_base(conn, report)
        if not quick:
            _raw_sha256(conn, report, progress)
        _tags(conn, report, clean)
        for hook in hooks or []:
            report.problems.extend(hook(conn))
    return report


def _event_ids(conn: Any, report: CheckReport) -> None:
    listing = CheckListing(report, "event_ids")
    report.checks["event_ids"] = conn.execute("SELECT count(*) FROM event_ids").fetchone()[0]
    for id_, event_id, known_id, known_time, time in conn.execute(
        "SELECT e.id, e.event_id, i.event_id, i.time, e.time FROM events e"
        " LEFT JOIN event_ids i ON i.id = e.id"
        " WHERE i.id IS NULL OR i.event_id <> e.event_id OR i.time <> e.time ORDER BY e.id"
    ).fetchall():
        if known_id is None:
            listing.add(f"event {id_} ({event_id}) is missing from event_ids")
        else:
            listing.add(
                f"event {id_} ({event_id}, time {time}) is recorded in event_ids as {known_id} at "
                f"{known_time}"
            )
    for id_, event_id in conn.execute(
        "SELECT i.id, i.event_id FROM event_ids i WHERE NOT EXISTS"
        " (SELECT 1 FROM events e WHERE e.id = i.id AND e.time = i.time) ORDER BY i.id"
    ).fetchall():
        listing.add(f"event_ids names event {id_} ({event_id}), which does not exist")
    listing.close()


def _event_raw(conn: Any, report: CheckReport) -> None:
    listing = CheckListing(report, "event_raw")
    report.checks["event_raw"] = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    for id_, event_id, raw_id in conn.execute(
        "SELECT e.id, e.event_id, e.raw_id FROM events e WHERE e.raw_id IS NOT NULL"
        " AND NOT EXISTS (SELECT 1 FROM raw r WHERE r.id = e.raw_id) ORDER BY e.id"
    ).fetchall():
        listing.add(f"event {id_} ({event_id}) points to raw blob {raw_id}, which does not exist")
    for raw_id, n in conn.execute(
        "SELECT raw_id, count(*) FROM events WHERE raw_id IS NOT NULL GROUP BY raw_id HAVING count(*) > 1"
    ).fetchall():
        listing.add(f"raw blob {raw_id} is shared by {n} events")
    for (raw_id,) in conn.execute(
        "SELECT r.id FROM raw r WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.raw_id = r.id)"
        " AND NOT EXISTS (SELECT 1 FROM raw b WHERE b.base_id = r.id) ORDER BY r.id"
    ).fetchall():
        listing.add(f"raw blob {raw_id} belongs to no event")
    listing.close()


def _delta_base(conn: Any, report: CheckReport) -> None:
    listing = CheckListing(report, "delta_base")
    report.checks["delta_base"] = conn.execute(
        "SELECT count(*) FROM raw WHERE codec = ANY(%s)", (list(blobs.CHAINED),)
    ).fetchone()[0]
    for id_, base_id, codec in conn.execute(
        "SELECT r.id, r.base_id, r.codec FROM raw r WHERE r.codec = ANY(%s) AND r.base_id IS NOT NULL"
        " AND (r.base_id >= r.id OR NOT EXISTS (SELECT 1 FROM raw b WHERE b.id = r.base_id)) ORDER BY r.id",
        (list(blobs.CHAINED),),
    ).fetchall():
        what = "is not older than itself" if base_id >= id_ else "does not exist"
        listing.add(f"delta blob {id_} (codec {codec}) has base {base_id}, which {what}")
    for (id_,) in conn.execute(
        "SELECT id FROM raw WHERE codec = %s AND base_id IS NULL", (blobs.CODEC_ZSTD_DELTA,)
    ).fetchall():
        listing.add(f"delta blob {id_} names no base")
    for id_, codec in conn.execute(
        "SELECT id, codec FROM raw WHERE NOT (codec = ANY(%s)) ORDER BY id", (list(blobs.CODECS),)
    ).fetchall():
        listing.add(f"raw blob {id_} has unknown codec {codec}")
    listing.close()


def _raw_sha256(conn: Any, report: CheckReport, progress: Callable[[int, int], None] | None) -> None:
    listing = CheckListing(report, "raw_sha256")
    total = conn.execute("SELECT count(*) FROM raw").fetchone()[0]
    report.checks["raw_sha256"] = total
    fetcher = conn.cursor()

    def fetch(id_: int) -> blobs.Row | None:
        row = fetcher.execute("SELECT codec, data, size, base_id FROM raw WHERE id = %s", (id_,)).fetchone()
        return (row[0], bytes(row[1]), row[2], row[3]) if row else None

    reader = blobs.BlobReader(fetch)
    done = 0
    last = -(2**63)
    while True:
        rows = conn.execute(
            "SELECT r.id, r.sha256, e.event_id FROM raw r LEFT JOIN events e ON e.raw_id = r.id"
            " WHERE r.id > %s ORDER BY r.id LIMIT 1000",
            (last,),
        ).fetchall()
        if not rows:
            break
        for id_, sha, event_id in rows:
            done += 1
            try:
                out = reader.read(id_, event_id)
            except blobs.NeedsEventId:
                pass
            except Exception as exc:  # zstd errors, missing bases, unknown codecs
                listing.add(f"raw blob {id_} cannot be decompressed: {exc}")
            else:
                if hashlib.sha256(out).digest() != bytes(sha):
                    listing.add(f"raw blob {id_} does not match its recorded SHA-256")
        last = rows[-1][0]
        if progress is not None:
            progress(done, total)
    listing.close()


def _tags(conn: Any, report: CheckReport, clean: Callable[[str], str | None]) -> None:
    listing = CheckListing(report, "tags")
    columns = ", ".join(f'"{c}"' for c in LIST_FILTERS.values())
    checked = 0
    last = -(2**63)
    while True:
        rows = conn.execute(
            f"SELECT id, tags, {columns} FROM events WHERE id > %s ORDER BY id LIMIT 5000", (last,)
        ).fetchall()
        if not rows:
            break
        for row in rows:
            checked += 1
            expected = {
                f"{kind}:{clean(value)}"
                for kind, values in zip(LIST_FILTERS, row[2:], strict=True)
                for value in values or []
            }
            stored = set(row[1] or [])
            for tag in sorted(expected - stored):
                listing.add(f"event {row[0]}: {tag!r} is missing from its tags")
            for tag in sorted(stored - expected):
                listing.add(f"event {row[0]}: tag {tag!r} matches none of its values")
        last = rows[-1][0]
    report.checks["tags"] = checked
    listing.close()
