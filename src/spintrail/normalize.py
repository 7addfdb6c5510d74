"""Normalize: turn one decoded echo event into an AuditRecord (who, what, where, when and why).

The input is the echo ``Event`` as a dict (``details``, ``content``, optional ``eventId``) with any envelope
already removed. Every field is best effort: odd or unknown events never raise, wrong JSON types are
ignored, and the input is never modified. Only the parts of the event that answer a field are read, so
multi-megabyte executions cost little more than small ones.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, KeysView
from typing import Any

from spintrail.record import AuditRecord

__all__ = ["DEFAULT_TICKET_PATTERN", "event_id_of", "normalize"]

#: Jira-style issue keys, e.g. ``OPS-1234``.
DEFAULT_TICKET_PATTERN: str = r"[A-Z][A-Z0-9]+-\d+"

_DEFAULT_TICKET_RE = re.compile(DEFAULT_TICKET_PATTERN)

# Namespace of the ids derived from the content of events that arrive without an eventId.
_EVENT_ID_NAMESPACE = uuid.UUID("6b1f6d4e-2c1a-5e0b-9d8e-5f7c3a0e4b21")

# Values that stand for "nobody in particular" in authentication.user / trigger.user / canceledBy.
_ANONYMOUS = frozenset({"", "anonymous", "[anonymous]"})
_NOT_A_PERSON = _ANONYMOUS | {"parent pipeline"}

# Statuses of something that has not finished yet.
_ACTIVE = frozenset({"NOT_STARTED", "RUNNING", "PAUSED", "SUSPENDED", "BUFFERED"})

# What the last part of an orca event type says about the status.
_PHASE_STATUS = {"starting": "RUNNING", "complete": "SUCCEEDED", "failed": "TERMINAL", "skipped": "SKIPPED"}

_EXECUTION_KINDS = frozenset({"pipeline", "orchestration"})
_STAGE_KINDS = frozenset({"stage", "task"})

# A parent chain deeper than this is treated as broken data.
_MAX_PARENT_DEPTH = 32

_ID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?:-[\w-]+)?|[0-9A-HJKMNP-TV-Z]{26}"
)
# Frigga naming: <app>[-<stack>[-<detail>]]-v<NNN> for server groups.
_SERVER_GROUP_RE = re.compile(r"([^\s:]+?)-v\d{3,}")

_EMPTY: dict[str, Any] = {}


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def event_id_of(event: dict[str, Any]) -> str:
    """The idempotency key of an event.

    ``event["eventId"]`` when it is a non-empty string; otherwise a UUID5 over the canonical JSON of the
    event without any ``eventId`` key, so the same event gets the same id however it was formatted.
    """
    if not isinstance(event, dict):
        raise TypeError(f"echo event must be a JSON object (dict), got {type(event).__name__}")
    event_id = event.get("eventId")
    if isinstance(event_id, str) and event_id.strip():
        return event_id.strip()
    body = {k: v for k, v in event.items() if k != "eventId"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return str(uuid.uuid5(_EVENT_ID_NAMESPACE, canonical))


def natural_key(event: dict[str, Any]) -> str | None:
    """What identifies an orca execution or stage event whoever delivered it (echo, or a Gate backfill).

    ``<execution id>|<stage id>|<type>|<time Spinnaker recorded>``: the execution's (or the stage's) start
    time for a starting event, its end time for a final one, so a restarted stage is not taken for its
    first run. ``None`` for every other event (task events, builds, ...) and when a part is unknown.
    """
    details = _obj(event.get("details"))
    content = _obj(event.get("content"))
    etype = (_str(details.get("type")) or "").lower()
    parts = etype.split(":")
    if len(parts) != 3 or parts[0] != "orca" or parts[1] not in ("pipeline", "orchestration", "stage"):
        return None
    phase = parts[2]
    execution = _dict(content.get("execution"))
    execution_id = _str(content.get("executionId")) or _str(execution.get("id"))
    if not execution_id:
        return None
    time_key = "startTime" if phase == "starting" else "endTime"
    stage_id = ""
    if parts[1] == "stage":
        stage_id = _str(content.get("stageId")) or ""
        if not stage_id:
            return None
        stage = next(
            (s for s in _list(execution.get("stages")) if isinstance(s, dict) and s.get("id") == stage_id),
            _EMPTY,
        )
        at = _first_int(content.get(time_key), stage.get(time_key))
    else:
        at = _int(execution.get(time_key))
    if at is None:
        return None
    return f"{execution_id}|{stage_id}|{etype}|{at}"


def normalize(
    event: dict[str, Any],
    *,
    received_at: int,
    instance: str | None = None,
    ticket_pattern: re.Pattern[str] | None = None,
) -> AuditRecord:
    """Turn one decoded echo event into an :class:`AuditRecord`.

    :param event: the echo event (``details`` and ``content`` as objects, envelope removed).
    :param received_at: when spintrail received it, epoch milliseconds; also the last fallback for ``time``.
    :param instance: the Spinnaker instance the event came from (``spinnaker_instance``).
    :param ticket_pattern: regex for ticket keys; defaults to :data:`DEFAULT_TICKET_PATTERN`.
    """
    if not isinstance(event, dict):
        raise TypeError(f"echo event must be a JSON object (dict), got {type(event).__name__}")
    if isinstance(received_at, bool) or not isinstance(received_at, int):
        raise TypeError(f"received_at must be epoch milliseconds as an int, got {type(received_at).__name__}")
    if instance is not None and not isinstance(instance, str):
        raise TypeError(f"instance must be a string or None, got {type(instance).__name__}")
    if ticket_pattern is None:
        ticket_pattern = _DEFAULT_TICKET_RE
    elif not isinstance(ticket_pattern, re.Pattern):
        raise TypeError(f"ticket_pattern must be a compiled re.Pattern, got {type(ticket_pattern).__name__}")

    details = _obj(event.get("details"))
    content = _obj(event.get("content"))
    etype = _str(details.get("type"))
    rec = AuditRecord(
        event_id=event_id_of(event),
        received_at=received_at,
        time=received_at,
        source=_str(details.get("source")),
        type=etype,
        spinnaker_instance=instance,
        application=_str(details.get("application")),
    )
    ticket_texts: list[Any] = []

    kind = etype.lower() if etype else ""
    if kind.startswith("orca:") or (not kind and isinstance(content.get("execution"), dict)):
        fallback_time = _fill_orca(rec, kind, content, ticket_texts)
    elif kind == "build":
        fallback_time = _fill_build(rec, content, ticket_texts)
    elif kind in ("docker", "helm/oci"):
        fallback_time = _fill_docker(rec, content)
    elif kind == "git":
        fallback_time = _fill_git(rec, content, ticket_texts)
    elif kind == "manual":
        fallback_time = _fill_manual(rec, content, ticket_texts)
    else:
        fallback_time = _fill_other(rec, kind, content)

    created = _int(details.get("created"))
    rec.time = created if created is not None else fallback_time if fallback_time is not None else received_at

    ticket_texts.append(rec.description)
    ticket_texts.append(rec.reason)
    rec.tickets = _find_tickets(ticket_texts, ticket_pattern)
    return rec


# --------------------------------------------------------------------------------------------------
# orca: pipeline, orchestration, stage and task events
# --------------------------------------------------------------------------------------------------


def _fill_orca(rec: AuditRecord, etype: str, content: dict[str, Any], ticket_texts: list[Any]) -> int | None:
    parts = etype.split(":")
    kind = parts[1] if len(parts) > 1 else ""
    phase = parts[2] if len(parts) > 2 else ""
    execution = _dict(content.get("execution"))
    context = _dict(content.get("context"))
    trigger = _dict(execution.get("trigger"))

    rec.execution_id = _str(content.get("executionId")) or _str(execution.get("id"))
    execution_type = _str(execution.get("type"))
    if execution_type:
        rec.execution_type = execution_type.lower()
    elif kind in _EXECUTION_KINDS:
        rec.execution_type = kind
    elif isinstance(content.get("standalone"), bool):
        rec.execution_type = "orchestration" if content["standalone"] else "pipeline"
    rec.application = (
        rec.application or _str(execution.get("application")) or _str(context.get("application"))
    )
    if rec.execution_type != "orchestration":
        rec.pipeline = _str(execution.get("name"))
    rec.pipeline_config_id = _str(execution.get("pipelineConfigId"))
    rec.trigger_type = _str(trigger.get("type"))
    rec.run_as_user = _str(_trigger_value(trigger, "runAsUser"))
    rec.origin = _str(execution.get("origin"))
    canceled = execution.get("canceled") is True or content.get("canceled") is True

    ticket_texts.append(_trigger_value(trigger, "parameters"))
    _add_build_info(_trigger_value(trigger, "buildInfo"), ticket_texts)

    where = _Where()
    why = _Why()
    stage_level = kind in _STAGE_KINDS or (
        kind not in _EXECUTION_KINDS
        and ("context" in content or "stageId" in content or "taskName" in content)
    )
    if stage_level:
        fallback_time = _fill_stage_event(rec, kind, phase, content, execution, context, canceled, where, why)
    else:
        fallback_time = _fill_execution_event(rec, phase, execution, canceled, where, why)

    where.store(rec)
    rec.reason = why.reason()
    ticket_texts.extend(why.jira_keys)
    return fallback_time


def _fill_execution_event(
    rec: AuditRecord,
    phase: str,
    execution: dict[str, Any],
    canceled: bool,
    where: _Where,
    why: _Why,
) -> int | None:
    rec.status = _status(execution.get("status"), phase, canceled)
    cancellation = canceled and (phase == "failed" or rec.status == "CANCELED")
    if cancellation:
        why.add(execution.get("cancellationReason"))
    stages = _list(execution.get("stages"))
    for stage in stages:
        if isinstance(stage, dict):
            for part in (stage.get("context"), stage.get("outputs")):
                if isinstance(part, dict):
                    where.scan(part)
                    why.scan(part)
    rec.user = _actor(execution, None, _EMPTY, cancellation)

    if rec.execution_type == "orchestration":
        rec.description = _str(execution.get("description")) or _str(execution.get("name"))
        if rec.description is None:
            first = next((s for s in stages if isinstance(s, dict)), _EMPTY)
            rec.description = _str(first.get("name")) or _str(first.get("type"))
    else:
        rec.description = rec.pipeline or _str(execution.get("description"))
    return _first_int(execution.get("endTime"), execution.get("startTime"), execution.get("buildTime"))


def _fill_stage_event(
    rec: AuditRecord,
    kind: str,
    phase: str,
    content: dict[str, Any],
    execution: dict[str, Any],
    context: dict[str, Any],
    canceled: bool,
    where: _Where,
    why: _Why,
) -> int | None:
    stage_details = _dict(context.get("stageDetails"))
    legacy_stage_id, task_stage_type, task = _parse_task_name(_str(content.get("taskName")))
    stages = _list(execution.get("stages"))
    stage = _find_stage(stages, content, stage_details, legacy_stage_id)

    rec.stage_id = _str(content.get("stageId")) or _str(stage.get("id")) or legacy_stage_id
    rec.stage = _str(content.get("name")) or _str(stage.get("name")) or _str(stage_details.get("name"))
    rec.stage_type = (
        _str(stage.get("type"))
        or task_stage_type
        or _str(context.get("type"))
        or _str(stage_details.get("type"))
    )
    rec.task = task

    if kind == "task" or task is not None:
        snapshot_status = _find_task(stage, task, phase).get("status")
    else:
        snapshot_status = stage.get("status")
    rec.status = _status(snapshot_status, phase, canceled)
    cancellation = canceled and (phase == "failed" or rec.status == "CANCELED")

    # Where: the event's own stage context, its stage in the snapshot, and that stage's synthetic children.
    stage_context = _dict(stage.get("context"))
    where.scan(context)
    if stage:
        for part in (stage_context, stage.get("outputs")):
            if isinstance(part, dict):
                where.scan(part)
        for child in _descendants(stages, stage):
            for part in (child.get("context"), child.get("outputs")):
                if isinstance(part, dict):
                    where.scan(part)
                    why.scan_jira(part)

    # Why: a cancellation reason, the reason typed by a person, the judgment input.
    if cancellation:
        why.add(execution.get("cancellationReason"))
    why.scan(context)
    why.scan(stage_context)

    judged = rec.stage_type == "manualJudgment" or phase == "skipped" or rec.status == "SKIPPED"
    rec.user = _actor(execution, stage if judged else None, context, cancellation)

    if rec.execution_type == "orchestration" and _str(execution.get("description")):
        rec.description = _str(execution.get("description"))
    else:
        rec.description = _describe(rec.pipeline, rec.stage, rec.stage_type, rec.task)
    return _first_int(
        content.get("endTime"),
        content.get("startTime"),
        stage.get("endTime"),
        stage.get("startTime"),
        stage_details.get("endTime"),
        stage_details.get("startTime"),
    )


def _parse_task_name(task_name: str | None) -> tuple[str | None, str | None, str | None]:
    """``(stage id, stage type, task)`` from ``content.taskName``.

    Current orca sends ``<stageType>.<taskName>``; the 2015 format was
    ``<stageId>.<stageType>.<taskName>.<taskId>``.
    """
    if not task_name:
        return None, None, None
    parts = [p for p in task_name.split(".") if p]
    stage_id = None
    if len(parts) >= 3 and _ID_RE.fullmatch(parts[0]):
        stage_id = parts.pop(0)
    if len(parts) >= 3 and (_ID_RE.fullmatch(parts[-1]) or parts[-1].isdigit()):
        parts.pop()
    if not parts:
        return stage_id, None, None
    if len(parts) == 1:
        return stage_id, None, parts[0]
    return stage_id, parts[0], ".".join(parts[1:])


def _find_stage(
    stages: list[Any],
    content: dict[str, Any],
    stage_details: dict[str, Any],
    legacy_stage_id: str | None,
) -> dict[str, Any]:
    """The event's stage in the execution snapshot: by id, else by name + start time / stageDetails."""
    if not stages:
        return _EMPTY
    stage_id = _str(content.get("stageId")) or legacy_stage_id
    if stage_id:
        for stage in stages:
            if isinstance(stage, dict) and stage.get("id") == stage_id:
                return stage
    name = _str(content.get("name")) or _str(stage_details.get("name"))
    if not name:
        return _EMPTY
    start = _first_int(content.get("startTime"), stage_details.get("startTime"))
    matches = [s for s in stages if isinstance(s, dict) and s.get("name") == name]
    if start is not None:
        for stage in matches:
            if _int(stage.get("startTime")) == start:
                return stage
    stage_type = _str(stage_details.get("type"))
    if stage_type:
        matches = [s for s in matches if s.get("type") == stage_type]
    return matches[0] if len(matches) == 1 else _EMPTY


def _find_task(stage: dict[str, Any], task: str | None, phase: str) -> dict[str, Any]:
    """The task of a task event; names can repeat in a stage, so prefer the one the phase describes."""
    if not task:
        return _EMPTY
    candidates = [t for t in _list(stage.get("tasks")) if isinstance(t, dict) and t.get("name") == task]
    if len(candidates) <= 1:
        return candidates[0] if candidates else _EMPTY
    if phase == "starting":
        preferred = [t for t in candidates if t.get("status") == "RUNNING"]
        time_key = "startTime"
    else:
        preferred = [t for t in candidates if t.get("status") not in _ACTIVE]
        time_key = "endTime"
    pool = preferred or candidates
    return max(pool, key=lambda t: _int(t.get(time_key)) or 0)


def _descendants(stages: list[Any], stage: dict[str, Any]) -> list[dict[str, Any]]:
    """Synthetic stages owned by ``stage``, recursively, in execution order."""
    root = stage.get("id")
    if not isinstance(root, str):
        return []
    children: dict[str, list[dict[str, Any]]] = {}
    for s in stages:
        if isinstance(s, dict):
            parent = s.get("parentStageId")
            if isinstance(parent, str) and s is not stage:
                children.setdefault(parent, []).append(s)
    if not children:
        return []
    out: list[dict[str, Any]] = []
    seen = {root}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(0), ()):
            child_id = child.get("id")
            if isinstance(child_id, str) and child_id in seen:
                continue
            if isinstance(child_id, str):
                seen.add(child_id)
                todo.append(child_id)
            out.append(child)
    return out


def _status(snapshot: Any, phase: str, canceled: bool) -> str | None:
    """The snapshot's status unless it contradicts the event; otherwise derived from the type suffix."""
    status = _str(snapshot)
    status = status.upper() if status else None
    derived = _PHASE_STATUS.get(phase)
    if phase == "failed" and canceled:
        derived = "CANCELED"
    if status is None:
        return derived
    if derived is not None and derived != "RUNNING" and status in _ACTIVE:
        return derived  # the snapshot predates the end the event reports
    if phase == "starting" and status == "NOT_STARTED":
        return derived
    return status


def _describe(
    pipeline: str | None, stage: str | None, stage_type: str | None, task: str | None
) -> str | None:
    parts: list[str] = []
    if pipeline:
        parts.append(pipeline)
    if stage and stage_type and stage != stage_type:
        parts.append(f"{stage} ({stage_type})")
    elif stage or stage_type:
        parts.append(stage or stage_type or "")
    if task:
        parts.append(task)
    return " / ".join(parts) or None


# --------------------------------------------------------------------------------------------------
# Who
# --------------------------------------------------------------------------------------------------


def _actor(
    execution: dict[str, Any],
    judged_stage: dict[str, Any] | None,
    context: dict[str, Any],
    cancellation: bool,
) -> str | None:
    """The person responsible for the event's action.

    The judge of a judged or skipped stage; else the canceller of a cancellation (the parent run's user
    when the canceller is "parent pipeline"); else the human who started the execution, walking up
    pipeline triggers; else the service account it ran as; else the user Deck put in the stage context.
    """
    if judged_stage is not None:
        judge = (
            _person(_dict(judged_stage.get("lastModified")).get("user"))
            or _person(context.get("lastModifiedBy"))
            or _person(_dict(judged_stage.get("context")).get("lastModifiedBy"))
        )
        if judge:
            return judge
    if cancellation:
        canceled_by = _str(execution.get("canceledBy"))
        if canceled_by and canceled_by.lower() not in _NOT_A_PERSON:
            return canceled_by
        parent = _trigger_value(_dict(execution.get("trigger")), "parentExecution")
        if canceled_by and isinstance(parent, dict):
            human, service = _initiator(parent, 1)
            if human or service:
                return human or service
    human, service = _initiator(execution, 0)
    return human or service or _person(context.get("user"))


def _initiator(execution: dict[str, Any], depth: int) -> tuple[str | None, str | None]:
    """``(human, service account)`` behind an execution, walking up pipeline triggers."""
    trigger = _dict(execution.get("trigger"))
    service = _str(_trigger_value(trigger, "runAsUser"))
    auth_user = _person(_dict(execution.get("authentication")).get("user"))
    if auth_user and auth_user != service:
        return auth_user, service
    trigger_user = _person(_trigger_value(trigger, "user"))
    if trigger_user and trigger_user != service:
        return trigger_user, service
    if depth < _MAX_PARENT_DEPTH:
        parent = _trigger_value(trigger, "parentExecution")
        if isinstance(parent, dict):
            human, parent_service = _initiator(parent, depth + 1)
            return human, service or auth_user or parent_service
    return None, service or auth_user


def _person(value: Any) -> str | None:
    text = _str(value)
    if text is None or text.lower() in _ANONYMOUS:
        return None
    return text


def _trigger_value(trigger: dict[str, Any], key: str) -> Any:
    """A trigger field, flat (newer serializer) or under ``other`` (older one)."""
    value = trigger.get(key)
    if value is None:
        value = _dict(trigger.get("other")).get(key)
    return value


# --------------------------------------------------------------------------------------------------
# Where and why: stage contexts
# --------------------------------------------------------------------------------------------------


class _Where:
    """Accounts, regions, server groups, clusters and namespaces found in stage contexts, in order."""

    __slots__ = ("accounts", "cloud_provider", "clusters", "namespaces", "regions", "server_groups")

    def __init__(self) -> None:
        self.accounts: dict[str, None] = {}
        self.regions: dict[str, None] = {}
        self.server_groups: dict[str, None] = {}
        self.clusters: dict[str, None] = {}
        self.namespaces: dict[str, None] = {}
        self.cloud_provider: str | None = None

    def scan(self, ctx: dict[str, Any]) -> None:
        """Read the well-known keys of one stage context (or outputs); never walks the whole tree."""
        provider = (
            _str(ctx.get("cloudProvider")) or _str(ctx.get("cloudProviderType")) or _str(ctx.get("provider"))
        )
        if provider and self.cloud_provider is None:
            self.cloud_provider = provider
        kube = (provider or self.cloud_provider) == "kubernetes"
        locations = self.namespaces if kube else self.regions
        for key, value in ctx.items():
            if key in ("deploy.account.name", "credentials", "account", "manifestAccountName"):
                _add(self.accounts, value)
            elif key == "region":
                _add(locations, value)
            elif key == "regions":
                _add_all(locations, value)
            elif key == "availabilityZones":
                _add_all(locations, _dict(value).keys())
            elif key == "deploy.server.groups":
                for location, names in _dict(value).items():
                    _add(locations, location)
                    _add_all(self.server_groups, names if isinstance(names, list) else [names])
            elif key in ("serverGroupName", "asgName"):
                _add(self.server_groups, value)
            elif key == "kato.tasks":
                for task in _list(value):
                    for result in _list(_dict(task).get("resultObjects")):
                        if isinstance(result, dict):
                            self._result_object(result, kube, locations)
            elif key == "cluster":
                _add(self.clusters, value)
            elif key == "moniker":
                _add(self.clusters, _dict(value).get("cluster"))
            elif key == "clusters":
                for cluster in _list(value):
                    if isinstance(cluster, dict):
                        self._cluster(cluster)
            elif key == "namespace" or (kube and key == "location"):
                _add(self.namespaces, value)
            elif key in ("manifests", "outputs.manifests"):
                self._manifests(value)
            elif key == "outputs.manifestNamesByNamespace":
                _add_all(self.namespaces, _dict(value).keys())
            elif key.startswith("targetop.asg."):
                if key.endswith(".name"):
                    _add(self.server_groups, value)
                elif key.endswith(".regions"):
                    _add_all(locations, value)
        if "stack" in ctx or "freeFormDetails" in ctx:
            _add(self.clusters, _cluster_name(ctx))

    def _result_object(self, result: dict[str, Any], kube: bool, locations: dict[str, None]) -> None:
        for region, name in _dict(result.get("serverGroupNameByRegion")).items():
            _add(locations, region)
            _add(self.server_groups, name)
        for qualified in _list(result.get("serverGroupNames")):
            if isinstance(qualified, str) and ":" in qualified:
                region, _, name = qualified.partition(":")
                _add(locations, region)
                _add(self.server_groups, name)
        self._manifests(result.get("manifests"))
        _add_all(self.namespaces, _dict(result.get("manifestNamesByNamespace")).keys())
        if kube:
            _add_all(self.namespaces, _dict(result.get("deployedNamesByLocation")).keys())

    def _cluster(self, cluster: dict[str, Any]) -> None:
        _add(self.accounts, cluster.get("account"))
        _add(self.accounts, cluster.get("credentials"))
        provider = _str(cluster.get("cloudProvider")) or _str(cluster.get("provider"))
        if provider and self.cloud_provider is None:
            self.cloud_provider = provider
        _add_all(self.regions, _dict(cluster.get("availabilityZones")).keys())
        _add(self.regions, cluster.get("region"))
        _add_all(self.regions, cluster.get("regions"))
        _add(self.clusters, _dict(cluster.get("moniker")).get("cluster"))
        if "stack" in cluster or "freeFormDetails" in cluster:
            _add(self.clusters, _cluster_name(cluster))

    def _manifests(self, manifests: Any) -> None:
        for manifest in _list(manifests):
            if isinstance(manifest, dict):
                _add(self.namespaces, _dict(manifest.get("metadata")).get("namespace"))

    def store(self, rec: AuditRecord) -> None:
        for name in self.server_groups:
            match = _SERVER_GROUP_RE.fullmatch(name)
            if match:
                self.clusters.setdefault(match.group(1), None)
        rec.accounts = list(self.accounts)
        rec.regions = list(self.regions)
        rec.server_groups = list(self.server_groups)
        rec.clusters = list(self.clusters)
        rec.namespaces = list(self.namespaces)
        rec.cloud_provider = self.cloud_provider


def _cluster_name(spec: dict[str, Any]) -> str | None:
    """Frigga cluster name ``app[-stack[-detail]]`` from a deploy description."""
    app = _str(spec.get("application"))
    if not app:
        return None
    stack = _str(spec.get("stack")) or ""
    detail = _str(spec.get("freeFormDetails")) or ""
    if detail:
        return f"{app}-{stack}-{detail}"
    return f"{app}-{stack}" if stack else app


class _Why:
    """Reasons typed by people, and ticket keys recorded by jira stages."""

    __slots__ = ("jira_keys", "reasons")

    def __init__(self) -> None:
        self.reasons: dict[str, None] = {}
        self.jira_keys: list[str] = []

    def add(self, text: Any) -> None:
        if isinstance(text, str) and text.strip():
            self.reasons.setdefault(text.strip(), None)

    def scan(self, ctx: dict[str, Any]) -> None:
        self.add(ctx.get("reason"))
        self.add(ctx.get("judgmentInput"))
        self.scan_jira(ctx)

    def scan_jira(self, ctx: dict[str, Any]) -> None:
        key = _str(_dict(ctx.get("createJiraIssueResponse")).get("key"))
        if key:
            self.jira_keys.append(key)

    def reason(self) -> str | None:
        return "; ".join(self.reasons) or None


def _add_build_info(build_info: Any, texts: list[Any]) -> None:
    """Commit messages and branches of a Jenkins/CI build (``trigger.buildInfo`` or igor's lastBuild)."""
    info = _dict(build_info)
    for scm in _list(info.get("scm")):
        if isinstance(scm, dict):
            texts.append(scm.get("message"))
            texts.append(scm.get("branch"))
    texts.append(info.get("description"))


# --------------------------------------------------------------------------------------------------
# igor, git, gate and other sources
# --------------------------------------------------------------------------------------------------


def _fill_build(rec: AuditRecord, content: dict[str, Any], ticket_texts: list[Any]) -> int | None:
    project = _dict(content.get("project"))
    build = _dict(project.get("lastBuild"))
    job = _str(project.get("name"))
    number = _str(build.get("number"))
    result = _str(build.get("result")) or ("BUILDING" if build.get("building") is True else None)
    rec.status = result
    words = ["Build"]
    if job:
        words.append(job)
    if number:
        words.append(f"#{number}")
    if result:
        words.append(result)
    rec.description = " ".join(words) if len(words) > 1 else None
    rec.user = _person(content.get("user"))
    _add_build_info(build, ticket_texts)
    return _int(build.get("timestamp"))


def _fill_docker(rec: AuditRecord, content: dict[str, Any]) -> int | None:
    repository = _str(content.get("repository"))
    tag = _str(content.get("tag"))
    if repository or tag:
        rec.description = f"New tag {repository or '?'}:{tag or '?'}"
    account = _str(content.get("account"))
    if account:
        rec.accounts = [account]
    return None


def _fill_git(rec: AuditRecord, content: dict[str, Any], ticket_texts: list[Any]) -> int | None:
    slug = _str(content.get("slug"))
    branch = _str(content.get("branch"))
    commit = _str(content.get("hash"))
    action = _str(content.get("action"))
    target = slug or _str(content.get("repoProject")) or "?"
    if branch:
        target = f"{target}@{branch}"
    if commit:
        target = f"{target} {commit[:7]}"
    if action is None or action.lower().startswith("push"):
        rec.description = f"Push to {target}"
    else:
        rec.description = f"{action} {target}"

    pusher = content.get("pusher")
    head = _dict(content.get("head_commit"))
    actor = _dict(content.get("actor"))
    rec.user = (
        (_person(pusher) if isinstance(pusher, str) else _person(_dict(pusher).get("name")))
        or _person(_dict(content.get("sender")).get("login"))
        or _person(content.get("user_username"))
        or _person(content.get("user_name"))
        or _person(actor.get("username"))
        or _person(actor.get("nickname"))
        or _person(actor.get("display_name"))
        or _person(actor.get("name"))
        or _person(_dict(head.get("author")).get("username"))
        or _person(_dict(head.get("author")).get("name"))
    )
    ticket_texts.append(branch)
    ticket_texts.append(content.get("title"))
    ticket_texts.append(head.get("message"))
    for commit_info in _list(content.get("commits")):
        if isinstance(commit_info, dict):
            ticket_texts.append(commit_info.get("message"))
    return None


def _fill_manual(rec: AuditRecord, content: dict[str, Any], ticket_texts: list[Any]) -> int | None:
    trigger = _dict(content.get("trigger"))
    rec.application = rec.application or _str(content.get("application"))
    pipeline = _str(content.get("pipelineNameOrId"))
    if pipeline and _ID_RE.fullmatch(pipeline):
        rec.pipeline_config_id = pipeline
    else:
        rec.pipeline = pipeline
    if pipeline:
        rec.description = f"Manual trigger of {pipeline}"
    rec.execution_type = "pipeline"
    rec.execution_id = _str(_trigger_value(trigger, "executionId"))
    rec.trigger_type = _str(trigger.get("type")) or "manual"
    rec.run_as_user = _str(_trigger_value(trigger, "runAsUser"))
    rec.user = _person(content.get("user")) or _person(trigger.get("user"))
    ticket_texts.append(_trigger_value(trigger, "parameters"))
    _add_build_info(_trigger_value(trigger, "buildInfo"), ticket_texts)
    return None


def _fill_other(rec: AuditRecord, kind: str, content: dict[str, Any]) -> int | None:
    rec.application = rec.application or _str(content.get("application"))
    rec.user = _person(content.get("user"))
    if kind.startswith("mcp:"):
        tool = _str(content.get("tool")) or kind.rsplit(":", 1)[-1]
        target = _str(content.get("target"))
        rec.description = f"MCP {tool} {target}" if target else f"MCP {tool}"
    elif kind == "helm":
        chart = _str(content.get("chart"))
        if chart:
            version = _str(content.get("version"))
            rec.description = f"New chart {chart}:{version}" if version else f"New chart {chart}"
        account = _str(content.get("account"))
        if account:
            rec.accounts = [account]
    elif kind == "webhook" and rec.source:
        rec.description = f"Webhook from {rec.source}"
    return None


# --------------------------------------------------------------------------------------------------
# Small tolerant accessors
# --------------------------------------------------------------------------------------------------


def _obj(value: Any) -> dict[str, Any]:
    """A dict, decoding a JSON string (flattened bodies) if need be; anything else is empty."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            decoded = json.loads(value)
        except ValueError:
            return _EMPTY
        return decoded if isinstance(decoded, dict) else _EMPTY
    return _EMPTY


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else _EMPTY


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    """Non-empty stripped text; numbers become text, everything else is None."""
    if isinstance(value, str):
        value = value.strip()
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value == value and abs(value) != float("inf"):
        return str(int(value)) if value.is_integer() else str(value)
    return None


def _int(value: Any) -> int | None:
    """Epoch-ms style integer from an int, a float or a numeric string; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value == value and abs(value) != float("inf") else None
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                return None
            return int(number) if number == number and abs(number) != float("inf") else None
    return None


def _first_int(*values: Any) -> int | None:
    for value in values:
        number = _int(value)
        if number is not None:
            return number
    return None


def _add(bag: dict[str, None], value: Any) -> None:
    text = _str(value)
    if text is not None:
        bag.setdefault(text, None)


def _add_all(bag: dict[str, None], values: Iterable[Any] | Any) -> None:
    if isinstance(values, list | tuple | KeysView):
        for value in values:
            _add(bag, value)


def _find_tickets(texts: list[Any], pattern: re.Pattern[str]) -> list[str]:
    """Ticket keys in the given texts (strings, or small dicts/lists of strings), first appearance first."""
    found: dict[str, None] = {}

    def visit(value: Any, depth: int) -> None:
        if isinstance(value, str):
            for match in pattern.finditer(value):
                found.setdefault(match.group(0), None)
        elif depth < 3 and isinstance(value, dict):
            for item in value.values():
                visit(item, depth + 1)
        elif depth < 3 and isinstance(value, list):
            for item in value:
                visit(item, depth + 1)

    for text in texts:
        visit(text, 0)
    return list(found)
