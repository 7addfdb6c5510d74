"""The tamper-evident log: every stored event is a leaf of an append-only log, hash-chained and in an
RFC 6962 Merkle tree, with signed checkpoints, inclusion and consistency proofs, and offline verification.

Leaves
------
Leaf *i* (0-based, in commit order) commits to the canonical record and the SHA-256 of the raw bytes kept
(``scrub.py``) and the name of the ingest token::

    leaf data  = b"spintrail-leaf/v1\\n" || JCS({"v": 1, "index": i, "id": ..., "event_id": ...,
                 "received_at": ms, "time": ms, <every record field>, "raw_sha256": hex, "ingest_token": ...})
    leaf hash  = SHA-256(0x00 || leaf data)                           (RFC 6962 leaf hash)
    chain[i]   = SHA-256(chain[i-1] || leaf hash[i]),  chain[-1] = 32 zero bytes

JCS is RFC 8785 canonical JSON; records hold only strings, integers, lists and nulls, for which sorted keys
and compact separators with UTF-8 output are exactly JCS. Leaves live in their own table
(``integrity_leaves``) and are never deleted: retention and redaction remove content (``forget_content``),
and the log still verifies because leaves commit to the hash of the raw bytes, not the bytes.

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
import hashlib
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spintrail import checkpoint as notes
from spintrail import dbutil, merkle
from spintrail.query import FilterError, parse_time
from spintrail.record import API_FIELDS, LIST_FIELDS, TEXT_FIELDS, AuditRecord, format_time
from spintrail.store.base import Store, Written

log = logging.getLogger(__name__)

LEAF_PREFIX = b"spintrail-leaf/v1\n"
GENESIS = bytes(32)
BUNDLE_FORMAT = "spintrail-evidence/v1"
CONSISTENCY_FORMAT = "spintrail-consistency/v1"

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
        )
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
        )
    ],
}


class IntegrityError(RuntimeError):
    """A proof cannot be made (unknown event, no checkpoint yet, altered record); the message says why."""


# --------------------------------------------------------------------------------------------- leaves


def leaf_object(
    record: AuditRecord, *, index: int, raw_sha256: bytes, ingest_token: str | None
) -> dict[str, Any]:
    """The object a leaf commits to (times as epoch milliseconds)."""
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


def canonical(obj: Any) -> bytes:
    """RFC 8785 (JCS) bytes of a value made of strings, integers, lists, objects and nulls."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass")


def leaf_data(obj: dict[str, Any]) -> bytes:
    return LEAF_PREFIX + canonical(obj)


def leaf_hash_of(obj: dict[str, Any]) -> bytes:
    return merkle.leaf_hash(leaf_data(obj))


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
            obj = leaf_object(
                item.record, index=state.size, raw_sha256=raw_sha, ingest_token=item.ingest_token
            )
            lh = leaf_hash_of(obj)
            state.chain_head = chain_next(state.chain_head, lh)
            state.tree.append(lh)
            rows.append(
                (state.size, w.id, item.record.event_id, raw_sha, item.ingest_token, lh, state.chain_head)
            )
            state.size += 1
        conn.cursor().executemany(
            dbutil.sql(
                conn,
                "INSERT INTO integrity_leaves(idx, event_row, event_id, raw_sha256, ingest_token, leaf_hash,"
                " chain_hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
            ),
            rows,
        )
        _save_state(conn, state)

    def backfill(self, *, chunk: int = 2000) -> int:
        """Give leaves to events stored before the log existed (an upgrade): only when the log is empty,
        so an event slipped into the database later is reported by ``verify`` instead of adopted."""
        conn = self.conns.get()
        if load_state(conn).size:
            return 0
        from spintrail.store.base import PreparedEvent

        total = 0
        while True:
            with dbutil.transaction(conn, lock="integrity_state"):
                rows = dbutil.rows(
                    conn,
                    "SELECT e.id FROM events e LEFT JOIN integrity_leaves l ON l.event_row = e.id"
                    " WHERE l.event_row IS NULL ORDER BY e.id LIMIT ?",
                    (chunk,),
                )
                written: list[Written] = []
                for (row_id,) in rows:
                    record = self.store.get(int(row_id))
                    if record is None:
                        continue
                    raw = self.store.raw(int(row_id)) or b""
                    item = PreparedEvent(record=record, raw=raw, raw_sha256=_stored_raw_sha(conn, row_id))
                    written.append(Written(item, int(row_id)))
                if written:
                    self.hook(conn, written)
            total += len(written)
            if len(rows) < chunk:
                break
        if total:
            log.warning(
                "integrity: %d events stored before the tamper-evident log existed were added to it", total
            )
        return total

    def forget_content(self, conn: Any, event_rows: Iterable[int], reason: str) -> None:
        """Mark records whose content retention or redaction removed (call in the same transaction as the
        delete). Their leaves stay; ``verify`` reports them as removed, not as tampered."""
        now = int(time.time() * 1000)
        conn.cursor().executemany(
            dbutil.sql(
                conn,
                "UPDATE integrity_leaves SET content_removed_at = ?, content_removed_reason = ?"
                " WHERE event_row = ?",
            ),
            [(now, reason, int(r)) for r in event_rows],
        )

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
        with self._sign_lock:
            conn = self.conns.get()
            with dbutil.transaction(conn, lock="integrity_state"):
                state = load_state(conn)
                now = now_ms if now_ms is not None else int(time.time() * 1000)
                cp = notes.Checkpoint(
                    origin=self.origin,
                    size=state.size,
                    root=state.root,
                    extensions=(f"time {format_time(now)}",),
                )
                note = notes.sign_checkpoint(cp, signer)
                cur = dbutil.execute(
                    conn,
                    "INSERT INTO integrity_checkpoints(size, root, created_at, note) VALUES (?, ?, ?, ?)"
                    " RETURNING id",
                    (state.size, state.root, now, note),
                )
                stored = StoredCheckpoint(int(cur.fetchall()[0][0]), state.size, state.root, now, note)
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
                    "(checkpoint_seconds) and try again"
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
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"checkpoint-{cp.size:012d}-{cp.created_at}.txt"
    for target in (path, directory / "latest.txt"):
        tmp = target.with_name(target.name + ".tmp")
        with tmp.open("w") as fp:
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
    content_removed: int = 0
    checkpoints_checked: int = 0
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
            "content_removed": self.content_removed,
            "checkpoints_checked": self.checkpoints_checked,
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
    ``exported`` copies given as (label, note)), using only the verifier keys.

    Records are re-read and re-hashed for leaves ``start`` to ``end`` (all by default); the chain and the
    tree are always checked from the first leaf. Every problem names the record or checkpoint concerned.
    """
    conn = conns.get()
    report = Report(origin=origin)
    problems = report.problems

    # 1. checkpoints: signatures, origin, order (replays)
    cps: list[_Cp] = [
        _Cp(f"stored checkpoint #{c.id}", c.note, order=i) for i, c in enumerate(_all_cps(conn))
    ]
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
    _check_order(valid, problems)

    # 2. leaves: contiguity, chain, content, raw bytes; roots at every checkpoint size
    wanted = {c.parsed.size for c in valid if c.parsed is not None}
    roots: dict[int, bytes] = {}
    if 0 in wanted:
        roots[0] = merkle.EMPTY_ROOT
    tree = merkle.CompactRange()
    chain = GENESIS
    expected = 0
    total = int(dbutil.one(conn, "SELECT count(*) FROM integrity_leaves")[0])
    last_record: tuple[int | None, str | None] = (None, None)
    for idx, row_id, event_id, raw_sha, token, lh, ch, removed in _leaves(conn):
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
        if chain_next(chain, lh) != ch:
            problems.append(
                Problem(
                    "chain_broken",
                    f"the hash chain breaks at leaf {idx}, {_rec_label(row_id, event_id)}: this leaf or the "
                    "one "
                    "before it was changed, removed or moved",
                    leaf=idx,
                    record=row_id,
                    event_id=event_id,
                )
            )
        chain = ch
        tree.append(lh)
        expected = idx + 1
        if tree.size in wanted:
            roots[tree.size] = tree.root()
        last_record = (row_id, event_id)
        if idx < start or (end is not None and idx >= end):
            continue
        record = store.get(row_id)
        if record is None:
            if removed is not None:
                report.content_removed += 1
            else:
                problems.append(
                    Problem(
                        "record_missing",
                        f"{_rec_label(row_id, event_id)} at leaf {idx} is missing from the store: it was "
                        "deleted",
                        leaf=idx,
                        record=row_id,
                        event_id=event_id,
                    )
                )
            continue
        report.records_checked += 1
        obj = leaf_object(record, index=idx, raw_sha256=raw_sha, ingest_token=token)
        if leaf_hash_of(obj) != lh:
            problems.append(
                Problem(
                    "record_changed",
                    f"{_rec_label(row_id, record.event_id)} does not match leaf {idx}: it was changed after "
                    "it "
                    "was stored (or moved from another position)",
                    leaf=idx,
                    record=row_id,
                    event_id=record.event_id,
                )
            )
        if check_raw:
            try:
                raw = store.raw(row_id)
            except Exception as exc:  # a damaged blob: zstd or the delta chain fails
                problems.append(
                    Problem(
                        "raw_changed",
                        f"the raw bytes of {_rec_label(row_id, record.event_id)} (leaf {idx}) cannot be "
                        f"read: {exc}",
                        leaf=idx,
                        record=row_id,
                        event_id=record.event_id,
                    )
                )
                continue
            if raw is None:
                report.raw_not_kept += 1
            elif hashlib.sha256(raw).digest() != raw_sha:
                problems.append(
                    Problem(
                        "raw_changed",
                        f"the raw bytes of {_rec_label(row_id, record.event_id)} (leaf {idx}) were changed",
                        leaf=idx,
                        record=row_id,
                        event_id=record.event_id,
                    )
                )
            else:
                report.raw_checked += 1
        if progress is not None and idx % 1000 == 0:
            progress(idx, total)
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

    # 3. every checkpoint must match the log at its size
    for cp in valid:
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
        " WHERE l.event_row IS NULL ORDER BY e.id LIMIT 1000",
    ):
        problems.append(
            Problem(
                "not_logged",
                f"{_rec_label(row_id, event_id)} is in the store but not in the tamper-evident log: it was "
                "inserted outside spintrail",
                record=row_id,
                event_id=event_id,
            )
        )
    if progress is not None:
        progress(total, total)
    return report


def _all_cps(conn: Any) -> list[StoredCheckpoint]:
    return [_cp(r) for r in dbutil.rows(conn, f"SELECT {_CP_COLUMNS} FROM integrity_checkpoints ORDER BY id")]


def _leaves(conn: Any) -> Iterator[tuple[int, int, str, bytes, str | None, bytes, bytes, int | None]]:
    last = -1
    while True:
        batch = dbutil.rows(
            conn,
            "SELECT idx, event_row, event_id, raw_sha256, ingest_token, leaf_hash, chain_hash,"
            " content_removed_at"
            " FROM integrity_leaves WHERE idx > ? ORDER BY idx LIMIT 5000",
            (last,),
        )
        if not batch:
            return
        for r in batch:
            yield (
                int(r[0]),
                int(r[1]),
                r[2],
                dbutil.as_bytes(r[3]),
                r[4],
                dbutil.as_bytes(r[5]),
                dbutil.as_bytes(r[6]),
                r[7],
            )
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
        while not self._stop.wait(poll):
            try:
                self.run_once()
                signing.succeeded()
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
        except Exception:
            log.exception("integrity: the final checkpoint could not be signed")
        for tick in self.ticks:
            try:
                tick()
            except Exception:
                log.exception("integrity: a background job failed")
