"""The tamper-evident log: every stored event is a leaf of an append-only log, hash-chained and in an
RFC 6962 Merkle tree, with signed checkpoints, inclusion and consistency proofs, and offline verification.

Leaves
------
Leaf *i* (0-based, in commit order) is an event or an administrative action. An event leaf (version 2)
commits to what retention decides on, the event's retention class and time, and to the hash of its content:
the canonical record, the SHA-256 of the raw bytes (``scrub.py``), whether they were kept, and the name of
the ingest token::

    content    = JCS({"id", "event_id", "received_at": ms, "time": ms, <every record field>,
                      "raw_sha256": hex, "raw_kept": bool, "ingest_token": ...})
    leaf data  = b"spintrail-leaf/v2\\n" || JCS({"v": 2, "index": i, "kind": "event", "class": ...,
                 "time": ms, "content_sha256": hex(SHA-256(content))})
    admin leaf = b"spintrail-leaf/v2\\n" || JCS({"v": 2, "index": i, "kind": "admin", "action": ...,
                 "at": ms, "details": {...}})
    leaf hash  = SHA-256(0x00 || leaf data)                           (RFC 6962 leaf hash)
    chain[i]   = SHA-256(chain[i-1] || leaf hash[i]),  chain[-1] = 32 zero bytes

Version 1 leaves (``b"spintrail-leaf/v1\\n" || JCS({"v": 1, "index": i, <the content without
raw_kept>})``), written before class and time were committed apart from the content, keep verifying.

JCS is RFC 8785 canonical JSON; leaves hold only strings, integers, booleans, lists, objects and nulls, for
which sorted keys and compact separators with UTF-8 output are exactly JCS. Leaves live in their own table
(``integrity_leaves``, with class, time, content hash and action details beside each leaf hash so that
``verify`` recomputes a leaf after its content is gone) and are never deleted. Retention removes content,
decides on the committed class and time, and records each batch as a ``retention`` action (policy, cut-offs,
removed leaves) in the same transaction; ``verify`` names every removal no recorded run justifies
(``unjustified_removal``). Other administrative actions (tokens created and revoked, ``adopt``,
``accept_rollback``) go through ``record_admin_action`` in the transaction of the change they record.

Leaves are never created silently: events that lack one are reported (``not_logged``) and stop ``serve``
until ``spintrail integrity adopt`` gives them leaves, itself recorded.

The write hook runs inside the store's writer transaction, appends the group's leaves in commit order and
keeps the chain head and the Merkle peaks (``CompactRange``) in ``integrity_state`` in the same transaction,
so the cost per event is O(log n) and the log can never disagree with the events it covers.

Checkpoints
-----------
C2SP ``tlog-checkpoint`` notes (``<origin>\\n<size>\\n<root>\\ntime <RFC 3339>\\n``) signed with the
installation's Ed25519 key (``keys.py``), every ``checkpoint_events`` events or ``checkpoint_seconds``
seconds, also when idle. Each is stored (``integrity_checkpoints``), optionally written to
``checkpoint_dir``, and handed to ``IntegrityLog.listeners`` (forwarding can ship them off the machine).
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import itertools
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spintrail import checkpoint as notes
from spintrail import dbutil, merkle, private
from spintrail.query import FilterError, parse_time
from spintrail.record import API_FIELDS, LIST_FIELDS, TEXT_FIELDS, AuditRecord, event_class, format_time
from spintrail.signer_state import SignerGuard, SignerRefused
from spintrail.store.base import CheckProblem, IndexChecker, Store, Written

log = logging.getLogger(__name__)

LEAF_PREFIX = b"spintrail-leaf/v1\n"
LEAF_PREFIX_V2 = b"spintrail-leaf/v2\n"
#: Names of administrative actions: lower-case words joined by underscores.
_ACTION = re.compile(r"[a-z][a-z_]{0,63}")
GENESIS = bytes(32)
BUNDLE_FORMAT = "spintrail-evidence/v1"
CONSISTENCY_FORMAT = "spintrail-consistency/v1"

#: The name the log's schema migrations are recorded under.
COMPONENT = "integrity"

MIGRATIONS: dict[str, list[tuple[int, str]]] = {
    "sqlite": [
        (
            1,
            """
            CREATE TABLE integrity_leaves (
                idx INTEGER PRIMARY KEY,
                event_row INTEGER NOT NULL UNIQUE,
                event_id TEXT NOT NULL,
                raw_sha256 BLOB NOT NULL,
                ingest_token TEXT,
                leaf_hash BLOB NOT NULL,
                chain_hash BLOB NOT NULL,
                content_removed_at INTEGER,
                content_removed_reason TEXT
            );
            CREATE TABLE integrity_state (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                size INTEGER NOT NULL,
                chain_head BLOB NOT NULL,
                peaks BLOB NOT NULL
            );
            CREATE TABLE integrity_checkpoints (
                id INTEGER PRIMARY KEY,
                size INTEGER NOT NULL,
                root BLOB NOT NULL,
                created_at INTEGER NOT NULL,
                note TEXT NOT NULL
            );
            CREATE INDEX integrity_checkpoints_size ON integrity_checkpoints(size, id)
            """,
        ),
        (
            2,
            """
            CREATE TABLE integrity_leaves_v2 (
                idx INTEGER PRIMARY KEY,
                event_row INTEGER UNIQUE,
                event_id TEXT,
                raw_sha256 BLOB,
                ingest_token TEXT,
                leaf_hash BLOB NOT NULL,
                chain_hash BLOB NOT NULL,
                content_removed_at INTEGER,
                content_removed_reason TEXT,
                version INTEGER NOT NULL DEFAULT 1,
                event_class TEXT,
                event_time INTEGER,
                content_sha256 BLOB,
                raw_kept INTEGER,
                action TEXT,
                action_at INTEGER,
                details TEXT
            );
            INSERT INTO integrity_leaves_v2(idx, event_row, event_id, raw_sha256, ingest_token, leaf_hash,
                chain_hash, content_removed_at, content_removed_reason)
                SELECT idx, event_row, event_id, raw_sha256, ingest_token, leaf_hash, chain_hash,
                content_removed_at, content_removed_reason FROM integrity_leaves;
            DROP TABLE integrity_leaves;
            ALTER TABLE integrity_leaves_v2 RENAME TO integrity_leaves;
            CREATE INDEX integrity_leaves_retention ON integrity_leaves(event_class, event_time)
                WHERE event_class IS NOT NULL;
            CREATE INDEX integrity_leaves_actions ON integrity_leaves(action, idx) WHERE action IS NOT NULL
            """,
        ),
    ],
    "postgresql": [
        (
            1,
            """
            CREATE TABLE integrity_leaves (
                idx BIGINT PRIMARY KEY,
                event_row BIGINT NOT NULL UNIQUE,
                event_id TEXT NOT NULL,
                raw_sha256 BYTEA NOT NULL,
                ingest_token TEXT,
                leaf_hash BYTEA NOT NULL,
                chain_hash BYTEA NOT NULL,
                content_removed_at BIGINT,
                content_removed_reason TEXT
            );
            CREATE TABLE integrity_state (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                size BIGINT NOT NULL,
                chain_head BYTEA NOT NULL,
                peaks BYTEA NOT NULL
            );
            CREATE TABLE integrity_checkpoints (
                id BIGSERIAL PRIMARY KEY,
                size BIGINT NOT NULL,
                root BYTEA NOT NULL,
                created_at BIGINT NOT NULL,
                note TEXT NOT NULL
            );
            CREATE INDEX integrity_checkpoints_size ON integrity_checkpoints(size, id)
            """,
        ),
        (
            2,
            """
            ALTER TABLE integrity_leaves ALTER COLUMN event_row DROP NOT NULL,
                ALTER COLUMN event_id DROP NOT NULL, ALTER COLUMN raw_sha256 DROP NOT NULL,
                ADD COLUMN version INTEGER NOT NULL DEFAULT 1, ADD COLUMN event_class TEXT,
                ADD COLUMN event_time BIGINT, ADD COLUMN content_sha256 BYTEA, ADD COLUMN raw_kept BOOLEAN,
                ADD COLUMN action TEXT, ADD COLUMN action_at BIGINT, ADD COLUMN details TEXT;
            CREATE INDEX integrity_leaves_retention ON integrity_leaves(event_class, event_time)
                WHERE event_class IS NOT NULL;
            CREATE INDEX integrity_leaves_actions ON integrity_leaves(action, idx) WHERE action IS NOT NULL
            """,
        ),
    ],
}


class IntegrityError(RuntimeError):
    """A proof cannot be made (unknown event, no checkpoint yet, altered record); the message says why."""


# --------------------------------------------------------------------------------------------- leaves


def leaf_object(
    record: AuditRecord, *, index: int, raw_sha256: bytes, ingest_token: str | None
) -> dict[str, Any]:
    """The object a version 1 leaf commits to (times as epoch milliseconds)."""
    obj: dict[str, Any] = {
        "v": 1,
        "index": index,
        "id": record.id,
        "event_id": record.event_id,
        "received_at": record.received_at,
        "time": record.time,
    }
    for name in TEXT_FIELDS:
        obj[name] = getattr(record, name)
    for name in LIST_FIELDS:
        obj[name] = list(getattr(record, name))
    obj["raw_sha256"] = raw_sha256.hex()
    obj["ingest_token"] = ingest_token
    return obj


def content_object(
    record: AuditRecord, *, raw_sha256: bytes, raw_kept: bool, ingest_token: str | None
) -> dict[str, Any]:
    """The content a version 2 event leaf commits to by hash: the record, the SHA-256 of the raw bytes,
    whether the raw bytes were kept, and the ingest token's name."""
    obj = leaf_object(record, index=0, raw_sha256=raw_sha256, ingest_token=ingest_token)
    del obj["v"], obj["index"]
    obj["raw_kept"] = bool(raw_kept)
    return obj


def content_sha256(content: dict[str, Any]) -> bytes:
    return hashlib.sha256(canonical(content)).digest()


def event_leaf_object(*, index: int, event_class: str, time: int, content_sha: bytes) -> dict[str, Any]:
    """The object a version 2 event leaf commits to: what retention decides on, and the content's hash."""
    return {
        "v": 2,
        "index": index,
        "kind": "event",
        "class": event_class,
        "time": time,
        "content_sha256": content_sha.hex(),
    }


def record_leaf(
    record: AuditRecord, *, index: int, raw_sha256: bytes, raw_kept: bool, ingest_token: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(leaf object, content object) of a version 2 event leaf."""
    content = content_object(record, raw_sha256=raw_sha256, raw_kept=raw_kept, ingest_token=ingest_token)
    obj = event_leaf_object(
        index=index,
        event_class=event_class(record.type),
        time=record.time,
        content_sha=content_sha256(content),
    )
    return obj, content


def admin_leaf_object(*, index: int, action: str, at: int, details: dict[str, Any]) -> dict[str, Any]:
    """The object an administrative action's leaf commits to."""
    return {"v": 2, "index": index, "kind": "admin", "action": action, "at": at, "details": details}


def canonical(obj: Any) -> bytes:
    """RFC 8785 (JCS) bytes of a value made of strings, integers, booleans, lists, objects and nulls."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass")


def leaf_data(obj: dict[str, Any]) -> bytes:
    return (LEAF_PREFIX if obj.get("v", 1) == 1 else LEAF_PREFIX_V2) + canonical(obj)


def leaf_hash_of(obj: dict[str, Any]) -> bytes:
    return merkle.leaf_hash(leaf_data(obj))


def ranges(indexes: Iterable[int]) -> list[list[int]]:
    """Indexes as sorted inclusive ``[first, last]`` runs (how a retention run lists what it removed)."""
    out: list[list[int]] = []
    for i in sorted(set(indexes)):
        if out and out[-1][1] == i - 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return out


def merge_ranges(runs: Iterable[Sequence[int]]) -> list[list[int]]:
    """Inclusive runs from several lists, sorted and merged (for ``in_ranges``)."""
    out: list[list[int]] = []
    for lo, hi in sorted((int(r[0]), int(r[1])) for r in runs):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return out


def in_ranges(index: int, runs: Sequence[Sequence[int]]) -> bool:
    """Is ``index`` in one of ``runs`` (sorted, disjoint inclusive runs, as ``merge_ranges`` makes)?"""
    lo, hi = 0, len(runs)
    while lo < hi:
        mid = (lo + hi) // 2
        if runs[mid][1] < index:
            lo = mid + 1
        else:
            hi = mid
    return lo < len(runs) and runs[lo][0] <= index <= runs[lo][1]


def chain_next(previous: bytes, leaf: bytes) -> bytes:
    return hashlib.sha256(previous + leaf).digest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as exc:
        raise IntegrityError(f"{what} is not valid base64") from exc


# --------------------------------------------------------------------------------------------- state


@dataclass(slots=True)
class LogState:
    size: int
    chain_head: bytes
    tree: merkle.CompactRange

    @property
    def root(self) -> bytes:
        return self.tree.root()


def load_state(conn: Any) -> LogState:
    row = dbutil.one(conn, "SELECT size, chain_head, peaks FROM integrity_state WHERE id = 1")
    if row is None:
        return LogState(0, GENESIS, merkle.CompactRange())
    size, head, peaks = int(row[0]), dbutil.as_bytes(row[1]), dbutil.as_bytes(row[2])
    tree = merkle.CompactRange.from_peaks(size, [peaks[i : i + 32] for i in range(0, len(peaks), 32)])
    return LogState(size, head, tree)


def _save_state(conn: Any, state: LogState) -> None:
    peaks = b"".join(state.tree.peaks)
    if dbutil.is_sqlite(conn):
        conn.execute(
            "INSERT INTO integrity_state(id, size, chain_head, peaks) VALUES (1, ?, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET size = excluded.size, chain_head = excluded.chain_head,"
            " peaks = excluded.peaks",
            (state.size, state.chain_head, peaks),
        )
    else:
        dbutil.execute(
            conn,
            "INSERT INTO integrity_state(id, size, chain_head, peaks) VALUES (1, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET size = EXCLUDED.size, chain_head = EXCLUDED.chain_head,"
            " peaks = EXCLUDED.peaks",
            (state.size, state.chain_head, peaks),
        )


# --------------------------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A signed checkpoint as stored."""

    id: int
    size: int
    root: bytes
    created_at: int
    note: str

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "size": self.size,
            "root": _b64(self.root),
            "created_at": format_time(self.created_at),
            "note": self.note,
        }


def checkpoint_time(cp: notes.Checkpoint) -> int | None:
    """The signed ``time`` extension line of a checkpoint, as epoch milliseconds."""
    for line in cp.extensions:
        if line.startswith("time "):
            try:
                return parse_time(line[5:], name="checkpoint time")
            except FilterError:
                return None
    return None


_CP_COLUMNS = "id, size, root, created_at, note"


def _cp(row: Sequence[Any]) -> StoredCheckpoint:
    return StoredCheckpoint(int(row[0]), int(row[1]), dbutil.as_bytes(row[2]), int(row[3]), row[4])


# --------------------------------------------------------------------------------------------- the log

Listener = Callable[[StoredCheckpoint], None]


class IntegrityLog:
    """The tamper-evident log of one store: the write hook, checkpoints and proofs."""

    def __init__(self, store: Store, conns: dbutil.Connections, origin: str) -> None:
        self.store = store
        self.conns = conns
        self.origin = origin
        self.checkpoint_dir: Path | None = None
        #: Called with every checkpoint after it is committed (e.g. to forward it off the machine).
        self.listeners: list[Listener] = []
        #: Checks, before each signature, that the log extends the head the signer signed last.
        self.guard: SignerGuard | None = None
        self._sign_lock = threading.Lock()

    # -- writing -----------------------------------------------------------------------------------

    def hook(self, conn: Any, written: list[Written]) -> None:
        """The store write hook: append the group's leaves, in commit order, and the new state."""
        if not dbutil.is_sqlite(conn):
            conn.execute("LOCK TABLE integrity_state IN SHARE ROW EXCLUSIVE MODE")
        state = load_state(conn)
        rows = []
        for w in written:
            item = w.item
            raw_sha = item.raw_sha256 or hashlib.sha256(item.raw).digest()
            item.record.id = w.id
            obj, _ = record_leaf(
                item.record,
                index=state.size,
                raw_sha256=raw_sha,
                raw_kept=item.keep_raw,
                ingest_token=item.ingest_token,
            )
            lh = leaf_hash_of(obj)
            state.chain_head = chain_next(state.chain_head, lh)
            state.tree.append(lh)
            rows.append(
                (
                    state.size,
                    w.id,
                    item.record.event_id,
                    raw_sha,
                    item.ingest_token,
                    lh,
                    state.chain_head,
                    obj["class"],
                    obj["time"],
                    bytes.fromhex(obj["content_sha256"]),
                    bool(item.keep_raw),
                )
            )
            state.size += 1
        conn.cursor().executemany(
            dbutil.sql(
                conn,
                "INSERT INTO integrity_leaves(idx, event_row, event_id, raw_sha256, ingest_token, leaf_hash,"
                " chain_hash, version, event_class, event_time, content_sha256, raw_kept)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 2, ?, ?, ?, ?)",
            ),
            rows,
        )
        _save_state(conn, state)

    def record_admin_action(self, action: str, details: dict[str, Any]) -> int:
        """Append an administrative action to the log in a transaction of its own; returns its leaf index."""
        conn = self.conns.get()
        with dbutil.transaction(conn, lock="integrity_state"):
            return record_admin_action(conn, action, details)

    def unlogged_events(self, *, limit: int = 5) -> tuple[int, list[str]]:
        """How many stored events have no leaf, and the event ids of the first ``limit``."""
        return unlogged_events(self.conns.get(), limit=limit)

    def adopt(self, *, chunk: int = 2000, by: str = "cli") -> dict[str, Any]:
        """Give leaves to the events that lack them (a store from before the log existed, a copy made
        without the log) and acknowledge version 1 leaves whose content was removed before removals were
        recorded; every chunk is recorded in the log as an ``adopt`` action naming the leaves it made.

        This is the only way events get leaves other than being written: never done implicitly."""
        from spintrail.store.base import PreparedEvent

        conn = self.conns.get()
        total, first, last = 0, None, None
        while True:
            with dbutil.transaction(conn, lock="integrity_state"):
                rows = dbutil.rows(
                    conn,
                    "SELECT e.id FROM events e LEFT JOIN integrity_leaves l ON l.event_row = e.id"
                    " WHERE l.idx IS NULL ORDER BY e.id LIMIT ?",
                    (chunk,),
                )
                written: list[Written] = []
                for (row_id,) in rows:
                    record = self.store.get(int(row_id))
                    if record is None:
                        continue
                    raw = self.store.raw(int(row_id))
                    item = PreparedEvent(
                        record=record,
                        raw=raw or b"",
                        keep_raw=raw is not None,
                        raw_sha256=_stored_raw_sha(conn, row_id),
                    )
                    written.append(Written(item, int(row_id)))
                if not written:
                    break
                start = load_state(conn).size
                self.hook(conn, written)
                end = start + len(written) - 1
                record_admin_action(
                    conn,
                    "adopt",
                    {"by": by, "leaves": [[start, end]], "events": len(written)},
                )
            total += len(written)
            first = start if first is None else first
            last = end
            if len(rows) < chunk:
                break
        acknowledged = self._acknowledge_legacy_removals(by)
        if total:
            log.warning("integrity: %d events without a leaf were adopted into the log", total)
        return {
            "events_adopted": total,
            "leaves": [first, last] if first is not None else None,
            "removals_acknowledged": acknowledged,
        }

    def _acknowledge_legacy_removals(self, by: str) -> int:
        """Version 1 leaves (which do not commit to class and time apart from the content) whose record is
        gone and that no recorded retention run lists: recorded once as acknowledged by ``adopt``."""
        conn = self.conns.get()
        with dbutil.transaction(conn, lock="integrity_state"):
            justified: list[list[int]] = []
            for (details,) in dbutil.rows(
                conn, "SELECT details FROM integrity_leaves WHERE action IN ('retention', 'adopt')"
            ):
                d = json.loads(details)
                justified += d.get("removed", []) + d.get("acknowledged_removals", [])
            justified = merge_ranges(justified)
            gone = [
                int(r[0])
                for r in dbutil.rows(
                    conn,
                    "SELECT l.idx FROM integrity_leaves l LEFT JOIN events e ON e.id = l.event_row"
                    " WHERE l.version = 1 AND e.id IS NULL ORDER BY l.idx",
                )
                if not in_ranges(int(r[0]), justified)
            ]
            if gone:
                record_admin_action(conn, "adopt", {"by": by, "acknowledged_removals": ranges(gone)})
        return len(gone)

    def accept_rollback(self, to: int, *, by: str = "cli") -> dict[str, Any]:
        """Record that the database was restored from a backup whose log has ``to`` leaves, older than
        checkpoints signed before: once a checkpoint signed afterwards covers this action, ``verify`` excuses
        those checkpoints (signed before now, larger than ``to``) instead of reporting the log as rolled
        back."""
        conn = self.conns.get()
        with dbutil.transaction(conn, lock="integrity_state"):
            size = load_state(conn).size
            if size != to:
                raise IntegrityError(
                    f"the log holds {size} leaves, not {to}: give --to {size} to accept the restored log "
                    "as it is"
                )
            latest = dbutil.one(conn, "SELECT max(size) FROM integrity_checkpoints")
            details = {"by": by, "to": to, "largest_stored_checkpoint": latest[0] if latest else None}
            index = record_admin_action(conn, "accept_rollback", details)
        return {"leaf": index, **details}

    # -- reading -----------------------------------------------------------------------------------

    def state(self) -> LogState:
        return load_state(self.conns.get())

    def leaf_row(self, event_row: int) -> tuple[int, bytes, str | None, bytes] | None:
        """(index, raw_sha256, ingest_token, leaf_hash) of a record's leaf."""
        row = dbutil.one(
            self.conns.get(),
            "SELECT idx, raw_sha256, ingest_token, leaf_hash FROM integrity_leaves WHERE event_row = ?",
            (event_row,),
        )
        if row is None:
            return None
        return int(row[0]), dbutil.as_bytes(row[1]), row[2], dbutil.as_bytes(row[3])

    def leaf_hashes(self, upto: int) -> list[bytes]:
        """The stored leaf hashes of the first ``upto`` leaves."""
        hashes = [
            dbutil.as_bytes(r[0])
            for r in dbutil.rows(
                self.conns.get(), "SELECT leaf_hash FROM integrity_leaves WHERE idx < ? ORDER BY idx", (upto,)
            )
        ]
        if len(hashes) != upto:
            raise IntegrityError(
                f"the log should hold {upto} leaves but {len(hashes)} are stored: run `spintrail verify`"
            )
        return hashes

    def checkpoints(self, *, limit: int = 100, before_id: int | None = None) -> list[StoredCheckpoint]:
        text = f"SELECT {_CP_COLUMNS} FROM integrity_checkpoints"
        args: list[Any] = []
        if before_id is not None:
            text += " WHERE id < ?"
            args.append(before_id)
        text += " ORDER BY id DESC LIMIT ?"
        return [_cp(r) for r in dbutil.rows(self.conns.get(), text, (*args, limit))]

    def all_checkpoints(self) -> list[StoredCheckpoint]:
        return [
            _cp(r)
            for r in dbutil.rows(
                self.conns.get(), f"SELECT {_CP_COLUMNS} FROM integrity_checkpoints ORDER BY id"
            )
        ]

    def latest(self) -> StoredCheckpoint | None:
        found = self.checkpoints(limit=1)
        return found[0] if found else None

    def checkpoint_of_size(self, size: int) -> StoredCheckpoint | None:
        row = dbutil.one(
            self.conns.get(),
            f"SELECT {_CP_COLUMNS} FROM integrity_checkpoints WHERE size = ? ORDER BY id DESC LIMIT 1",
            (size,),
        )
        return _cp(row) if row else None

    # -- checkpoints -------------------------------------------------------------------------------

    def sign(self, signer: str, *, now_ms: int | None = None) -> StoredCheckpoint:
        """Sign and store a checkpoint of the log as it is now (serialized with writers), export it, and
        tell the listeners."""
        if self.guard is None:
            raise SignerRefused("the signer is not started: load the signing key through Trust.signing_key")
        with self._sign_lock:
            conn = self.conns.get()
            with dbutil.transaction(conn, lock="integrity_state"):
                state = load_state(conn)
                # The root signed is the signer's own tree extended by the new leaves, never the database's
                # word alone (SignerRefused when the two differ).
                tree = self.guard.extend(conn, state.size, state.root)
                size, root = tree.size, tree.root()
                now = now_ms if now_ms is not None else int(time.time() * 1000)
                cp = notes.Checkpoint(
                    origin=self.origin, size=size, root=root, extensions=(f"time {format_time(now)}",)
                )
                note = notes.sign_checkpoint(cp, signer)
                cur = dbutil.execute(
                    conn,
                    "INSERT INTO integrity_checkpoints(size, root, created_at, note) VALUES (?, ?, ?, ?)"
                    " RETURNING id",
                    (size, root, now, note),
                )
                stored = StoredCheckpoint(int(cur.fetchall()[0][0]), size, root, now, note)
            self.guard.signed(tree, now, note)
        if self.checkpoint_dir is not None:
            try:
                export_checkpoint(self.checkpoint_dir, stored)
            except OSError as exc:
                log.error("integrity: cannot write checkpoint to %s: %s", self.checkpoint_dir, exc)
        for listener in list(self.listeners):
            try:
                listener(stored)
            except Exception:
                log.exception("integrity: a checkpoint listener failed")
        return stored

    # -- proofs ------------------------------------------------------------------------------------

    def proof_bundle(
        self,
        record: AuditRecord,
        *,
        signer: str | None = None,
        verifier: str | None = None,
        include_raw: bool = False,
    ) -> dict[str, Any]:
        """The evidence bundle of one record: record, raw hash, leaf, inclusion proof, signed checkpoint.

        Uses the latest checkpoint covering the record; when there is none yet and ``signer`` is given, a
        new checkpoint is signed first.
        """
        assert record.id is not None
        found = self.leaf_row(record.id)
        if found is None:
            raise IntegrityError(
                f"record {record.id} (event {record.event_id}) is not in the tamper-evident log: "
                "run `spintrail verify`"
            )
        index, raw_sha, token, stored_hash = found
        leaf = _leaf_of_row(self.conns.get(), record.id)
        content: dict[str, Any] | None = None
        if leaf is not None and leaf.version >= 2:
            obj, content = record_leaf(
                record, index=index, raw_sha256=raw_sha, raw_kept=bool(leaf.raw_kept), ingest_token=token
            )
        else:
            obj = leaf_object(record, index=index, raw_sha256=raw_sha, ingest_token=token)
        if leaf_hash_of(obj) != stored_hash:
            raise IntegrityError(
                f"record {record.id} (event {record.event_id}) no longer matches its leaf {index}: it was "
                "changed after it was stored; run `spintrail verify`"
            )
        cp = self.latest()
        if cp is None or cp.size <= index:
            if signer is None:
                raise IntegrityError(
                    f"no signed checkpoint covers leaf {index} yet: wait for the next checkpoint "
                    "(checkpoint_seconds) or sign one with `spintrail checkpoint`, and try again"
                )
            cp = self.sign(signer)
        hashes = self.leaf_hashes(cp.size)
        proof = merkle.inclusion_proof(hashes, index)
        bundle: dict[str, Any] = {
            "format": BUNDLE_FORMAT,
            "origin": self.origin,
            "record": record.to_api(),
            "raw_sha256": raw_sha.hex(),
            "leaf": {"index": index, "hash": _b64(stored_hash), "data": obj},
            "tree_size": cp.size,
            "inclusion_proof": [_b64(h) for h in proof],
            "checkpoint": cp.note,
        }
        if content is not None:
            bundle["leaf"]["content"] = content
        if verifier:
            bundle["verifier_key"] = verifier
        if include_raw:
            raw = self.store.raw(record.id)
            if raw is not None:
                bundle["raw"] = _b64(raw)
        return bundle

    def consistency_bundle(self, old: StoredCheckpoint | str, new: StoredCheckpoint | str) -> dict[str, Any]:
        """Proof that the log of checkpoint ``old`` is a prefix of the log of ``new``."""
        old_cp, new_cp = _parse_unverified(old), _parse_unverified(new)
        if old_cp.size > new_cp.size:
            raise IntegrityError(
                f"the old checkpoint (size {old_cp.size}) is larger than the new one (size {new_cp.size}): "
                "a log never shrinks; swap them, or the newer one is a replayed old checkpoint"
            )
        hashes = self.leaf_hashes(new_cp.size)
        proof = merkle.consistency_proof(hashes, old_cp.size)
        return {
            "format": CONSISTENCY_FORMAT,
            "origin": self.origin,
            "old": old.note if isinstance(old, StoredCheckpoint) else old,
            "new": new.note if isinstance(new, StoredCheckpoint) else new,
            "proof": [_b64(h) for h in proof],
        }


def record_admin_action(conn: Any, action: str, details: dict[str, Any], *, now_ms: int | None = None) -> int:
    """Append an administrative action (token created or revoked, retention run, adopt, accepted rollback,
    ...) to the log, in the caller's write transaction; returns its leaf index.

    ``details`` holds strings, integers, booleans, lists, objects and nulls; the leaf commits to all of it.
    """
    if not _ACTION.fullmatch(action):
        raise ValueError(f"action {action!r} is not a lower-case name")
    if not dbutil.is_sqlite(conn):
        conn.execute("LOCK TABLE integrity_state IN SHARE ROW EXCLUSIVE MODE")
    text = canonical(details).decode("utf-8")
    details = json.loads(text)
    at = now_ms if now_ms is not None else int(time.time() * 1000)
    state = load_state(conn)
    obj = admin_leaf_object(index=state.size, action=action, at=at, details=details)
    lh = leaf_hash_of(obj)
    state.chain_head = chain_next(state.chain_head, lh)
    state.tree.append(lh)
    dbutil.execute(
        conn,
        "INSERT INTO integrity_leaves(idx, leaf_hash, chain_hash, version, action, action_at, details)"
        " VALUES (?, ?, ?, 2, ?, ?, ?)",
        (state.size, lh, state.chain_head, action, at, text),
    )
    index = state.size
    state.size += 1
    _save_state(conn, state)
    return index


def check_hook(conn: Any) -> list[CheckProblem]:
    """``Store.check`` hook: events whose time differs from what their leaf committed to (what retention
    decides on), and events without a leaf. Cheap, with no key: ``verify`` is the full check."""
    if dbutil.is_sqlite(conn):
        present = dbutil.one(
            conn, "SELECT 1 FROM pragma_table_info('integrity_leaves') WHERE name = 'event_time'"
        )
    else:
        present = dbutil.one(
            conn,
            "SELECT 1 FROM information_schema.columns WHERE table_name = 'integrity_leaves'"
            " AND column_name = 'event_time' AND table_schema = current_schema()",
        )
    if present is None:
        return []
    problems: list[CheckProblem] = []
    for row_id, event_id, t, committed_time in dbutil.rows(
        conn,
        "SELECT e.id, e.event_id, e.time, l.event_time FROM events e"
        " JOIN integrity_leaves l ON l.event_row = e.id"
        " WHERE l.event_time IS NOT NULL AND e.time <> l.event_time ORDER BY e.id LIMIT 20",
    ):
        problems.append(
            CheckProblem(
                "committed_time",
                f"event {row_id} ({event_id}) has time {format_time(t)}, but its leaf committed "
                f"{format_time(committed_time)}: it was changed (run `spintrail verify`)",
            )
        )
    count, first = unlogged_events(conn)
    if count:
        problems.append(
            CheckProblem(
                "not_logged",
                f"{count} event(s) have no leaf in the tamper-evident log (first: {', '.join(first)}): "
                "`spintrail integrity adopt` for a store from before the log, else run `spintrail verify`",
            )
        )
    return problems


def unlogged_events(conn: Any, *, limit: int = 5) -> tuple[int, list[str]]:
    """How many stored events have no leaf, and the event ids of the first ``limit``."""
    rows = dbutil.rows(
        conn,
        "SELECT e.event_id FROM events e LEFT JOIN integrity_leaves l ON l.event_row = e.id"
        " WHERE l.idx IS NULL ORDER BY e.id LIMIT ?",
        (limit,),
    )
    if not rows:
        return 0, []
    count = dbutil.one(
        conn,
        "SELECT count(*) FROM events e LEFT JOIN integrity_leaves l ON l.event_row = e.id"
        " WHERE l.idx IS NULL",
    )
    return int(count[0]), [r[0] for r in rows]


@dataclass(frozen=True, slots=True)
class AdminAction:
    """An administrative action as recorded in the log."""

    index: int
    action: str
    at: int
    details: dict[str, Any]

    def to_api(self) -> dict[str, Any]:
        return {
            "leaf": self.index,
            "action": self.action,
            "at": format_time(self.at),
            "details": self.details,
        }


def admin_actions(conn: Any, *, action: str | None = None, limit: int = 100) -> list[AdminAction]:
    """Recorded administrative actions, newest first (as stored: ``verify`` checks them against the log)."""
    text = "SELECT idx, action, action_at, details FROM integrity_leaves WHERE action IS NOT NULL"
    args: list[Any] = []
    if action:
        text += " AND action = ?"
        args.append(action)
    text += " ORDER BY idx DESC LIMIT ?"
    return [
        AdminAction(int(r[0]), r[1], int(r[2]), json.loads(r[3]))
        for r in dbutil.rows(conn, text, (*args, limit))
    ]


def _stored_raw_sha(conn: Any, event_row: int) -> bytes | None:
    """The SHA-256 the store kept beside an event's raw bytes (SQLite layout), if it can be read."""
    try:
        row = dbutil.one(
            conn, "SELECT r.sha256 FROM events e JOIN raw r ON r.id = e.raw_id WHERE e.id = ?", (event_row,)
        )
    except Exception:  # another backend's layout: the hook hashes the bytes instead
        return None
    return dbutil.as_bytes(row[0]) if row else None


def _parse_unverified(note: StoredCheckpoint | str) -> notes.Checkpoint:
    text = note.note if isinstance(note, StoredCheckpoint) else note
    split = text.rfind("\n\n")
    if split < 0:
        raise IntegrityError("not a signed checkpoint note: no blank line before the signatures")
    try:
        return notes._parse_checkpoint_text(text[: split + 1])
    except notes.CheckpointError as exc:
        raise IntegrityError(str(exc)) from None


def export_checkpoint(directory: Path, cp: StoredCheckpoint) -> Path:
    """Write a checkpoint to ``directory`` (``checkpoint-<size>-<time>.txt`` and ``latest.txt``), durably."""
    private.make_dirs(directory)
    path = directory / f"checkpoint-{cp.size:012d}-{cp.created_at}.txt"
    for target in (path, directory / "latest.txt"):
        tmp = target.with_name(target.name + ".tmp")
        with private.open_file(tmp, "w") as fp:
            fp.write(cp.note)
            fp.flush()
            os.fsync(fp.fileno())
        os.replace(tmp, target)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def read_checkpoint_files(paths: Iterable[Path]) -> list[tuple[str, str]]:
    """(label, note) of checkpoint files, and of every ``*.txt`` in directories (``latest.txt`` skipped)."""
    out: list[tuple[str, str]] = []
    for p in paths:
        files = sorted(f for f in p.glob("*.txt") if f.name != "latest.txt") if p.is_dir() else [p]
        for f in files:
            out.append((str(f), f.read_text()))
    return out


# --------------------------------------------------------------------------------------------- verify


@dataclass(slots=True)
class Problem:
    """One thing found wrong, naming the record (store id, event id, leaf index) or checkpoint."""

    kind: str
    message: str
    leaf: int | None = None
    record: int | None = None
    event_id: str | None = None
    checkpoint: str | None = None

    def to_api(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "message": self.message,
            "leaf": self.leaf,
            "record": self.record,
            "event_id": self.event_id,
            "checkpoint": self.checkpoint,
        }


@dataclass(slots=True)
class Report:
    """The outcome of ``verify``."""

    origin: str | None = None
    leaves: int = 0
    records_checked: int = 0
    raw_checked: int = 0
    raw_not_kept: int = 0
    index_checked: int = 0
    content_removed: int = 0
    checkpoints_checked: int = 0
    checkpoints_excused: int = 0
    admin_actions: dict[str, int] = field(default_factory=dict)
    latest_verified: dict[str, Any] | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_api(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "origin": self.origin,
            "leaves": self.leaves,
            "records_checked": self.records_checked,
            "raw_checked": self.raw_checked,
            "raw_not_kept": self.raw_not_kept,
            "index_checked": self.index_checked,
            "content_removed": self.content_removed,
            "checkpoints_checked": self.checkpoints_checked,
            "checkpoints_excused_by_rollback": self.checkpoints_excused,
            "admin_actions": dict(sorted(self.admin_actions.items())),
            "latest_verified_checkpoint": self.latest_verified,
            "problems": [p.to_api() for p in self.problems],
        }


@dataclass(slots=True)
class _Cp:
    label: str
    note: str
    parsed: notes.Checkpoint | None = None
    signed_at: int | None = None
    order: int = 0


def _rec_label(record: int | None, event_id: str | None) -> str:
    return f"record {record} (event {event_id})"


#: A retention run may not claim a time later than when it was recorded by more than this.
_CLOCK_SLACK_MS = 5 * 60_000


def _justifies(run: AdminAction, leaf: StoredLeaf) -> str | None:
    """Why the recorded retention run ``run``, which lists ``leaf``, does not justify removing it (``None``:
    it does)."""
    d = run.details
    if leaf.version < 2:
        return None  # the run checked the record against its version 1 leaf before removing it
    now = d.get("now")
    cutoffs = d.get("cutoffs") or {}
    cutoff = cutoffs.get(leaf.event_class or "")
    if not isinstance(now, int) or now > run.at + _CLOCK_SLACK_MS:
        return f"the run at leaf {run.index} claims a time after it was recorded"
    days = (d.get("policy") or {}).get(f"{leaf.event_class}_days")
    if (
        not isinstance(cutoff, int)
        or not isinstance(days, int)
        or days <= 0
        or cutoff != now - days * 86_400_000
    ):
        return f"the run at leaf {run.index} keeps {leaf.event_class} events forever or has an odd cut-off"
    if leaf.event_time is None or leaf.event_time >= cutoff:
        return (
            f"its committed time {format_time(leaf.event_time)} is not older than the run's "
            f"{leaf.event_class} cut-off {format_time(cutoff)}"
        )
    return None


def verify(
    store: Store,
    conns: dbutil.Connections,
    verifier_keys: Sequence[str],
    *,
    exported: Sequence[tuple[str, str]] = (),
    origin: str | None = None,
    start: int = 0,
    end: int | None = None,
    check_raw: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Check the store against the chain, the Merkle tree and every signed checkpoint (stored, and the
    ``exported`` copies given as (label, note)), using only the verifier keys. Reads only.

    Records are re-read and re-hashed for leaves ``start`` to ``end`` (all by default), with their raw bytes
    and search index; the chain, the tree, administrative actions and removals are always checked from the
    first leaf. Every problem names the record or checkpoint concerned.
    """
    conn = conns.get()
    report = Report(origin=origin)
    problems = report.problems

    # 1. checkpoints: signatures, origin
    stored_cps = _all_cps(conn)
    cps: list[_Cp] = [_Cp(f"stored checkpoint #{c.id}", c.note, order=i) for i, c in enumerate(stored_cps)]
    cps += [
        _Cp(f"exported checkpoint {label}", note, order=len(cps) + i)
        for i, (label, note) in enumerate(exported)
    ]
    for cp in cps:
        cp.parsed = _open_with_any(cp, verifier_keys, problems)
        if cp.parsed is None:
            continue
        if report.origin is None:
            report.origin = cp.parsed.origin
        if cp.parsed.origin != report.origin:
            problems.append(
                Problem(
                    "wrong_origin",
                    f"{cp.label} is for log {cp.parsed.origin!r}, not {report.origin!r}",
                    checkpoint=cp.label,
                )
            )
            cp.parsed = None
            continue
        cp.signed_at = checkpoint_time(cp.parsed)
    valid = [c for c in cps if c.parsed is not None]

    # 2. leaves: contiguity, chain, committed columns, content, raw bytes, index, removals judged against
    # the recorded retention runs; roots at checkpoint sizes
    wanted = {c.parsed.size for c in valid if c.parsed is not None}
    roots: dict[int, bytes] = {}
    if 0 in wanted:
        roots[0] = merkle.EMPTY_ROOT
    tree = merkle.CompactRange()
    chain = GENESIS
    expected = 0
    total = int(dbutil.one(conn, "SELECT count(*) FROM integrity_leaves")[0])
    last_record: tuple[int | None, str | None] = (None, None)
    actions: list[AdminAction] = []
    removals = _Removals(conn)
    checker = store.index_checker()
    try:
        for leaf in _leaves(conn):
            idx, row_id, event_id, lh = leaf.idx, leaf.event_row, leaf.event_id, leaf.leaf_hash
            if idx != expected:
                problems.append(
                    Problem(
                        "leaf_missing",
                        f"leaves {expected}..{idx - 1} are missing from the log (after "
                        f"{_rec_label(*last_record)}, before {_rec_label(row_id, event_id)}): records were "
                        "deleted together with their leaves",
                        leaf=expected,
                        record=row_id,
                        event_id=event_id,
                    )
                )
                expected = idx
            if chain_next(chain, lh) != leaf.chain_hash:
                problems.append(
                    Problem(
                        "chain_broken",
                        f"the hash chain breaks at leaf {idx}, {_rec_label(row_id, event_id)}: this leaf or "
                        "the one before it was changed, removed or moved",
                        leaf=idx,
                        record=row_id,
                        event_id=event_id,
                    )
                )
            chain = leaf.chain_hash
            tree.append(lh)
            expected = idx + 1
            if tree.size in wanted:
                roots[tree.size] = tree.root()
            if progress is not None and idx % 1000 == 0:
                progress(idx, total)
            committed = leaf.committed_hash()
            if leaf.version >= 2 and committed != lh:
                what = (
                    f"administrative action {leaf.action!r}" if leaf.action else _rec_label(row_id, event_id)
                )
                problems.append(
                    Problem(
                        "leaf_changed",
                        f"leaf {idx} ({what}) does not match what it commits to: its stored class, time, "
                        "content hash or action details were changed",
                        leaf=idx,
                        record=row_id,
                        event_id=event_id,
                    )
                )
                continue
            if leaf.action is not None:
                action = AdminAction(
                    idx, leaf.action, int(leaf.action_at or 0), json.loads(leaf.details or "{}")
                )
                actions.append(action)
                report.admin_actions[action.action] = report.admin_actions.get(action.action, 0) + 1
                continue
            if row_id is None:
                problems.append(
                    Problem("leaf_changed", f"leaf {idx} names neither a record nor an action", leaf=idx)
                )
                continue
            last_record = (row_id, event_id)
            record = store.get(row_id)
            if record is None:
                removals.judge(leaf, report)
                continue
            if idx < start or (end is not None and idx >= end):
                continue
            report.records_checked += 1
            if leaf.hash_of_record(record) != lh:
                problems.append(
                    Problem(
                        "record_changed",
                        f"{_rec_label(row_id, record.event_id)} does not match leaf {idx}: it was changed "
                        "after it was stored (or moved from another position)",
                        leaf=idx,
                        record=row_id,
                        event_id=record.event_id,
                    )
                )
                continue
            _check_index(checker, record, idx, report)
            if check_raw:
                _check_raw(store, leaf, record, report)
    finally:
        if checker is not None:
            checker.close()
    report.leaves = expected
    state = load_state(conn)
    if state.size != expected or state.chain_head != chain:
        problems.append(
            Problem(
                "state_mismatch",
                f"the log's recorded head (size {state.size}) does not match its leaves (size {expected}): "
                "leaves were added or removed outside spintrail",
            )
        )

    # 3. checkpoints: a restore accepted with `integrity accept-rollback` excuses the ones it discarded
    # An acceptance counts once a checkpoint signed after it covers it: the signer took the restored log
    # as its history (an acceptance merely written into the database excuses nothing).
    rollbacks = [
        (a.details.get("to"), a.at)
        for a in actions
        if a.action == "accept_rollback"
        and any(
            c.parsed is not None
            and c.parsed.size > a.index
            and c.signed_at is not None
            and c.signed_at >= a.at
            for c in valid
        )
    ]

    def excused(cp: _Cp) -> bool:
        assert cp.parsed is not None
        return any(
            isinstance(to, int) and cp.parsed.size > to and cp.signed_at is not None and cp.signed_at <= at
            for to, at in rollbacks
        )

    current = [c for c in valid if not excused(c)]
    report.checkpoints_excused = len(valid) - len(current)
    _check_order(current, problems)
    _check_equivocation(current, problems)
    stored_notes = {c.note.strip() for c in stored_cps}
    for cp in current:
        assert cp.parsed is not None
        if cp.label.startswith("exported") and cp.note.strip() not in stored_notes:
            problems.append(
                Problem(
                    "checkpoint_missing",
                    f"{cp.label} (size {cp.parsed.size}, signed {format_time(cp.signed_at)}) is not among "
                    "the checkpoints stored in the database: it was deleted from the database",
                    checkpoint=cp.label,
                )
            )
    for cp in current:
        assert cp.parsed is not None
        report.checkpoints_checked += 1
        size = cp.parsed.size
        if size > expected:
            problems.append(
                Problem(
                    "truncated",
                    f"{cp.label} covers {size} leaves but the log holds {expected}: the records at leaves "
                    f"{expected}..{size - 1} (after {_rec_label(*last_record)}) were removed",
                    leaf=expected,
                    checkpoint=cp.label,
                )
            )
        elif roots.get(size) != cp.parsed.root:
            named = [p for p in problems if p.leaf is not None and p.leaf < size]
            where = f"; see {len(named)} record problem(s) above" if named else ""
            problems.append(
                Problem(
                    "checkpoint_mismatch",
                    f"{cp.label} (size {size}) does not match the log: a leaf below {size} was "
                    f"changed{where}",
                    checkpoint=cp.label,
                )
            )
        elif report.latest_verified is None or size >= report.latest_verified["size"]:
            report.latest_verified = {
                "label": cp.label,
                "size": size,
                "root": _b64(cp.parsed.root),
                "signed_at": format_time(cp.signed_at),
            }

    # 4. records that are not in the log at all
    for row_id, event_id in dbutil.rows(
        conn,
        "SELECT e.id, e.event_id FROM events e LEFT JOIN integrity_leaves l ON l.event_row = e.id"
        " WHERE l.idx IS NULL ORDER BY e.id LIMIT 1000",
    ):
        problems.append(
            Problem(
                "not_logged",
                f"{_rec_label(row_id, event_id)} is in the store but not in the tamper-evident log: it was "
                "inserted outside spintrail (a store from before the log: `spintrail integrity adopt`)",
                record=row_id,
                event_id=event_id,
            )
        )
    if progress is not None:
        progress(total, total)
    return report


def _check_raw(store: Store, leaf: StoredLeaf, record: AuditRecord, report: Report) -> None:
    idx, row_id = leaf.idx, leaf.event_row
    label = _rec_label(row_id, record.event_id)
    try:
        raw = store.raw(record.id or 0)
    except Exception as exc:  # a damaged blob: zstd or the delta chain fails
        report.problems.append(
            Problem(
                "raw_changed",
                f"the raw bytes of {label} (leaf {idx}) cannot be read: {exc}",
                leaf=idx,
                record=row_id,
                event_id=record.event_id,
            )
        )
        return
    if raw is None:
        if leaf.version >= 2 and leaf.raw_kept:
            report.problems.append(
                Problem(
                    "raw_detached",
                    f"the raw bytes of {label} (leaf {idx}) are missing, though the leaf records that they "
                    "were kept: they were deleted or detached from the record",
                    leaf=idx,
                    record=row_id,
                    event_id=record.event_id,
                )
            )
        else:
            report.raw_not_kept += 1
    elif hashlib.sha256(raw).digest() != leaf.raw_sha256:
        report.problems.append(
            Problem(
                "raw_changed",
                f"the raw bytes of {label} (leaf {idx}) were changed",
                leaf=idx,
                record=row_id,
                event_id=record.event_id,
            )
        )
    else:
        report.raw_checked += 1


def _check_index(checker: IndexChecker | None, record: AuditRecord, idx: int, report: Report) -> None:
    """The search tags and full-text entry of a record still match it (where the store can tell)."""
    from spintrail.fulltext import index_text

    if checker is None:
        return
    state = checker.state(record)
    report.index_checked += 1
    wrong: list[str] = []
    if state.missing_tags:
        wrong.append(f"search tags missing: {', '.join(state.missing_tags[:5])}")
    if state.extra_tags:
        wrong.append(f"search tags it does not carry: {', '.join(state.extra_tags[:5])}")
    if state.has_text is not None and state.has_text != bool(index_text(record, {})):
        wrong.append(
            "the full-text entry is missing" if not state.has_text else "a full-text entry is unexpected"
        )
    if wrong:
        report.problems.append(
            Problem(
                "index_mismatch",
                f"{_rec_label(record.id, record.event_id)} (leaf {idx}): {'; '.join(wrong)}: searches and "
                "reports no longer find it as it was stored",
                leaf=idx,
                record=record.id,
                event_id=record.event_id,
            )
        )


class _Removals:
    """The removals recorded in the log (retention runs, and version 1 removals acknowledged by ``adopt``),
    read once before the leaves are walked, so each removed record is judged as it is met."""

    def __init__(self, conn: Any) -> None:
        intervals: list[tuple[int, int, AdminAction]] = []
        acknowledged: list[list[int]] = []
        for r in dbutil.rows(
            conn,
            "SELECT idx, action, action_at, details FROM integrity_leaves"
            " WHERE action IN ('retention', 'adopt') ORDER BY idx",
        ):
            try:
                action = AdminAction(int(r[0]), r[1], int(r[2] or 0), json.loads(r[3] or "{}"))
                listed = [(int(lo), int(hi)) for lo, hi in action.details.get("removed", [])]
                acked = [[int(lo), int(hi)] for lo, hi in action.details.get("acknowledged_removals", [])]
            except (TypeError, ValueError, AttributeError):
                continue  # a damaged action justifies nothing (and verify reports it as changed)
            if action.action == "retention":
                intervals += [(lo, hi, action) for lo, hi in listed]
            else:
                acknowledged += acked
        intervals.sort(key=lambda t: (t[0], t[1], t[2].index))
        self.los = [t[0] for t in intervals]
        self.his = [t[1] for t in intervals]
        self.runs = [t[2] for t in intervals]
        self.max_hi = list(itertools.accumulate(self.his, max))
        self.acknowledged = merge_ranges(acknowledged)

    def listing(self, index: int) -> Iterator[AdminAction]:
        """The retention runs whose list of removed leaves holds ``index``."""
        j = bisect.bisect_right(self.los, index) - 1
        while j >= 0 and self.max_hi[j] >= index:
            if self.his[j] >= index:
                yield self.runs[j]
            j -= 1

    def judge(self, leaf: StoredLeaf, report: Report) -> None:
        """Count a justified removal, or report the removed record."""
        reasons: list[str] = []
        justified = False
        for run in self.listing(leaf.idx):
            if run.index <= leaf.idx:
                continue
            why = _justifies(run, leaf)
            if why is None:
                justified = True
                break
            reasons.append(why)
        if not justified and leaf.version < 2 and in_ranges(leaf.idx, self.acknowledged):
            justified = True
        if justified:
            report.content_removed += 1
            return
        label = _rec_label(leaf.event_row, leaf.event_id)
        committed = (
            f" (committed: {leaf.event_class} event of {format_time(leaf.event_time)})"
            if leaf.version >= 2
            else ""
        )
        if leaf.removed_at is not None or reasons:
            why = "; ".join(reasons) or "no recorded retention run lists it"
            report.problems.append(
                Problem(
                    "unjustified_removal",
                    f"{label} at leaf {leaf.idx}{committed} was removed, and no recorded retention run "
                    f"justifies it ({why}): it was deleted",
                    leaf=leaf.idx,
                    record=leaf.event_row,
                    event_id=leaf.event_id,
                )
            )
        else:
            report.problems.append(
                Problem(
                    "record_missing",
                    f"{label} at leaf {leaf.idx}{committed} is missing from the store: it was deleted",
                    leaf=leaf.idx,
                    record=leaf.event_row,
                    event_id=leaf.event_id,
                )
            )


def _check_equivocation(cps: list[_Cp], problems: list[Problem]) -> None:
    """Two different signed roots for one size: the signer signed two histories."""
    by_size: dict[int, dict[bytes, _Cp]] = {}
    for cp in cps:
        assert cp.parsed is not None
        by_size.setdefault(cp.parsed.size, {}).setdefault(cp.parsed.root, cp)
    for size, found in sorted(by_size.items()):
        if len(found) > 1:
            labels = [c.label for c in found.values()]
            problems.append(
                Problem(
                    "equivocation",
                    f"{len(found)} different signed roots exist for size {size} ({', '.join(labels)}): the "
                    "log was rewritten and signed again",
                    checkpoint=labels[-1],
                )
            )


def _all_cps(conn: Any) -> list[StoredCheckpoint]:
    return [_cp(r) for r in dbutil.rows(conn, f"SELECT {_CP_COLUMNS} FROM integrity_checkpoints ORDER BY id")]


_LEAF_COLUMNS = (
    "idx, event_row, event_id, raw_sha256, ingest_token, leaf_hash, chain_hash, content_removed_at, version,"
    " event_class, event_time, content_sha256, raw_kept, action, action_at, details"
)


@dataclass(frozen=True, slots=True)
class StoredLeaf:
    """A row of ``integrity_leaves``: an event's leaf (``event_row`` set) or an administrative action's."""

    idx: int
    event_row: int | None
    event_id: str | None
    raw_sha256: bytes | None
    ingest_token: str | None
    leaf_hash: bytes
    chain_hash: bytes
    removed_at: int | None
    version: int
    event_class: str | None
    event_time: int | None
    content_sha256: bytes | None
    raw_kept: bool | None
    action: str | None
    action_at: int | None
    details: str | None

    def committed_hash(self) -> bytes | None:
        """The leaf hash re-derived from the stored columns alone (version 2; ``None`` for version 1 leaves,
        which commit to the content only), or ``None`` when the columns are incomplete."""
        if self.version < 2:
            return None
        try:
            if self.action is not None:
                obj = admin_leaf_object(
                    index=self.idx,
                    action=self.action,
                    at=int(self.action_at or 0),
                    details=json.loads(self.details or "null"),
                )
            else:
                if self.event_class is None or self.event_time is None or self.content_sha256 is None:
                    return None
                obj = event_leaf_object(
                    index=self.idx,
                    event_class=self.event_class,
                    time=self.event_time,
                    content_sha=self.content_sha256,
                )
        except ValueError:
            return None
        return leaf_hash_of(obj)

    def hash_of_record(self, record: AuditRecord) -> bytes:
        """The leaf hash ``record`` would have at this leaf."""
        raw_sha = self.raw_sha256 or b""
        if self.version < 2:
            obj = leaf_object(record, index=self.idx, raw_sha256=raw_sha, ingest_token=self.ingest_token)
        else:
            obj, _ = record_leaf(
                record,
                index=self.idx,
                raw_sha256=raw_sha,
                raw_kept=bool(self.raw_kept),
                ingest_token=self.ingest_token,
            )
        return leaf_hash_of(obj)


def _stored_leaf(r: Sequence[Any]) -> StoredLeaf:
    return StoredLeaf(
        int(r[0]),
        None if r[1] is None else int(r[1]),
        r[2],
        None if r[3] is None else dbutil.as_bytes(r[3]),
        r[4],
        dbutil.as_bytes(r[5]),
        dbutil.as_bytes(r[6]),
        r[7],
        int(r[8]),
        r[9],
        None if r[10] is None else int(r[10]),
        None if r[11] is None else dbutil.as_bytes(r[11]),
        None if r[12] is None else bool(r[12]),
        r[13],
        None if r[14] is None else int(r[14]),
        r[15],
    )


def _leaf_of_row(conn: Any, event_row: int) -> StoredLeaf | None:
    row = dbutil.one(conn, f"SELECT {_LEAF_COLUMNS} FROM integrity_leaves WHERE event_row = ?", (event_row,))
    return _stored_leaf(row) if row else None


def _leaves(conn: Any) -> Iterator[StoredLeaf]:
    last = -1
    while True:
        batch = dbutil.rows(
            conn,
            f"SELECT {_LEAF_COLUMNS} FROM integrity_leaves WHERE idx > ? ORDER BY idx LIMIT 5000",
            (last,),
        )
        if not batch:
            return
        for r in batch:
            yield _stored_leaf(r)
        last = int(batch[-1][0])


def _open_with_any(cp: _Cp, keys: Sequence[str], problems: list[Problem]) -> notes.Checkpoint | None:
    errors: list[str] = []
    for key in keys:
        try:
            return notes.open_checkpoint(cp.note, key)
        except notes.CheckpointError as exc:
            errors.append(str(exc))
    unknown = all("no signature by key" in e for e in errors)
    problems.append(
        Problem(
            "unknown_key" if unknown else "bad_signature",
            f"{cp.label} is not signed by the verifier key ({'; '.join(errors) or 'no key given'}): "
            + ("the signing key was swapped" if unknown else "it was altered or forged"),
            checkpoint=cp.label,
        )
    )
    return None


def _check_order(cps: list[_Cp], problems: list[Problem]) -> None:
    """Checkpoints never go backwards: a later signature has a size and time at least those before it."""
    stored = [c for c in cps if c.label.startswith("stored")]
    best: _Cp | None = None
    for cp in stored:
        assert cp.parsed is not None
        if best is not None:
            assert best.parsed is not None
            older_time = (
                cp.signed_at is not None and best.signed_at is not None and cp.signed_at < best.signed_at
            )
            if cp.parsed.size < best.parsed.size or older_time:
                problems.append(
                    Problem(
                        "replayed",
                        f"{cp.label} (size {cp.parsed.size}, signed {format_time(cp.signed_at)}) comes after "
                        f"{best.label} (size {best.parsed.size}, signed {format_time(best.signed_at)}): an "
                        "old "
                        "checkpoint was replayed",
                        checkpoint=cp.label,
                    )
                )
                continue
        best = cp
    timed = sorted((c for c in cps if c.signed_at is not None), key=lambda c: (c.signed_at, c.order))
    for a, b in itertools.pairwise(timed):
        assert a.parsed is not None and b.parsed is not None
        if b.parsed.size < a.parsed.size:
            problems.append(
                Problem(
                    "replayed",
                    f"{b.label} (size {b.parsed.size}, signed {format_time(b.signed_at)}) is smaller than "
                    f"{a.label} signed before it (size {a.parsed.size}): the log was rolled back or an old "
                    "checkpoint was replayed",
                    checkpoint=b.label,
                )
            )


# --------------------------------------------------------------------------------------------- bundles


@dataclass(slots=True)
class BundleResult:
    ok: bool
    kind: str
    summary: str
    problems: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def verify_bundle(bundle: dict[str, Any], verifier_key: str) -> BundleResult:
    """Check an evidence or consistency bundle with nothing but the verifier key."""
    if not isinstance(bundle, dict):
        return BundleResult(False, "unknown", "not a bundle", ["the file is not a JSON object"])
    kind = bundle.get("format")
    try:
        if kind == BUNDLE_FORMAT:
            return _verify_evidence(bundle, verifier_key)
        if kind == CONSISTENCY_FORMAT:
            return _verify_consistency(bundle, verifier_key)
    except (KeyError, TypeError, ValueError, IntegrityError) as exc:
        return BundleResult(False, str(kind), "malformed bundle", [f"malformed bundle: {exc}"])
    return BundleResult(
        False,
        str(kind),
        "unknown bundle format",
        [f"format {kind!r} is neither {BUNDLE_FORMAT} nor {CONSISTENCY_FORMAT}"],
    )


def _verify_evidence(bundle: dict[str, Any], key: str) -> BundleResult:
    problems: list[str] = []
    try:
        cp = notes.open_checkpoint(bundle["checkpoint"], key)
    except notes.CheckpointError as exc:
        return BundleResult(False, "evidence", "checkpoint not trusted", [f"checkpoint: {exc}"])
    leaf = bundle["leaf"]
    obj = leaf["data"]
    index = int(leaf["index"])
    lh = leaf_hash_of(obj)
    if "hash" in leaf and _unb64(leaf["hash"], "leaf hash") != lh:
        problems.append("the leaf hash does not match the leaf data")
    if obj.get("index") != index:
        problems.append(f"the leaf data says index {obj.get('index')}, the bundle says {index}")
    proof = [_unb64(h, "proof hash") for h in bundle["inclusion_proof"]]
    if not merkle.verify_inclusion(lh, index, cp.size, proof, cp.root):
        problems.append(
            f"the inclusion proof does not lead from leaf {index} to the checkpoint's root (size {cp.size})"
        )
    if obj.get("v", 1) >= 2:
        content = leaf.get("content")
        if not isinstance(content, dict):
            return BundleResult(False, "evidence", "malformed bundle", ["the leaf's content is missing"])
        if content_sha256(content).hex() != obj.get("content_sha256"):
            problems.append("the leaf's content does not hash to the signed leaf's content_sha256")
        if content.get("time") != obj.get("time") or event_class(content.get("type")) != obj.get("class"):
            problems.append("the leaf's content disagrees with the signed leaf's class or time")
        obj = {**content, "index": index}
    record = bundle.get("record") or {}
    for name in API_FIELDS:
        if name not in record:
            continue
        want = obj.get(name)
        if name in ("time", "received_at"):
            want = format_time(want)
        if record[name] != want:
            problems.append(f"record field {name} ({record[name]!r}) differs from the signed leaf ({want!r})")
    if bundle.get("raw_sha256") not in (None, obj.get("raw_sha256")):
        problems.append("raw_sha256 differs from the signed leaf")
    if "raw" in bundle:
        raw = _unb64(bundle["raw"], "raw")
        if hashlib.sha256(raw).hexdigest() != obj.get("raw_sha256"):
            problems.append("the raw bytes in the bundle do not hash to the signed leaf's raw_sha256")
    signed_at = format_time(checkpoint_time(cp))
    summary = (
        f"event {obj.get('event_id')} ({obj.get('type')} by {obj.get('user')} at "
        f"{format_time(obj.get('time'))}) "
        f"is entry {index} of log {cp.origin}, covered by the checkpoint of size {cp.size} signed {signed_at}"
    )
    return BundleResult(
        not problems,
        "evidence",
        summary,
        problems,
        {"origin": cp.origin, "tree_size": cp.size, "index": index, "event_id": obj.get("event_id")},
    )


def _verify_consistency(bundle: dict[str, Any], key: str) -> BundleResult:
    try:
        old = notes.open_checkpoint(bundle["old"], key)
        new = notes.open_checkpoint(bundle["new"], key)
    except notes.CheckpointError as exc:
        return BundleResult(False, "consistency", "checkpoint not trusted", [f"checkpoint: {exc}"])
    if old.origin != new.origin:
        return BundleResult(False, "consistency", "different logs", [f"{old.origin!r} vs {new.origin!r}"])
    if old.size > new.size:
        return BundleResult(
            False,
            "consistency",
            "the log shrank",
            [f"the new checkpoint (size {new.size}) is smaller than the old one (size {old.size})"],
        )
    proof = [_unb64(h, "proof hash") for h in bundle["proof"]]
    ok = merkle.verify_consistency(old.size, new.size, old.root, new.root, proof)
    summary = (
        f"log {old.origin} grew from {old.size} to {new.size} entries without changing the first {old.size}"
    )
    return BundleResult(
        ok,
        "consistency",
        summary if ok else "the consistency proof does not hold",
        [] if ok else [f"the log of size {old.size} is not a prefix of the log of size {new.size}"],
        {"origin": old.origin, "old_size": old.size, "new_size": new.size},
    )


# --------------------------------------------------------------------------------------------- background


class Checkpointer:
    """Signs a checkpoint every ``every_events`` new events or ``every_seconds`` seconds (also when idle),
    and runs small periodic jobs (``tick`` callbacks) in the same background thread."""

    def __init__(
        self,
        log_: IntegrityLog,
        signer: str,
        *,
        every_events: int,
        every_seconds: float,
        ticks: Sequence[Callable[[], None]] = (),
    ) -> None:
        self.log = log_
        self.signer = signer
        self.every_events = every_events
        self.every_seconds = every_seconds
        self.ticks = list(ticks)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spintrail-checkpointer", daemon=True)
        self._last_size = -1
        self._last_time = 0.0
        #: Wall-clock time (epoch seconds) of the last signed checkpoint, None before the first.
        self.last_signed_at: float | None = None

    def start(self) -> None:
        latest = self.log.latest()
        if latest is not None:
            self._last_size = latest.size
            self._last_time = time.monotonic() - max(0.0, time.time() - latest.created_at / 1000)
            self.last_signed_at = latest.created_at / 1000
        self._thread.start()

    def _due(self) -> bool:
        size = self.log.state().size
        if self._last_size < 0 or size - self._last_size >= self.every_events:
            return True
        return time.monotonic() - self._last_time >= self.every_seconds

    def run_once(self) -> StoredCheckpoint | None:
        """Sign a checkpoint if one is due."""
        if not self._due():
            return None
        cp = self.log.sign(self.signer)
        self._last_size, self._last_time = cp.size, time.monotonic()
        self.last_signed_at = time.time()
        return cp

    def _run(self) -> None:
        poll = min(1.0, self.every_seconds)
        signing = dbutil.Throttled(log, "integrity: signing a checkpoint")
        jobs = dbutil.Throttled(log, "integrity: a background job")
        refused = ""
        while not self._stop.wait(poll):
            try:
                self.run_once()
                signing.succeeded()
                refused = ""
            except SignerRefused as exc:  # said once, not every second: nothing is signed until it is fixed
                if str(exc) != refused:
                    log.error("integrity: not signing: %s", exc)
                    refused = str(exc)
            except Exception as exc:
                if dbutil.is_unreachable(exc):  # the database is away: once per interval, until it is back
                    signing.failed(exc)
                else:
                    log.exception("integrity: signing a checkpoint failed; retrying")
            for tick in self.ticks:
                try:
                    tick()
                    jobs.succeeded()
                except Exception as exc:
                    if dbutil.is_unreachable(exc):
                        jobs.failed(exc)
                    else:
                        log.exception("integrity: a background job failed")

    def stop(self) -> None:
        """Stop, signing a last checkpoint when events arrived since the previous one."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        try:
            if self.log.state().size != self._last_size:
                self.log.sign(self.signer)
        except SignerRefused as exc:
            log.error("integrity: no final checkpoint: %s", exc)
        except Exception:
            log.exception("integrity: the final checkpoint could not be signed")
        for tick in self.ticks:
            try:
                tick()
            except Exception:
                log.exception("integrity: a background job failed")
