"""The stores' aggregates and scans (``count_by``, ``select``, ``iter_search``, ``tail``, ``last_id``) give
the same answers on SQLite and PostgreSQL for the same events, and agree with the contract's defaults in
``store/base.py``; exports stream instead of reading every row first."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import make_record, new_pg_schema
from spintrail import export, report, scope
from spintrail.decode import IncomingEvent
from spintrail.ingest import Ingestor
from spintrail.query import Filters
from spintrail.settings import Settings
from spintrail.simulate import Simulator
from spintrail.store import PreparedEvent, Store, open_store

DAY = 86_400_000
RECEIVED = 1_767_225_600_000


def _odd_records() -> list[PreparedEvent]:
    """Records the simulator never makes: times before 1970, repeated list values, no user, mixed case."""
    odd: list[dict[str, Any]] = [
        {"time": -DAY - 1, "accounts": ["prod-a", "prod-a", "test"], "user": None, "application": "Zeta"},
        {"time": -1, "accounts": ["Ärger", "prod-a"], "user": "Émile", "application": "alpha"},
        {"time": 0, "accounts": [], "user": "zed", "application": None, "stage_type": "deploy"},
        {"time": DAY - 1, "regions": ["us-east-1", "us-east-1"], "user": "alice", "application": "Zeta"},
    ]
    out = []
    for n, fields in enumerate(odd, start=900_001):
        rec = make_record(n, **fields)
        out.append(PreparedEvent(record=rec, raw=json.dumps({"n": n}).encode(), text=f"odd {n}"))
    return out


def _fill(store: Store, events: list[dict[str, Any]]) -> None:
    ingestor = Ingestor(Settings(database="unused"), store)
    batch = []
    for event in events:
        raw = json.dumps(event, separators=(",", ":")).encode()
        batch.append(ingestor.prepare(IncomingEvent(event=event, raw=raw), received_at=RECEIVED))
        if len(batch) >= 1000:
            store.append(batch)
            batch = []
    store.append(batch)
    store.append(_odd_records())


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, Store, Simulator]]:
    """(SQLite store, PostgreSQL store, simulator): the same simulated history in both, ids alike."""
    sim = Simulator(seed=23, days=12.0, executions=90)
    events = list(sim.events())
    url, drop = new_pg_schema()
    lite = open_store(str(tmp_path_factory.mktemp("aggregates") / "lite.db"))
    pg = open_store(url)
    try:
        _fill(lite, events)
        _fill(pg, events)
        yield lite, pg, sim
    finally:
        lite.close()
        pg.close()
        drop()


CASES: list[tuple[Filters, list[str]]] = [
    (Filters(), ["application"]),
    (Filters(), ["accounts"]),
    (Filters(), ["regions"]),
    (Filters(), ["day"]),
    (Filters(), ["user", "day"]),
    (Filters(type=("orca:pipeline:*",)), ["day", "status"]),
    (Filters(stage_type=("manualJudgment",)), ["status", "user"]),
    (Filters(application=("nope",)), ["user"]),
    (Filters(q="prod"), ["server_groups", "type"]),
    (Filters(), ["accounts", "regions"]),
    (Filters(account=("prod-a",)), ["application", "accounts"]),
    (Filters(since=-2 * DAY, until=DAY), ["day", "accounts"]),
    (Filters(), ["time"]),
]


@pytest.mark.parametrize(("filters", "by"), CASES)
def test_count_by_is_the_same_on_both_backends(
    pair: tuple[Store, Store, Simulator], filters: Filters, by: list[str]
) -> None:
    lite, pg, _ = pair
    answer = pg.count_by(filters, by)
    assert answer == lite.count_by(filters, by)
    assert dict(answer) == dict(Store.count_by(pg, filters, by))  # the contract's own reading
    assert pg.count_by(filters, by, limit=3) == answer[:3]
    if filters == Filters() and by == ["application"]:
        assert sum(n for _, n in answer) == pg.stats().events


def test_days_before_1970_are_counted_on_their_own_day(pair: tuple[Store, Store, Simulator]) -> None:
    lite, pg, _ = pair
    early = Filters(until=DAY)
    expected = [(("1969-12-30",), 1), (("1969-12-31",), 1), (("1970-01-01",), 2)]
    for store in (lite, pg):
        assert sorted(store.count_by(early, ["day"])) == expected
        assert sorted(store.select(early, ["day", "time"])) == [
            ("1969-12-30", -DAY - 1),
            ("1969-12-31", -1),
            ("1970-01-01", 0),
            ("1970-01-01", DAY - 1),
        ]


@pytest.mark.parametrize(
    ("filters", "fields"),
    [
        (Filters(stage_type=("resizeServerGroup", "deploy")), ["id", "day", "accounts", "user", "time"]),
        (Filters(), ["execution_id", "type", "regions"]),
        (Filters(q="deploy", application=("Zeta", "alpha")), ["application", "tickets"]),
        (Filters(server_group=("nope",)), ["id"]),
    ],
)
def test_select_is_the_same_on_both_backends(
    pair: tuple[Store, Store, Simulator], filters: Filters, fields: list[str]
) -> None:
    lite, pg, _ = pair
    rows = list(pg.select(filters, fields))
    assert rows == list(lite.select(filters, fields))
    assert rows == list(Store.select(pg, filters, fields))


def test_scans_tail_and_last_id_are_the_same_on_both_backends(pair: tuple[Store, Store, Simulator]) -> None:
    lite, pg, _ = pair
    total = pg.stats().events
    assert pg.last_id() == lite.last_id() == total
    every = [r.id for r in pg.iter_search(Filters(), page_size=7)]
    assert every == [r.id for r in lite.iter_search(Filters())]
    assert every == [r.id for r in Store.iter_search(pg, Filters())]
    assert len(every) == total
    some = Filters(type=("orca:stage:*",), since=0)
    assert [r.to_api() for r in pg.iter_search(some)] == [r.to_api() for r in lite.iter_search(some)]
    assert [r.id for r in pg.tail(total - 5)] == list(range(total - 4, total + 1))
    assert [r.id for r in pg.tail(total - 5, limit=2)] == [total - 4, total - 3]
    assert pg.tail(total) == []
    late = Filters(application=("Zeta",))
    assert [r.to_api() for r in pg.tail(0, late, limit=1000)] == [
        r.to_api() for r in lite.tail(0, late, limit=1000)
    ]
    assert len(pg.tail(0, late)) == 2  # the two odd records of Zeta
    with pytest.raises(ValueError, match="unknown field"):
        pg.count_by(Filters(), ["nope"])


def test_dashboard_is_the_same_on_both_backends(pair: tuple[Store, Store, Simulator]) -> None:
    lite, pg, sim = pair
    since = sim.facts.window_start - 3_600_000
    until = since + 14 * DAY
    answer = report.dashboard(pg, since=since, until=until).to_api()
    assert answer == report.dashboard(lite, since=since, until=until).to_api()
    assert answer["deployments"] > 0
    ((app,), _), *_ = pg.count_by(Filters(since=since), ["application"])
    one = report.dashboard(pg, since=since, until=until, application=(app,)).to_api()
    assert one == report.dashboard(lite, since=since, until=until, application=(app,)).to_api()


def test_aggregates_honour_the_application_scope(pair: tuple[Store, Store, Simulator]) -> None:
    lite, pg, _ = pair
    for store in (lite, pg):
        with scope.limited_to({"Zeta"}):
            assert store.count_by(Filters(), ["application"]) == [(("Zeta",), 2)]
            assert {r.application for r in store.tail(0, limit=1000)} == {"Zeta"}  # no filters given
            assert {a for (a,) in store.select(Filters(), ["application"])} == {"Zeta"}
            assert {r.application for r in store.iter_search(Filters())} == {"Zeta"}


@pytest.fixture(params=["sqlite", "postgres"])
def many(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store of each backend holding 12,000 records."""
    drop = None
    if request.param == "sqlite":
        store = open_store(str(tmp_path / "many.db"))
    else:
        url, drop = new_pg_schema()
        store = open_store(url)
    try:
        for start in range(0, 12_000, 2000):
            store.append(
                [
                    PreparedEvent(
                        record=make_record(n, description="x" * 200, accounts=[f"acct-{n % 7}"]),
                        raw=b"{}",
                        keep_raw=False,
                    )
                    for n in range(start + 1, start + 2001)
                ]
            )
        yield store
    finally:
        store.close()
        if drop is not None:
            drop()


def test_export_streams_with_memory_bounded_by_a_page(many: Store) -> None:
    """Memory while exporting grows with the page, not with the rows: the peak of Python allocations stays
    far below the size of the whole export."""
    lines = 0
    size = 0
    tracemalloc.start()
    try:
        for chunk in export.iter_export(many, Filters(), "ndjson", page_size=200):
            lines += chunk.count(b"\n")
            size += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lines == 12_000
    assert size > 4_000_000
    assert peak < size / 4, (peak, size)


def _matches(record: Any, f: Filters) -> bool:
    """A plain reading of the filters (without ``q``), to check the stores' queries against."""
    from spintrail.query import COLUMN_FILTERS, LIST_FILTERS, type_pattern

    for name, column in COLUMN_FILTERS.items():
        values = getattr(f, name)
        if values and getattr(record, column) not in values:
            return False
    for name, field_name in LIST_FILTERS.items():
        values = getattr(f, name)
        if values and not set(values) & set(getattr(record, field_name)):
            return False
    if f.type:
        ok = False
        for value in f.type:
            text, prefix = type_pattern(value)
            t = record.type or ""
            ok = ok or (t.startswith(text) if prefix else t == text)
        if not ok:
            return False
    if f.since is not None and record.time < f.since:
        return False
    return f.until is None or record.time < f.until


def _paged(store: Store, f: Filters, size: int) -> list[int]:
    out: list[int] = []
    cursor = None
    while True:
        page = store.search(f, limit=size, cursor=cursor)
        out += [r.id for r in page.records if r.id is not None]
        if not page.next_cursor:
            return out
        cursor = page.next_cursor


def test_search_plans_give_the_plain_answer(pair: tuple[Store, Store, Simulator]) -> None:
    """Whatever drives a search (an index of events, a tag, the full-text index), pages of it list exactly
    the matching records, newest first, on both backends."""
    lite, pg, _ = pair
    every = list(lite.iter_search(Filters()))
    top = {
        name: [v for (v,), _ in lite.count_by(Filters(), [name], limit=3)]
        for name in ("server_groups", "accounts", "regions", "clusters", "application", "user")
    }
    sg, sg2 = top["server_groups"][:2]
    acct, reg, cl = top["accounts"][0], top["regions"][0], top["clusters"][0]
    mid = (every[0].time + every[-1].time) // 2
    cases = [
        Filters(server_group=(sg,)),
        Filters(server_group=(sg,), since=mid - 3 * DAY, until=mid + DAY),
        Filters(account=(acct,)),
        Filters(account=(acct,), region=(reg,)),
        Filters(account=(acct,), region=(reg,), cluster=(cl,), since=mid),
        Filters(application=(top["application"][0],), account=(acct,)),
        Filters(server_group=(sg, sg2)),
        Filters(user=(top["user"][0],), server_group=(sg,)),
        Filters(type=("orca:stage:*",), cluster=(cl,)),
        Filters(account=("Ärger",)),
        Filters(account=("nope",)),
    ]
    for f in cases:
        expected = [r.id for r in every if _matches(r, f)]
        assert _paged(lite, f, 7) == expected, f
        assert _paged(pg, f, 7) == expected, f
        assert [r.id for r in lite.iter_search(f, page_size=5)] == expected, f
    assert any(_paged(lite, f, 7) for f in cases[:6])
    text = Filters(q=sg, server_group=(sg,))
    assert _paged(lite, text, 3) == _paged(pg, text, 3) != []
