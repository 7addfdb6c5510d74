"""Backfill from Gate: a stand-in Gate over loopback, the simulator's history, both store backends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gate_standin import GateStandin
from spintrail import integrity
from spintrail.backfill import BackfillRequest, GateAuth, GateAuthError, GateClient, run_backfill, synthesize
from spintrail.decode import IncomingEvent
from spintrail.ingest import Ingestor
from spintrail.normalize import natural_key
from spintrail.query import Filters
from spintrail.settings import Settings
from spintrail.simulate import Simulator

START = 1_760_000_000_000
RUN_TYPES = ("orca:pipeline:", "orca:orchestration:", "orca:stage:")
COMPARED = (
    "type", "application", "execution_id", "execution_type", "pipeline", "stage", "stage_type", "stage_id",
    "status", "user", "run_as_user", "trigger_type", "accounts", "regions", "server_groups", "clusters",
    "description", "reason", "tickets",
)  # fmt: skip


def world() -> Simulator:
    return Simulator(seed=11, start_ms=START, days=2, executions=12, builds=False)


def client(gate: GateStandin, **kw: Any) -> GateClient:
    return GateClient(gate.url, auth=GateAuth(token="s3cret"), backoff=0, rate=0, **kw)


def live(store: Any, settings: Settings) -> list[Any]:
    ingestor = Ingestor(settings, store)
    raw = [IncomingEvent(event=e, raw=json.dumps(e).encode()) for e in world().events()]
    return store.append([ingestor.prepare(i) for i in raw])


def run_records(store: Any) -> dict[str, Any]:
    """Execution and stage records by natural key (from their raw... or the record's own fields)."""
    out: dict[str, Any] = {}
    for rec in (
        store.iter_search(Filters())
        if hasattr(store, "iter_search")
        else store.search(Filters(), limit=1000).records
    ):
        if rec.type and rec.type.startswith(RUN_TYPES):
            out.setdefault((rec.execution_id, rec.stage_id, rec.type), []).append(rec)
    return out


@pytest.fixture
def gate() -> Any:
    g = GateStandin(world().gate_executions(), fail_every=7)
    yield g
    g.close()


def test_backfill_then_live_then_again_stores_each_event_once(
    store: Any, gate: GateStandin, tmp_path: Path
) -> None:
    settings = Settings(database="unused")
    first = run_backfill(settings, store, client(gate), BackfillRequest(), state_path=tmp_path / "s1.json")
    assert first.executions == len(gate.executions) and first.stored == first.events > 0
    assert any("/executions/search" in r for r in gate.requests) and any(
        "/tasks?" in r for r in gate.requests
    )
    results = live(store, settings)
    # Every live execution/stage event was already stored from Gate: counted as a duplicate.
    live_events = list(world().events())
    keyed = [natural_key(e) for e in live_events]
    for key, res in zip(keyed, results, strict=True):
        if key is not None:
            assert res.duplicate, key
    again = run_backfill(settings, store, client(gate), BackfillRequest(), state_path=tmp_path / "s2.json")
    assert again.stored == 0 and again.duplicates == again.events
    for key, recs in run_records(store).items():
        assert len(recs) == 1, key
    # Backfilled records say where they came from.
    ids = [r.id for recs in run_records(store).values() for r in recs]
    prov = store.provenance(ids)
    assert prov and all(json.loads(p)["provenance"] == "gate" for p in prov.values())
    # Each run is an administrative action in the tamper-evident log, with its counts.
    from spintrail.trust import Trust

    trust = Trust(store, settings)
    try:
        runs = [a for a in integrity.admin_actions(trust.conns.get()) if a.action == "backfill"]
    finally:
        trust.close()
    assert [(a.details["run_id"], a.details["stored"]) for a in runs] == [
        (again.run_id, 0),
        (first.run_id, first.stored),
    ]


def test_live_first_then_backfill_keeps_the_live_copy_and_repairs_dropped_finals(
    store: Any, gate: GateStandin, tmp_path: Path
) -> None:
    settings = Settings(database="unused")
    live(store, settings)
    before = run_records(store)
    result = run_backfill(
        settings, store, client(gate), BackfillRequest(repair_unfinished=True), state_path=tmp_path / "s.json"
    )
    after = run_records(store)
    for key, recs in after.items():
        assert len(recs) == 1, key
    added = set(after) - set(before)
    assert added and result.stored == len(added)
    # What the backfill added are final events echo never delivered.
    assert all(t.endswith((":complete", ":failed", ":skipped")) for _, _, t in added)
    assert all(before[k][0].id == after[k][0].id for k in before)


def test_backfilled_final_events_equal_the_live_ones(sqlite_store: Any, tmp_path: Path) -> None:
    settings = Settings(database="unused")
    events = list(world().events())
    ingestor = Ingestor(settings, sqlite_store)
    live_records = {}
    for e in events:
        key = natural_key(e)
        if key and not e["details"]["type"].endswith(":starting"):
            live_records[key] = ingestor.prepare(IncomingEvent(event=e, raw=b"{}")).record
    compared = 0
    for execution in world().gate_executions():
        for ev in synthesize(execution):
            if ev.natural_key in live_records:
                rec = ingestor.prepare(IncomingEvent(event=ev.event, raw=b"{}")).record
                want = live_records[ev.natural_key]
                assert {f: getattr(rec, f) for f in COMPARED} == {f: getattr(want, f) for f in COMPARED}
                compared += 1
    assert compared > 50


def test_resume_after_an_interruption_reads_no_finished_application_again(
    sqlite_store: Any, gate: GateStandin, tmp_path: Path
) -> None:
    settings = Settings(database="unused")
    state = tmp_path / "state.json"
    seen: list[str] = []

    def stop_midway(p: Any) -> None:
        if p.applications_done >= 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_backfill(
            settings, sqlite_store, client(gate), BackfillRequest(), state_path=state, on_progress=stop_midway
        )
    done = json.loads(state.read_text())["applications_done"]
    assert done
    gate.requests.clear()
    result = run_backfill(settings, sqlite_store, client(gate), BackfillRequest(), state_path=state)
    assert result.resumed
    for app in done:
        assert not any(f"/applications/{app}/" in r for r in gate.requests), app
    again = run_backfill(
        settings, sqlite_store, client(gate), BackfillRequest(), state_path=tmp_path / "x.json"
    )
    assert again.stored == 0
    del seen


def test_gate_refuses_without_credentials(gate: GateStandin) -> None:
    with pytest.raises(GateAuthError, match="401"):
        GateClient(gate.url, backoff=0, rate=0).applications()


def test_orchestrations_are_read_from_tasks(gate: GateStandin) -> None:
    orch = next(e for e in gate.executions.values() if e["type"] == "ORCHESTRATION")
    with client(gate) as c:
        assert c.execution(orch["id"])["id"] == orch["id"]
    assert any(r.startswith("/tasks/") for r in gate.requests)


SHARED = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "echo" / "related"


def test_a_real_execution_becomes_its_start_stage_and_final_events() -> None:
    files = sorted(SHARED.glob("orca_execution_PIPELINE_*.json")) if SHARED.is_dir() else []
    if not files:
        pytest.skip(f"the shared real executions are not there ({SHARED})")
    execution = json.loads(files[0].read_text())
    events = synthesize(execution)
    types = [e.event["details"]["type"] for e in events]
    assert types[0] == "orca:pipeline:starting"
    assert types[-1] in ("orca:pipeline:complete", "orca:pipeline:failed")
    started = [s for s in execution["stages"] if s.get("startTime")]
    assert types.count("orca:stage:starting") == sum(1 for s in started if s.get("status") != "SKIPPED")
    assert len({e.event["eventId"] for e in events}) == len(events)
    assert [e.event["eventId"] for e in synthesize(execution)] == [e.event["eventId"] for e in events]


def test_backfilled_events_say_where_they_came_from(
    sqlite_store: Any, gate: GateStandin, tmp_path: Path
) -> None:
    settings = Settings(database="unused")
    run_backfill(settings, sqlite_store, client(gate), BackfillRequest(), state_path=tmp_path / "s.json")
    first = sqlite_store.search(Filters(type=("orca:pipeline:starting",)), limit=1).records[0]
    marked = json.loads(sqlite_store.provenance([first.id])[first.id])
    assert marked["provenance"] == "gate" and marked["gate"] == gate.url and marked["run"]
