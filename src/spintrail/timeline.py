"""Execution timelines: one run's events in event-time order, and the run's overall who, status, start, end.

echo delivers events out of order, so everything here is derived from event times and types, never from
arrival order.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from spintrail.record import AuditRecord, format_time

_FINAL = ("complete", "failed")


@dataclass(slots=True)
class Timeline:
    """An execution's summary and its records."""

    execution_id: str
    records: list[AuditRecord]
    application: str | None = None
    pipeline: str | None = None
    execution_type: str | None = None
    description: str | None = None
    user: str | None = None
    status: str | None = None
    start: int | None = None
    end: int | None = None
    tickets: list[str] = field(default_factory=list)

    def to_api(self) -> dict[str, Any]:
        return {
            "execution_id": self.execution_id,
            "application": self.application,
            "pipeline": self.pipeline,
            "execution_type": self.execution_type,
            "description": self.description,
            "user": self.user,
            "status": self.status,
            "start": format_time(self.start),
            "end": format_time(self.end),
            "duration_ms": (self.end - self.start)
            if self.start is not None and self.end is not None
            else None,
            "tickets": self.tickets,
            "events": [r.to_api() for r in self.records],
        }


def _level(record: AuditRecord) -> str | None:
    """``pipeline``/``orchestration`` for run-level events, else ``None``."""
    parts = (record.type or "").split(":")
    if len(parts) == 3 and parts[0] == "orca" and parts[1] in ("pipeline", "orchestration"):
        return parts[2]
    return None


def build_timeline(execution_id: str, records: list[AuditRecord]) -> Timeline:
    """Summarise one execution from its records (any order)."""
    ordered = sorted(records, key=lambda r: (r.time, r.id or 0))
    t = Timeline(execution_id=execution_id, records=ordered)
    if not ordered:
        return t
    for r in ordered:
        t.application = t.application or r.application
        t.pipeline = t.pipeline or r.pipeline
        t.execution_type = t.execution_type or r.execution_type
        t.description = t.description or (r.description if _level(r) else None)
        for ticket in r.tickets:
            if ticket not in t.tickets:
                t.tickets.append(ticket)
    starting = [r for r in ordered if _level(r) == "starting"]
    final = [r for r in ordered if _level(r) in _FINAL]
    t.start = starting[0].time if starting else ordered[0].time
    if final:
        t.end = final[-1].time
        t.status = final[-1].status
    else:
        t.status = "RUNNING"
    # The initiator: the user of the run-level start, else the most frequent user of run-level events,
    # else of any event but cancellations and manual judgments.
    if starting and starting[0].user:
        t.user = starting[0].user
    else:
        # a canceller or a judge is not the initiator: cancellations and judgments name them instead
        run_level = [r.user for r in ordered if _level(r) and r.user and r.status != "CANCELED"]
        users = run_level or [
            r.user for r in ordered if r.user and r.status != "CANCELED" and r.stage_type != "manualJudgment"
        ]
        if users:
            t.user = Counter(users).most_common(1)[0][0]
    if t.description is None:
        t.description = next((r.description for r in ordered if r.description), None)
    return t


@dataclass(slots=True)
class Span:
    """A stage or task of a run: when it started and ended (event times), its status, who judged it."""

    name: str | None
    type: str | None
    start: int | None
    end: int | None
    status: str | None
    stage_id: str | None = None
    #: the judge of a manual judgment (the person whose decision ended it)
    judge: str | None = None
    #: judgment input or the reason given
    note: str | None = None
    tasks: list[Span] = field(default_factory=list)
    #: store ids of the events behind this span
    record_ids: list[int] = field(default_factory=list)

    @property
    def duration(self) -> int | None:
        return self.end - self.start if self.start is not None and self.end is not None else None


_DECIDED = ("SUCCEEDED", "TERMINAL", "STOPPED")


def _phase(record: AuditRecord) -> str:
    return (record.type or "").rsplit(":", 1)[-1]


def stage_spans(records: list[AuditRecord]) -> list[Span]:
    """The stages of a run with their tasks, from stage and task events in any arrival order.

    A stage starts at its ``starting`` event (else its first event) and ends at its complete, failed or
    skipped event; a task's start and end are paired in event-time order per task name (the same task may
    run twice in one stage). Stages are ordered by start time.
    """
    stages: dict[str, Span] = {}
    open_tasks: dict[tuple[str, str], list[Span]] = {}
    for r in sorted(records, key=lambda r: (r.time, r.id or 0)):
        parts = (r.type or "").split(":")
        if len(parts) != 3 or parts[0] != "orca" or parts[1] not in ("stage", "task"):
            continue
        key = r.stage_id or r.stage or "?"
        span = stages.get(key)
        if span is None:
            span = stages[key] = Span(r.stage, r.stage_type, None, None, None, stage_id=r.stage_id)
        span.name = span.name or r.stage
        span.type = span.type or r.stage_type
        if r.id is not None:
            span.record_ids.append(r.id)
        phase = _phase(r)
        if parts[1] == "stage":
            if phase == "starting":
                span.start = r.time
                span.status = span.status or r.status
            else:
                span.end = r.time if span.end is None else max(span.end, r.time)
                span.status = r.status
                if span.type == "manualJudgment" and r.status in _DECIDED:
                    span.judge = r.user
                    span.note = r.reason
        else:
            name = r.task or "?"
            queue = open_tasks.setdefault((key, name), [])
            if phase == "starting":
                task = Span(name, None, r.time, None, r.status)
                span.tasks.append(task)
                queue.append(task)
            else:
                task = queue.pop(0) if queue else None
                if task is None:  # its start was not received
                    task = Span(name, None, None, None, None)
                    span.tasks.append(task)
                task.end, task.status = r.time, r.status
                if span.type == "manualJudgment" and span.judge is None and r.status in _DECIDED:
                    span.judge, span.note = r.user, r.reason
            if r.id is not None:
                task.record_ids.append(r.id)
        if span.start is None:
            span.start = r.time  # until a starting event says otherwise, the first event stands for it
    for span in stages.values():
        span.tasks.sort(key=lambda t: t.start if t.start is not None else t.end or 0)
    return sorted(stages.values(), key=lambda s: s.start if s.start is not None else 0)
