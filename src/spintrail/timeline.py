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
    # else of any event.
    if starting and starting[0].user:
        t.user = starting[0].user
    else:
        run_level = [r.user for r in ordered if _level(r) and r.user]
        users = run_level or [r.user for r in ordered if r.user]
        if users:
            t.user = Counter(users).most_common(1)[0][0]
    if t.description is None:
        t.description = next((r.description for r in ordered if r.description), None)
    return t
