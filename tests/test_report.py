"""Reports on simulated history, checked against what the simulator planted (its Facts)."""

from __future__ import annotations

import base64
import json
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import SimulatedData
from spintrail import report
from spintrail.query import Filters
from spintrail.record import API_FIELDS
from spintrail.store.base import Store
from spintrail.store.sqlite import SqliteStore
from spintrail.timeline import build_timeline, stage_spans


@pytest.fixture(scope="module")
def store(simulated: SimulatedData) -> Iterator[SqliteStore]:
    s = SqliteStore(simulated.path)
    yield s
    s.close()


PROD = ("*prod*",)
_NOBODY = ("anonymous", "[anonymous]")


def person(user: str | None) -> str | None:
    """The simulator names an anonymous principal; the audit record says nobody."""
    return None if user in _NOBODY else user


def _prod_facts(simulated: SimulatedData) -> dict[str, dict[str, Any]]:
    return {k: e for k, e in simulated.facts.executions.items() if e["prod_change"]}


# -- production changes and separation of duties ---------------------------------------------------


def test_production_changes_are_exactly_the_planted_ones(
    store: SqliteStore, simulated: SimulatedData
) -> None:
    rep = report.production_changes(store, accounts=PROD, since=simulated.since)
    expected = _prod_facts(simulated)
    rows = {r["execution_id"]: r for r in rep.rows}
    assert set(rows) == set(expected)
    assert len(rows) == len(rep.rows), "one row per execution"
    for eid, row in rows.items():
        fact = expected[eid]
        assert row["started_by"] == person(fact["user"]), eid
        assert row["status"] == fact["status"], eid
        assert row["approved"] == fact["approved"], eid
        assert row["self_approved"] == fact["self_approved"], eid
        assert set(row["tickets"]) == set(fact["tickets"]), eid
        assert row["accounts"] and all("prod" in a for a in row["accounts"])
        assert set(row["accounts"]) <= set(fact["accounts"])
        assert row["changes"] and set(row["changes"]) <= set(report.CHANGE_KINDS.values())
        if fact["approved"]:
            approvers = {j["user"] for j in fact["judgments"] if j["status"] == "continue"}
            assert set(row["approved_by"]) <= approvers
            assert row["approved_by"]
        else:
            assert row["approved_by"] == []
        if fact["end_time"] is not None:
            # event times are those of the run's own starting and final events, within a second of the plan
            assert abs(row["duration_ms"] - (fact["end_time"] - fact["start_time"])) < 1000
    assert rep.columns == report.PRODUCTION_COLUMNS
    assert all(set(r) == set(report.PRODUCTION_COLUMNS) for r in rep.rows)


def test_production_changes_respect_the_period_and_application(
    store: SqliteStore, simulated: SimulatedData
) -> None:
    full = report.production_change_rows(store, accounts=PROD, since=simulated.since)
    times = sorted(r["first_change_at"] for r in full)
    middle = times[len(times) // 2]
    from spintrail.query import parse_time

    cut = parse_time(middle)
    later = report.production_change_rows(store, accounts=PROD, since=cut)
    got = {r["execution_id"] for r in later}
    # Every run that first changed production after the cut is there; a run that started before it is there
    # only when it was still changing production after it (its change straddles the cut).
    assert got >= {r["execution_id"] for r in full if r["first_change_at"] >= middle}
    by_id = {r["execution_id"]: r for r in full}
    for eid in got:
        row = by_id[eid]
        assert row["first_change_at"] >= middle or row["ended_at"] is None or row["ended_at"] >= middle, row
    assert len(got) < len(full)
    app = Counter(r["application"] for r in full).most_common(1)[0][0]
    only = report.production_change_rows(store, accounts=PROD, since=simulated.since, application=[app])
    assert only and {r["application"] for r in only} == {app}
    assert len(only) == sum(1 for r in full if r["application"] == app)


def test_account_patterns_include_and_exclude(store: SqliteStore, simulated: SimulatedData) -> None:
    assert report.matches("aws-prod", ["*prod*"]) and not report.matches(
        "aws-nonprod", ["*prod*", "!*nonprod*"]
    )
    assert report.matches("K8S-PROD", ["k8s-*"])
    aws_only = report.production_change_rows(
        store, accounts=["*prod*", "!k8s-*", "!gce-*"], since=simulated.since
    )
    expected = {k for k, e in _prod_facts(simulated).items() if any(a == "aws-prod" for a in e["accounts"])}
    assert {r["execution_id"] for r in aws_only} <= expected
    assert all(set(r["accounts"]) == {"aws-prod"} for r in aws_only)
    with pytest.raises(report.ReportError, match="account pattern"):
        report.production_change_rows(store, accounts=["!*prod*"])
    assert report.production_change_rows(store, accounts=["no-such-account"]) == []


def test_separation_of_duties_finds_exactly_the_planted_findings(
    store: SqliteStore, simulated: SimulatedData
) -> None:
    facts = simulated.facts
    rep = report.separation_of_duties(store, accounts=PROD, since=simulated.since)
    by = {f: {r["execution_id"] for r in rep.rows if r["finding"] == f} for f in report.FINDINGS}
    assert by["self_approved"] == set(facts.self_approved_prod)
    assert by["no_approval"] == set(facts.unapproved_prod)
    assert by["no_ticket"] == set(facts.no_ticket_prod)
    # the planted story: a prod deploy approved by its own starter, which also created the server group
    planted = facts.server_groups[facts.lifecycle_server_group]["created_execution"]
    assert planted in by["self_approved"]
    row = next(r for r in rep.rows if r["execution_id"] == planted and r["finding"] == "self_approved")
    assert row["approved_by"] == [row["started_by"]] == [person(facts.executions[planted]["user"])]
    assert rep.extra["counts"] == {f: len(v) for f, v in by.items()}


# -- lineage ---------------------------------------------------------------------------------------


def test_lineage_of_the_planted_server_group_matches_its_history(
    store: SqliteStore, simulated: SimulatedData
) -> None:
    facts = simulated.facts
    name = facts.lifecycle_server_group
    assert name
    truth = facts.server_groups[name]
    rep = report.lineage(store, server_group=name)
    got = [(r["action"], r["user"], r["execution_id"]) for r in rep.rows]
    assert got == [(h["action"], person(h["user"]), h["execution"]) for h in truth["history"]]
    created = rep.rows[0]
    assert created["action"] == "created" and created["image"] and created["capacity"]
    assert created["account"] == truth["account"] and created["region"] == truth["region"]
    resized = next(r for r in rep.rows if r["action"] == "resized")
    assert resized["capacity"] and resized["reason"]
    (version,) = rep.extra["versions"]
    assert version["created_by"] == truth["created_by"]
    assert version["created_execution"] == truth["created_execution"]
    assert version["destroyed_by"] == truth["destroyed_by"]
    assert version["state"] == "destroyed"


def test_lineage_of_a_cluster_covers_its_server_groups(store: SqliteStore, simulated: SimulatedData) -> None:
    facts = simulated.facts
    cluster = facts.server_groups[facts.lifecycle_server_group]["cluster"]
    rep = report.lineage(store, cluster=cluster)
    expected = {
        (name, h["action"], person(h["user"]), h["execution"])
        for name, sg in facts.server_groups.items()
        if sg["cluster"] == cluster
        for h in sg["history"]
    }
    got = {(r["server_group"], r["action"], r["user"], r["execution_id"]) for r in rep.rows}
    assert got == expected
    assert {v["server_group"] for v in rep.extra["versions"]} == {n for n, *_ in expected}
    times = [r["time"] for r in rep.rows]
    assert times == sorted(times)
    with pytest.raises(report.ReportError, match="server group"):
        report.lineage(store)


# -- pipeline configuration history ----------------------------------------------------------------


def test_pipeline_history_lists_every_save_with_its_author(
    store: SqliteStore, simulated: SimulatedData
) -> None:
    facts = simulated.facts
    rep = report.pipeline_history(store, since=simulated.since)
    candidates = {
        k: e for k, e in facts.executions.items() if set(e["stage_types"]) & set(report.CONFIG_STAGE_TYPES)
    }
    finished = {k for k, e in candidates.items() if e["status"] in ("SUCCEEDED", "TERMINAL")}
    got = {r["execution_id"]: r for r in rep.rows}
    # every save that ran to an end is there; a canceled one if its stage got to report an end, and one
    # whose run's own end event was dropped (the save itself did report)
    assert finished <= set(got) <= set(candidates)
    for k in set(got) - finished:
        assert got[k]["status"] == "CANCELED" or candidates[k]["final_event_dropped"], k
    for eid, row in got.items():
        assert row["user"] == person(candidates[eid]["user"])
        assert row["operation"] in candidates[eid]["stage_types"]
        if candidates[eid]["status"] == "SUCCEEDED":
            assert row["status"] == "SUCCEEDED" and row["version"] is not None
    times = [r["time"] for r in rep.rows]
    assert times == sorted(times, reverse=True), "newest first"


def test_pipeline_history_diffs_consecutive_versions(store: SqliteStore, simulated: SimulatedData) -> None:
    rep = report.pipeline_history(store, since=simulated.since)
    pipelines = [r for r in rep.rows if r["kind"] == "pipeline" and r["status"] == "SUCCEEDED"]
    by_id: dict[str, list[dict[str, Any]]] = {}
    for r in reversed(pipelines):
        by_id.setdefault(r["config_id"], []).append(r)
    assert any(len(v) > 1 for v in by_id.values()), "the simulator edits some pipelines several times"
    for versions in by_id.values():
        assert [v["version"] for v in versions] == list(range(1, len(versions) + 1))
        first = versions[0]
        if first["operation"] != "deletePipeline":
            assert first["diff"].count("\n+") > 10, "the first version seen is shown whole"
        for later in versions[1:]:
            if later["operation"] == "deletePipeline":
                assert later["diff"] and "\n-" in later["diff"] and "\n+ " not in later["diff"]
                continue
            lines = later["diff"].splitlines()
            assert later["changed"] == bool(lines)
            changed = [x for x in lines if x[:1] in "+-" and x[:3] not in ("+++", "---")]
            # only real configuration changes, never the timestamps that change on every save
            assert all("updateTs" not in x and "lastModifiedBy" not in x for x in changed)
    one = next(iter(by_id))
    only = report.pipeline_history(store, pipeline=one)
    assert {r["config_id"] for r in only.rows} == {one}


#: A world fixed in time for the application edits: the shared one ends now, and whether its operations
#: include a successful application edit depends on the minute it starts.
APP_EDIT_WORLD_START = 1_762_326_000_000  # 2025-11-05 07:00 UTC


def test_pipeline_history_diffs_application_edits(tmp_path: Path) -> None:
    from conftest import load_simulated

    path = tmp_path / "apps.db"
    load_simulated(path, seed=11, days=21.0, executions=220, start_ms=APP_EDIT_WORLD_START)
    store = SqliteStore(path)
    try:
        rep = report.pipeline_history(store, since=APP_EDIT_WORLD_START)
    finally:
        store.close()
    apps = [r for r in rep.rows if r["kind"] == "application" and r["status"] == "SUCCEEDED"]
    assert apps and all(r["diff"] and '"instancePort"' in r["diff"] for r in apps)


def test_decode_pipeline_accepts_what_deck_and_the_api_send() -> None:
    config = {"id": "p1", "name": "Deploy", "stages": [{"type": "wait"}]}
    b64 = base64.b64encode(json.dumps(config).encode()).decode()
    assert report.decode_pipeline(b64) == config
    assert report.decode_pipeline(b64.rstrip("=")) == config
    assert report.decode_pipeline(config) == config
    assert report.decode_pipeline(json.dumps(config)) == config
    for junk in ("", "not base64 !!", "e30", None, 42, base64.b64encode(b"[1, 2]").decode()):
        assert report.decode_pipeline(junk) in (None, {}), junk
    diff = report.config_diff({**config, "updateTs": "1"}, {**config, "updateTs": "2"}, label="p")
    assert diff == "", "timestamps alone are not a change"


# -- unfinished executions -------------------------------------------------------------------------


def test_unfinished_are_exactly_the_runs_without_an_end(store: SqliteStore, simulated: SimulatedData) -> None:
    facts = simulated.facts
    rep = report.unfinished(store, since=simulated.since)
    assert {r["execution_id"] for r in rep.rows} == set(facts.unfinished)
    assert set(facts.dropped_final) <= {r["execution_id"] for r in rep.rows}
    for row in rep.rows:
        fact = facts.executions[row["execution_id"]]
        assert row["started_by"] == person(fact["user"])
        assert row["events"] == len(store.execution(row["execution_id"])) >= fact["events"]
        assert row["silent_ms"] >= 0 and row["last_event_at"] >= row["started_at"]
    # a run whose end falls after `until` is not unfinished: ends are looked up without the period
    ended = next(e for e in facts.executions.values() if e["end_time"] and not e["final_event_dropped"])
    window = report.unfinished(store, since=ended["start_time"], until=ended["start_time"] + 1)
    assert all(
        r["execution_id"] not in facts.executions
        or facts.executions[r["execution_id"]]["end_time"] is None
        or facts.executions[r["execution_id"]]["final_event_dropped"]
        for r in window.rows
    )


# -- dashboard -------------------------------------------------------------------------------------


def test_dashboard_numbers_match_the_simulation(store: SqliteStore, simulated: SimulatedData) -> None:
    facts = simulated.facts
    dash = report.dashboard(store, since=simulated.since)
    deploys = {
        k: e for k, e in facts.executions.items() if set(e["stage_types"]) & set(report.DEPLOY_STAGE_TYPES)
    }
    succeeded = {k for k, e in deploys.items() if e["status"] == "SUCCEEDED"}
    assert dash.status_totals["succeeded"] == len(succeeded)
    assert dash.deployments == sum(dash.status_totals.values()) <= len(deploys)
    assert sum(sum(v) for v in dash.by_day.values()) == dash.deployments
    assert dash.failure_rate is not None and 0 <= dash.failure_rate < 1
    judged = Counter(
        j["status"] for e in facts.executions.values() for j in e["judgments"] if j["time"] >= simulated.since
    )
    assert dash.judgments == {"continue": judged["continue"], "stop": judged["stop"]}
    approvers = Counter(
        j["user"] for e in facts.executions.values() for j in e["judgments"] if j["status"] == "continue"
    )
    assert dash.top_approvers == sorted(dash.top_approvers, key=lambda kv: -kv[1])
    assert all(approvers[u] == n for u, n in dash.top_approvers)
    durations = [deploy["end_time"] - deploy["start_time"] for k, deploy in deploys.items() if k in succeeded]
    assert dash.mean_duration_ms == pytest.approx(sum(durations) / len(durations), abs=1000)
    assert sum(dash.events_by_day) == facts.event_count
    assert dash.change_volume and all(sum(kinds.values()) > 0 for _a, kinds in dash.change_volume)
    assert dash.days[0] <= dash.days[-1] and len(dash.days) in (22, 23)
    api = dash.to_api()
    assert api["deployments"] == dash.deployments and len(api["deployments_by_day"]["succeeded"]) == len(
        dash.days
    )


# -- store aggregates: the SQLite implementations agree with the contract's defaults ----------------


@pytest.mark.parametrize(
    ("filters", "by"),
    [
        (Filters(), ["application"]),
        (Filters(), ["accounts"]),
        (Filters(type=("orca:pipeline:*",)), ["day", "status"]),
        (Filters(stage_type=("manualJudgment",)), ["status", "user"]),
        (Filters(application=("nope",)), ["user"]),
        (Filters(q="prod"), ["server_groups", "type"]),
        (Filters(), ["accounts", "regions"]),
    ],
)
def test_count_by_matches_the_default_implementation(
    store: SqliteStore, filters: Filters, by: list[str]
) -> None:
    assert store.count_by(filters, by) == Store.count_by(store, filters, by)
    assert store.count_by(filters, by, limit=3) == Store.count_by(store, filters, by, limit=3)


def test_select_and_tail_match_the_default_implementation(store: SqliteStore) -> None:
    f = Filters(stage_type=("resizeServerGroup", "deploy"))
    fields = ["id", "day", "accounts", "user", "time"]
    assert list(store.select(f, fields)) == list(Store.select(store, f, fields))
    assert len(list(store.select(Filters(), ["id"]))) == store.stats().events
    last = store.last_id()
    assert last == store.stats().events
    assert [r.id for r in store.tail(last - 5)] == list(range(last - 4, last + 1))
    assert [r.id for r in store.tail(last - 5, limit=2)] == [last - 4, last - 3]
    assert store.tail(last) == []
    with pytest.raises(ValueError, match="unknown field"):
        list(store.select(Filters(), ["nope"]))
    assert "day" not in API_FIELDS


def test_stage_spans_do_not_depend_on_arrival_order(store: SqliteStore, simulated: SimulatedData) -> None:
    eid = simulated.facts.server_groups[simulated.facts.lifecycle_server_group]["created_execution"]
    records = store.execution(eid)
    shuffled = list(records)
    random.Random(3).shuffle(shuffled)
    spans = stage_spans(shuffled)
    assert [(s.name, s.start, s.end, s.status) for s in spans] == [
        (s.name, s.start, s.end, s.status) for s in stage_spans(records)
    ]
    judged = [s for s in spans if s.type == "manualJudgment"]
    assert judged and judged[0].judge == simulated.facts.executions[eid]["user"]
    assert all(s.start is not None and s.end is not None and s.start <= s.end for s in spans)
    tl = build_timeline(eid, shuffled)
    assert [s.start for s in spans] == sorted(s.start for s in spans)
    assert tl.start is not None and tl.end is not None
    assert min(s.start for s in spans) >= tl.start and max(s.end for s in spans) <= tl.end
