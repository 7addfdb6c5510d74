"""Normalizing echo events into audit records: who, what, where, when and why."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest

from spintrail.normalize import DEFAULT_TICKET_PATTERN, event_id_of, normalize
from spintrail.record import LIST_FIELDS, AuditRecord

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "echo"
IGOR_ARRAY = "igor_build__spinnaker-echo__events.json"
RECEIVED = 1_800_000_000_000


def _fixture_files() -> list[Path]:
    if not FIXTURES.is_dir():
        return []
    return sorted(FIXTURES.glob("*.json")) + sorted((FIXTURES / "synthetic").glob("*.json"))


needs_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"echo sample events not found at {FIXTURES} (shared fixtures absent)"
)


def unwrap(body: Any) -> Any:
    """The echo event inside a ``wrap: true`` body (``payload``) or a Splunk-style template (``event``)."""
    if isinstance(body, dict) and "details" not in body:
        for key in ("payload", "event"):
            if isinstance(body.get(key), dict):
                return body[key]
    return body


def load(name: str) -> dict[str, Any]:
    path = FIXTURES / name if (FIXTURES / name).exists() else FIXTURES / "synthetic" / name
    return unwrap(json.loads(path.read_text(encoding="utf-8")))


def fields(rec: AuditRecord) -> dict[str, Any]:
    out = dataclasses.asdict(rec)
    del out["id"], out["received_at"]
    return out


EMPTY: dict[str, Any] = {
    f.name: [] if f.name in LIST_FIELDS else None
    for f in dataclasses.fields(AuditRecord)
    if f.name not in ("id", "received_at")
}


def expect(**values: Any) -> dict[str, Any]:
    return {**EMPTY, **values}


# --------------------------------------------------------------------------------------------------
# Every sample event normalizes
# --------------------------------------------------------------------------------------------------


@needs_fixtures
@pytest.mark.parametrize("path", [p for p in _fixture_files() if p.name != IGOR_ARRAY], ids=lambda p: p.name)
def test_every_sample_event_normalizes_without_changing_it(path: Path) -> None:
    event = unwrap(json.loads(path.read_text(encoding="utf-8")))
    before = copy.deepcopy(event)
    rec = normalize(event, received_at=RECEIVED, instance="prod-us")
    assert event == before
    assert isinstance(rec.event_id, str) and rec.event_id
    assert isinstance(rec.time, int) and rec.time != RECEIVED  # every sample carries details.created
    assert rec.type == event["details"]["type"]
    assert rec.spinnaker_instance == "prod-us"
    for name in ("accounts", "regions", "server_groups", "clusters", "namespaces", "tickets"):
        values = getattr(rec, name)
        assert len(values) == len(set(values)), name
        assert all(isinstance(v, str) and v for v in values), name


@needs_fixtures
def test_all_665_real_igor_build_events_normalize() -> None:
    events = json.loads((FIXTURES / IGOR_ARRAY).read_text(encoding="utf-8"))
    assert len(events) == 665
    records = [normalize(e, received_at=RECEIVED) for e in events]
    assert all(r.type == "build" and r.source == "igor" for r in records)
    assert {r.status for r in records} == {"SUCCESS", "BUILDING", "FAILURE", "UNSTABLE", "ABORTED"}
    assert all(r.description and r.description.startswith("Build ") for r in records)
    assert len({r.event_id for r in records}) == 665  # no eventId in 2015: ids derived from content
    assert records[1].description == "Build CPF-nomograms #59 SUCCESS"


def test_default_ticket_pattern_is_the_jira_key_pattern() -> None:
    assert DEFAULT_TICKET_PATTERN == r"[A-Z][A-Z0-9]+-\d+"


# --------------------------------------------------------------------------------------------------
# Exact values for the samples
# --------------------------------------------------------------------------------------------------

RESIZE_DESCRIPTION = (
    "Resize Server Group: myapp-prod-v009 from (min: 1, max: 1, desired: 1) to (min: 2, max: 2, desired: 2)"
)
RESIZE = {
    "source": "orca",
    "application": "myapp",
    "execution_id": "01J0BDAQ40EE043E42N4FHZD8Y",
    "execution_type": "orchestration",
    "user": "carol@example.com",
    "trigger_type": "manual",
    "accounts": ["prod"],
    "regions": ["us-east-1"],
    "server_groups": ["myapp-prod-v009"],
    "clusters": ["myapp-prod"],
    "cloud_provider": "aws",
    "description": RESIZE_DESCRIPTION,
    "reason": "OPS-1250 scale up for load test",
    "tickets": ["OPS-1250"],
    "origin": "deck",
}
RESIZE_STAGE = {
    **RESIZE,
    "stage": "resizeServerGroup",
    "stage_type": "resizeServerGroup",
    "stage_id": "01J0BDAQ41FYTC66VPVTX363SN",
}


@needs_fixtures
@pytest.mark.parametrize(
    "name",
    [
        "orca_stage_complete__synthetic__resizeServerGroup-standalone.json",
        "MODE_wrap-true__synthetic__resizeServerGroup-stage-complete.json",
        "MODE_wrap-true-template-splunk__synthetic__resizeServerGroup-stage-complete.json",
    ],
)
def test_resize_by_carol_stage_complete_in_every_body_shape(name: str) -> None:
    rec = normalize(load(name), received_at=RECEIVED, instance="prod-us")
    assert fields(rec) == expect(
        **RESIZE_STAGE,
        event_id="474ebc19-2ef9-4276-ac00-6f6123e2fcb4",
        time=1718370095050,
        type="orca:stage:complete",
        spinnaker_instance="prod-us",
        status="SUCCEEDED",
    )


@needs_fixtures
def test_resize_by_carol_orchestration_and_task_events() -> None:
    starting = normalize(
        load("orca_orchestration_starting__synthetic__resizeServerGroup-by-carol.json"), received_at=RECEIVED
    )
    assert fields(starting) == expect(
        **RESIZE,
        event_id="3fa7f104-1bf9-4e27-9c96-925eccf3a171",
        time=1718370000030,
        type="orca:orchestration:starting",
        status="RUNNING",
    )
    complete = normalize(
        load("orca_orchestration_complete__synthetic__resizeServerGroup-by-carol.json"), received_at=RECEIVED
    )
    assert fields(complete) == expect(
        **RESIZE,
        event_id="ec5b227c-dfde-4fbf-bff3-50bf766ecb15",
        time=1718370095150,
        type="orca:orchestration:complete",
        status="SUCCEEDED",
    )
    task = normalize(
        load("orca_task_complete__synthetic__resizeServerGroup.resizeServerGroup.json"), received_at=RECEIVED
    )
    assert fields(task) == expect(
        **RESIZE_STAGE,
        event_id="72d8567d-894a-45e4-b0b1-87ef310c0c00",
        time=1718370008700,
        type="orca:task:complete",
        task="resizeServerGroup",
        status="SUCCEEDED",
    )


@needs_fixtures
@pytest.mark.parametrize(
    ("name", "event_id", "created", "op", "execution_id", "stage_id", "server_group"),
    [
        (
            "orca_stage_complete__synthetic__disableServerGroup-standalone-by-dave.json",
            "14822f53-8201-4c62-b5f5-9b220e8fa8e0",
            1718373613050,
            "disableServerGroup",
            "01J0BGRJR06305FATZYDS3AR0R",
            "01J0BGRJR1GXJVZ9CJD33M33YA",
            "myapp-prod-v008",
        ),
        (
            "orca_stage_complete__synthetic__destroyServerGroup-standalone-by-dave.json",
            "afffcfd2-341e-440b-97c7-00aab7b56ea7",
            1718380860150,
            "destroyServerGroup",
            "01J0BQMA00B44FS7F25TMGDMFG",
            "01J0BQMA01S8KXM40X64DG8P4F",
            "myapp-prod-v007",
        ),
    ],
)
def test_disable_and_destroy_by_dave(
    name: str, event_id: str, created: int, op: str, execution_id: str, stage_id: str, server_group: str
) -> None:
    rec = normalize(load(name), received_at=RECEIVED)
    verb = op.removesuffix("ServerGroup").capitalize()
    assert fields(rec) == expect(
        event_id=event_id,
        time=created,
        source="orca",
        type="orca:stage:complete",
        application="myapp",
        execution_id=execution_id,
        execution_type="orchestration",
        stage=op,
        stage_type=op,
        stage_id=stage_id,
        status="SUCCEEDED",
        user="dave@example.com",
        trigger_type="manual",
        accounts=["prod"],
        regions=["us-east-1"],
        server_groups=[server_group],
        clusters=["myapp-prod"],
        cloud_provider="aws",
        description=f"{verb} Server Group: {server_group}",
        origin="deck",
    )


DEPLOY = {
    "source": "orca",
    "application": "myapp",
    "execution_id": "01J068H94071HFE865V215DE1C",
    "execution_type": "pipeline",
    "pipeline": "Deploy to Prod",
    "pipeline_config_id": "3b9e2f4c-6a1d-4e8b-9c7f-0d2e5a8b1c34",
    "user": "alice@example.com",
    "trigger_type": "manual",
    "tickets": ["OPS-1234"],
    "origin": "deck",
}
DEPLOY_TARGETS = {
    "accounts": ["prod"],
    "regions": ["us-east-1"],
    "server_groups": ["myapp-prod-v009"],
    "clusters": ["myapp-prod"],
    "cloud_provider": "aws",
}
DEPLOY_IN_US_EAST_1 = {
    **DEPLOY,
    **DEPLOY_TARGETS,
    "stage": "Deploy in us-east-1",
    "stage_type": "createServerGroup",
    "stage_id": "01J068H944RHEM3E2MSH4DMDZS",
}


@needs_fixtures
def test_deploy_to_prod_by_alice_pipeline_events() -> None:
    starting = normalize(load("orca_pipeline_starting__synthetic__deploy-to-prod.json"), received_at=RECEIVED)
    # Nothing deployed yet: the stage configs name the account, region and cluster but no server group.
    assert fields(starting) == expect(
        **DEPLOY,
        **{**DEPLOY_TARGETS, "server_groups": []},
        event_id="ae340454-cac5-468c-a8f4-9481a0a04dc4",
        time=1718197200037,
        type="orca:pipeline:starting",
        status="RUNNING",
        description="Deploy to Prod",
    )
    complete = normalize(load("orca_pipeline_complete__synthetic__deploy-to-prod.json"), received_at=RECEIVED)
    assert fields(complete) == expect(
        **DEPLOY,
        **DEPLOY_TARGETS,
        event_id="b83cfe0b-e037-45ed-b8db-0672f42d47cc",
        time=1718198820860,
        type="orca:pipeline:complete",
        status="SUCCEEDED",
        description="Deploy to Prod",
        reason="LGTM",  # bob's judgment input, from the stages
    )
    # authentication.allowedAccounts ("staging", "k8s-prod") is who could, not what was touched.
    assert "staging" not in complete.accounts and "k8s-prod" not in complete.accounts


@needs_fixtures
def test_deploy_to_prod_stage_and_task_events_see_only_their_own_stage() -> None:
    bake = normalize(load("orca_stage_complete__synthetic__bake-in-us-east-1.json"), received_at=RECEIVED)
    assert fields(bake) == expect(
        **DEPLOY,
        event_id="77d21e02-ff01-4f99-988c-24c961b1cd22",
        time=1718197619850,
        type="orca:stage:complete",
        stage="Bake in us-east-1",
        stage_type="bake",
        stage_id="01J068H942PPG2X7R5JQC42EJ5",
        status="SUCCEEDED",
        regions=["us-east-1"],
        cloud_provider="aws",
        description="Deploy to Prod / Bake in us-east-1 (bake)",
    )
    bake_starting = normalize(
        load("orca_stage_starting__synthetic__bake-in-us-east-1.json"), received_at=RECEIVED
    )
    assert bake_starting.status == "RUNNING" and bake_starting.accounts == []

    deploy = normalize(
        load("orca_stage_complete__synthetic__createServerGroup-deploy-in-us-east-1.json"),
        received_at=RECEIVED,
    )
    assert fields(deploy) == expect(
        **DEPLOY_IN_US_EAST_1,
        event_id="c4c2e2e3-444e-47c8-8039-87108976e334",
        time=1718197920250,
        type="orca:stage:complete",
        status="SUCCEEDED",
        description="Deploy to Prod / Deploy in us-east-1 (createServerGroup)",
    )
    monitor = normalize(
        load("orca_task_complete__synthetic__createServerGroup.monitorDeploy.json"), received_at=RECEIVED
    )
    assert fields(monitor) == expect(
        **DEPLOY_IN_US_EAST_1,
        event_id="ae270da7-02f0-4b90-b143-262fdc5c0eed",
        time=1718197715600,
        type="orca:task:complete",
        task="monitorDeploy",
        status="SUCCEEDED",
        description="Deploy to Prod / Deploy in us-east-1 (createServerGroup) / monitorDeploy",
    )
    create = normalize(
        load("orca_task_starting__synthetic__createServerGroup.createServerGroup.json"), received_at=RECEIVED
    )
    assert fields(create) == expect(
        **{**DEPLOY_IN_US_EAST_1, "server_groups": []},
        event_id="8da0365b-f898-47b9-805c-acec877409a9",
        time=1718197680515,
        type="orca:task:starting",
        task="createServerGroup",
        status="RUNNING",
        description="Deploy to Prod / Deploy in us-east-1 (createServerGroup) / createServerGroup",
    )


@needs_fixtures
def test_task_event_without_the_execution_still_says_what_and_where() -> None:
    rec = normalize(
        load(
            "orca_task_complete__synthetic__createServerGroup.monitorDeploy__includeFullExecution-false.json"
        ),
        received_at=RECEIVED,
    )
    assert fields(rec) == expect(
        **DEPLOY_TARGETS,
        event_id="e2817efd-ae84-4217-9d53-434bb88139b9",
        time=1718197715600,
        source="orca",
        type="orca:task:complete",
        application="myapp",
        execution_id="01J068H94071HFE865V215DE1C",
        execution_type="pipeline",  # standalone: false
        stage="Deploy in us-east-1",
        stage_type="createServerGroup",
        stage_id="01J068H944RHEM3E2MSH4DMDZS",
        task="monitorDeploy",
        status="SUCCEEDED",  # derived from ":complete"
        description="Deploy in us-east-1 (createServerGroup) / monitorDeploy",
    )


@needs_fixtures
def test_manual_judgment_starting_is_attributed_to_the_pipeline_runner() -> None:
    rec = normalize(load("orca_stage_starting__synthetic__manualJudgment.json"), received_at=RECEIVED)
    assert fields(rec) == expect(
        **DEPLOY,
        event_id="4b22d308-1c8e-4ee9-9715-bd6fa4161293",
        time=1718197921020,
        type="orca:stage:starting",
        stage="Approve prod",
        stage_type="manualJudgment",
        stage_id="01J068H945X9G8FGVSQE8Z5379",
        status="RUNNING",
        description="Deploy to Prod / Approve prod (manualJudgment)",
    )


@needs_fixtures
def test_judged_manual_judgment_is_attributed_to_the_judge() -> None:
    complete = load("orca_pipeline_complete__synthetic__deploy-to-prod.json")
    execution = complete["content"]["execution"]
    stage = next(s for s in execution["stages"] if s["type"] == "manualJudgment")
    event = {
        "details": {"source": "orca", "type": "orca:stage:complete", "created": "1718198818600"},
        "content": {
            "standalone": False,
            "canceled": False,
            "context": stage["context"],
            "startTime": stage["startTime"],
            "endTime": stage["endTime"],
            "executionId": execution["id"],
            "stageId": stage["id"],
            "isSynthetic": False,
            "name": stage["name"],
            "execution": execution,
        },
    }
    rec = normalize(event, received_at=RECEIVED)
    assert (rec.user, rec.reason, rec.status, rec.stage_type) == (
        "bob@example.com",
        "LGTM",
        "SUCCEEDED",
        "manualJudgment",
    )
    # Without stage.lastModified the deprecated context.lastModifiedBy still names the judge.
    stage_copy = {
        **stage,
        "lastModified": None,
        "context": {**stage["context"], "lastModifiedBy": "bea@example.com"},
    }
    bare = {**event, "content": {**event["content"], "context": stage_copy["context"], "execution": None}}
    assert normalize(bare, received_at=RECEIVED).user == "bea@example.com"


@needs_fixtures
def test_terminal_failure_of_deploy_to_prod() -> None:
    stage = normalize(
        load("orca_stage_failed__synthetic__createServerGroup-terminal.json"), received_at=RECEIVED
    )
    failed_run = {
        **DEPLOY_IN_US_EAST_1,
        "execution_id": "01J08TY040GB6KC9QA0MZ17QKF",
        "tickets": ["OPS-1240"],
    }
    assert fields(stage) == expect(
        **failed_run,
        event_id="bb5e4bcf-15ed-4269-9429-6c07f26b4776",
        time=1718284100150,
        type="orca:stage:failed",
        status="TERMINAL",
        description="Deploy to Prod / Deploy in us-east-1 (createServerGroup)",
    )
    pipeline = normalize(
        load("orca_pipeline_failed__synthetic__deploy-to-prod-terminal.json"), received_at=RECEIVED
    )
    assert fields(pipeline) == expect(
        **{**failed_run, "stage": None, "stage_type": None, "stage_id": None},
        event_id="fa5d3100-11b7-4948-90e6-e6607c69dee1",
        time=1718284100350,
        type="orca:pipeline:failed",
        status="TERMINAL",
        description="Deploy to Prod",
    )


@needs_fixtures
def test_real_2017_pipeline_triggered_execution_canceled_by_parent_pipeline() -> None:
    rec = normalize(
        load("orca_pipeline_failed__synthetic-envelope__REAL-execution-spinnaker-orca-pipelinetrigger.json"),
        received_at=RECEIVED,
    )
    # Canceled by "parent pipeline"; the parent and grandparent were started by a cron trigger without
    # a runAsUser, so nobody is responsible. The parents' stages (us-west-2, eu-west-1, test, ...) must
    # not leak into this record.
    assert fields(rec) == expect(
        event_id="ecab3301-bc8f-4d29-adea-94930658663a",
        time=1510251381027,
        source="orca",
        type="orca:pipeline:failed",
        application="tracks",
        execution_id="3e0c2e5c-fd3c-4e4d-934e-e315066cbde9",
        execution_type="pipeline",
        pipeline="Deployment Strategy",
        pipeline_config_id="46ac0ea7-0abc-44c4-8e11-857fd94eb001",
        status="TERMINAL",
        trigger_type="pipeline",
        accounts=["prod"],
        regions=["us-east-1"],
        clusters=["tracks-prod"],
        cloud_provider="aws",
        description="Deployment Strategy",
    )


@needs_fixtures
def test_legacy_stage_details_find_the_stage_when_stage_id_and_name_are_missing() -> None:
    event = load(
        "orca_pipeline_failed__synthetic-envelope__REAL-execution-spinnaker-orca-pipelinetrigger.json"
    )
    execution = event["content"]["execution"]
    stage = next(s for s in execution["stages"] if s["name"] == "Deploy in us-east-1")
    stage_event = {
        "details": {"source": "orca", "type": "orca:stage:failed", "created": 1510251376100},
        "content": {
            "standalone": False,
            "canceled": True,
            "context": stage["context"],
            "startTime": None,
            "endTime": 1510251376043,
            "executionId": execution["id"],
            "execution": execution,
        },
    }
    rec = normalize(stage_event, received_at=RECEIVED)
    assert (rec.stage_id, rec.stage, rec.stage_type, rec.status) == (
        "eb91dafb-67cd-447f-a9d6-35e57041a569",
        "Deploy in us-east-1",
        "createServerGroup",
        "STOPPED",
    )
    assert (rec.accounts, rec.regions, rec.clusters) == (["prod"], ["us-east-1"], ["tracks-prod"])
    assert rec.description == "Deployment Strategy / Deploy in us-east-1 (createServerGroup)"
    assert rec.time == 1510251376100  # created as a JSON number


@needs_fixtures
def test_namely_2018_stage_event_with_stage_details_and_nulls() -> None:
    rec = normalize(
        load("orca_stage_complete__namely-spinnaker-datadog-bridge__valid-webhook.json"), received_at=1
    )
    assert fields(rec) == expect(
        event_id=event_id_of(
            load("orca_stage_complete__namely-spinnaker-datadog-bridge__valid-webhook.json")
        ),
        time=1518214003433,
        source="orca",
        type="orca:stage:complete",
        application="hcm",
        execution_id="88ebc19f-43bc-460c-9de5-2347b48f8efb",
        execution_type="pipeline",
        status="SUCCEEDED",
        accounts=["int-k8s"],
        clusters=["hcm-web-namely"],
        namespaces=["applications"],
        cloud_provider="kubernetes",
    )


@needs_fixtures
def test_spinnaker_io_doc_task_event_with_legacy_task_name() -> None:
    rec = normalize(
        load("orca_task_complete__spinnaker-spinnaker.io__notifications-index-md.parsable.json"),
        received_at=1,
    )
    assert fields(rec) == expect(
        event_id=rec.event_id,
        time=1422487582294,
        source="orca",
        type="orca:task:complete",
        application="asgard",
        execution_id="62ca5574-0629-419a-b9ac-fb873aa165b2",
        execution_type="orchestration",
        stage_type="enableAsg",
        stage_id="f92239a7-b57a-408d-9d72-3a77484e050b",
        task="monitorAsg",
        status="SUCCEEDED",
        user="clin@netflix.com",  # no execution: the user Deck put in the job
        accounts=["test"],
        regions=["us-west-1"],
        server_groups=["asgard-staging-v048"],
        clusters=["asgard-staging"],
        description="enableAsg / monitorAsg",
    )


@needs_fixtures
@pytest.mark.parametrize(
    ("name", "created", "description", "status"),
    [
        ("igor_build__spinnaker-echo__events_item1_success-with-artifacts.json", 1427237766144,
         "Build CPF-nomograms #59 SUCCESS", "SUCCESS"),
        ("igor_build__spinnaker-echo__events_item3_building.json", 1427237779341,
         "Build CPIE-acmeair-multibuild #311 BUILDING", "BUILDING"),
        ("igor_build__spinnaker-echo__events_item11_with-testResults.json", 1427237796141,
         "Build RECS-Spieler-Tests-USWest #199 SUCCESS", "SUCCESS"),
        ("igor_build__spinnaker-echo__events_item22_failure.json", 1427237802713,
         "Build TVUI-OPS Restart Shared Harness #69 FAILURE", "FAILURE"),
        ("igor_build__synthetic__jenkins-success.json", 1718197140000,
         "Build myapp-build-master #123 SUCCESS", "SUCCESS"),
    ],
)  # fmt: skip
def test_igor_build_events(name: str, created: int, description: str, status: str) -> None:
    event = load(name)
    rec = normalize(event, received_at=RECEIVED)
    assert fields(rec) == expect(
        event_id=event_id_of(event),
        time=created,
        source="igor",
        type="build",
        status=status,
        description=description,
    )


@needs_fixtures
def test_igor_docker_event() -> None:
    rec = normalize(load("igor_docker__synthetic__new-tag.json"), received_at=RECEIVED)
    assert fields(rec) == expect(
        event_id="ccc56569-f9e8-4369-a999-b735dd56cc94",
        time=1718456280000,
        source="igor",
        type="docker",
        accounts=["dockerhub-example"],
        description="New tag example-org/myapp:1.4.2",
    )


@needs_fixtures
def test_git_push_event() -> None:
    rec = normalize(load("git__synthetic__github-push-wrapping-real-payload.json"), received_at=RECEIVED)
    assert fields(rec) == expect(
        event_id="698c206f-e1a4-4e10-ad53-4dd0cf8ebc5a",
        time=1718455800000,
        source="github",
        type="git",
        user="jervi",
        description="Push to expert-waffle@main da68b0f",
    )


@needs_fixtures
def test_gate_manual_trigger_event() -> None:
    rec = normalize(load("manual__synthetic__gate-trigger-via-echo.json"), received_at=RECEIVED)
    assert fields(rec) == expect(
        event_id="8b8148f6-b38a-488c-a65e-d389b74d0fb1",
        time=1718197199000,
        type="manual",
        application="myapp",
        execution_id="01J068H94071HFE865V215DE1C",
        execution_type="pipeline",
        pipeline="Deploy to Prod",
        user="alice@example.com",
        trigger_type="manual",
        description="Manual trigger of Deploy to Prod",
        tickets=["OPS-1234"],
    )


@needs_fixtures
def test_parent_stage_event_collects_its_synthetic_children() -> None:
    complete = load("orca_pipeline_complete__synthetic__deploy-to-prod.json")
    execution = complete["content"]["execution"]
    parent = next(s for s in execution["stages"] if s["type"] == "deploy")
    event = {
        "details": {"source": "orca", "type": "orca:stage:complete", "created": "1718197920400"},
        "content": {"context": parent["context"], "stageId": parent["id"], "name": parent["name"],
                    "executionId": execution["id"], "execution": execution},
    }  # fmt: skip
    rec = normalize(event, received_at=RECEIVED)
    assert (rec.stage, rec.stage_type, rec.status) == ("Deploy", "deploy", "SUCCEEDED")
    assert rec.server_groups == ["myapp-prod-v009"]  # created by the synthetic child "Deploy in us-east-1"
    assert (rec.accounts, rec.regions, rec.clusters) == (["prod"], ["us-east-1"], ["myapp-prod"])


# --------------------------------------------------------------------------------------------------
# Inline edge cases
# --------------------------------------------------------------------------------------------------


def pipeline_event(
    execution: dict[str, Any],
    *,
    kind: str = "pipeline",
    phase: str = "complete",
    created: Any = "1700000000000",
) -> dict[str, Any]:
    return {
        "details": {
            "source": "orca",
            "type": f"orca:{kind}:{phase}",
            "created": created,
            "application": "app",
        },
        "content": {"executionId": execution.get("id"), "execution": execution},
    }


def execution_(
    *,
    user: Any = None,
    trigger: dict[str, Any] | None = None,
    stages: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "type": "PIPELINE",
        "id": "01HEXEC",
        "application": "app",
        "name": "Ship it",
        "status": "SUCCEEDED",
        "authentication": {"user": user, "allowedAccounts": ["everything"]},
        "trigger": trigger if trigger is not None else {"type": "manual", "user": user},
        "stages": stages or [],
        **extra,
    }


def test_cancellation_by_parent_pipeline_is_attributed_to_the_parent_runs_user() -> None:
    parent = execution_(user="erin@example.com", stages=[{"context": {"account": "parent-only"}}])
    child = execution_(
        user=None,
        trigger={"type": "pipeline", "user": "[anonymous]", "parentExecution": parent},
        canceled=True,
        canceledBy="parent pipeline",
        cancellationReason=None,
        status="CANCELED",
    )
    rec = normalize(pipeline_event(child, phase="failed"), received_at=RECEIVED)
    assert (rec.user, rec.status, rec.accounts) == ("erin@example.com", "CANCELED", [])


def test_cancellation_by_a_person_names_the_canceller_and_their_reason() -> None:
    ex = execution_(
        user="alice@example.com",
        canceled=True,
        canceledBy="frank@example.com",
        cancellationReason="OPS-77 wrong build",
        status=None,
    )
    rec = normalize(pipeline_event(ex, phase="failed"), received_at=RECEIVED)
    assert (rec.user, rec.reason, rec.tickets, rec.status) == (
        "frank@example.com",
        "OPS-77 wrong build",
        ["OPS-77"],
        "CANCELED",  # no status in the snapshot: derived from ":failed" + canceled
    )
    # The same execution finishing normally is attributed to the runner.
    done = normalize(pipeline_event({**ex, "canceled": False}, phase="complete"), received_at=RECEIVED)
    assert (done.user, done.status) == ("alice@example.com", "SUCCEEDED")


def test_recursive_parent_execution_finds_the_human() -> None:
    grandparent = execution_(user="grace@example.com")
    parent = execution_(
        user=None, trigger={"type": "pipeline", "user": "[anonymous]", "parentExecution": grandparent}
    )
    child = execution_(
        user="anonymous",
        trigger={"type": "pipeline", "user": "[anonymous]", "parentExecution": parent},
        stages=[{"type": "wait", "context": {"waitTime": 30}}],
    )
    rec = normalize(pipeline_event(child), received_at=RECEIVED)
    assert (rec.user, rec.run_as_user, rec.trigger_type) == ("grace@example.com", None, "pipeline")


def test_service_account_when_no_human_is_found() -> None:
    cron = {"type": "cron", "user": "[anonymous]", "runAsUser": "svc-deployer@example.com"}
    ex = execution_(user="svc-deployer@example.com", trigger=cron)
    rec = normalize(pipeline_event(ex), received_at=RECEIVED)
    assert (rec.user, rec.run_as_user, rec.trigger_type) == (
        "svc-deployer@example.com",
        "svc-deployer@example.com",
        "cron",
    )
    # A child running as a service account is still attributed to the human who started its parent.
    child = execution_(
        user="svc-deployer@example.com",
        trigger={"type": "pipeline", "user": "[anonymous]", "runAsUser": "svc-deployer@example.com",
                 "parentExecution": execution_(user="henry@example.com")},
    )  # fmt: skip
    rec = normalize(pipeline_event(child), received_at=RECEIVED)
    assert (rec.user, rec.run_as_user) == ("henry@example.com", "svc-deployer@example.com")
    # Nobody at all.
    nobody = execution_(user=None, trigger={"type": "cron", "user": "[anonymous]", "runAsUser": None})
    assert normalize(pipeline_event(nobody), received_at=RECEIVED).user is None


def test_trigger_extras_flat_or_under_other_give_the_same_record() -> None:
    extras = {
        "runAsUser": "svc-ci@example.com",
        "buildInfo": {"scm": [{"name": "main", "branch": "feature/SEC-9-rotate", "sha1": "abc"}]},
    }
    base = {"type": "jenkins", "user": "[anonymous]", "parameters": {"ticket": "CHG-42"}}
    flat = execution_(user="svc-ci@example.com", trigger={**base, **extras})
    nested = execution_(user="svc-ci@example.com", trigger={**base, "other": extras})
    records = [fields(normalize(pipeline_event(ex), received_at=RECEIVED)) for ex in (flat, nested)]
    assert records[0].pop("event_id") != records[1].pop("event_id")  # different bodies, different ids
    assert records[0] == records[1]
    assert records[0]["run_as_user"] == "svc-ci@example.com"
    assert records[0]["user"] == "svc-ci@example.com"
    assert records[0]["tickets"] == ["CHG-42", "SEC-9"]


def test_nulls_everywhere_do_not_raise() -> None:
    event = {
        "details": {"source": "orca", "type": "orca:stage:complete", "created": None, "organization": None,
                    "project": None, "application": None, "_content_id": None, "requestHeaders": None},
        "content": {"standalone": None, "canceled": None, "context": None, "startTime": None,
                    "endTime": None, "executionId": None, "stageId": None, "isSynthetic": None, "name": None,
                    "execution": None},
        "rawContent": None,
        "payload": None,
    }  # fmt: skip
    rec = normalize(event, received_at=RECEIVED)
    assert fields(rec) == expect(
        event_id=event_id_of(event),
        time=RECEIVED,
        source="orca",
        type="orca:stage:complete",
        status="SUCCEEDED",
    )


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"details": None, "content": None},
        {"details": [], "content": []},
        {"details": "nonsense", "content": 42},
        {"details": {"type": 7}, "content": {"execution": []}},
        {"details": {"type": "orca:pipeline:complete"}, "content": {"execution": {"stages": {"a": 1}}}},
        {"details": {"type": "orca:stage:complete"},
         "content": {"context": [], "execution": {"stages": [None, 3, "x", {"context": "str", "tasks": 5}]}}},
        {"details": {"type": "orca:task:failed"},
         "content": {"taskName": 12, "context": {"kato.tasks": {"x": 1}, "deploy.server.groups": [],
                                                  "regions": "us-east-1", "clusters": "c"}}},
        {"details": {"type": "orca:pipeline:failed"},
         "content": {"execution": {"trigger": "cron", "authentication": ["u"], "canceled": True,
                                   "canceledBy": 5}}},
        {"details": {"type": "build"}, "content": {"project": [], "master": None}},
        {"details": {"type": "docker"}, "content": {"tag": ["x"]}},
        {"details": {"type": "git"}, "content": {"pusher": 3, "commits": {}, "head_commit": "x"}},
        {"details": {"type": "manual"}, "content": {"trigger": [], "user": {"name": "x"}}},
        {"details": {"type": "mcp:tool:deploy"},
         "content": {"tool": "deploy", "target": "app", "user": "ivy"}},
        {"details": {"type": "webhook", "source": "custom"}, "content": {"anything": [1, 2, 3]}},
        {"details": {"type": "orca"}, "content": {"execution": {"trigger": {"parentExecution": "loop"}}}},
        {"details": {"created": "not-a-number", "type": "orca:stage:"}, "content": {"stageId": {"id": 1}}},
    ],
)  # fmt: skip
def test_odd_events_never_raise(event: dict[str, Any]) -> None:
    before = copy.deepcopy(event)
    rec = normalize(event, received_at=RECEIVED)
    assert isinstance(rec, AuditRecord)
    assert event == before


def test_numbers_where_strings_were_expected_are_tolerated() -> None:
    event = {
        "details": {"type": "orca:stage:complete", "created": 1700000000000.0, "application": 7},
        "content": {"executionId": 123, "stageId": 456, "context": {"credentials": 9, "region": "eu-west-1"}},
    }
    rec = normalize(event, received_at=RECEIVED)
    assert (rec.time, rec.application, rec.execution_id, rec.stage_id) == (1700000000000, "7", "123", "456")
    assert (rec.accounts, rec.regions) == (["9"], ["eu-west-1"])


def test_time_from_created_as_string_or_number_then_content_times_then_received_at() -> None:
    ex = execution_(user="a@example.com", startTime=1600000000000, endTime=1600000005000)
    assert normalize(pipeline_event(ex, created="1700000000123"), received_at=RECEIVED).time == 1700000000123
    assert normalize(pipeline_event(ex, created=1700000000456), received_at=RECEIVED).time == 1700000000456
    assert normalize(pipeline_event(ex, created=None), received_at=RECEIVED).time == 1600000005000
    running = {**ex, "endTime": None}
    assert normalize(pipeline_event(running, created=None), received_at=RECEIVED).time == 1600000000000
    assert normalize({"details": {"type": "x"}, "content": {}}, received_at=RECEIVED).time == RECEIVED


def test_missing_stage_id_falls_back_to_name_and_start_time() -> None:
    stages = [
        {"id": "s1", "name": "Deploy", "type": "deploy", "startTime": 100, "status": "SUCCEEDED",
         "context": {"account": "old"}},
        {"id": "s2", "name": "Deploy", "type": "deploy", "startTime": 200, "status": "TERMINAL",
         "context": {"account": "new"}},
    ]  # fmt: skip
    ex = execution_(user="a@example.com", stages=stages)
    event = {
        "details": {"type": "orca:stage:failed", "created": "300"},
        "content": {
            "name": "Deploy",
            "startTime": 200,
            "context": {},
            "executionId": "01HEXEC",
            "execution": ex,
        },
    }
    rec = normalize(event, received_at=RECEIVED)
    assert (rec.stage_id, rec.status, rec.accounts) == ("s2", "TERMINAL", ["new"])


def test_repeated_task_names_pick_the_task_the_event_is_about() -> None:
    tasks = [
        {"name": "forceCacheRefresh", "status": "SUCCEEDED", "startTime": 10, "endTime": 20},
        {"name": "waitForUpInstances", "status": "TERMINAL", "startTime": 20, "endTime": 30},
        {"name": "forceCacheRefresh", "status": "NOT_STARTED", "startTime": None, "endTime": None},
    ]
    ex = execution_(stages=[{"id": "s", "name": "Deploy", "type": "createServerGroup", "tasks": tasks}])
    event = {
        "details": {"type": "orca:task:complete", "created": "25"},
        "content": {"stageId": "s", "taskName": "createServerGroup.forceCacheRefresh", "execution": ex},
    }
    assert normalize(event, received_at=RECEIVED).status == "SUCCEEDED"
    failed = {**event, "details": {"type": "orca:task:failed"}}
    failed["content"] = {**event["content"], "taskName": "createServerGroup.waitForUpInstances"}
    assert normalize(failed, received_at=RECEIVED).status == "TERMINAL"


def test_skipped_stage_is_attributed_to_whoever_skipped_it() -> None:
    stage = {"id": "s", "name": "Wait", "type": "wait", "status": "SKIPPED",
             "lastModified": {"user": "kim@example.com", "lastModifiedTime": 5}, "context": {}}  # fmt: skip
    ex = execution_(user="alice@example.com", stages=[stage])
    event = {"details": {"type": "orca:stage:skipped"}, "content": {"stageId": "s", "execution": ex}}
    rec = normalize(event, received_at=RECEIVED)
    assert (rec.user, rec.status) == ("kim@example.com", "SKIPPED")


def test_kubernetes_namespaces_and_jira_stage_tickets() -> None:
    context = {
        "cloudProvider": "kubernetes",
        "account": "k8s-prod",
        "manifests": [{"kind": "Deployment", "metadata": {"name": "web", "namespace": "payments"}}],
        "outputs.manifestNamesByNamespace": {"payments": ["deployment web"], "": ["namespace payments"]},
        "deploy.server.groups": {"payments": ["replicaSet web-v002"]},
        "kato.tasks": [{"resultObjects": [{"manifests": [{"metadata": {"namespace": "payments-canary"}}]}]}],
        "createJiraIssueResponse": {"id": "1", "key": "DEPLOY-314", "self": "https://jira"},
    }
    event = {
        "details": {"type": "orca:stage:complete"},
        "content": {"context": context, "name": "Deploy web"},
    }
    rec = normalize(event, received_at=RECEIVED)
    assert rec.accounts == ["k8s-prod"]
    assert rec.namespaces == ["payments", "payments-canary"]
    assert rec.regions == []  # a namespace is not a region
    assert rec.server_groups == ["replicaSet web-v002"]
    assert rec.cloud_provider == "kubernetes"
    assert rec.tickets == ["DEPLOY-314"]


@needs_fixtures
def test_real_kubernetes_deploy_manifest_context() -> None:
    path = (
        FIXTURES
        / "related"
        / "orca_stage_context_deployManifest__spinnaker-orca__deploy-manifest-context.json"
    )
    context = json.loads(path.read_text(encoding="utf-8"))
    event = {"details": {"type": "orca:stage:complete"}, "content": {"context": context, "name": "Deploy"}}
    rec = normalize(event, received_at=RECEIVED)
    assert (rec.accounts, rec.namespaces, rec.cloud_provider) == (["k8s-v2-account"], ["test"], "kubernetes")


def test_tickets_from_stage_reasons_and_custom_pattern() -> None:
    stages = [
        {"type": "rollbackServerGroup", "context": {"reason": "Rollback for INC-12, see CHG0012345"}},
        {"type": "manualJudgment", "context": {"judgmentInput": "approved under CAB-7"}},
    ]
    ex = execution_(user="a@example.com", stages=stages, description=None)
    rec = normalize(pipeline_event(ex), received_at=RECEIVED)
    assert rec.reason == "Rollback for INC-12, see CHG0012345; approved under CAB-7"
    assert rec.tickets == ["INC-12", "CAB-7"]
    custom = normalize(pipeline_event(ex), received_at=RECEIVED, ticket_pattern=re.compile(r"CHG\d{7}"))
    assert custom.tickets == ["CHG0012345"]


def test_orchestration_description_is_on_its_stage_and_task_events() -> None:
    ex = execution_(user="carol@example.com", type="ORCHESTRATION", name=None,
                    description="Enable Server Group: app-v001", origin="api")  # fmt: skip
    event = {
        "details": {"type": "orca:task:complete"},
        "content": {"taskName": "enableServerGroup.enableServerGroup", "standalone": True, "execution": ex,
                    "context": {"serverGroupName": "app-v001", "credentials": "test", "region": "us-west-2"}},
    }  # fmt: skip
    rec = normalize(event, received_at=RECEIVED)
    assert (rec.description, rec.execution_type, rec.pipeline, rec.task, rec.stage_type, rec.origin) == (
        "Enable Server Group: app-v001",
        "orchestration",
        None,
        "enableServerGroup",
        "enableServerGroup",
        "api",
    )
    assert (rec.server_groups, rec.clusters) == (["app-v001"], ["app"])


# --------------------------------------------------------------------------------------------------
# Event ids and bad input
# --------------------------------------------------------------------------------------------------


def test_event_id_is_the_echo_event_id_when_present() -> None:
    assert event_id_of({"eventId": "abc-123", "details": {}}) == "abc-123"


def test_derived_event_id_is_stable_across_formatting_and_ignores_empty_event_id() -> None:
    event = {
        "details": {"type": "build", "created": "1"},
        "content": {"project": {"name": "job", "n": [1, 2]}},
    }
    reformatted = json.loads(json.dumps(event, indent=4))
    reordered = {
        "content": {"project": {"n": [1, 2], "name": "job"}},
        "details": {"created": "1", "type": "build"},
    }
    ids = {
        event_id_of(e)
        for e in (event, reformatted, reordered, {**event, "eventId": ""}, {**event, "eventId": None})
    }
    assert len(ids) == 1
    derived = ids.pop()
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", derived)
    other = {**event, "details": {"type": "build", "created": "2"}}
    assert event_id_of(other) != derived
    assert normalize(event, received_at=RECEIVED).event_id == derived


@pytest.mark.parametrize("bad", [[], "{}", None, 42])
def test_non_object_event_is_rejected_with_a_clear_error(bad: Any) -> None:
    with pytest.raises(TypeError, match="echo event must be a JSON object"):
        normalize(bad, received_at=RECEIVED)
    with pytest.raises(TypeError, match="echo event must be a JSON object"):
        event_id_of(bad)


def test_bad_arguments_are_rejected_with_a_clear_error() -> None:
    with pytest.raises(TypeError, match="received_at must be epoch milliseconds"):
        normalize({}, received_at="now")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="received_at must be epoch milliseconds"):
        normalize({}, received_at=True)
    with pytest.raises(TypeError, match=r"ticket_pattern must be a compiled re\.Pattern"):
        normalize({}, received_at=RECEIVED, ticket_pattern=r"X-\d+")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="instance must be a string"):
        normalize({}, received_at=RECEIVED, instance=5)  # type: ignore[arg-type]


def test_mcp_and_webhook_events_get_the_fields_that_apply() -> None:
    mcp = {"details": {"source": "mcp", "type": "mcp:tool:resize"},
           "content": {"tool": "resize", "target": "myapp-prod-v009", "user": "ivy@example.com"}}  # fmt: skip
    rec = normalize(mcp, received_at=RECEIVED)
    assert (rec.user, rec.description) == ("ivy@example.com", "MCP resize myapp-prod-v009")
    hook = {"details": {"source": "custom", "type": "webhook"}, "content": {"application": "myapp"}}
    rec = normalize(hook, received_at=RECEIVED)
    assert (rec.application, rec.description, rec.source) == ("myapp", "Webhook from custom", "custom")
