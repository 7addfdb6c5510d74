"""The SQLite layout (schema version 2): exact answers through groups, raw streams, old files converted."""

from __future__ import annotations

import itertools
import json
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from conftest import make_record
from spintrail.decode import IncomingEvent
from spintrail.ingest import Ingestor
from spintrail.query import Filters
from spintrail.record import AuditRecord
from spintrail.settings import Settings
from spintrail.simulate import Simulator
from spintrail.store import PreparedEvent, StoreError, blobs, sqlite_layout
from spintrail.store.sqlite import MIGRATIONS, SqliteStore

DAY = 86_400_000


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[AuditRecord], dict[int, bytes]]:
    """A store holding a few hundred simulated events, the records as stored, and the bytes sent."""
    path = tmp_path_factory.mktemp("layout") / "sim.db"
    store = SqliteStore(path)
    ingestor = Ingestor(Settings(database=str(path)), store)
    sim = Simulator(seed=11, days=10, executions=14, start_ms=1_760_000_000_000)
    raws = [json.dumps(e, separators=(",", ":")).encode() for e in itertools.islice(sim.events(), 700)]
    prepared = [
        ingestor.prepare(IncomingEvent(json.loads(r), r), received_at=1_761_000_000_000) for r in raws
    ]
    results = store.append(prepared)
    sent = {res.id: raw for res, raw in zip(results, raws, strict=True) if not res.duplicate}
    records = [store.get(i) for i in sorted(sent)]
    store.close()
    return path, [r for r in records if r is not None], sent


def _matches(rec: AuditRecord, f: Filters) -> bool:
    def any_of(values: tuple[str, ...], have: Any) -> bool:
        if not values:
            return True
        if isinstance(have, list):
            return any(v in have for v in values)
        return have in values

    types_ok = not f.type or any(
        (rec.type or "").startswith(t[:-1]) if t.endswith("*") else rec.type == t for t in f.type
    )
    return (
        any_of(f.user, rec.user)
        and any_of(f.application, rec.application)
        and any_of(f.status, rec.status)
        and any_of(f.source, rec.source)
        and any_of(f.instance, rec.spinnaker_instance)
        and any_of(f.execution_id, rec.execution_id)
        and any_of(f.account, rec.accounts)
        and any_of(f.region, rec.regions)
        and any_of(f.server_group, rec.server_groups)
        and any_of(f.cluster, rec.clusters)
        and any_of(f.namespace, rec.namespaces)
        and any_of(f.ticket, rec.tickets)
        and types_ok
        and (f.since is None or rec.time >= f.since)
        and (f.until is None or rec.time < f.until)
    )


def _all_pages(store: SqliteStore, f: Filters, page: int) -> list[int]:
    ids: list[int] = []
    cursor = None
    while True:
        got = store.search(f, limit=page, cursor=cursor)
        ids += [r.id for r in got.records if r.id is not None]
        if got.next_cursor is None:
            return ids
        cursor = got.next_cursor


@pytest.mark.parametrize("plan", ["groups", "time"])
def test_every_filter_answers_exactly_what_a_scan_would(
    simulated: tuple[Path, list[AuditRecord], dict[int, bytes]], plan: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The two ways a search runs (reading the candidate groups' events, or walking the time index and
    # checking each event's group) must both give exactly the events a full scan finds, newest first.
    monkeypatch.setattr(sqlite_layout, "PLAN_GROUP_EVENTS", 10**9 if plan == "groups" else 0)
    path, records, _ = simulated
    rng = random.Random(3)
    values: dict[str, list[Any]] = {
        "user": sorted({r.user for r in records if r.user}),
        "application": sorted({r.application for r in records if r.application}),
        "status": sorted({r.status for r in records if r.status}),
        "source": sorted({r.source for r in records if r.source}),
        "execution_id": sorted({r.execution_id for r in records if r.execution_id}),
        "account": sorted({a for r in records for a in r.accounts}),
        "region": sorted({a for r in records for a in r.regions}),
        "server_group": sorted({a for r in records for a in r.server_groups}),
        "cluster": sorted({a for r in records for a in r.clusters}),
        "ticket": sorted({a for r in records for a in r.tickets}),
        "type": [*sorted({r.type for r in records if r.type}), "orca:stage:*", "orca:*", "build"],
    }
    times = sorted(r.time for r in records)
    store = SqliteStore(path)
    try:
        checked = 0
        for _ in range(120):
            params: dict[str, Any] = {}
            for name in rng.sample(sorted(values), rng.choice([1, 1, 2, 3])):
                pool = values[name]
                if pool:
                    params[name] = rng.sample(pool, min(len(pool), rng.choice([1, 1, 2])))
            if rng.random() < 0.3:
                params["since"] = str(rng.choice(times))
            f = Filters.from_params(params)
            expected = sorted(
                (r for r in records if _matches(r, f)), key=lambda r: (r.time, r.id), reverse=True
            )
            got = _all_pages(store, f, rng.choice([7, 50, 1000]))
            assert got == [r.id for r in expected], params
            checked += bool(expected)
        assert checked > 40  # most filters matched something
        # Records come back exactly as stored.
        assert store.get(records[5].id or 0) == records[5]
        execution = records[40].execution_id
        assert execution is not None
        timeline = store.execution(execution)
        assert [r.id for r in timeline] == [
            r.id for r in sorted(records, key=lambda r: (r.time, r.id or 0)) if r.execution_id == execution
        ]
    finally:
        store.close()


def test_raw_bytes_of_every_simulated_event_are_exact(
    simulated: tuple[Path, list[AuditRecord], dict[int, bytes]],
) -> None:
    path, _, sent = simulated
    store = SqliteStore(path)
    try:
        for id_, raw in sent.items():
            assert store.raw(id_) == raw
        stats = store.stats()
        assert stats.raw_bytes == sum(len(r) for r in sent.values())
        assert stats.stored_raw_bytes < stats.raw_bytes / 20
        # Most events' UUIDs were cut out of the compressed bytes and put back on reading.
        cut = store._read("SELECT count(*) FROM raw WHERE cut IS NOT NULL")[0][0]
        assert cut > len(sent) * 0.9
    finally:
        store.close()


@pytest.mark.parametrize("matches", ["few", "many"])
def test_full_text_matches_every_token_of_a_name(
    simulated: tuple[Path, list[AuditRecord], dict[int, bytes]], matches: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Few matches are looked up by id; many (a common word) are checked along the time index.
    monkeypatch.setattr(sqlite_layout, "PLAN_TEXT_MATCHES", 10**6 if matches == "few" else 0)
    path, records, _ = simulated
    store = SqliteStore(path)
    try:
        word = store.search(Filters(q="orca"), limit=1000).records
        assert (
            [r.id for r in word]
            == sorted(
                (r.id or 0 for r in records if r.source == "orca"),
                key=lambda i: (store.get(i).time, i),  # type: ignore[union-attr]
                reverse=True,
            )[: len(word)]
        )
        name = next(sg for r in records for sg in r.server_groups)
        found = store.search(Filters(q=name), limit=1000).records
        assert found and all(name in r.server_groups or name in (r.description or "") for r in found[:3])
        assert {r.id for r in store.search(Filters(server_group=(name,)), limit=1000).records} <= {
            r.id for r in found
        }
        # Ids are not indexed as text: they have exact lookups.
        assert store.search(Filters(q=records[0].event_id), limit=5).records == []
    finally:
        store.close()


def _prepared(n: int, raw: bytes, **fields: Any) -> PreparedEvent:
    return PreparedEvent(record=make_record(n, **fields), raw=raw)


def test_streams_survive_restarts_rollbacks_and_month_ends(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    snapshot: dict[str, Any] = {"stages": []}
    raws: dict[str, bytes] = {}

    def event(n: int, **fields: Any) -> PreparedEvent:
        snapshot["stages"].append({"id": f"s{n}", "context": {"n": n, "pad": "x" * 200}})
        eid = f"00000000-0000-4000-8000-{n:012d}"
        raw = json.dumps({"eventId": eid, "content": {"execution": snapshot}}).encode()
        raws[eid] = raw
        fields.setdefault("pipeline_config_id", "cfg-1")
        fields.setdefault("execution_id", "E1")
        return _prepared(n, raw, event_id=eid, **fields)

    store = SqliteStore(path)
    store.append([event(i) for i in range(10)])

    def refuse(conn: Any, written: list[Any]) -> None:
        if any(w.item.record.event_id.endswith("000000000666") for w in written):
            raise RuntimeError("hook refused")

    store.write_hooks.append(refuse)
    with pytest.raises(StoreError):
        store.append([event(11), event(666)])  # rolled back: the stream went on without them being stored
    raws.pop("00000000-0000-4000-8000-000000000011")
    raws.pop("00000000-0000-4000-8000-000000000666")
    store.append([event(12), event(13)])
    # A new month starts a new frame (a month can be dropped whole).
    store.append([event(14, time=1_700_000_000_000 + 40 * DAY)])
    store.close()
    store = SqliteStore(path)  # a restart starts new frames
    store.append([event(15), event(16)])
    try:
        for eid, raw in raws.items():
            rec = store.get_by_event_id(eid)
            assert rec is not None and rec.id is not None
            assert store.raw(rec.id) == raw
        starts = store._read("SELECT count(*) FROM raw WHERE codec = ? AND prev IS NULL", (3,))[0][0]
        assert starts == 4  # the first write, after the rollback, the new month, the restart
    finally:
        store.close()


def test_odd_event_ids_and_raw_bytes(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "o.db")
    try:
        upper = "8BFCED40-682F-44D5-A578-4017A93A87BB"  # not canonical: kept as text, never cut
        items = [
            _prepared(
                1,
                b'{"eventId": "8bfced40-682f-44d5-a578-4017a93a87bb"} 8bfced40',
                event_id="8bfced40-682f-44d5-a578-4017a93a87bb",
            ),
            _prepared(2, b'{"eventId":"' + upper.encode() + b'"}', event_id=upper),
            _prepared(3, b"no id in here at all, " * 10, event_id="a1b2c3d4-0000-4000-8000-000000000003"),
            _prepared(4, "é".encode() * 500, event_id="évènement-4"),
            _prepared(5, b"x" * (blobs.STREAM_MAX_EVENT + 10), event_id="big"),
        ]
        results = store.append(items)
        for res, item in zip(results, items, strict=True):
            assert store.raw(res.id) == item.raw
            assert store.get_by_event_id(item.record.event_id) == store.get(res.id)
        # Case matters: the canonical and the upper-case spelling are two events.
        assert store.get_by_event_id(upper) != store.get_by_event_id(upper.lower())
        assert store.raw(10**6) is None and store.get(10**6) is None
    finally:
        store.close()


def test_version_1_files_are_converted_keeping_ids_records_and_bytes(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "CREATE TABLE schema_migrations (component TEXT NOT NULL, version INTEGER NOT NULL,"
        " applied_at INTEGER, PRIMARY KEY (component, version))"
    )
    v1_sql = MIGRATIONS[0][1]
    assert isinstance(v1_sql, str)
    conn.executescript(v1_sql)
    conn.execute("INSERT INTO schema_migrations VALUES ('events', 1, 0)")
    cols = ("event_id", "received_at", "time", "source", "type", "application", "execution_id", "user")
    raws: list[bytes] = []
    base: tuple[int, bytes] | None = None
    for n in range(1, 31):
        raw = json.dumps({"n": n, "execution": {"stages": list(range(n * 20))}}).encode()
        raws.append(raw)
        blob = blobs.compress(raw, base[1] if base and n % 10 else None, base[0] if base and n % 10 else None)
        raw_id = conn.execute(
            "INSERT INTO raw(codec, base_id, size, sha256, data) VALUES (?, ?, ?, ?, ?)",
            (blob.codec, blob.base_id, blob.size, blob.sha256, blob.data),
        ).lastrowid
        base = (raw_id, raw)
        values = (f"evt-{n}", 1000 + n, 1000 + n, "orca", "orca:stage:complete", "checkout", "E1", "alice")
        conn.execute(
            f"INSERT INTO events(id, {', '.join(cols)}, accounts, raw_id)"
            f" VALUES (?, {', '.join('?' * len(cols))}, ?, ?)",
            (n * 2, *values, json.dumps(["prod"] if n % 2 else []), raw_id),
        )
        conn.execute("INSERT INTO events_fts(rowid, text) VALUES (?, ?)", (n * 2, f"deploy number{n}"))
    conn.close()

    store = SqliteStore(path)
    try:
        assert store.stats().events == 30
        for n, raw in enumerate(raws, start=1):
            rec = store.get(n * 2)
            assert rec is not None and rec.event_id == f"evt-{n}" and rec.user == "alice"
            assert rec.accounts == (["prod"] if n % 2 else [])
            assert store.raw(n * 2) == raw
        assert [r.id for r in store.search(Filters(account=("prod",)), limit=100).records][:2] == [58, 54]
        assert [r.id for r in store.search(Filters(q="number7"), limit=10).records] == [14]
        assert store.append([_prepared(7, b"{}", event_id="evt-7")])[0].duplicate
        new = store.append([_prepared(99, b"{}", event_id="new")])[0]
        assert new.id == 61 and not new.duplicate
        tables = {r[0] for r in store._read("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert not tables & {"events_v1", "raw_v1", "event_tags"}
    finally:
        store.close()
