"""The forwarding outbox contract on SQLite and on the real PostgreSQL: cursors, leases between replicas,
fencing, pauses, dead letters, and (PostgreSQL) commit-ordered positions written by the store's hook."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import make_record
from spintrail.outbox import (
    PAUSED_UNTIL_RESUMED,
    Outbox,
    PostgresOutbox,
    SqliteOutbox,
    now_ms,
    postgres_hook,
)
from spintrail.store.base import PreparedEvent, Written
from spintrail.store.sqlite import SqliteStore

PG_URL = os.environ.get("SPINTRAIL_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_available() -> str | None:
    try:
        import psycopg

        psycopg.connect(PG_URL, connect_timeout=3).close()
    except Exception as exc:
        return f"PostgreSQL not reachable at {PG_URL}: {exc}"
    return None


@pytest.fixture(scope="module")
def pg_schema_url() -> Iterator[Callable[[], str]]:
    """Makes a fresh schema per test (dropped at the end) and returns a URL whose search_path is it."""
    reason = _pg_available()
    if reason:
        pytest.skip(reason)
    import psycopg

    made: list[str] = []

    def make() -> str:
        name = f"fwd_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        made.append(name)
        return f"{PG_URL}?options=-csearch_path%3D{name}"

    yield make
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        for name in made:
            conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


@dataclass
class Env:
    """An outbox backend with a way to open another replica's outbox and to write events."""

    open: Callable[[], Outbox]
    add: Callable[[int], list[int]]  # write n events, return their store ids
    backend: str
    url: str = ""


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    opened: list[Any] = []
    if request.param == "sqlite":
        store = SqliteStore(tmp_path / "outbox.db")
        opened.append(store)
        counter = iter(range(1, 10**6))

        def add_sqlite(n: int) -> list[int]:
            items = [PreparedEvent(make_record(next(counter)), b"{}") for _ in range(n)]
            return [r.id for r in store.append(items)]

        def open_sqlite() -> Outbox:
            box = SqliteOutbox(store.path)
            opened.append(box)
            return box

        yield Env(open_sqlite, add_sqlite, "sqlite")
    else:
        import psycopg

        url = request.getfixturevalue("pg_schema_url")()
        first = PostgresOutbox(url)  # creates the tables
        opened.append(first)
        rows = iter(range(1000, 10**6))

        def add_pg(n: int) -> list[int]:
            written = [Written(PreparedEvent(make_record(0), b"{}"), next(rows)) for _ in range(n)]
            with psycopg.connect(url) as conn:  # one transaction, committed on exit
                postgres_hook(conn, written)
            return [w.id for w in written]

        def open_pg() -> Outbox:
            box = PostgresOutbox(url)
            opened.append(box)
            return box

        yield Env(open_pg, add_pg, "postgresql", url)
    for thing in reversed(opened):
        thing.close()


def test_new_sink_starts_now_or_at_the_beginning(env: Env) -> None:
    env.add(3)
    box = env.open()
    assert box.head() == 3
    assert box.ensure("late").delivered_up_to == 3
    assert box.ensure("all", "beginning").delivered_up_to == 0
    env.add(2)
    assert box.ensure("late").delivered_up_to == 3  # existing state is kept
    assert [p.position for p in box.pending(3, 10)] == [4, 5]
    assert [p.position for p in box.pending(0, 2)] == [1, 2]
    assert box.backlog(box.ensure("all")) == 5


def test_pending_maps_positions_to_event_rows(env: Env) -> None:
    rows = env.add(4)
    box = env.open()
    assert [p.event_row for p in box.pending(0, 10)] == rows
    assert [p.position for p in box.pending(0, 10)] == [1, 2, 3, 4]


def test_only_one_replica_holds_a_sink_and_a_lost_lease_cannot_move_the_cursor(env: Env) -> None:
    env.add(10)
    a, b = env.open(), env.open()
    a.ensure("siem", "beginning")
    assert a.claim("siem", "replica-a", 60_000) is not None
    assert b.claim("siem", "replica-b", 60_000) is None
    assert a.advance("siem", "replica-a", 4, 4, 60_000)
    assert not b.advance("siem", "replica-b", 9, 9, 60_000)
    assert b.state("siem").delivered_up_to == 4  # type: ignore[union-attr]
    # a renews its own lease freely; the cursor never goes back
    assert a.claim("siem", "replica-a", 60_000) is not None
    assert not a.advance("siem", "replica-a", 2, 0, 60_000)
    # a stops cleanly: b takes over at once
    a.release("siem", "replica-a")
    assert b.claim("siem", "replica-b", 60_000) is not None
    assert not a.advance("siem", "replica-a", 10, 6, 60_000)
    assert b.advance("siem", "replica-b", 10, 6, 60_000)
    state = a.state("siem")
    assert state is not None
    assert (state.delivered_up_to, state.delivered, state.owner) == (10, 10, "replica-b")
    assert state.last_delivered_at is not None


def test_an_expired_lease_is_taken_over(env: Env) -> None:
    a, b = env.open(), env.open()
    a.ensure("siem")
    assert a.claim("siem", "replica-a", 50) is not None
    assert b.claim("siem", "replica-b", 60_000) is None
    time.sleep(0.1)
    assert b.claim("siem", "replica-b", 60_000) is not None
    assert a.claim("siem", "replica-a", 60_000) is None


def test_pause_resume_and_errors(env: Env) -> None:
    a, cli = env.open(), env.open()
    a.ensure("siem")
    a.claim("siem", "me", 60_000)
    assert a.record_error("siem", "me", "unavailable", "cannot reach splunk")
    state = cli.state("siem")
    assert state is not None and state.last_error == "cannot reach splunk"
    assert state.last_error_kind == "unavailable" and state.last_error_at is not None
    assert not a.record_error("siem", "someone-else", "unavailable", "x")
    assert a.pause("siem", "me", PAUSED_UNTIL_RESUMED, "HEC code 4 (Invalid token)")
    state = cli.state("siem")
    assert state is not None and state.paused(now_ms())
    assert state.pause_reason == "HEC code 4 (Invalid token)" and state.last_error_kind == "auth"
    assert cli.resume("siem")  # from another process: the CLI
    state = a.state("siem")
    assert state is not None and not state.paused(now_ms()) and state.pause_reason is None
    assert not cli.resume("never-ran")


def test_dead_letters_are_skipped_listed_and_can_be_forgotten(env: Env) -> None:
    rows = env.add(5)
    box = env.open()
    box.ensure("siem", "beginning")
    box.claim("siem", "me", 60_000)
    assert box.dead_letter("siem", "me", [(2, rows[1], "evt-2"), (4, rows[3], "evt-4")], "HEC code 6")
    assert not box.dead_letter("siem", "other", [(5, rows[4], "evt-5")], "x")
    assert box.dead_positions("siem", 0, 5) == {2, 4}
    assert box.dead_positions("siem", 2, 3) == set()
    letters = box.dead_letters("siem")
    assert [(d.position, d.event_row, d.event_id, d.reason) for d in letters] == [
        (2, rows[1], "evt-2", "HEC code 6"),
        (4, rows[3], "evt-4", "HEC code 6"),
    ]
    assert box.state("siem").dead_letters == 2  # type: ignore[union-attr]
    box.forget_dead_letter("siem", 2)
    assert [d.position for d in box.dead_letters("siem")] == [4]
    assert box.state("siem").dead_letters == 1  # type: ignore[union-attr]
    assert box.dead_letters("other-sink") == []


# ------------------------------------------------------------------------------------- PostgreSQL only


@pytest.fixture
def pg(pg_schema_url: Callable[[], str]) -> Iterator[str]:
    url = pg_schema_url()
    PostgresOutbox(url).close()
    yield url


def test_pg_positions_follow_commit_order_across_concurrent_writers(pg: str) -> None:
    import psycopg

    first = psycopg.connect(pg)
    second = psycopg.connect(pg)
    item = PreparedEvent(make_record(0), b"{}")
    # Writer 1 (replica A) writes events with rows 100, 101 but has not committed yet.
    postgres_hook(first, [Written(item, 100), Written(item, 101)])
    finished = threading.Event()

    def writer_two() -> None:  # replica B, whose event ids came later from the sequence but commit first
        postgres_hook(second, [Written(item, 102)])
        second.commit()
        finished.set()

    thread = threading.Thread(target=writer_two)
    thread.start()
    time.sleep(0.3)
    assert not finished.is_set(), "a second writer must wait for the first one's positions to commit"
    box = PostgresOutbox(pg)
    assert box.pending(0, 10) == []  # nothing visible yet: a reader can never skip over writer 1
    first.commit()
    thread.join(5)
    assert finished.is_set()
    assert [(p.position, p.event_row) for p in box.pending(0, 10)] == [(1, 100), (2, 101), (3, 102)]
    # A rolled-back write leaves neither a position nor a gap.
    postgres_hook(first, [Written(item, 103)])
    first.rollback()
    postgres_hook(first, [Written(item, 104)])
    first.commit()
    assert [(p.position, p.event_row) for p in box.pending(3, 10)] == [(4, 104)]
    assert box.head() == 4
    for conn in (first, second):
        conn.close()
    box.close()


def test_pg_claim_skips_a_row_another_replica_is_claiming(pg: str) -> None:
    import psycopg

    box = PostgresOutbox(pg)
    box.ensure("siem")
    with psycopg.connect(pg) as other:
        other.execute("SELECT * FROM sink_state WHERE sink = 'siem' FOR UPDATE")
        started = time.monotonic()
        assert box.claim("siem", "me", 60_000) is None
        assert time.monotonic() - started < 2
    assert box.claim("siem", "me", 60_000) is not None
    box.close()


def test_pg_prune_forgets_positions_every_sink_is_past(pg: str) -> None:
    import psycopg

    item = PreparedEvent(make_record(0), b"{}")
    with psycopg.connect(pg) as conn:
        postgres_hook(conn, [Written(item, 500 + i) for i in range(10)])
    box = PostgresOutbox(pg)
    box.ensure("a", "beginning")
    box.ensure("b", "beginning")
    assert box.prune(["a", "b", "not-started"]) == 0
    box.claim("a", "me", 60_000)
    box.claim("b", "me", 60_000)
    box.advance("a", "me", 7, 7, 60_000)
    box.advance("b", "me", 4, 4, 60_000)
    assert box.prune(["a", "b"]) == 4
    assert [p.position for p in box.pending(0, 100)] == [5, 6, 7, 8, 9, 10]
    assert box.backlog(box.state("b")) == 6  # type: ignore[arg-type]
    box.close()


def test_pg_hook_is_attached_to_the_store_once(pg: str, tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")  # any Store: attach only appends the hook
    box = PostgresOutbox(pg)
    try:
        box.attach(store)
        box.attach(store)
        assert store.write_hooks == [postgres_hook]
    finally:
        box.close()
        store.close()
