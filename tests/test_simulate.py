"""The event simulator: realistic, reproducible echo events whose planted facts match what it emits."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import islice, pairwise
from pathlib import Path
from typing import Any

import pytest

from spintrail.simulate import (
    MUTATING_STAGE_TYPES,
    PROD_ACCOUNTS,
    Simulator,
    post_events,
    simulate,
    write_ndjson,
)

START = 1_717_000_000_000  # fixed window start so runs are reproducible
TICKET = re.compile(r"\b[A-Z][A-Z0-9]+-\d+\b")
ORCA_STAGE_KEYS = {
    "standalone",
    "canceled",
    "context",
    "startTime",
    "endTime",
    "executionId",
    "stageId",
    "isSynthetic",
    "name",
}


@pytest.fixture(scope="module")
def world() -> tuple[Simulator, list[dict[str, Any]]]:
    sim = Simulator(seed=7, start_ms=START, days=10, executions=90, serialization="mixed")
    return sim, list(sim.events())


def by_execution(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for ev in events:
        if ev["details"].get("source") == "orca":
            out[ev["content"]["executionId"]].append(ev)
    return out


def stage_of(ev: dict[str, Any]) -> dict[str, Any]:
    stages = [s for s in ev["content"]["execution"]["stages"] if s["id"] == ev["content"]["stageId"]]
    assert len(stages) == 1, "the event's stage must be in its execution snapshot exactly once"
    return stages[0]


def trigger_get(trigger: dict[str, Any], key: str) -> Any:
    return trigger.get(key, (trigger.get("other") or {}).get(key))


# --------------------------------------------------------------------------------------------- reproducible


def test_same_seed_gives_identical_events_and_another_seed_differs() -> None:
    def run(seed: int) -> list[str]:
        return [
            json.dumps(ev)
            for ev in simulate(seed=seed, start_ms=START, days=3, executions=25, duplicate_rate=0.05)
        ]

    first, again, other = run(11), run(11), run(12)
    assert first == again
    assert first != other
    assert len(first) > 500
    sim = Simulator(seed=11, start_ms=START, days=3, executions=25)
    assert [json.dumps(e) for e in sim.events()] == [json.dumps(e) for e in sim.events()]


def test_executions_count_and_facts_event_count_match_the_stream(world: tuple[Simulator, list]) -> None:
    sim, events = world
    assert len(sim.facts.executions) == 90
    assert len(events) == sim.facts.event_count  # no duplicates requested
    assert Counter(ev["details"]["type"] for ev in events) == Counter(sim.facts.event_types)
    per_exec = by_execution(events)
    assert set(per_exec) == set(sim.facts.executions)
    for ep_id, evs in per_exec.items():
        assert len(evs) == sim.facts.executions[ep_id]["events"], ep_id


def test_events_fall_inside_the_window_and_default_window_ends_now() -> None:
    sim = Simulator(seed=3, start_ms=START, days=2, executions=15)
    for ev in sim.events():
        created = int(ev["details"]["created"])
        assert START - 3_600_000 <= created <= START + 2 * 86_400_000 + 60_000
    live = Simulator(seed=3, days=1, executions=5)
    assert abs(live.window_end - live.window_start - 86_400_000) < 2
    assert abs(live.window_end - time.time() * 1000) < 60_000


# --------------------------------------------------------------------------------------------- shapes


def test_every_event_has_a_valid_echo_envelope(world: tuple[Simulator, list]) -> None:
    _sim, events = world
    seen_types = set()
    for ev in events:
        d = ev["details"]
        assert isinstance(d["type"], str) and isinstance(d["created"], str) and d["created"].isdigit()
        assert isinstance(d["requestHeaders"], dict)
        assert isinstance(ev["content"], dict)
        t = d["type"]
        seen_types.add(t)
        c = ev["content"]
        if t.startswith("orca:"):
            assert d["source"] == "orca" and d["application"]
            if t.split(":")[1] in ("pipeline", "orchestration"):
                assert set(c) == {"executionId", "execution"}
                assert c["execution"]["id"] == c["executionId"]
                assert c["execution"]["type"] == ("PIPELINE" if ":pipeline:" in t else "ORCHESTRATION")
                assert c["execution"]["application"] == d["application"]
            else:
                assert set(c) >= ORCA_STAGE_KEYS
                if "execution" in c:
                    assert c["standalone"] is (c["execution"]["type"] == "ORCHESTRATION")
                if t.startswith("orca:task:"):
                    stype = stage_of(ev)["type"] if "execution" in c else None
                    assert "." in c["taskName"]
                    if stype:
                        assert c["taskName"].split(".", 1)[0] == stype
                else:
                    assert "taskName" not in c
        elif t == "build":
            assert d["source"] == "igor"
            assert set(c) == {"project", "master"}
            assert {"building", "number", "result", "timestamp", "url"} <= set(c["project"]["lastBuild"])
        elif t == "docker":
            assert d["source"] == "igor"
            assert set(c) == {"account", "registry", "repository", "tag", "digest"}
        elif t == "git":
            assert d["source"] == "github"
            assert {"repoProject", "slug", "hash", "branch", "action", "artifacts", "commits"} <= set(c)
            assert json.loads(ev["rawContent"]) == ev["payload"]
        elif t == "manual":
            assert "source" not in d
            assert ev["eventId"] == c["trigger"]["eventId"]
            assert set(c) == {"application", "pipelineNameOrId", "trigger", "user"}
        else:  # pragma: no cover - the assertion names the unexpected type
            raise AssertionError(f"unexpected event type {t}")
    assert {
        "orca:pipeline:starting",
        "orca:pipeline:complete",
        "orca:pipeline:failed",
        "orca:stage:starting",
        "orca:stage:complete",
        "orca:stage:failed",
        "orca:task:starting",
        "orca:task:complete",
        "orca:orchestration:starting",
        "orca:orchestration:complete",
        "build",
        "docker",
        "git",
        "manual",
    } <= seen_types


def test_stage_and_task_events_embed_the_execution_as_it_is_at_that_moment(
    world: tuple[Simulator, list],
) -> None:
    _sim, events = world
    checked = 0
    for ev in events:
        t = ev["details"]["type"]
        if not (t.startswith("orca:stage:") or t.startswith("orca:task:")):
            continue
        c = ev["content"]
        stage = stage_of(ev)
        assert stage["name"] == c["name"]
        assert c["isSynthetic"] == (stage.get("syntheticStageOwner") is not None)
        assert c["context"] == stage["context"]
        assert c["execution"]["status"] == "RUNNING"
        if t == "orca:stage:starting":
            assert stage["status"] == "RUNNING" and stage["startTime"] == c["startTime"]
        elif t == "orca:stage:complete":
            assert stage["status"] == "SUCCEEDED" and stage["endTime"] == c["endTime"] is not None
        elif t == "orca:stage:failed":
            assert stage["status"] in ("TERMINAL", "CANCELED")
        elif t == "orca:stage:skipped":
            assert stage["status"] == "SKIPPED"
        else:
            name = c["taskName"].split(".", 1)[1]
            running = [tk for tk in stage["tasks"] if tk["name"] == name]
            assert running, "the task must be in its stage"
            want = {"orca:task:starting": "RUNNING", "orca:task:complete": "SUCCEEDED"}.get(t)
            statuses = {tk["status"] for tk in running}
            assert (want in statuses) if want else (statuses & {"TERMINAL", "CANCELED"})
        checked += 1
    assert checked > 1000


def test_snapshots_progress_within_an_execution(world: tuple[Simulator, list]) -> None:
    _sim, events = world
    per_exec = by_execution(events)
    for evs in per_exec.values():
        ordered = sorted(evs, key=lambda e: int(e["details"]["created"]))
        done_before = -1
        for ev in ordered:
            stages = ev["content"].get("execution", {}).get("stages")
            if stages is None:
                continue
            finished = sum(1 for s in stages if s["status"] in ("SUCCEEDED", "SKIPPED"))
            assert finished >= done_before - 1  # created jitter can swap two close events
            done_before = max(done_before, finished)


def test_synthetic_children_bake_and_deploy_create_server_groups(world: tuple[Simulator, list]) -> None:
    _sim, events = world
    found = set()
    for ev in events:
        if ev["details"]["type"] != "orca:stage:complete":
            continue
        c = ev["content"]
        ctx = c["context"]
        if ctx.get("type") == "createServerGroup":
            stage = stage_of(ev)
            assert stage["syntheticStageOwner"] == "STAGE_BEFORE" and stage["parentStageId"]
            parent = next(s for s in c["execution"]["stages"] if s["id"] == stage["parentStageId"])
            assert parent["type"] == "deploy"
            ((region, names),) = ctx["deploy.server.groups"].items()
            assert re.fullmatch(rf"{c['execution']['application']}-[a-z]+-v\d{{3}}", names[0])
            assert ctx["deploy.account.name"] == ctx["account"]
            assert ctx["kato.tasks"][0]["resultObjects"][0]["serverGroupNameByRegion"] == {region: names[0]}
            found.add("createServerGroup")
        elif ctx.get("type") == "bake" and c["isSynthetic"]:
            assert ctx["region"] and ctx["status"]["result"] == "SUCCESS"
            found.add("bake")
        elif ctx.get("type") == "deployManifest":
            ((ns, names),) = ctx["outputs.manifestNamesByNamespace"].items()
            assert all(m["metadata"]["namespace"] == ns for m in ctx["manifests"])
            found.add("deployManifest")
    assert found == {"createServerGroup", "bake", "deployManifest"}


def test_stage_types_triggers_and_secrets_are_all_represented() -> None:
    sim = Simulator(seed=5, start_ms=START, days=14, executions=260, shuffle_window=0)
    stage_types: set[str] = set()
    trigger_types: set[str] = set()
    bearer = git_secret = False
    for ev in sim.events():
        c = ev["content"]
        if ev["details"]["type"] == "orca:stage:starting":
            stage_types.add(stage_of(ev)["type"])
            ctx = c["context"]
            if "customHeaders" in ctx:
                assert ctx["customHeaders"]["Authorization"].startswith("Bearer ")
                bearer = True
        elif ev["details"]["type"] == "orca:pipeline:starting":
            trig = c["execution"]["trigger"]
            trigger_types.add(trig["type"])
            if trig["type"] == "git":
                git_secret = git_secret or bool(trigger_get(trig, "secret"))
            if trig["type"] == "manual":
                assert trig["user"] == c["execution"]["authentication"]["user"]
            elif trig["type"] in ("cron", "git", "docker", "jenkins"):
                assert trig["user"] == "[anonymous]"
                run_as = trigger_get(trig, "runAsUser")
                assert c["execution"]["authentication"]["user"] == (run_as or "anonymous")
            elif trig["type"] == "pipeline":
                assert trig["parentExecution"]["type"] == "PIPELINE"
                parent = trig["parentExecution"]
                assert parent["status"] == "RUNNING"
                stage = next(s for s in parent["stages"] if s["id"] == trig["parentPipelineStageId"])
                assert stage["type"] == "pipeline" and stage["status"] == "RUNNING"
                assert [t["status"] for t in stage["tasks"]] == ["SUCCEEDED", "RUNNING"]
    assert {
        "bake",
        "deploy",
        "createServerGroup",
        "manualJudgment",
        "disableCluster",
        "scaleDownCluster",
        "shrinkCluster",
        "destroyServerGroup",
        "resizeServerGroup",
        "deployManifest",
        "jenkins",
        "wait",
        "webhook",
        "runJob",
        "pipeline",
        "disableServerGroup",
        "enableServerGroup",
        "rollbackServerGroup",
        "cloneServerGroup",
        "savePipeline",
        "updatePipeline",
        "updateApplication",
    } <= stage_types
    assert {"manual", "cron", "git", "docker", "jenkins", "pipeline"} <= trigger_types
    assert bearer and git_secret


def test_orchestrations_carry_deck_descriptions_and_pipeline_saves_diff(
    world: tuple[Simulator, list],
) -> None:
    _sim, events = world
    patterns = [
        r"Resize Server Group: \S+ from \(min: \d+, max: \d+, desired: \d+\) to \(min: \d+, max: \d+, "
        r"desired: \d+\)",
        r"(Disable|Enable|Destroy|Rollback) Server Group: \S+",
        r"Create Cloned Server Group from \S+",
        r"(Save|Update|Delete) pipeline '.+'",
        r"Update Application: \S+",
        r"Deploy manifest",
    ]
    configs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    n = 0
    for ev in events:
        if ev["details"]["type"] != "orca:orchestration:starting":
            continue
        ex = ev["content"]["execution"]
        assert ex["name"] is None if "name" in ex else True
        assert any(re.fullmatch(p, ex["description"]) for p in patterns), ex["description"]
        assert ex["stages"][0]["name"] == ex["stages"][0]["type"] and ex["stages"][0]["refId"] == "0"
        ctx = ex["stages"][0]["context"]
        if ex["stages"][0]["type"] in ("savePipeline", "updatePipeline"):
            configs[json.loads(base64.b64decode(ctx["pipeline"]))["id"]].append(
                json.loads(base64.b64decode(ctx["pipeline"]))
            )
        if ex["stages"][0]["type"] == "resizeServerGroup":
            assert ctx["reason"]
        n += 1
    assert n >= 10
    multi = [versions for versions in configs.values() if len(versions) > 1]
    assert multi, "some pipeline is saved more than once"
    assert any(a != b for versions in multi for a, b in pairwise(versions))


def test_legacy_shapes_match_the_reference_fixtures(echo_fixtures: Path) -> None:
    fixture = json.loads(
        (
            echo_fixtures
            / "synthetic"
            / "orca_task_complete__synthetic__createServerGroup.monitorDeploy.json"
        ).read_text()
    )
    sim = Simulator(seed=2, start_ms=START, days=3, executions=30, serialization="legacy")
    for ev in sim.events():
        if (
            ev["details"]["type"] == "orca:task:complete"
            and ev["content"]["context"].get("type") == "createServerGroup"
            and "organization" not in ev["details"]
            and ev["content"]["execution"]["trigger"]["type"] == "manual"
        ):
            break
    else:  # pragma: no cover
        pytest.fail("no createServerGroup task event")
    assert set(ev) == set(fixture) and set(ev["details"]) == set(fixture["details"])
    assert set(ev["content"]) == set(fixture["content"])
    ex, fx = ev["content"]["execution"], fixture["content"]["execution"]
    assert list(ex) == list(fx)
    assert {frozenset(s) for s in ex["stages"]} == {frozenset(s) for s in fx["stages"]}
    assert {frozenset(t) for s in ex["stages"] for t in s["tasks"]} == {
        frozenset(t) for s in fx["stages"] for t in s["tasks"]
    }
    assert set(ex["trigger"]) == set(fx["trigger"])


def test_serialization_modes_differ_in_nulls_and_trigger_extras() -> None:
    def executions(mode: str) -> list[dict[str, Any]]:
        sim = Simulator(seed=4, start_ms=START, days=2, executions=40, serialization=mode, builds=False)
        return [ev for ev in sim.events() if ev["details"]["type"] == "orca:pipeline:starting"]

    legacy, modern, mixed = executions("legacy"), executions("modern"), executions("mixed")
    for ev in legacy:
        ex = ev["content"]["execution"]
        assert "other" in ex["trigger"] and "canceledBy" in ex and ex["canceledBy"] is None
    for ev in modern:
        ex = ev["content"]["execution"]
        assert "other" not in ex["trigger"]
        nulls = [k for k, v in ex.items() if v is None]
        nulls += [k for s in ex["stages"] for k, v in s.items() if v is None]
        nulls += [k for s in ex["stages"] for t in s["tasks"] for k, v in t.items() if v is None]
        assert not nulls
        assert "organization" not in ev["details"] and "eventId" in ev
    kinds = {"other" in ev["content"]["execution"]["trigger"] for ev in mixed}
    assert kinds == {True, False}
    legacy_all = list(
        Simulator(seed=4, start_ms=START, days=2, executions=40, serialization="legacy").events()
    )
    missing = sum(1 for ev in legacy_all if "eventId" not in ev)
    assert 0 < missing < len(legacy_all) * 0.1
    assert any("organization" in ev["details"] and ev["details"]["organization"] is None for ev in legacy_all)


def test_event_ids_are_uuids_and_unique() -> None:
    events = list(simulate(seed=9, start_ms=START, days=2, executions=30, serialization="modern"))
    ids = [ev["eventId"] for ev in events]
    assert len(ids) == len(set(ids))
    assert all(
        re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", i) for i in ids
    )


# --------------------------------------------------------------------------------------------- delivery


def test_duplicate_rate_redelivers_the_same_event_later() -> None:
    sim = Simulator(seed=6, start_ms=START, days=2, executions=30, serialization="modern", duplicate_rate=0.1)
    events = list(sim.events())
    counts = Counter(ev["eventId"] for ev in events)
    assert len(counts) == sim.facts.event_count
    extra = len(events) - len(counts)
    assert 0.06 * len(counts) < extra < 0.14 * len(counts)
    assert max(counts.values()) == 2
    first_seen: dict[str, dict[str, Any]] = {}
    for ev in events:
        if ev["eventId"] in first_seen:
            assert first_seen[ev["eventId"]] is ev
        first_seen[ev["eventId"]] = ev
    clean = Simulator(seed=6, start_ms=START, days=2, executions=30, serialization="modern")
    assert len(list(clean.events())) == clean.facts.event_count


def test_shuffle_window_reorders_delivery_but_keeps_the_events() -> None:
    def ids(window: int) -> list[str]:
        sim = Simulator(
            seed=8, start_ms=START, days=2, executions=30, serialization="modern", shuffle_window=window
        )
        return [ev["eventId"] for ev in sim.events()]

    in_order, shuffled = ids(0), ids(10)
    assert sorted(in_order) == sorted(shuffled) and in_order != shuffled
    position = {e: i for i, e in enumerate(in_order)}
    displacement = [abs(position[e] - i) for i, e in enumerate(shuffled)]
    assert max(displacement) < 200 and sum(displacement) / len(displacement) < 20


def test_without_full_execution_task_events_omit_the_execution() -> None:
    sim = Simulator(seed=10, start_ms=START, days=2, executions=20, include_full_execution=False)
    tasks = stages = 0
    for ev in sim.events():
        t = ev["details"]["type"]
        if t.startswith("orca:task:"):
            assert "execution" not in ev["content"] and ev["content"]["taskName"]
            tasks += 1
        elif t.startswith("orca:stage:"):
            assert "execution" in ev["content"]
            stages += 1
    assert tasks and stages


def test_events_stream_lazily() -> None:
    sim = Simulator(seed=1, start_ms=START, days=30, executions=3000, builds=False)
    gen = sim.events()
    assert isinstance(gen, Iterator)
    assert len(list(islice(gen, 200))) == 200


# --------------------------------------------------------------------------------------------- facts


def test_every_execution_starts_and_ends_unless_unfinished(world: tuple[Simulator, list]) -> None:
    sim, events = world
    per_exec = by_execution(events)
    unfinished = set(sim.facts.unfinished)
    assert sim.facts.dropped_final and set(sim.facts.dropped_final) <= unfinished
    for ep_id, facts in sim.facts.executions.items():
        types = [
            ev["details"]["type"].rsplit(":", 1)[1]
            for ev in per_exec[ep_id]
            if ev["details"]["type"].split(":")[1] in ("pipeline", "orchestration")
        ]
        assert types.count("starting") == 1
        ends = types.count("complete") + types.count("failed")
        assert ends == (0 if ep_id in unfinished else 1), ep_id
        if ends:
            final = next(
                ev
                for ev in per_exec[ep_id]
                if ev["details"]["type"].rsplit(":", 1)[1] != "starting"
                and ev["details"]["type"].split(":")[1] in ("pipeline", "orchestration")
            )
            assert final["content"]["execution"]["status"] == facts["status"]
            assert final["content"]["execution"]["endTime"] == facts["end_time"]


def test_self_approved_prod_deploys_were_judged_by_their_starter(world: tuple[Simulator, list]) -> None:
    sim, events = world
    per_exec = by_execution(events)
    assert sim.facts.self_approved_prod
    manual_prod = 0
    for ep_id in sim.facts.executions:
        evs = per_exec[ep_id]
        last = max(evs, key=lambda e: int(e["details"]["created"]))["content"]["execution"]
        starter = last["trigger"]["user"] if last["trigger"]["type"] == "manual" else None
        changes = prod_change_starts(evs)
        self_approved = bool(changes) and any(
            s["type"] == "manualJudgment"
            and s.get("lastModified")
            and s["lastModified"]["user"] == starter
            and s["context"]["lastModifiedBy"] == starter
            and s["context"]["judgmentStatus"] == "continue"
            and s["lastModified"]["lastModifiedTime"] < max(changes)
            for s in last["stages"]
        )
        assert self_approved == (ep_id in sim.facts.self_approved_prod), ep_id
        manual_prod += bool(changes and starter)
    assert len(sim.facts.self_approved_prod) < manual_prod


def prod_change_starts(evs: list[dict[str, Any]]) -> list[int]:
    return [
        ev["content"]["startTime"]
        for ev in evs
        if ev["details"]["type"] == "orca:stage:starting"
        and stage_of(ev)["type"] in MUTATING_STAGE_TYPES
        and stage_account(stage_of(ev)) in PROD_ACCOUNTS
    ]


def stage_account(stage: dict[str, Any]) -> str | None:
    ctx = stage["context"]
    if "clusters" in ctx:
        return ctx["clusters"][0]["account"]
    return ctx.get("account") or ctx.get("credentials")


def test_prod_change_facts_match_the_events(world: tuple[Simulator, list]) -> None:
    sim, events = world
    per_exec = by_execution(events)
    unapproved, no_ticket = set(sim.facts.unapproved_prod), set(sim.facts.no_ticket_prod)
    assert unapproved and no_ticket
    for ep_id, facts in sim.facts.executions.items():
        evs = per_exec[ep_id]
        starts = prod_change_starts(evs)
        change = min(starts) if starts else None
        assert facts["prod_change"] == (change is not None), ep_id
        text = "\n".join(json.dumps(ev) for ev in evs)
        assert set(TICKET.findall(text)) == set(facts["tickets"]), ep_id
        if change is None:
            assert ep_id not in unapproved and ep_id not in no_ticket
            continue
        last = max(evs, key=lambda e: int(e["details"]["created"]))["content"]["execution"]
        approvals = [
            s
            for s in last["stages"]
            if s["type"] == "manualJudgment"
            and s["context"].get("judgmentStatus") == "continue"
            and s["lastModified"]["lastModifiedTime"] < change
        ]
        assert (ep_id in unapproved) == (not approvals), ep_id
        assert (ep_id in no_ticket) == (not TICKET.search(text)), ep_id


def test_server_group_lifecycle_was_planted_by_named_users(world: tuple[Simulator, list]) -> None:
    sim, events = world
    name = sim.facts.lifecycle_server_group
    assert name
    sg = sim.facts.server_groups[name]
    people = set(sim.facts.users)
    for action in ("created", "resized", "disabled", "destroyed"):
        assert sg[f"{action}_by"] in people, action
    assert len({sg["created_by"], sg["resized_by"], sg["disabled_by"], sg["destroyed_by"]}) >= 3
    per_exec = by_execution(events)
    created = per_exec[sg["created_execution"]]
    assert any(
        name in ev["content"]["context"].get("deploy.server.groups", {}).get(sg["region"], [])
        for ev in created
        if ev["details"]["type"] == "orca:stage:complete"
    )
    for action, verb in (("resized", "Resize"), ("disabled", "Disable"), ("destroyed", "Destroy")):
        start = next(
            ev
            for ev in per_exec[sg[f"{action}_execution"]]
            if ev["details"]["type"] == "orca:orchestration:starting"
        )
        ex = start["content"]["execution"]
        assert ex["description"].startswith(f"{verb} Server Group: {name}")
        assert ex["authentication"]["user"] == sg[f"{action}_by"] == ex["trigger"]["user"]
    assert sg["created_execution"] in sim.facts.self_approved_prod


def test_server_group_facts_agree_with_kato_results(world: tuple[Simulator, list]) -> None:
    sim, events = world
    touched: dict[str, set[str]] = defaultdict(set)
    for ev in events:
        if ev["details"]["type"] == "orca:task:complete":
            ctx = ev["content"]["context"]
            if "kato.tasks" in ctx and ctx.get("kato.task.lastStatus") == "SUCCEEDED":
                for names in ctx.get("deploy.server.groups", {}).values():
                    touched[ev["content"]["executionId"]].update(names)
    for name, sg in sim.facts.server_groups.items():
        for entry in sg["history"]:
            assert name in touched[entry["execution"]], (name, entry)
            assert entry["user"] == sim.facts.executions[entry["execution"]]["user"]


def test_cancellations_name_who_canceled(world: tuple[Simulator, list]) -> None:
    sim, events = world
    canceled = [
        ev["content"]["execution"]
        for ev in events
        if ev["details"]["type"] in ("orca:pipeline:failed", "orca:orchestration:failed")
        and ev["content"]["execution"]["canceled"]
    ]
    assert canceled
    by = {ex["canceledBy"] for ex in canceled}
    assert "parent pipeline" in by and by - {"parent pipeline"}
    for ex in canceled:
        assert ex["status"] == "CANCELED"
        assert sim.facts.executions[ex["id"]]["canceled_by"] == ex["canceledBy"]
    child = next(ex for ex in canceled if ex["canceledBy"] == "parent pipeline")
    assert child["trigger"]["type"] == "pipeline"
    assert sim.facts.executions[child["id"]]["parent_execution"] == child["trigger"]["parentExecution"]["id"]


def test_failures_carry_an_exception_or_a_judgment_stop(world: tuple[Simulator, list]) -> None:
    _sim, events = world
    failed = [
        ev for ev in events if ev["details"]["type"] == "orca:stage:failed" and not ev["content"]["canceled"]
    ]
    assert failed
    for ev in failed:
        ctx = ev["content"]["context"]
        stage = stage_of(ev)
        assert stage["status"] == "TERMINAL"
        if stage["type"] == "manualJudgment":
            assert ctx["judgmentStatus"] == "stop"
        elif stage["type"] == "jenkins":
            assert ctx["buildInfo"]["result"] == "FAILURE"
        elif stage["type"] in ("deploy", "bake", "destroyServerGroup", "rollbackServerGroup", "pipeline"):
            continue  # failed through a synthetic child or a child pipeline
        else:
            assert ctx["exception"]["details"]["errors"], stage["type"]


def test_people_work_days(world: tuple[Simulator, list]) -> None:
    sim = Simulator(seed=12, start_ms=START, days=14, executions=300, builds=False)
    hours = Counter()
    for facts in sim.facts.executions.values():
        if facts["trigger_type"] == "manual":
            hours[(facts["start_time"] // 3_600_000) % 24] += 1
    day = sum(hours[h] for h in range(9, 17))
    night = sum(hours[h] for h in (0, 1, 2, 3, 4, 5, 22, 23))
    assert day > 4 * night


def test_small_runs_still_plant_what_fits() -> None:
    assert Simulator(seed=1, start_ms=START, executions=0).facts.executions == {}
    sim = Simulator(seed=1, start_ms=START, days=3, executions=4)
    assert len(sim.facts.executions) == 4
    assert sim.facts.lifecycle_server_group and sim.facts.self_approved_prod


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"serialization": "json"}, "serialization must be one of"),
        ({"days": 0}, "days must be a positive number"),
        ({"executions": -1}, "executions must be a non-negative integer"),
        ({"duplicate_rate": 1.5}, "duplicate_rate must be between 0 and 1"),
        ({"shuffle_window": -2}, "shuffle_window must be a non-negative integer"),
        ({"start_ms": "yesterday"}, "start_ms must be epoch milliseconds"),
        ({"seed": "abc"}, "seed must be an integer"),
    ],
)
def test_bad_arguments_are_rejected_with_a_clear_message(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Simulator(**kwargs)


# --------------------------------------------------------------------------------------------- output


def test_write_ndjson_round_trips(tmp_path: Path) -> None:
    events = list(simulate(seed=2, start_ms=START, days=1, executions=8))
    path = tmp_path / "events.ndjson"
    with path.open("wb") as fp:
        assert write_ndjson(iter(events), fp) == len(events)
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == len(events) + 1
    assert [json.loads(line) for line in lines[:-1]] == events
    assert b": " not in lines[0] or b'": ' not in lines[0]  # compact separators
    buf = io.BytesIO()
    assert write_ndjson([], buf) == 0 and buf.getvalue() == b""


class _Collector(BaseHTTPRequestHandler):
    bodies: list[Any]
    lock: threading.Lock
    fail: bool

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            self.bodies.append((body, self.headers.get("Content-Type"), self.headers.get("X-Token")))
        if self.fail:
            self.send_response(500)
            self.end_headers()
            return
        n = len(body) if isinstance(body, list) else 1
        answer = json.dumps({"stored": n - (1 if n > 2 else 0), "duplicates": 1 if n > 2 else 0}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Collector]]]:
    handler = type("Handler", (_Collector,), {"bodies": [], "lock": threading.Lock(), "fail": False})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/api/v1/echo/events", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_post_events_sends_one_request_per_event(server: tuple[str, type[_Collector]]) -> None:
    url, handler = server
    events = list(simulate(seed=3, start_ms=START, days=1, executions=3, builds=False))[:23]
    seen: list[int] = []
    stats = post_events(url, events, concurrency=3, headers={"X-Token": "t0ken"}, progress=seen.append)
    assert (stats.sent, stats.stored, stats.duplicates, stats.failed) == (23, 23, 0, 0)
    assert stats.seconds > 0
    assert len(handler.bodies) == 23
    assert all(ct == "application/json" and tok == "t0ken" for _b, ct, tok in handler.bodies)
    assert sorted(json.dumps(b, sort_keys=True) for b, _c, _t in handler.bodies) == sorted(
        json.dumps(e, sort_keys=True) for e in events
    )
    assert seen == [1] * 23


def test_post_events_batches_as_json_arrays(server: tuple[str, type[_Collector]]) -> None:
    url, handler = server
    events = list(simulate(seed=3, start_ms=START, days=1, executions=3, builds=False))[:23]
    seen: list[int] = []
    stats = post_events(url, iter(events), batch_size=10, concurrency=2, progress=seen.append)
    assert sorted(seen) == [3, 10, 10]
    sizes = sorted(len(b) for b, _c, _t in handler.bodies)
    assert sizes == [3, 10, 10]
    assert all(isinstance(b, list) for b, _c, _t in handler.bodies)
    assert (stats.sent, stats.stored, stats.duplicates, stats.failed) == (23, 20, 3, 0)


def test_post_events_counts_failures(server: tuple[str, type[_Collector]]) -> None:
    url, handler = server
    handler.fail = True
    events = list(simulate(seed=3, start_ms=START, days=1, executions=2, builds=False))[:7]
    stats = post_events(url, events, batch_size=3)
    assert (stats.sent, stats.stored, stats.failed) == (7, 0, 7)
    unreachable = post_events("http://127.0.0.1:9/nothing", events[:2], timeout=2)
    assert unreachable.failed == 2 and unreachable.stored == 0
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        post_events(url, events, batch_size=0)
