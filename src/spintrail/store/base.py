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
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from spintrail.query import Filters
from spintrail.record import AuditRecord


class StoreError(Exception):
    """Base of every store failure."""


class StoreUnavailable(StoreError):
    """The store cannot commit or answer right now."""


class StoreOverloaded(StoreError):
    """Too many events are waiting to be committed."""


class StoreFull(StoreError):
    """The disk holding the store is full."""


@dataclass(slots=True)
class PreparedEvent:
    """One event ready to append: its record, the exact bytes received, and the text to index."""

    record: AuditRecord
    raw: bytes
    text: str = ""


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


def encode_cursor(time: int, id_: int) -> str:
    """An opaque keyset cursor for the position (time, id)."""
    return base64.urlsafe_b64encode(f"{time}:{id_}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, int]:
    """The position behind a cursor; ``ValueError`` with a clear message when it is not ours."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        time_s, id_s = text.split(":")
        return int(time_s), int(id_s)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValueError(
            "cursor is not valid: pass the next_cursor value of a previous answer unchanged"
        ) from None


class Store(abc.ABC):
    """An append-only event store. Writes are group-committed by one writer; reads run concurrently."""

    #: A short name for logs and /readyz ("sqlite", "postgresql").
    backend: str = ""

    def __init__(self) -> None:
        self.write_hooks: list[WriteHook] = []
        self.check_hooks: list[CheckHook] = []

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

    @abc.abstractmethod
    def get_by_event_id(self, event_id: str) -> AuditRecord | None:
        """One record by echo event id."""

    @abc.abstractmethod
    def raw(self, id_: int) -> bytes | None:
        """The exact bytes received for the record with this store id."""

    @abc.abstractmethod
    def execution(self, execution_id: str) -> list[AuditRecord]:
        """Every record of one execution, ordered by event time then id."""

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
