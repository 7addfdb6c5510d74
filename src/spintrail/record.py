"""The audit record: the normalized shape of one stored echo event.

Field names here are the vocabulary of the whole product: the HTTP API, the CLI, exports and reports use
exactly these names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: Retention classes (by event type): what ``retention`` decides on, and what a leaf of the tamper-evident
#: log commits to beside the record's time so that a removal stays provable once the record is gone.
CLASSES: tuple[str, ...] = ("task", "stage", "pipeline", "other")
CLASS_HELP: dict[str, str] = {
    "task": "orca:task:* events",
    "stage": "orca:stage:* events",
    "pipeline": "orca:pipeline:* and orca:orchestration:* events",
    "other": "every other event (builds, git, docker, manual triggers, webhooks, ...)",
}
RETENTION_PREFIXES: dict[str, tuple[str, ...]] = {
    "task": ("orca:task:",),
    "stage": ("orca:stage:",),
    "pipeline": ("orca:pipeline:", "orca:orchestration:"),
}


def event_class(event_type: str | None) -> str:
    """The retention class of an event type."""
    t = event_type or ""
    for cls, prefixes in RETENTION_PREFIXES.items():
        if t.startswith(prefixes):
            return cls
    return "other"


#: Fields holding lists of values (filterable by any one element).
LIST_FIELDS: tuple[str, ...] = ("accounts", "regions", "server_groups", "clusters", "namespaces", "tickets")

#: Scalar text fields stored as columns.
TEXT_FIELDS: tuple[str, ...] = (
    "source",
    "type",
    "spinnaker_instance",
    "application",
    "execution_id",
    "execution_type",
    "pipeline",
    "pipeline_config_id",
    "stage",
    "stage_type",
    "stage_id",
    "task",
    "status",
    "user",
    "run_as_user",
    "trigger_type",
    "cloud_provider",
    "description",
    "reason",
    "origin",
)


@dataclass(slots=True)
class AuditRecord:
    """One echo event turned into who / what / where / when / why.

    ``time`` and ``received_at`` are epoch milliseconds (UTC). ``id`` is the store sequence and is
    ``None`` until the record is stored.
    """

    event_id: str
    received_at: int
    time: int
    source: str | None = None
    type: str | None = None
    spinnaker_instance: str | None = None
    application: str | None = None
    execution_id: str | None = None
    execution_type: str | None = None
    pipeline: str | None = None
    pipeline_config_id: str | None = None
    stage: str | None = None
    stage_type: str | None = None
    stage_id: str | None = None
    task: str | None = None
    status: str | None = None
    user: str | None = None
    run_as_user: str | None = None
    trigger_type: str | None = None
    accounts: list[str] = field(default_factory=list)
    regions: list[str] = field(default_factory=list)
    server_groups: list[str] = field(default_factory=list)
    clusters: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    cloud_provider: str | None = None
    description: str | None = None
    reason: str | None = None
    tickets: list[str] = field(default_factory=list)
    origin: str | None = None
    id: int | None = None

    def to_api(self) -> dict[str, Any]:
        """The record as the API and exports show it (times as RFC 3339 UTC with milliseconds)."""
        out: dict[str, Any] = {"id": self.id}
        for f in dataclasses.fields(self):
            if f.name == "id":
                continue
            value = getattr(self, f.name)
            if f.name in ("time", "received_at"):
                value = format_time(value)
            out[f.name] = value
        return out


#: The API/export field order.
API_FIELDS: tuple[str, ...] = ("id", *(f.name for f in dataclasses.fields(AuditRecord) if f.name != "id"))


def format_time(ms: int | None) -> str | None:
    """Epoch milliseconds to RFC 3339 UTC with millisecond precision, e.g. ``2024-06-14T13:01:35.050Z``."""
    if ms is None:
        return None
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
