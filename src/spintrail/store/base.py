"""The store contract: append-only writes with group commit, and the reads every query needs.

Error vocabulary::

    StoreError
     +-- StoreUnavailable   the store cannot commit or answer now (ingest answers 503; echo retries)
     +-- StoreOverloaded    the write queue is full (ingest answers 503 with Retry-After)
     +-- StoreFull          the disk is full (ingest answers 507)
"""

from __future__ import annotations

import abc
import base64
import binascii
import dataclasses
import functools
import hashlib
import inspect
import itertools
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from spintrail import scope
from spintrail.query import Filters
from spintrail.record import API_FIELDS, LIST_FIELDS, AuditRecord


class StoreError(Exception):
    """Base of every store failure."""


class StoreUnavailable(StoreError):
    """The store cannot commit or answer right now."""


class StoreOverloaded(StoreError):
    """Too many events are waiting to be committed."""


class StoreMissing(StoreUnavailable):
    """There is no store where a read-only command was pointed."""


class StoreNeedsMigration(StoreError):
    """A store opened read-only was written by an older version and needs a schema upgrade first."""


class StoreFull(StoreError):
    """The disk holding the store is full."""


@dataclass(slots=True)
class PreparedEvent:
    """One event ready to append: its record, the raw bytes to keep, and the text to index.

    ``raw`` is what the ``raw_events`` setting keeps (the bytes as received, or the redacted event
    re-serialized); with ``keep_raw`` false nothing is kept. ``raw_sha256`` is the SHA-256 of ``raw`` (the
    tamper-evident log commits to it even when the bytes are not kept). ``event`` is the redacted echo event
    (what forwarding sends), ``ingest_token`` the name of the token the event was sent with, and
    ``secret_hashes`` the ``hmac-sha256:`` values redaction put in it (indexed for ``spintrail hash``).
    """

    record: AuditRecord
    raw: bytes
    text: str = ""
    event: dict[str, Any] | None = None
    keep_raw: bool = True
    raw_sha256: bytes | None = None
    ingest_token: str | None = None
    secret_hashes: tuple[str, ...] = ()
    #: The store id to keep (when copying a whole store); ``None``: the store assigns the next id.
    id: int | None = None
    #: ``normalize.natural_key`` of the event: a second idempotency key shared by the live event and its
    #: copy backfilled from Gate (whichever is stored first is kept, the other counts as a duplicate).
    natural_key: str | None = None
    #: Where the event came from when not from echo (JSON, e.g. ``{"provenance": "gate", ...}``).
    provenance: str | None = None


def natural_key_digest(item: PreparedEvent) -> bytes | None:
    """The 16 bytes stored for an event's natural key (``event_keys.key``), ``None`` without one."""
    if item.natural_key is None:
        return None
    return hashlib.sha256(item.natural_key.encode("utf-8", "surrogatepass")).digest()[:16]


#: Schema of the natural keys and provenance of events (SQLite and PostgreSQL alike, ``{blob}`` the
#: backend's binary type): only events that have one get a row.
KEYS_MIGRATIONS_SQL: list[tuple[int, str]] = [
    (
        1,
        "CREATE TABLE IF NOT EXISTS event_keys (key {blob} PRIMARY KEY, event_row BIGINT NOT NULL);"
        " CREATE TABLE IF NOT EXISTS event_provenance"
        " (event_row BIGINT PRIMARY KEY, provenance TEXT NOT NULL)",
    ),
]


@dataclass(slots=True)
class AppendResult:
    """What happened to one appended event: its store id, and whether it was already stored."""

    id: int
    duplicate: bool


@dataclass(slots=True)
class Written:
    """An event newly written in the current transaction (given to write hooks)."""

    item: PreparedEvent
    id: int


#: Called inside the writer's transaction, after a group's events are written and before COMMIT, with the
#: backend's connection and the events newly written (duplicates excluded). Whatever a hook writes commits
#: or rolls back with the events: this is how the forwarding outbox and the tamper-evident log stay exact.
WriteHook = Callable[[Any, list[Written]], None]


@dataclass(slots=True)
class CheckProblem:
    """One inconsistency found by ``Store.check``: which check found it, and what is wrong."""

    check: str
    message: str


@dataclass(slots=True)
class CheckReport:
    """The outcome of ``Store.check``: the checks run (name -> items examined) and the problems found."""

    backend: str
    checks: dict[str, int] = field(default_factory=dict)
    problems: list[CheckProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, check: str, message: str) -> None:
        self.problems.append(CheckProblem(check, message))


#: Problems listed per check before the rest are only counted.
MAX_LISTED = 20


class CheckListing:
    """Adds problems of one check to the report, listing the first ``MAX_LISTED`` and counting the rest."""

    def __init__(self, report: CheckReport, check: str) -> None:
        self.report = report
        self.check = check
        self.count = 0

    def add(self, message: str) -> None:
        self.count += 1
        if self.count <= MAX_LISTED:
            self.report.add(self.check, message)

    def close(self) -> None:
        if self.count > MAX_LISTED:
            self.report.add(self.check, f"... and {self.count - MAX_LISTED} more problems of this kind")


@dataclass(slots=True)
class IndexState:
    """How one record is indexed for search: the tags ``kind:value`` it is missing or has in excess, and
    whether it has a full-text entry (``None``: the store cannot tell)."""

    missing_tags: list[str] = field(default_factory=list)
    extra_tags: list[str] = field(default_factory=list)
    has_text: bool | None = None


class IndexChecker(abc.ABC):
    """Compares records with the search index, for ``verify`` (reads only; ``close`` when done)."""

    @abc.abstractmethod
    def state(self, record: AuditRecord) -> IndexState:
        """How ``record`` is indexed."""

    def close(self) -> None:  # noqa: B027 - most checkers hold nothing
        """Release what the checker holds."""


def expected_tags(record: AuditRecord) -> list[str]:
    """The search tags (``kind:value``) of a record, as the stores file them."""
    from spintrail.query import LIST_FILTERS

    tags = (f"{kind}:{value}" for kind, name in LIST_FILTERS.items() for value in getattr(record, name))
    return list(dict.fromkeys(tags))


#: Called by ``Store.check`` with a read connection inside the check's snapshot; returns the problems a
#: component (forwarding outbox, tamper-evident log) finds in its own tables.
CheckHook = Callable[[Any], list[CheckProblem]]


@dataclass(slots=True)
class Page:
    """A page of records, newest first, with the cursor of the next page (``None`` at the end)."""

    records: list[AuditRecord]
    next_cursor: str | None = None


@dataclass(slots=True)
class StoreStats:
    """Sizes for health pages and benchmarks."""

    events: int = 0
    raw_bytes: int = 0
    stored_raw_bytes: int = 0
    extra: dict[str, int] = field(default_factory=dict)


#: A computed field ``select`` and ``count_by`` accept besides the record's own: the UTC date of ``time``
#: as ``YYYY-MM-DD``.
DAY = "day"

#: Every field name ``select`` and ``count_by`` accept.
SELECTABLE: tuple[str, ...] = (*API_FIELDS, DAY)


def check_fields(fields: Sequence[str]) -> None:
    """``ValueError`` naming the first field ``select``/``count_by`` does not know."""
    for f in fields:
        if f not in SELECTABLE:
            raise ValueError(f"unknown field {f!r}: use one of {', '.join(SELECTABLE)}")


def utc_day(ms: int) -> str:
    """The UTC date of epoch milliseconds, ``YYYY-MM-DD``."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d")


#: SQL (SQLite and PostgreSQL alike) for the UTC day number of an epoch-ms column ``{t}``: days since
#: 1970-01-01, rounded down (integer division alone would round times before 1970 towards zero). Grouping by
#: this integer is much cheaper than formatting a date per row; ``day_name`` turns it into ``YYYY-MM-DD``.
DAY_NUMBER_SQL = "(CASE WHEN {t} >= 0 THEN {t} / 86400000 ELSE -((-({t} + 1)) / 86400000) - 1 END)"

_DAY_MS = 86_400_000


@functools.lru_cache(maxsize=4096)
def day_name(day_number: int | None) -> str | None:
    """The ``YYYY-MM-DD`` of a UTC day number (``DAY_NUMBER_SQL``); ``None`` outside years 1 to 9999."""
    if day_number is None:
        return None
    try:
        return utc_day(day_number * _DAY_MS)
    except (OverflowError, OSError, ValueError):
        return None


def field_value(record: AuditRecord, name: str) -> Any:
    """One ``SELECTABLE`` field of a record (``day`` computed from ``time``)."""
    if name == DAY:
        return utc_day(record.time)
    return getattr(record, name)


def encode_cursor(time: int, id_: int) -> str:
    """An opaque keyset cursor for the position (time, id)."""
    return base64.urlsafe_b64encode(f"{time}:{id_}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, int]:
    """The position behind a cursor; ``ValueError`` with a clear message when it is not ours."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        time_s, id_s = text.split(":")
        time_, id_ = int(time_s), int(id_s)
        if not (abs(time_) < 2**63 and 0 <= id_ < 2**63):
            raise ValueError(text)
        return time_, id_
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValueError(
            "cursor is not valid: pass the next_cursor value of a previous answer unchanged"
        ) from None


#: Matches no application: what a read is narrowed to when nothing in the caller's scope can match.
_NO_APPLICATION = "\x00no application in scope"


def _scoped_filters(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Narrow the ``filters`` argument of a read to the current application scope (see ``scope.py``)."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if scope.current() is not None:
            bound = sig.bind(*args, **kwargs)
            filters = bound.arguments.get("filters")
            if filters is None:  # an optional filters argument left out: everything, so narrow that
                filters = Filters()
            if isinstance(filters, Filters):
                narrowed = scope.restrict(filters)
                if narrowed is None:
                    narrowed = dataclasses.replace(filters, application=(_NO_APPLICATION,))
                bound.arguments["filters"] = narrowed
                return fn(*bound.args, **bound.kwargs)
        return fn(*args, **kwargs)

    wrapper.__spintrail_scoped__ = True  # type: ignore[attr-defined]
    return wrapper


def _scoped_record(fn: Callable[..., AuditRecord | None]) -> Callable[..., AuditRecord | None]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> AuditRecord | None:
        record = fn(*args, **kwargs)
        if record is None or scope.current() is None:
            return record
        return record if scope.allows(record) else None

    wrapper.__spintrail_scoped__ = True  # type: ignore[attr-defined]
    return wrapper


def _scoped_raw(fn: Callable[..., bytes | None]) -> Callable[..., bytes | None]:
    @functools.wraps(fn)
    def wrapper(self: Store, id_: int, *args: Any, **kwargs: Any) -> bytes | None:
        if scope.current() is not None and self.get(id_) is None:
            return None
        return fn(self, id_, *args, **kwargs)

    wrapper.__spintrail_scoped__ = True  # type: ignore[attr-defined]
    return wrapper


def _scoped_records(fn: Callable[..., list[AuditRecord]]) -> Callable[..., list[AuditRecord]]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> list[AuditRecord]:
        records = fn(*args, **kwargs)
        if scope.current() is None:
            return records
        return [r for r in records if scope.allows(r)]

    wrapper.__spintrail_scoped__ = True  # type: ignore[attr-defined]
    return wrapper


_SCOPED_BY_NAME: dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]] = {
    "get": _scoped_record,
    "get_by_event_id": _scoped_record,
    "raw": _scoped_raw,
    "execution": _scoped_records,
}


class Arrival:
    """A request's events on their way to ``Store.submit`` (see ``Store.arrival``)."""

    __slots__ = ("_store",)

    def __init__(self, store: Store) -> None:
        self._store: Store | None = store
        store._count_arriving(1)

    def done(self) -> None:
        """The events are submitted, or will not be (idempotent)."""
        if self._store is not None:
            self._store._count_arriving(-1)
            self._store = None


class Store(abc.ABC):
    """An append-only event store. Writes are group-committed by one writer; reads run concurrently.

    Reads honour the application scope of the request (``scope.py``) in every backend without the backend
    doing anything: ``get``, ``get_by_event_id``, ``raw`` and ``execution`` hide records outside it, and
    every public method with a ``filters`` parameter (``search``, and whatever is added later) gets its
    filters narrowed to it.
    """

    #: A short name for logs and /readyz ("sqlite", "postgresql").
    backend: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, value in list(vars(cls).items()):
            if name.startswith("_") or not inspect.isfunction(value):
                continue
            if getattr(value, "__spintrail_scoped__", False):
                continue
            if name in _SCOPED_BY_NAME:
                setattr(cls, name, _SCOPED_BY_NAME[name](value))
            elif "filters" in inspect.signature(value).parameters:
                setattr(cls, name, _scoped_filters(value))

    def __init__(self) -> None:
        #: Opened for reading only: nothing is written, created or migrated.
        self.read_only = False
        self.write_hooks: list[WriteHook] = []
        self.check_hooks: list[CheckHook] = []
        #: Seconds the writer may hold a group commit open for events that requests are still preparing.
        self.commit_wait = 0.0
        self._arriving = 0
        self._arriving_lock = threading.Lock()

    def arrival(self) -> Arrival:
        """Mark a request whose events are on their way to ``submit`` (its body being read and prepared)
        until ``Arrival.done`` (call it once they are submitted, or the request fails).

        A commit costs the CPU of several events (a page of every index, the log, the WAL), so a writer
        gathering a group commit waits for such requests, up to ``commit_wait`` seconds, instead of
        committing the few events already queued; with none arriving it commits at once.
        """
        return Arrival(self)

    def _count_arriving(self, n: int) -> None:
        with self._arriving_lock:
            self._arriving += n

    def next_job(self, jobs: queue.Queue[Any], deadline: float) -> Any:
        """The next queued job for the group commit being gathered, or ``None`` to commit now: when nothing
        is queued and no request is arriving, or at ``deadline`` (``time.monotonic``)."""
        while True:
            try:
                return jobs.get_nowait()
            except queue.Empty:
                pass
            left = deadline - time.monotonic()
            if self._arriving <= 0 or left <= 0:
                return None
            try:
                return jobs.get(timeout=min(left, 0.001))
            except queue.Empty:
                continue

    @abc.abstractmethod
    def submit(self, items: Sequence[PreparedEvent]) -> Future[list[AppendResult]]:
        """Queue events for the next group commit; the future resolves once they are durable.

        Raises ``StoreOverloaded`` at once when the write queue is full.
        """

    def append(self, items: Sequence[PreparedEvent]) -> list[AppendResult]:
        """Append and wait for the commit."""
        return self.submit(items).result()

    @abc.abstractmethod
    def search(self, filters: Filters, *, limit: int = 100, cursor: str | None = None) -> Page:
        """Records matching every filter, newest first by time, with keyset pagination."""

    @abc.abstractmethod
    def get(self, id_: int) -> AuditRecord | None:
        """One record by store id."""

    def provenance(self, ids: Sequence[int]) -> dict[int, str]:
        """The provenance (JSON) of those events that did not come from echo, by store id."""
        return {}

    @abc.abstractmethod
    def get_by_event_id(self, event_id: str) -> AuditRecord | None:
        """One record by echo event id."""

    @abc.abstractmethod
    def raw(self, id_: int) -> bytes | None:
        """The exact bytes received for the record with this store id."""

    def index_checker(self) -> IndexChecker | None:
        """A checker of records against the search tags and full-text index (``None``: not supported)."""
        return None

    @abc.abstractmethod
    def execution(self, execution_id: str) -> list[AuditRecord]:
        """Every record of one execution, ordered by event time then id."""

    # -- aggregates and scans for pages, reports and exports -----------------------------------------
    #
    # The defaults below are correct for any backend because they are built on ``search`` (keyset pages),
    # but they read every matching record; a backend should override them with its own queries.

    def iter_search(self, filters: Filters, *, page_size: int = 1000) -> Iterator[AuditRecord]:
        """Every record matching the filters, newest first, read one keyset page at a time.

        Memory stays bounded by ``page_size`` however many records match, and no read transaction is held
        between pages (writers and checkpoints are never blocked by a long export).
        """
        cursor: str | None = None
        while True:
            page = self.search(filters, limit=page_size, cursor=cursor)
            yield from page.records
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def select(self, filters: Filters, fields: Sequence[str]) -> Iterator[tuple[Any, ...]]:
        """Only some fields (``SELECTABLE`` names) of every matching record, newest first, as tuples.

        List fields come as lists. Cheaper than whole records where a backend overrides it.
        """
        check_fields(fields)
        for record in self.iter_search(filters):
            yield tuple(field_value(record, f) for f in fields)

    def count_by(
        self, filters: Filters, by: Sequence[str], *, limit: int | None = None
    ) -> list[tuple[tuple[Any, ...], int]]:
        """How many matching records have each combination of values of the ``by`` fields.

        A list field counts each of its values once per record (a record touching two accounts counts for
        both); records with an empty list are not counted. Largest counts first, ties by value.
        """
        check_fields(by)
        counts: Counter[tuple[Any, ...]] = Counter()
        for row in self.select(filters, by):
            parts = [
                list(dict.fromkeys(v)) if name in LIST_FIELDS else [v]
                for name, v in zip(by, row, strict=True)
            ]
            for combo in itertools.product(*parts):
                counts[combo] += 1
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], tuple(str(v) for v in kv[0])))
        return ordered[:limit] if limit is not None else ordered

    def tail(self, after_id: int, filters: Filters | None = None, *, limit: int = 100) -> list[AuditRecord]:
        """Records stored after store id ``after_id`` (what arrived since), oldest first, at most ``limit``.

        The default looks at records of the last day only; a backend should override it.
        """
        base = filters or Filters()
        day_ago = int(time.time() * 1000) - 86_400_000
        recent = dataclasses.replace(base, since=max(base.since or day_ago, day_ago))
        found = [r for r in self.iter_search(recent) if r.id is not None and r.id > after_id]
        found.sort(key=lambda r: r.id or 0)
        return found[:limit]

    def last_id(self) -> int:
        """The highest store id so far (0 when empty). The default looks at the newest records by time."""
        page = self.search(Filters(), limit=1000)
        return max((r.id or 0 for r in page.records), default=0)

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise ``StoreUnavailable`` when the store cannot be reached."""

    @abc.abstractmethod
    def stats(self) -> StoreStats:
        """Counts and sizes."""

    @property
    @abc.abstractmethod
    def pending(self) -> int:
        """Events waiting for the next commit."""

    def check(
        self, *, quick: bool = False, progress: Callable[[int, int], None] | None = None
    ) -> CheckReport:
        """Verify the store: storage integrity and that events, raw bytes and indexes agree.

        ``quick`` skips the slow parts (decompressing every raw blob). ``progress(done, total)`` is called
        while raw blobs are verified. Problems are reported, never repaired.
        """
        raise StoreError(f"the {self.backend or 'this'} store has no consistency check yet")

    @abc.abstractmethod
    def close(self) -> None:
        """Commit what is queued and release resources."""
