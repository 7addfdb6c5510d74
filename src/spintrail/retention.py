"""Retention: remove events older than the age their class is kept, on SQLite and on PostgreSQL.

Classes (by event type): ``task`` (``orca:task:*``), ``stage`` (``orca:stage:*``), ``pipeline``
(``orca:pipeline:*`` and ``orca:orchestration:*``) and ``other`` (builds, git, manual triggers, ...). Each has
its own age in days (``retention_*_days``; 0 keeps forever). An event is removed when its event ``time`` is
older than its class's age: its record, tags, full-text entry, id claim and raw bytes.

Raw bytes are zstd stream frames or, in older files, delta chains (``store/blobs.py``): a blob is removed
only when no event and no remaining blob refers to it; a blob kept because a surviving blob needs it (a
later blob of its frame, of the same pipeline and class, or a delta) goes with its last dependent in a
later run. Frames end at a change of calendar month, so raw bytes outlive their event by about a month at
most.

SQLite's full-text index is contentless, so removing a row's entry needs the exact text that was indexed:
it is recomputed from the stored record and raw bytes with ``fulltext.index_text`` (exactly what ingest
computed). If a raw event cannot be decoded any more, the index is rebuilt from the remaining events after
the run (slow, but correct), instead of guessing.

PostgreSQL: a monthly partition in which no event survives the rules is dropped whole with its raw partition
(no row-by-row delete, no bloat); elsewhere rows are deleted in batches. Only one retention run works on a
database at a time (an advisory lock); the others report that and stop.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from spintrail import dbutil, fulltext, integrity
from spintrail.decode import decode_body
from spintrail.query import LIST_FILTERS
from spintrail.record import CLASS_HELP as CLASS_HELP
from spintrail.record import CLASSES, LIST_FIELDS, TEXT_FIELDS, AuditRecord, format_time
from spintrail.record import RETENTION_PREFIXES as _PREFIXES
from spintrail.record import event_class as event_class
from spintrail.store import Store, blobs
from spintrail.store.sqlite import fts_cut_from, fts_text

log = logging.getLogger(__name__)

_DAY_MS = 86_400_000
_TOP = "\U0010ffff"
REPORT_COLUMNS = ("class", "keep_days", "removed_before", "events", "raw_blobs", "partitions_dropped")


class RetentionBusy(Exception):
    """Another retention run holds the database."""


class RetentionRefused(Exception):
    """A record due for removal no longer matches its leaf in the tamper-evident log: removing it would
    launder a change (run ``spintrail verify``)."""


def _committed_mismatch(
    row: dict[str, Any], row_id: int, event_id: str, rec: AuditRecord | None
) -> str | None:
    """Why a candidate's leaf does not allow removing its record (``None``: it does): a version 2 leaf's
    stored class, time and content hash must still hash to the leaf; a version 1 leaf commits to the whole
    record, so the record ``rec`` must still match it."""
    if row["version"] >= 2:
        obj = integrity.event_leaf_object(
            index=row["idx"],
            event_class=row["event_class"],
            time=row["event_time"],
            content_sha=bytes(row["content_sha256"]),
        )
    elif rec is not None:
        obj = integrity.leaf_object(
            rec, index=row["idx"], raw_sha256=bytes(row["raw_sha256"]), ingest_token=row["ingest_token"]
        )
    else:
        obj = {}
    if obj and integrity.leaf_hash_of(obj) == bytes(row["leaf_hash"]):
        return None
    return (
        f"record {row_id} (event {event_id}) no longer matches its leaf {row['idx']} in the "
        "tamper-evident log: retention will not remove it; run `spintrail verify`"
    )


#: The leaf columns a removal candidate is read with.
_LEAF_COLUMNS = (
    "idx",
    "version",
    "raw_sha256",
    "ingest_token",
    "leaf_hash",
    "event_class",
    "event_time",
    "content_sha256",
)


def policy_details(policy: Policy, now: int) -> dict[str, Any]:
    """What a retention run records in the log about the rules it applied."""
    return {
        "policy": {f"{c}_days": policy.days(c) for c in CLASSES},
        "now": now,
        "cutoffs": {c: policy.cutoff(c, now) for c in CLASSES},
    }


def class_condition(cls: str, mark: str = "?") -> tuple[str, list[str]]:
    """A SQL condition (never NULL) true for the events of ``cls``, with its parameters."""
    if cls == "other":
        parts, args = [], []
        for c in _PREFIXES:
            sql_, a = class_condition(c, mark)
            parts.append(sql_)
            args += a
        return "NOT (" + " OR ".join(parts) + ")", args
    ors, args = [], []
    for p in _PREFIXES[cls]:
        ors.append(f"(coalesce(type, '') >= {mark} AND coalesce(type, '') < {mark})")
        args += [p, p + _TOP]
    return "(" + " OR ".join(ors) + ")", args


@dataclass(frozen=True, slots=True)
class Policy:
    """Days each class is kept; 0 keeps forever."""

    task_days: int = 90
    stage_days: int = 365
    pipeline_days: int = 7 * 365
    other_days: int = 365

    @classmethod
    def from_settings(cls, settings: Any) -> Policy:
        return cls(
            task_days=settings.retention_task_days,
            stage_days=settings.retention_stage_days,
            pipeline_days=settings.retention_pipeline_days,
            other_days=settings.retention_other_days,
        )

    def days(self, cls: str) -> int:
        return int(getattr(self, f"{cls}_days"))

    def cutoff(self, cls: str, now_ms: int) -> int | None:
        """Events of ``cls`` older than this (epoch ms) are removed; ``None`` when kept forever."""
        d = self.days(cls)
        return now_ms - d * _DAY_MS if d > 0 else None


@dataclass(slots=True)
class Report:
    """What a retention run removed (or, with ``dry_run``, would remove)."""

    policy: Policy
    now_ms: int
    dry_run: bool = False
    events: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLASSES, 0))
    raw_blobs: int | None = 0
    partitions_dropped: list[str] = field(default_factory=list)
    fts_rebuilt: bool = False
    strings_removed: int = 0  # SQLite: text values no remaining event refers to
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.events.values())

    def rows(self) -> list[dict[str, Any]]:
        """One row per class and a total row (``--format table|json|csv``)."""
        out: list[dict[str, Any]] = []
        for cls in CLASSES:
            cutoff = self.policy.cutoff(cls, self.now_ms)
            out.append(
                {
                    "class": cls,
                    "keep_days": self.policy.days(cls) or "forever",
                    "removed_before": format_time(cutoff) if cutoff is not None else None,
                    "events": self.events[cls],
                    "raw_blobs": None,
                    "partitions_dropped": None,
                }
            )
        out.append(
            {
                "class": "total",
                "keep_days": None,
                "removed_before": None,
                "events": self.total,
                "raw_blobs": self.raw_blobs,
                "partitions_dropped": ";".join(self.partitions_dropped),
            }
        )
        return out


Progress = Callable[[int], None]


def run(
    store: Store,
    policy: Policy,
    *,
    now_ms: int | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
    batch: int | None = None,
) -> Report:
    """Remove (with ``dry_run``: count) what the policy no longer keeps; ``progress`` gets removed counts."""
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    report = Report(policy=policy, now_ms=now, dry_run=dry_run)
    started = time.perf_counter()
    if store.backend == "postgresql":
        _PostgresRetention(store, policy, now, report, progress, batch or 5000).run()
    elif store.backend == "sqlite":
        _SqliteRetention(store, policy, now, report, progress, batch or 500).run()
    else:  # pragma: no cover - a new backend must implement retention
        raise NotImplementedError(f"retention is not implemented for the {store.backend} store")
    report.seconds = time.perf_counter() - started
    if dry_run:
        report.raw_blobs = None
    return report


def recompute_text(record: AuditRecord, raw: bytes | None) -> str | None:
    """The full-text entry ingest made for this event, from its record and raw bytes (``None``: unknown)."""
    if raw is None:
        return None
    try:
        incoming = decode_body(raw)
    except Exception:  # DecodeError, or anything else a damaged event makes the decoder raise
        return None
    if len(incoming) != 1:
        return None
    return fulltext.index_text(record, incoming[0].event)


def sqlite_reader(conn: Any) -> blobs.BlobReader:
    """A reader of a SQLite store's raw blobs on ``conn`` (keeps what reading blobs in order needs)."""

    def fetch(blob_id: int) -> blobs.Row | None:
        row = conn.execute("SELECT codec, data, size, base_id FROM raw WHERE id = ?", (blob_id,)).fetchone()
        return (row[0], row[1], row[2], row[3]) if row else None

    def dictionary(dict_id: int) -> bytes | None:
        row = conn.execute("SELECT data FROM raw_dicts WHERE dict_id = ?", (dict_id,)).fetchone()
        return bytes(row[0]) if row else None

    return blobs.BlobReader(fetch, dictionary=dictionary)


def sqlite_blob(conn: Any, blob_id: int, reader: blobs.BlobReader, event_id: str) -> bytes | None:
    """The bytes of the SQLite raw blob of event ``event_id`` (``None`` when it or a blob it needs is
    missing or damaged)."""
    del conn  # the reader holds its connection
    try:
        return reader.read(blob_id, event_id)
    except (LookupError, ValueError):
        return None


_RECORD_COLUMNS = ("id", "event_id", "received_at", "time", *TEXT_FIELDS, *LIST_FIELDS)


# -- SQLite -------------------------------------------------------------------------------------------

#: The event with the highest id, and the one owning the highest raw blob id, stay until newer ones arrive:
#: SQLite gives a new row the highest id + 1, so removing them would hand their ids to new rows (a link to a
#: removed event would show another one; a writer's cached delta base would change under it). Ids are
#: never reused.
_NOT_NEWEST = (
    " AND id < (SELECT max(id) FROM event_rows) AND (raw_id IS NULL OR raw_id < (SELECT max(id) FROM raw))"
)


class _SqliteRetention:
    def __init__(
        self, store: Any, policy: Policy, now: int, report: Report, progress: Progress | None, batch: int
    ) -> None:
        self.store = store
        self.policy = policy
        self.now = now
        self.report = report
        self.progress = progress
        self.batch = batch
        self.rebuild = False

    def run(self) -> None:
        conn = self.store.connect()
        try:
            self.has_log = (
                conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'integrity_leaves'"
                ).fetchone()
                is not None
            )
            if self.has_log:  # a database from before leaves committed to class and time
                dbutil.migrate(self.store, "integrity", integrity.MIGRATIONS)
            for cls in CLASSES:
                cutoff = self.policy.cutoff(cls, self.now)
                if cutoff is None:
                    continue
                # With the log, what counts is the class and time the leaf committed to (version 1 leaves:
                # the record's, checked against the leaf before removal); events without a leaf stay.
                for which in ("committed", "v1") if self.has_log else ("plain",):
                    source, where, params = self._candidates(which, cls, cutoff)
                    if self.report.dry_run:
                        n = conn.execute(f"SELECT count(*) FROM {source} WHERE {where}", params).fetchone()[0]
                        self.report.events[cls] += n
                        continue
                    while self._delete_batch(conn, cls, source, where, params):
                        pass
            if self.rebuild:
                self._rebuild_fts(conn)
                self.report.fts_rebuilt = True
        finally:
            conn.close()
        if not self.report.dry_run and self.report.total:
            # The text values (users, descriptions, ...) of the removed events go with them.
            self.report.strings_removed = self.store.purge_strings()

    def _candidates(self, which: str, cls: str, cutoff: int) -> tuple[str, str, list[Any]]:
        """(FROM, WHERE, parameters) of the events of ``cls`` this run removes."""
        cond, args = class_condition(cls)
        if which == "plain":
            return "events e", f"e.time < ? AND {cond}{_NOT_NEWEST}", [cutoff, *args]
        source = "events e JOIN integrity_leaves l ON l.event_row = e.id"
        if which == "committed":
            return (
                source,
                f"l.version >= 2 AND l.event_class = ? AND l.event_time < ?{_NOT_NEWEST}",
                [cls, cutoff],
            )
        return source, f"l.version = 1 AND e.time < ? AND {cond}{_NOT_NEWEST}", [cutoff, *args]

    def _delete_batch(self, conn: Any, cls: str, source: str, where: str, params: list[Any]) -> bool:
        import json

        cols = ", ".join(f'e."{c}"' for c in _RECORD_COLUMNS)
        leaf_cols = "".join(f", l.{c}" for c in _LEAF_COLUMNS) if self.has_log else ""
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows = conn.execute(
                f"SELECT {cols}, e.raw_id{leaf_cols} FROM {source} WHERE {where}"
                " ORDER BY e.time, e.id LIMIT ?",
                [*params, self.batch],
            ).fetchall()
            if not rows:
                conn.execute("COMMIT")
                return False
            cache = sqlite_reader(conn)
            cut_from = fts_cut_from(conn)
            ids = []
            leaves: list[int] = []
            records: list[AuditRecord] = []
            blobs_of: dict[int, str | None] = {}
            n_rec = len(_RECORD_COLUMNS)
            for row in rows:
                values = dict(zip(_RECORD_COLUMNS, row[:n_rec], strict=True))
                for name in LIST_FIELDS:
                    values[name] = json.loads(values[name])
                rec = AuditRecord(**values)
                raw_id = row[n_rec]
                assert rec.id is not None
                if self.has_log:
                    leaf = dict(zip(_LEAF_COLUMNS, row[n_rec + 1 :], strict=True))
                    why = _committed_mismatch(leaf, rec.id, rec.event_id, rec)
                    if why is not None:
                        raise RetentionRefused(why)
                    leaves.append(int(leaf["idx"]))
                ids.append(rec.id)
                records.append(rec)
                raw = sqlite_blob(conn, raw_id, cache, rec.event_id) if raw_id is not None else None
                text = recompute_text(rec, raw)
                if text is None:
                    self.rebuild = True
                elif text:
                    if rec.id >= cut_from:
                        text = fts_text(text, rec.event_id)
                    conn.execute(
                        "INSERT INTO events_fts(events_fts, rowid, text) VALUES ('delete', ?, ?)",
                        (rec.id, text),
                    )
                if raw_id is not None:
                    blobs_of[raw_id] = rec.execution_id
            marks = ", ".join("?" for _ in ids)
            conn.executemany(
                "DELETE FROM tag_rows WHERE tag = (SELECT id FROM strings WHERE value = ?)"
                " AND time = ? AND event_row = ?",
                [
                    (f"{kind}:{value}", rec.time, rec.id)
                    for rec in records
                    for kind, name in LIST_FILTERS.items()
                    for value in dict.fromkeys(getattr(rec, name))
                ],
            )
            conn.execute(f"DELETE FROM event_rows WHERE id IN ({marks})", ids)
            if self.has_log:
                # The tamper-evident log keeps every leaf: it marks the content removed, and records the
                # run (its rules and the leaves it removed) as a leaf of its own, in this transaction.
                conn.execute(
                    "UPDATE integrity_leaves SET content_removed_at = ?, content_removed_reason = 'retention'"
                    f" WHERE event_row IN ({marks})",
                    [int(time.time() * 1000), *ids],
                )
                self._record(conn, cls, leaves)
            removed = self._delete_blobs(conn, blobs_of)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                conn.execute("ROLLBACK")
            raise
        self.report.events[cls] += len(ids)
        assert self.report.raw_blobs is not None
        self.report.raw_blobs += removed
        if self.progress is not None:
            self.progress(len(ids))
        return len(rows) == self.batch

    def _record(self, conn: Any, cls: str | None, leaves: list[int]) -> None:
        details = {**policy_details(self.policy, self.now), "class": cls, "events": len(leaves)}
        details["removed"] = integrity.ranges(leaves)
        integrity.record_admin_action(conn, "retention", details)

    @staticmethod
    def _delete_blobs(conn: Any, first: dict[int, str | None]) -> int:
        """Delete the blobs of removed events that nothing refers to any more, then their bases likewise.

        ``first`` maps the blobs of the events just removed to their execution. A blob written as part of a
        zstd stream names its event (``event_row``); an older delta blob does not, but its bases belong to
        the same execution (that is what a delta chain is): either way "is an event still using it" is an
        indexed lookup.
        """
        removed = 0
        newest = conn.execute("SELECT max(id) FROM raw").fetchone()[0]
        frontier = {bid: (exe, True) for bid, exe in first.items()}
        while frontier:
            nxt: dict[int, tuple[str | None, bool]] = {}
            for bid, (exe, own_event_gone) in frontier.items():
                if bid == newest:
                    continue  # kept so that its id is never handed to a new blob (see _delete_batch)
                if conn.execute("SELECT 1 FROM raw WHERE base_id = ? LIMIT 1", (bid,)).fetchone():
                    continue  # needed by a surviving blob: it goes with its last dependent
                row = conn.execute(
                    "SELECT codec, base_id, event_row FROM raw WHERE id = ?", (bid,)
                ).fetchone()
                if row is None:
                    continue
                codec, base_id, event_row = row
                if not own_event_gone:
                    if event_row is not None:
                        in_use = conn.execute(
                            "SELECT 1 FROM event_rows WHERE id = ? AND raw_id = ?", (event_row, bid)
                        ).fetchone()
                    else:
                        in_use = (
                            exe is None
                            or conn.execute(
                                "SELECT 1 FROM event_rows WHERE raw_id = ? AND execution_id ="
                                " (SELECT id FROM strings WHERE value = ?) LIMIT 1",
                                (bid, exe),
                            ).fetchone()
                        )
                    if in_use:
                        continue
                conn.execute("DELETE FROM raw WHERE id = ?", (bid,))
                removed += 1
                if codec in blobs.CHAINED and base_id is not None:
                    nxt[base_id] = (exe, False)
            frontier = nxt
        return removed

    def _rebuild_fts(self, conn: Any) -> None:
        """Re-index every remaining event (after an event whose text could not be recomputed was removed)."""
        import json

        log.warning("retention: rebuilding the SQLite full-text index (an event's raw bytes did not decode)")
        cols = ", ".join(f'"{c}"' for c in _RECORD_COLUMNS)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("INSERT INTO events_fts(events_fts) VALUES ('delete-all')")
            # Every entry is made anew, the way the store makes new ones.
            conn.execute("UPDATE store_meta SET value = 0 WHERE name = 'fts_event_id_cut_from'")
            last = -1
            cache = sqlite_reader(conn)
            while True:
                rows = conn.execute(
                    f"SELECT {cols}, raw_id FROM events WHERE id > ? ORDER BY id LIMIT 1000", (last,)
                ).fetchall()
                if not rows:
                    break
                for row in rows:
                    values = dict(zip(_RECORD_COLUMNS, row[:-1], strict=True))
                    for name in LIST_FIELDS:
                        values[name] = json.loads(values[name])
                    rec = AuditRecord(**values)
                    raw = sqlite_blob(conn, row[-1], cache, rec.event_id) if row[-1] is not None else None
                    text = recompute_text(rec, raw)
                    if text is None:
                        text = fulltext.index_text(rec, {})
                    if text:
                        text = fts_text(text, rec.event_id)
                        conn.execute("INSERT INTO events_fts(rowid, text) VALUES (?, ?)", (rec.id, text))
                    last = rec.id or last
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                conn.execute("ROLLBACK")
            raise


# -- PostgreSQL ---------------------------------------------------------------------------------------


class _PostgresRetention:
    def __init__(
        self, store: Any, policy: Policy, now: int, report: Report, progress: Progress | None, batch: int
    ) -> None:
        self.store = store
        self.policy = policy
        self.now = now
        self.report = report
        self.progress = progress
        self.batch = batch
        self.cutoffs = {cls: policy.cutoff(cls, now) for cls in CLASSES}
        self.has_log = False

    def _doomed(self) -> tuple[str, list[Any]]:
        """A condition (over ``e``, and the leaf ``l`` with the log) true for the events the policy removes
        with a whole partition: with the log, only events whose version 2 leaf commits to an old enough
        class and time (a version 1 leaf is checked record by record)."""
        ors, args = [], []
        for cls in CLASSES:
            cutoff = self.cutoffs[cls]
            if cutoff is None:
                continue
            if self.has_log:
                ors.append("(l.event_class = %s AND l.event_time < %s)")
                args += [cls, cutoff]
            else:
                cond, a = class_condition(cls, "%s")
                ors.append(f"(e.time < %s AND {cond})")
                args += [cutoff, *a]
        if not ors:
            return "false", args
        either = "(" + " OR ".join(ors) + ")"
        return (f"coalesce(l.version >= 2 AND {either}, false)" if self.has_log else either), args

    def _candidates(self, which: str, cls: str, cutoff: int) -> tuple[str, str, list[Any]]:
        """(FROM, WHERE, parameters) of the events of ``cls`` removed row by row."""
        cond, args = class_condition(cls, "%s")
        if which == "plain":
            return "events e", f"e.time < %s AND {cond}", [cutoff, *args]
        source = (
            "integrity_leaves l JOIN event_ids i ON i.id = l.event_row"
            " JOIN events e ON e.time = i.time AND e.id = i.id"
        )
        if which == "committed":
            return source, "l.version >= 2 AND l.event_class = %s AND l.event_time < %s", [cls, cutoff]
        return source, f"l.version = 1 AND e.time < %s AND {cond}", [cutoff, *args]

    def _class_case(self) -> tuple[str, list[Any]]:
        whens, args = [], []
        for cls in ("task", "stage", "pipeline"):
            cond, a = class_condition(cls, "%s")
            whens.append(f"WHEN {cond} THEN '{cls}'")
            args += a
        return "CASE " + " ".join(whens) + " ELSE 'other' END", args

    def run(self) -> None:
        from psycopg import sql

        conn = self.store.connect()
        try:
            got = conn.execute(
                "SELECT pg_try_advisory_lock("
                "hashtext(coalesce(current_schema(), '') || ':spintrail:retention'))"
            ).fetchone()
            if not got or not got[0]:
                raise RetentionBusy("another retention run is working on this database; try again later")
            self.has_log = conn.execute("SELECT to_regclass('integrity_leaves')").fetchone()[0] is not None
            if self.has_log:  # a database from before leaves committed to class and time
                dbutil.migrate(self.store, "integrity", integrity.MIGRATIONS)
            for month in self._droppable_months(conn):
                counts = self._drop_month(conn, month, sql)
                if counts is None:
                    continue
                self.report.partitions_dropped.append(month.events_table)
                for cls, n in counts.items():
                    self.report.events[cls] += n
                if self.progress is not None:
                    self.progress(sum(counts.values()))
            for cls in CLASSES:
                cutoff = self.cutoffs[cls]
                if cutoff is None:
                    continue
                for which in ("committed", "v1") if self.has_log else ("plain",):
                    source, where, params = self._candidates(which, cls, cutoff)
                    if self.report.dry_run:
                        dropped = [
                            m for m in self._months(conn) if m.events_table in self.report.partitions_dropped
                        ]
                        skip = "".join(" AND NOT (e.time >= %s AND e.time < %s)" for _ in dropped)
                        skip_args = [b for m in dropped for b in (m.lo, m.hi)]
                        row = conn.execute(
                            f"SELECT count(*) FROM {source} WHERE {where}{skip}", [*params, *skip_args]
                        ).fetchone()
                        self.report.events[cls] += row[0] if row else 0
                        continue
                    while self._delete_batch(conn, cls, source, where, params):
                        pass
        finally:
            conn.close()

    def _months(self, conn: Any) -> list[Any]:
        from spintrail.store.postgres import _month

        rows = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'events'::regclass AND c.relname ~ '^events_p[0-9]{6}$'"
        ).fetchall()
        out = []
        for (name,) in rows:
            m = _month(int(name[8:12]), int(name[12:14]))
            if m is not None:
                out.append(m)
        return sorted(out, key=lambda m: m.lo)

    def _droppable_months(self, conn: Any) -> list[Any]:
        """Partitions old enough that the policy may remove all of their events (checked again on drop)."""
        limits = [c for c in self.cutoffs.values() if c is not None]
        if not limits:
            return []
        newest = max(limits)
        return [m for m in self._months(conn) if m.hi <= newest]

    def _survivors(self, conn: Any, table: Any, sql: Any) -> bool:
        doomed, args = self._doomed()
        source = "{} e LEFT JOIN integrity_leaves l ON l.event_row = e.id" if self.has_log else "{} e"
        row = conn.execute(
            sql.SQL("SELECT EXISTS (SELECT 1 FROM " + source + " WHERE NOT " + doomed + ")").format(table),
            args,
        ).fetchone()
        return bool(row and row[0])

    def _drop_month(self, conn: Any, month: Any, sql: Any) -> dict[str, int] | None:
        """Drop a month's partitions when no event in them survives the policy; the counts removed."""
        ev, rw = sql.Identifier(month.events_table), sql.Identifier(month.raw_table)
        if self._survivors(conn, ev, sql):
            return None
        case, case_args = self._class_case()
        count_query = sql.SQL("SELECT " + case + ", count(*) FROM {} GROUP BY 1").format(ev)
        if self.report.dry_run:
            return {cls: n for cls, n in conn.execute(count_query, case_args).fetchall()}
        # The id claims go first, outside the short lock below (they belong to events being removed anyway).
        conn.execute(sql.SQL("DELETE FROM event_ids WHERE event_id IN (SELECT event_id FROM {})").format(ev))
        with conn.transaction():
            conn.execute("SET LOCAL lock_timeout = '10s'")
            # Writers lock the parent first: so do we, which also keeps late events out while we check.
            conn.execute("LOCK TABLE events, raw IN SHARE ROW EXCLUSIVE MODE")
            if self._survivors(conn, ev, sql):
                return None
            counts = {cls: n for cls, n in conn.execute(count_query, case_args).fetchall()}
            raw_n = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(rw)).fetchone()
            conn.execute(
                sql.SQL("DELETE FROM event_ids WHERE event_id IN (SELECT event_id FROM {})").format(ev)
            )
            if self.has_log:
                cols = ", ".join(f"l.{c}" for c in _LEAF_COLUMNS)
                leaves = []
                for r in conn.execute(
                    sql.SQL(
                        "SELECT e.id, e.event_id, " + cols + " FROM {} e JOIN integrity_leaves l"
                        " ON l.event_row = e.id"
                    ).format(ev)
                ).fetchall():
                    leaf = dict(zip(_LEAF_COLUMNS, r[2:], strict=True))
                    why = _committed_mismatch(leaf, r[0], r[1], None)
                    if why is not None:
                        raise RetentionRefused(why)
                    leaves.append(int(leaf["idx"]))
                conn.execute(
                    sql.SQL(
                        "UPDATE integrity_leaves SET content_removed_at = %s,"
                        " content_removed_reason = 'retention' WHERE event_row IN (SELECT id FROM {})"
                    ).format(ev),
                    (int(time.time() * 1000),),
                )
                details = {**policy_details(self.policy, self.now), "class": None, "events": len(leaves)}
                details["partition"] = month.events_table
                details["removed"] = integrity.ranges(leaves)
                integrity.record_admin_action(conn, "retention", details)
            conn.execute(sql.SQL("DROP TABLE {}, {}").format(ev, rw))
        assert self.report.raw_blobs is not None
        self.report.raw_blobs += raw_n[0] if raw_n else 0
        log.info("retention: dropped partition %s (%d events)", month.events_table, sum(counts.values()))
        return counts

    def _delete_batch(self, conn: Any, cls: str, source: str, where: str, params: list[Any]) -> bool:
        from spintrail.store.postgres import month_of

        leaf_cols = "".join(f", l.{c}" for c in _LEAF_COLUMNS) if self.has_log else ""
        with conn.transaction():
            chosen = conn.execute(
                f"SELECT e.time, e.id, e.event_id{leaf_cols} FROM {source} WHERE {where}"
                " ORDER BY e.time LIMIT %s FOR UPDATE OF e",
                [*params, self.batch],
            ).fetchall()
            if not chosen:
                return False
            leaves: list[int] = []
            if self.has_log:
                for r in chosen:
                    leaf = dict(zip(_LEAF_COLUMNS, r[3:], strict=True))
                    rec = self.store.get(int(r[1])) if leaf["version"] < 2 else None
                    why = _committed_mismatch(leaf, r[1], r[2], rec)
                    if why is not None:
                        raise RetentionRefused(why)
                    leaves.append(int(leaf["idx"]))
            rows = conn.execute(
                "DELETE FROM events e USING unnest(%s::bigint[], %s::bigint[]) AS d(time, id)"
                " WHERE e.time = d.time AND e.id = d.id RETURNING e.event_id, e.raw_id, e.time, e.id",
                ([r[0] for r in chosen], [r[1] for r in chosen]),
            ).fetchall()
            conn.execute("DELETE FROM event_ids WHERE event_id = ANY(%s)", ([r[0] for r in rows],))
            if self.has_log:
                # The tamper-evident log keeps every leaf: it marks the content removed, and records the
                # run (its rules and the leaves it removed) as a leaf of its own, in this transaction.
                conn.execute(
                    "UPDATE integrity_leaves SET content_removed_at = %s,"
                    " content_removed_reason = 'retention' WHERE event_row = ANY(%s)",
                    (int(time.time() * 1000), [r[3] for r in rows]),
                )
                details = {**policy_details(self.policy, self.now), "class": cls, "events": len(leaves)}
                details["removed"] = integrity.ranges(leaves)
                integrity.record_admin_action(conn, "retention", details)
            frontier = []
            for _, raw_id, t, _ in rows:
                if raw_id is None:
                    continue
                m = month_of(t)
                frontier.append((raw_id, t, t + 1, m.lo if m else -(2**63), m.hi if m else 2**63 - 1))
            removed = self._delete_blobs(conn, frontier)
        self.report.events[cls] += len(rows)
        assert self.report.raw_blobs is not None
        self.report.raw_blobs += removed
        if self.progress is not None:
            self.progress(len(rows))
        return len(chosen) == self.batch

    @staticmethod
    def _delete_blobs(conn: Any, frontier: list[tuple[int, int, int, int, int]]) -> int:
        """Delete unreferenced blobs, then their bases likewise.

        Each entry is (blob id, time from, time to, month from, month to): the blob's row lies in the first
        range, its chain (bases and dependents) in its month. The blobs are locked before the reference
        check, and the writer locks a base before using it, so a base is never deleted under a new delta.
        """
        removed = 0
        while frontier:
            cols = list(zip(*frontier, strict=True))
            params = [list(c) for c in cols]
            conn.execute(
                "SELECT r.id FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[],"
                " %s::bigint[]) AS u(id, lo, hi, mlo, mhi)"
                " JOIN raw r ON r.id = u.id AND r.time >= u.lo AND r.time < u.hi"
                " ORDER BY r.id FOR UPDATE OF r",
                params,
            ).fetchall()
            rows = conn.execute(
                "DELETE FROM raw r USING unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[],"
                " %s::bigint[]) AS u(id, lo, hi, mlo, mhi)"
                " WHERE r.id = u.id AND r.time >= u.lo AND r.time < u.hi"
                " AND NOT EXISTS (SELECT 1 FROM raw c WHERE c.base_id = r.id"
                "                 AND c.time >= u.mlo AND c.time < u.mhi)"
                " AND NOT EXISTS (SELECT 1 FROM events e WHERE e.time = r.time AND e.raw_id = r.id)"
                " RETURNING r.codec, r.base_id, u.mlo, u.mhi",
                params,
            ).fetchall()
            removed += len(rows)
            frontier = list(
                {
                    (base_id, mlo, mhi, mlo, mhi)
                    for codec, base_id, mlo, mhi in rows
                    if codec == blobs.CODEC_ZSTD_DELTA and base_id is not None
                }
            )
        return removed


# -- in the server ------------------------------------------------------------------------------------


def start_background(settings: Any, store: Store) -> Callable[[], None]:
    """Run retention every ``retention_interval_hours`` in a thread (0: never); returns a stop function."""
    hours = float(getattr(settings, "retention_interval_hours", 0) or 0)
    if hours <= 0:
        return lambda: None
    stop = threading.Event()
    policy = Policy.from_settings(settings)

    def loop() -> None:
        delay = min(60.0, hours * 3600)  # let the server settle first
        while not stop.wait(delay):
            delay = hours * 3600
            try:
                report = run(store, policy)
                log.info(
                    "retention: removed %d events (%s), %s raw blobs, partitions dropped: %s",
                    report.total,
                    ", ".join(f"{c} {n}" for c, n in report.events.items()),
                    report.raw_blobs,
                    ", ".join(report.partitions_dropped) or "none",
                )
            except RetentionBusy as exc:
                log.info("retention: skipped: %s", exc)
            except RetentionRefused as exc:
                log.error("retention: stopped: %s", exc)
            except Exception:
                log.exception("retention run failed; trying again in %.1f hours", hours)

    thread = threading.Thread(target=loop, name="spintrail-retention", daemon=True)
    thread.start()

    def stopper() -> None:
        stop.set()
        thread.join(timeout=30)

    return stopper
