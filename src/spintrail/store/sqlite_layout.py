"""How the SQLite store lays events out (schema version 2): small on disk, cheap to write, fast to filter.

A large Spinnaker installation sends about a million events a day, most of them stage and task events of a
few thousand executions that repeat the same names, accounts and server groups. The layout stores each
repeated thing once:

- ``strings``: every text value once; records hold string ids (``hash`` finds a value's id when writing).
  Fields that repeat together are stored as one string, a *pack* (a JSON array): the execution's
  ``profile`` (source, instance, application, pipeline, trigger, ...) and the stage's ``place`` (stage
  name and type, accounts, regions, server groups, clusters, namespaces, tickets).
- ``pack_members``: (kind, value, pack) for the filterable values inside packs.
- ``events``: one row per event: its times, its event id (16 bytes for a UUID), its group, string ids.
  The execution id is its group's.
- ``groups``: the events of one execution (outside executions: of one source and type within an hour), at
  most ``GROUP_MAX_EVENTS`` each, with their time span and count.
- ``group_tags``: (kind, value, group) for every filter value held by any event of a group. A filter finds
  its candidate groups here, then checks each event of those groups (events keep their own values), so the
  answer is exact while the index holds one entry per group and value instead of one per event and filter.
- ``raw``: the exact bytes of each event, keyed by event id, compressed in zstd streams (``blobs.py``).
  When the event's UUID appears in its bytes it is cut out before compression (``cut`` says where) and put
  back on reading: the UUID is the one part of an event nothing else predicts, and ``events`` has it.
- ``events_fts``: full text, contentless and without token positions.

Indexes on ``events``: time (newest-first pages and time ranges), group (candidate groups, timelines) and
the last 4 bytes of the event id (duplicates, lookups by event id; random bytes for a UUID).

``Writer`` is the writer thread's state (string, group and stream caches); ``Reader`` turns rows back into
records and plans searches: from the candidate groups when they hold few events, else along the time index
checking each event until the page is full.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time as _time
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from spintrail import fulltext
from spintrail.query import Filters, type_pattern
from spintrail.record import LIST_FIELDS, AuditRecord
from spintrail.store import blobs
from spintrail.store.base import PreparedEvent

#: Text fields with a string id column of their own.
STRING_COLUMNS: tuple[str, ...] = ("type", "status", "user", "task", "stage_id", "description", "reason")
#: Fields packed per execution (``profile``) and per stage (``place``).
PROFILE_FIELDS: tuple[str, ...] = (
    "source",
    "spinnaker_instance",
    "application",
    "execution_type",
    "pipeline",
    "pipeline_config_id",
    "run_as_user",
    "trigger_type",
    "origin",
    "cloud_provider",
)
PLACE_FIELDS: tuple[str, ...] = ("stage", "stage_type", *LIST_FIELDS)

EVENT_COLUMNS: tuple[str, ...] = (
    "id",
    "grp",
    "time",
    "received_at",
    "event_id",
    *STRING_COLUMNS,
    "profile",
    "place",
)
SELECT = "SELECT " + ", ".join(f'"{c}"' for c in EVENT_COLUMNS) + " FROM events"
_INSERT = (
    "INSERT INTO events("
    + ", ".join(f'"{c}"' for c in EVENT_COLUMNS)
    + ") VALUES ("
    + ", ".join("?" for _ in EVENT_COLUMNS)
    + ")"
)
_N_STR = len(STRING_COLUMNS)
_S0 = EVENT_COLUMNS.index(STRING_COLUMNS[0])  # first string id column of a row

#: Filters, with their kind number in ``group_tags`` and ``pack_members``, and where the value lives:
#: ``(kind, column, pack field index or None, is a list)``.
FILTER_KINDS: dict[str, tuple[int, str, int | None, bool]] = {
    "user": (1, "user", None, False),
    "application": (2, "profile", PROFILE_FIELDS.index("application"), False),
    "type": (3, "type", None, False),
    "status": (4, "status", None, False),
    "source": (5, "profile", PROFILE_FIELDS.index("source"), False),
    "instance": (6, "profile", PROFILE_FIELDS.index("spinnaker_instance"), False),
    "account": (7, "place", PLACE_FIELDS.index("accounts"), True),
    "region": (8, "place", PLACE_FIELDS.index("regions"), True),
    "server_group": (9, "place", PLACE_FIELDS.index("server_groups"), True),
    "cluster": (10, "place", PLACE_FIELDS.index("clusters"), True),
    "namespace": (11, "place", PLACE_FIELDS.index("namespaces"), True),
    "ticket": (12, "place", PLACE_FIELDS.index("tickets"), True),
}
_RECORD_FIELD = {
    "user": "user",
    "application": "application",
    "type": "type",
    "status": "status",
    "source": "source",
    "instance": "spinnaker_instance",
    "account": "accounts",
    "region": "regions",
    "server_group": "server_groups",
    "cluster": "clusters",
    "namespace": "namespaces",
    "ticket": "tickets",
}
TYPE_KIND = FILTER_KINDS["type"][0]

#: Most events in one group: bounds the work a filter does per candidate group.
GROUP_MAX_EVENTS = 1024
_HOUR_MS = 3_600_000
#: A search reads the candidate groups' events directly when they hold at most this many events; above,
#: it walks the time index and checks each event's group.
PLAN_GROUP_EVENTS = 20_000
#: Likewise for full-text matches.
PLAN_TEXT_MATCHES = 20_000

SCHEMA_V2 = (
    """
    CREATE TABLE strings (id INTEGER PRIMARY KEY, hash INTEGER NOT NULL, value TEXT NOT NULL);
    CREATE INDEX strings_hash ON strings(hash);
    CREATE TABLE pack_members (
        kind INTEGER NOT NULL,
        value INTEGER NOT NULL,
        pack INTEGER NOT NULL,
        PRIMARY KEY (kind, value, pack)
    ) WITHOUT ROWID;
    CREATE TABLE groups (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL,
        first_time INTEGER NOT NULL,
        last_time INTEGER NOT NULL,
        events INTEGER NOT NULL
    );
    CREATE INDEX groups_key ON groups(key);
    CREATE TABLE group_tags (
        kind INTEGER NOT NULL,
        value INTEGER NOT NULL,
        grp INTEGER NOT NULL,
        PRIMARY KEY (kind, value, grp)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        grp INTEGER NOT NULL,
        time INTEGER NOT NULL,
        received_at INTEGER NOT NULL,
        event_id BLOB NOT NULL,
    """
    + "".join(f'        "{c}" INTEGER,\n' for c in STRING_COLUMNS)
    + """        profile INTEGER,
        place INTEGER
    );
    CREATE INDEX events_time ON events(time);
    CREATE INDEX events_grp ON events(grp);
    CREATE INDEX events_eid ON events(substr(event_id, -4));
    CREATE TABLE raw (
        id INTEGER PRIMARY KEY,
        codec INTEGER NOT NULL,
        prev INTEGER,
        size INTEGER NOT NULL,
        cut INTEGER,
        data BLOB NOT NULL
    );
    """
)
FTS_V2 = "CREATE VIRTUAL TABLE events_fts USING fts5(text, content='', columnsize=0, detail=none)"


def text_hash(value: str) -> int:
    """The signed 32-bit hash ``strings.hash`` holds (4 bytes in a record)."""
    return zlib.crc32(value.encode("utf-8", "surrogatepass")) - 0x80000000


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def pack_event_id(event_id: str) -> bytes | str:
    """A canonical (lower-case) UUID as its 16 bytes, anything else as text."""
    if len(event_id) == 36 and _UUID.fullmatch(event_id):
        return bytes.fromhex(event_id.replace("-", ""))
    return event_id


def event_id_key(event_id: str) -> bytes | str:
    """What ``events_eid`` indexes for an event id: the last 4 bytes of a packed UUID (random), else the
    last 4 characters of the text."""
    return pack_event_id(event_id)[-4:]


#: Rows whose event id may be the one asked for (check ``event_id`` itself).
BY_EVENT_ID = "substr(event_id, -4) = ?"


def unpack_event_id(value: bytes | str) -> str:
    if isinstance(value, bytes | memoryview):
        h = bytes(value).hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    return value


def group_key(rec: AuditRecord) -> str:
    """The group an event belongs in: its execution, or its source and type within the hour."""
    if rec.execution_id:
        return "x:" + rec.execution_id
    return f"b:{rec.time // _HOUR_MS}:{rec.source or ''}:{rec.type or ''}"


def execution_of(key: str) -> str | None:
    return key[2:] if key.startswith("x:") else None


def pack_text(values: Sequence[Any]) -> str:
    return json.dumps(list(values), ensure_ascii=False, separators=(",", ":"))


def cut_event_id(raw: bytes, event_id: str) -> tuple[bytes, int | None]:
    """``raw`` without its last copy of a canonical UUID event id, and where it was (``None``: kept)."""
    if not isinstance(pack_event_id(event_id), bytes):
        return raw, None
    at = raw.rfind(event_id.encode("ascii"))
    if at < 0:
        return raw, None
    return raw[:at] + raw[at + 36 :], at


def paste_event_id(data: bytes, cut: int | None, event_id: str) -> bytes:
    """The bytes ``cut_event_id`` was given."""
    if cut is None:
        return data
    return data[:cut] + event_id.encode("ascii") + data[cut:]


# -- writing ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Group:
    id: int
    count: int
    tags: set[tuple[int, int]] = field(default_factory=set)
    signatures: set[tuple[int | None, ...]] = field(default_factory=set)


@dataclass(slots=True)
class Batch:
    """What one transaction writes, flushed just before the write hooks and COMMIT."""

    next_id: int
    events: list[tuple[Any, ...]] = field(default_factory=list)
    raw: list[tuple[Any, ...]] = field(default_factory=list)
    text: list[tuple[int, str]] = field(default_factory=list)
    tags: list[tuple[int, int, int]] = field(default_factory=list)
    spans: dict[int, list[int]] = field(default_factory=dict)  # group id -> [first, last, count]
    seen: dict[str, int] = field(default_factory=dict)  # event id -> row id written in this batch
    stored: dict[str, int] | None = None  # event id -> row id of the batch's events already stored


class Writer:
    """The writer thread's state: caches of string ids, open groups and zstd streams.

    Caches only skip work: whatever they miss is looked up in the database, so another process writing to
    the same file between two transactions cannot make them wrong. After a rollback call ``reset``.
    """

    def __init__(
        self, *, compression_level: int = blobs.STREAM_LEVEL, compression_memory: int = blobs.STREAM_MEMORY
    ) -> None:
        self.strings: dict[str, int] = {}
        self.packs: dict[tuple[Any, ...], int] = {}
        self.groups: OrderedDict[str, _Group] = OrderedDict()
        self.streams = blobs.Streams(level=compression_level, max_bytes=compression_memory)
        self.max_strings = 200_000
        self.max_groups = 4096

    def reset(self) -> None:
        """Forget everything cached (the transaction that filled it may have rolled back)."""
        self.strings.clear()
        self.packs.clear()
        self.groups.clear()
        self.streams.clear()

    def begin(self, conn: sqlite3.Connection, event_ids: Sequence[str] | None = None) -> Batch:
        """Start writing a batch (inside the writer's transaction); ``event_ids`` are looked up at once."""
        top = conn.execute("SELECT max(id) FROM events").fetchone()[0]
        batch = Batch(next_id=(top or 0) + 1)
        if event_ids is not None:
            wanted = set(event_ids)
            keys = list({event_id_key(e) for e in wanted})
            batch.stored = {}
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                for row_id, stored in conn.execute(
                    "SELECT id, event_id FROM events WHERE substr(event_id, -4) IN"
                    f" ({', '.join('?' for _ in chunk)})",
                    chunk,
                ):
                    event_id = unpack_event_id(stored)
                    if event_id in wanted:
                        batch.stored[event_id] = row_id
        return batch

    # -- strings

    def intern(self, conn: sqlite3.Connection, value: str) -> tuple[int, bool]:
        """The id of a string, and whether it was added now."""
        sid = self.strings.get(value)
        if sid is not None:
            return sid, False
        h = text_hash(value)
        new = False
        for row in conn.execute("SELECT id, value FROM strings WHERE hash = ?", (h,)):
            if row[1] == value:
                sid = row[0]
                break
        else:
            sid = conn.execute("INSERT INTO strings(hash, value) VALUES (?, ?)", (h, value)).lastrowid
            new = True
        assert sid is not None
        if len(self.strings) >= self.max_strings:
            self.strings.clear()
        self.strings[value] = sid
        return sid, new

    def _sid(self, conn: sqlite3.Connection, value: str | None) -> int | None:
        return None if value is None else self.intern(conn, value)[0]

    def _pack(self, conn: sqlite3.Connection, rec: AuditRecord, fields: Sequence[str]) -> int | None:
        values = [getattr(rec, f) for f in fields]
        if not any(values):
            return None
        key = tuple(tuple(v) if isinstance(v, list) else v for v in values)
        pid = self.packs.get(key)
        if pid is not None:
            return pid
        pid, new = self.intern(conn, pack_text(values))
        if len(self.packs) >= self.max_strings:
            self.packs.clear()
        self.packs[key] = pid
        if new:
            members = []
            for kind, column, index, is_list in FILTER_KINDS.values():
                if index is None or (column == "profile") != (fields is PROFILE_FIELDS):
                    continue
                value = values[index]
                for v in dict.fromkeys(value) if is_list else ([value] if value else []):
                    members.append((kind, self.intern(conn, v)[0], pid))
            if members:
                conn.executemany(
                    "INSERT OR IGNORE INTO pack_members(kind, value, pack) VALUES (?, ?, ?)", members
                )
        return pid

    # -- groups

    def _group(self, conn: sqlite3.Connection, rec: AuditRecord) -> _Group:
        key = group_key(rec)
        g = self.groups.get(key)
        if g is not None and g.count < GROUP_MAX_EVENTS:
            self.groups.move_to_end(key)
            return g
        if g is None:
            row = conn.execute(
                "SELECT id, events FROM groups WHERE key = ? ORDER BY id DESC LIMIT 1", (key,)
            ).fetchone()
            if row is not None and row[1] < GROUP_MAX_EVENTS:
                g = _Group(row[0], row[1])
        if g is None or g.count >= GROUP_MAX_EVENTS:
            gid = conn.execute(
                "INSERT INTO groups(key, first_time, last_time, events) VALUES (?, ?, ?, 0)",
                (key, rec.time, rec.time),
            ).lastrowid
            assert gid is not None
            g = _Group(gid, 0)
        self.groups[key] = g
        self.groups.move_to_end(key)
        while len(self.groups) > self.max_groups:
            self.groups.popitem(last=False)
        return g

    # -- events

    def duplicate_of(self, conn: sqlite3.Connection, batch: Batch, event_id: str) -> int | None:
        """The row id of an event already stored (or written earlier in this batch) with this event id."""
        if event_id in batch.seen:
            return batch.seen[event_id]
        if batch.stored is not None:
            return batch.stored.get(event_id)
        for row in conn.execute(
            f"SELECT id, event_id FROM events WHERE {BY_EVENT_ID}", (event_id_key(event_id),)
        ):
            if unpack_event_id(row[1]) == event_id:
                return int(row[0])
        return None

    def write(
        self,
        conn: sqlite3.Connection,
        batch: Batch,
        item: PreparedEvent,
        *,
        row_id: int | None = None,
        index_text: bool = True,
    ) -> int:
        """Add one new event to the batch; returns its row id."""
        rec = item.record
        if row_id is None:
            row_id = batch.next_id
        batch.next_id = max(batch.next_id, row_id + 1)
        g = self._group(conn, rec)
        g.count += 1
        span = batch.spans.get(g.id)
        if span is None:
            batch.spans[g.id] = [rec.time, rec.time, 1]
        else:
            span[0] = min(span[0], rec.time)
            span[1] = max(span[1], rec.time)
            span[2] += 1
        strings = [self._sid(conn, getattr(rec, c)) for c in STRING_COLUMNS]
        profile = self._pack(conn, rec, PROFILE_FIELDS)
        place = self._pack(conn, rec, PLACE_FIELDS)
        # Every filter value is a function of these ids: an event like one already seen in the group adds
        # no tag (most events of an execution).
        signature = (strings[0], strings[1], strings[2], profile, place)
        if signature not in g.signatures:
            g.signatures.add(signature)
            for name, (kind, _column, _index, is_list) in FILTER_KINDS.items():
                value = getattr(rec, _RECORD_FIELD[name])
                if not value:
                    continue
                for v in value if is_list else (value,):
                    tag = (kind, self.intern(conn, v)[0])
                    if tag not in g.tags:
                        g.tags.add(tag)
                        batch.tags.append((kind, tag[1], g.id))
        eid = rec.event_id
        packed_eid = pack_event_id(eid)
        row = (row_id, g.id, rec.time, rec.received_at, packed_eid)
        batch.events.append((*row, *strings, profile, place))
        key = blobs.stream_key(
            rec.pipeline_config_id,
            rec.application,
            rec.execution_type,
            rec.execution_id,
            rec.source,
            rec.type,
        )
        data, cut = cut_event_id(item.raw, eid) if isinstance(packed_eid, bytes) else (item.raw, None)
        blob = self.streams.compress(key, data, rec.time)
        self.streams.stored(key, blob, row_id)
        batch.raw.append((row_id, blob.codec, blob.prev, blob.size, cut, blob.data))
        if index_text and item.text:
            batch.text.append((row_id, item.text))
        batch.seen[eid] = row_id
        rec.id = row_id
        return row_id

    def flush(self, conn: sqlite3.Connection, batch: Batch) -> None:
        """Write what the batch collected (before the write hooks run)."""
        if batch.events:
            conn.executemany(_INSERT, batch.events)
        if batch.raw:
            conn.executemany(
                "INSERT INTO raw(id, codec, prev, size, cut, data) VALUES (?, ?, ?, ?, ?, ?)", batch.raw
            )
        if batch.text:
            conn.executemany("INSERT INTO events_fts(rowid, text) VALUES (?, ?)", batch.text)
        if batch.tags:
            conn.executemany(
                "INSERT OR IGNORE INTO group_tags(kind, value, grp) VALUES (?, ?, ?)", batch.tags
            )
        if batch.spans:
            conn.executemany(
                "UPDATE groups SET first_time = min(first_time, ?), last_time = max(last_time, ?),"
                " events = events + ? WHERE id = ?",
                [(lo, hi, n, gid) for gid, (lo, hi, n) in batch.spans.items()],
            )
        batch.events.clear()
        batch.raw.clear()
        batch.text.clear()
        batch.tags.clear()
        batch.spans.clear()


# -- reading ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Plan:
    """A search as SQL: events matching ``where`` (with ``args``), newest first, along ``index``."""

    where: list[str]
    args: list[Any]
    index: str | None = None


class Reader:
    """Decodes rows into records (with caches of strings, packs and groups) and plans searches."""

    def __init__(self) -> None:
        self._strings: dict[int, str] = {}
        self._packs: dict[int, list[Any]] = {}
        self._groups: dict[int, str | None] = {}
        self._types: tuple[float, dict[str, int]] = (-1e9, {})
        self.max_cache = 500_000

    # -- records

    def records(self, conn: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> list[AuditRecord]:
        if not rows:
            return []
        want: set[int] = set()
        groups: set[int] = set()
        strings = self._strings
        for row in rows:
            groups.add(row[1])
            for v in row[_S0:]:
                if v is not None and v not in strings:
                    want.add(v)
        self._load_strings(conn, want)
        self._load_groups(conn, groups)
        strings = self._strings
        out = []
        for row in rows:
            kwargs: dict[str, Any] = {
                c: (strings[v] if v is not None else None)
                for c, v in zip(STRING_COLUMNS, row[_S0 : _S0 + _N_STR], strict=True)
            }
            profile, place = row[_S0 + _N_STR], row[_S0 + _N_STR + 1]
            if profile is not None:
                kwargs.update(zip(PROFILE_FIELDS, self._pack(profile), strict=True))
            if place is not None:
                kwargs.update(zip(PLACE_FIELDS, self._pack(place), strict=True))
            for c in LIST_FIELDS:
                kwargs[c] = list(kwargs.get(c) or ())
            out.append(
                AuditRecord(
                    id=row[0],
                    event_id=unpack_event_id(row[4]),
                    received_at=row[3],
                    time=row[2],
                    execution_id=self._groups.get(row[1]),
                    **kwargs,
                )
            )
        return out

    def _pack(self, sid: int) -> list[Any]:
        parsed = self._packs.get(sid)
        if parsed is None:
            parsed = json.loads(self._strings[sid])
            if len(self._packs) >= self.max_cache:
                self._packs.clear()
            self._packs[sid] = parsed
        return parsed

    def _load_strings(self, conn: sqlite3.Connection, ids: set[int]) -> None:
        if not ids:
            return
        if len(self._strings) + len(ids) > self.max_cache:
            self._strings = {}
        strings = self._strings
        for sid, value in conn.execute(
            "SELECT id, value FROM strings WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(list(ids)),),
        ):
            strings[sid] = value

    def _load_groups(self, conn: sqlite3.Connection, ids: set[int]) -> None:
        want = [g for g in ids if g not in self._groups]
        if not want:
            return
        if len(self._groups) + len(want) > self.max_cache:
            self._groups = {}
        for gid, key in conn.execute(
            "SELECT id, key FROM groups WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(want),)
        ):
            self._groups[gid] = execution_of(key)

    def string_ids(self, conn: sqlite3.Connection, values: Iterable[str]) -> list[int]:
        """The ids of those of ``values`` that are stored."""
        out = []
        for value in dict.fromkeys(values):
            rows = conn.execute("SELECT id, value FROM strings WHERE hash = ?", (text_hash(value),))
            for sid, stored in rows:
                if stored == value:
                    out.append(sid)
                    break
        return out

    def type_ids(self, conn: sqlite3.Connection, patterns: Iterable[str]) -> list[int]:
        """The string ids of the stored event types matching exact types or ``prefix*`` patterns."""
        exact: list[str] = []
        prefixes: list[str] = []
        for p in patterns:
            text, is_prefix = type_pattern(p)
            (prefixes if is_prefix else exact).append(text)
        ids = self.string_ids(conn, exact)
        if prefixes:
            ids += [sid for value, sid in self._all_types(conn).items() if value.startswith(tuple(prefixes))]
        return list(dict.fromkeys(ids))

    def _all_types(self, conn: sqlite3.Connection) -> dict[str, int]:
        """Every stored event type (a skip-scan of ``group_tags``, cached for a second)."""
        at, types = self._types
        if _time.monotonic() - at < 1.0:
            return types
        rows = conn.execute(
            """
            WITH RECURSIVE t(v) AS (
                SELECT min(value) FROM group_tags WHERE kind = :k
                UNION ALL
                SELECT (SELECT min(value) FROM group_tags WHERE kind = :k AND value > t.v) FROM t
                 WHERE t.v IS NOT NULL
            )
            SELECT s.id, s.value FROM t JOIN strings s ON s.id = t.v
            """,
            {"k": TYPE_KIND},
        ).fetchall()
        types = {value: sid for sid, value in rows}
        self._types = (_time.monotonic(), types)
        return types

    # -- planning

    def plan(self, conn: sqlite3.Connection, f: Filters, cursor: tuple[int, int] | None) -> Plan | None:
        """The SQL for a search, or ``None`` when nothing can match."""
        where: list[str] = []
        args: list[Any] = []
        candidates: set[int] | None = None

        def narrow(groups: set[int]) -> bool:
            nonlocal candidates
            candidates = groups if candidates is None else candidates & groups
            return bool(candidates)

        for name, (kind, column, index, _is_list) in FILTER_KINDS.items():
            values = getattr(f, name)
            if not values:
                continue
            ids = self.type_ids(conn, values) if name == "type" else self.string_ids(conn, values)
            if not ids:
                return None
            marks = ", ".join("?" for _ in ids)
            if index is None:
                where.append(f'"{column}" IN ({marks})')
                args += ids
            else:
                where.append(
                    f"{column} IN (SELECT pack FROM pack_members WHERE kind = ? AND value IN ({marks}))"
                )
                args += [kind, *ids]
            if not narrow(self._tagged(conn, kind, ids)):
                return None
        if f.execution_id:
            keys = ["x:" + e for e in f.execution_id]
            rows = conn.execute(
                "SELECT id FROM groups WHERE key IN (SELECT value FROM json_each(?))", (json.dumps(keys),)
            ).fetchall()
            if not narrow({r[0] for r in rows}):
                return None
        if f.since is not None:
            where.append("time >= ?")
            args.append(f.since)
        if f.until is not None:
            where.append("time < ?")
            args.append(f.until)
        if cursor is not None:
            where.append("(time, id) < (?, ?)")
            args += [cursor[0], cursor[1]]
        index: str | None = "events_time"
        if candidates is not None:
            top = f.until - 1 if f.until is not None else 2**63 - 1
            if cursor is not None:
                top = min(top, cursor[0])
            rows = conn.execute(
                "SELECT id, events FROM groups WHERE id IN (SELECT value FROM json_each(?))"
                " AND last_time >= ? AND first_time <= ?",
                (json.dumps(sorted(candidates)), f.since if f.since is not None else -(2**63), top),
            ).fetchall()
            if not rows:
                return None
            where.append("grp IN (SELECT value FROM json_each(?))")
            args.append(json.dumps([r[0] for r in rows]))
            if sum(r[1] for r in rows) <= PLAN_GROUP_EVENTS:
                index = "events_grp"
        if f.q is not None:
            match = fulltext.fts5_query(f.q)
            if match is None:
                return None
            found = conn.execute(
                "SELECT rowid FROM events_fts WHERE events_fts MATCH ? LIMIT ?",
                (match, PLAN_TEXT_MATCHES + 1),
            )
            hits = [r[0] for r in found]
            if not hits:
                return None
            if len(hits) <= PLAN_TEXT_MATCHES:
                where.append("id IN (SELECT value FROM json_each(?))")
                args.append(json.dumps(hits))
                index = None  # look the matches up by id
            else:  # a common word: walk the time index, checking each event against the matches
                where.append("id IN (SELECT rowid FROM events_fts WHERE events_fts MATCH ?)")
                args.append(match)
        return Plan(where, args, index)

    def _tagged(self, conn: sqlite3.Connection, kind: int, ids: list[int]) -> set[int]:
        rows = conn.execute(
            f"SELECT grp FROM group_tags WHERE kind = ? AND value IN ({', '.join('?' for _ in ids)})",
            (kind, *ids),
        )
        return {r[0] for r in rows}


def search_sql(plan: Plan) -> str:
    indexed = f" INDEXED BY {plan.index}" if plan.index else ""
    sql = SELECT + indexed
    if plan.where:
        sql += " WHERE " + " AND ".join(plan.where)
    return sql + " ORDER BY time DESC, id DESC LIMIT ?"


# -- raw bytes ----------------------------------------------------------------------------------------

#: The blob of one event and every blob before it in its frame, first blob first.
RAW_CHAIN = """
    WITH RECURSIVE chain(id, codec, prev, size, cut, data, depth) AS (
        SELECT id, codec, prev, size, cut, data, 0 FROM raw WHERE id = ?
        UNION ALL
        SELECT r.id, r.codec, r.prev, r.size, r.cut, r.data, c.depth + 1 FROM chain c
          JOIN raw r ON r.id = c.prev
         WHERE c.codec IN (2, 3) AND c.prev IS NOT NULL
    )
    SELECT codec, size, cut, data FROM chain ORDER BY depth DESC
"""


def raw_from_chain(rows: Sequence[tuple[int, int, int | None, bytes]], event_id: str) -> bytes:
    """The exact bytes of the last blob of a chain (a stream frame, or legacy deltas)."""
    if not rows:
        raise ValueError("no blobs")
    codec, _size, cut, _data = rows[-1]
    if codec == blobs.CODEC_ZSTD_STREAM or len(rows) == 1:
        data = blobs.decompress_frame([(c, bytes(d), s) for c, s, _, d in rows])
    else:
        out: bytes | None = None
        for c, s, _, d in rows:
            out = blobs.decompress(c, bytes(d), s, out)
        assert out is not None
        data = out
    return paste_event_id(data, cut, event_id)
