"""Echo events for store tests: pipeline runs whose stage and task events repeat the growing execution.

Events are built in the shapes orca and igor send (see the reference in docs), with explicit times so
retention tests are deterministic, and ingested through the real ``Ingestor`` (normalize + full text).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from typing import Any

from spintrail.decode import IncomingEvent
from spintrail.ingest import Ingestor
from spintrail.settings import Settings
from spintrail.store import AppendResult, PreparedEvent, Store

DAY = 86_400_000


def _id(*parts: object) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(map(str, parts))))


def execution(exec_id: str, app: str, stages: int, status: str = "RUNNING") -> dict[str, Any]:
    return {
        "type": "PIPELINE",
        "id": exec_id,
        "application": app,
        "name": "Deploy to Prod",
        "authentication": {"user": "alice@example.com"},
        "trigger": {"type": "manual", "user": "alice@example.com", "parameters": {"ticket": "OPS-77"}},
        "status": status,
        "stages": [
            {
                "id": f"{exec_id}-s{i}",
                "type": "deploy",
                "name": f"Deploy {i}",
                "status": "SUCCEEDED",
                "context": {
                    "account": "prod",
                    "region": "us-east-1",
                    "serverGroupName": f"{app}-prod-v{i:03d}",
                    "notes": "x" * 300,
                },
            }
            for i in range(stages)
        ],
    }


def pipeline_run(
    exec_id: str, start_ms: int, *, app: str = "checkout", stages: int = 4
) -> list[dict[str, Any]]:
    """A run's events: pipeline starting, then per stage two task events and a stage event, then complete."""
    out: list[dict[str, Any]] = []
    t = start_ms

    def ev(kind: str, phase: str, k: int, extra: dict[str, Any]) -> dict[str, Any]:
        nonlocal t
        t += 1000
        return {
            "details": {
                "source": "orca",
                "type": f"orca:{kind}:{phase}",
                "created": str(t),
                "application": app,
                "requestHeaders": {},
            },
            "content": {"execution": execution(exec_id, app, k), "executionId": exec_id, **extra},
            "eventId": _id(exec_id, kind, phase, k, len(out)),
        }

    out.append(ev("pipeline", "starting", 0, {}))
    for k in range(stages):
        for task in ("createServerGroup", "monitorDeploy"):
            out.append(
                ev("task", "complete", k, {"taskName": f"deploy.{task}", "stageId": f"{exec_id}-s{k}"})
            )
        out.append(ev("stage", "complete", k + 1, {"stageId": f"{exec_id}-s{k}"}))
    out.append(ev("pipeline", "complete", stages, {}))
    return out


def build_event(n: int, time_ms: int) -> dict[str, Any]:
    return {
        "details": {"source": "jenkins", "type": "build", "created": str(time_ms)},
        "content": {
            "project": {"name": f"checkout-build-{n}", "lastBuild": {"number": n, "result": "SUCCESS"}},
            "master": "ci",
        },
        "eventId": _id("build", n),
    }


def prepare(
    store: Store, events: Iterable[dict[str, Any]], settings: Settings | None = None
) -> list[PreparedEvent]:
    ing = Ingestor(settings or Settings(), store)
    return [
        ing.prepare(IncomingEvent(event=e, raw=json.dumps(e, separators=(",", ":")).encode()), received_at=1)
        for e in events
    ]


def ingest(store: Store, events: Iterable[dict[str, Any]]) -> list[AppendResult]:
    return store.append(prepare(store, events))
