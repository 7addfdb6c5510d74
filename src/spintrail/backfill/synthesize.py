"""Turn an execution read from Gate into the echo events orca would have sent for it.

orca tells echo when an execution starts and ends (``orca:pipeline:*`` / ``orca:orchestration:*``) and when
each stage starts and ends (``orca:stage:*``), each time with the execution as it was then. Gate only has the
execution as it is now, so each event gets that snapshot rewound to the event's moment as far as the
snapshot allows: statuses and times of the execution and of its stages (a stage that had not started yet
is ``NOT_STARTED`` again). Stage contexts cannot be rewound: a starting event carries the context the stage
ended with. ``details.created`` is the time Spinnaker recorded for the event (the start or end time).

Each event gets a deterministic id derived from its natural key (``normalize.natural_key``), so a second
backfill of the same execution produces the same ids and stores nothing; a live copy of the event (same
natural key) makes the backfilled one a duplicate, and the other way round.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from spintrail.normalize import natural_key

__all__ = ["SUCCESSFUL", "BackfilledEvent", "event_id_for", "synthesize"]

#: orca's ``ExecutionStatus.isSuccessful()``: the final event of an execution is ``complete`` for these.
SUCCESSFUL = frozenset({"SUCCEEDED", "STOPPED", "SKIPPED"})
#: Statuses of an execution or stage that has not ended.
_ACTIVE = frozenset({"NOT_STARTED", "RUNNING", "PAUSED", "SUSPENDED", "BUFFERED"})

_NAMESPACE = uuid.UUID("3f0d6a52-8c0e-5b7e-a1f4-7d2b9c4e6a10")


@dataclass(slots=True)
class BackfilledEvent:
    """One synthesized echo event and its natural key."""

    event: dict[str, Any]
    natural_key: str | None


def event_id_for(key: str) -> str:
    """The id a backfilled event with this natural key always gets."""
    return str(uuid.uuid5(_NAMESPACE, key))


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _stage_at(stage: dict[str, Any], t: int) -> dict[str, Any]:
    """The stage as it was at ``t`` (status and times; the context stays as it is)."""
    start, end = _int(stage.get("startTime")), _int(stage.get("endTime"))
    if start is None or start > t:
        if stage.get("status") == "NOT_STARTED" and stage.get("endTime") is None:
            return stage
        return {**stage, "status": "NOT_STARTED", "startTime": None, "endTime": None}
    if end is not None and end > t:
        return {**stage, "status": "RUNNING", "endTime": None}
    return stage


def _execution_at(execution: dict[str, Any], t: int, *, final: bool) -> dict[str, Any]:
    """The execution snapshot at ``t``; ``final``: the moment of its final event (as it is now)."""
    if final:
        return execution
    stages = [_stage_at(s, t) if isinstance(s, dict) else s for s in execution.get("stages") or []]
    out = {**execution, "stages": stages}
    end = _int(execution.get("endTime"))
    if end is None or end > t:
        out["status"] = "RUNNING"
        out["endTime"] = None
    return out


def _envelope(execution: dict[str, Any], etype: str, t: int, content: dict[str, Any]) -> BackfilledEvent:
    event: dict[str, Any] = {
        "details": {
            "source": "orca",
            "type": etype,
            "created": str(t),
            "application": execution.get("application"),
            "requestHeaders": {},
        },
        "content": content,
    }
    key = natural_key(event)
    fallback = f"{content.get('executionId')}|{content.get('stageId') or ''}|{etype}|{t}"
    event["eventId"] = event_id_for(key or fallback)
    return BackfilledEvent(event, key)


def synthesize(execution: dict[str, Any]) -> list[BackfilledEvent]:
    """The execution and stage events orca would have sent for ``execution`` (an object from Gate), in
    time order. An execution that has not started yields nothing; one still running, no final event."""
    if not isinstance(execution, dict) or not isinstance(execution.get("id"), str):
        return []
    execution_id = execution["id"]
    kind = "pipeline" if str(execution.get("type") or "PIPELINE").upper() == "PIPELINE" else "orchestration"
    standalone = kind == "orchestration"
    canceled = execution.get("canceled") is True
    out: list[tuple[int, int, BackfilledEvent]] = []
    start, end = _int(execution.get("startTime")), _int(execution.get("endTime"))
    status = str(execution.get("status") or "").upper()
    if start is None:
        return []
    out.append(
        (
            start,
            0,
            _envelope(
                execution,
                f"orca:{kind}:starting",
                start,
                {"executionId": execution_id, "execution": _execution_at(execution, start, final=False)},
            ),
        )
    )
    for index, stage in enumerate(execution.get("stages") or []):
        if not isinstance(stage, dict):
            continue
        s_start, s_end = _int(stage.get("startTime")), _int(stage.get("endTime"))
        s_status = str(stage.get("status") or "").upper()
        if s_start is None and s_status != "SKIPPED":
            continue

        def content(t: int, ended: bool, stage: dict[str, Any] = stage) -> dict[str, Any]:
            at = _execution_at(execution, t, final=False)
            return {
                "standalone": standalone,
                "canceled": canceled,
                "context": stage.get("context") or {},
                "startTime": _int(stage.get("startTime")),
                "endTime": _int(stage.get("endTime")) if ended else None,
                "executionId": execution_id,
                "stageId": stage.get("id"),
                "isSynthetic": stage.get("syntheticStageOwner") is not None,
                "name": stage.get("name"),
                "execution": at,
            }

        if s_status == "SKIPPED":
            t = s_end if s_end is not None else s_start
            if t is None:
                continue
            if s_start is not None and s_end is not None and s_start < s_end:
                out.append(
                    (
                        s_start,
                        1 + 2 * index,
                        _envelope(execution, "orca:stage:starting", s_start, content(s_start, False)),
                    )
                )
            out.append((t, 2 + 2 * index, _envelope(execution, "orca:stage:skipped", t, content(t, True))))
            continue
        assert s_start is not None
        out.append(
            (
                s_start,
                1 + 2 * index,
                _envelope(execution, "orca:stage:starting", s_start, content(s_start, False)),
            )
        )
        if s_end is not None and s_status not in _ACTIVE:
            etype = "orca:stage:complete" if s_status == "SUCCEEDED" else "orca:stage:failed"
            out.append((s_end, 2 + 2 * index, _envelope(execution, etype, s_end, content(s_end, True))))
    if end is not None and status not in _ACTIVE:
        etype = f"orca:{kind}:complete" if status in SUCCESSFUL else f"orca:{kind}:failed"
        out.append(
            (
                end,
                1 << 30,
                _envelope(execution, etype, end, {"executionId": execution_id, "execution": execution}),
            )
        )
    out.sort(key=lambda item: (item[0], item[1]))
    return [event for _, _, event in out]


def raw_of(execution: dict[str, Any]) -> bytes:
    """The bytes kept as the evidence of every event derived from ``execution``: the Gate object."""
    return json.dumps(execution, separators=(",", ":"), ensure_ascii=False).encode()
