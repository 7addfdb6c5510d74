"""Reports: pure functions over the Store answering an auditor's standing questions.

Each report selects candidates with indexed filters first (stage types, accounts, time), then reads only the
executions (or raw events) it needs. The same functions serve the web pages, ``GET /api/v1/reports/...`` and
``spintrail report ...``. Times in rows are RFC 3339 UTC strings; durations are milliseconds.

Definitions shared by the reports:

* a *change* is a stage of a type in :data:`CHANGE_KINDS` (deploy, resize, enable/disable, destroy,
  rollback, manifest, job) that started in an account matching the production patterns;
* a *judgment* is the decision of a manual-judgment stage: ``continue`` (the stage SUCCEEDED) or ``stop``
  (TERMINAL/STOPPED); a change is *approved* when a ``continue`` of the same execution came before its
  first production change, and *self-approved* when the person who started the execution answered
  ``continue`` before one of its production changes.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import fnmatch
import json
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from spintrail.query import Filters
from spintrail.record import AuditRecord, format_time
from spintrail.store.base import Store, day_name, utc_day
from spintrail.timeline import Timeline, build_timeline

DAY_MS = 86_400_000

#: What kind of change each stage type makes.
CHANGE_KINDS: dict[str, str] = {
    "deploy": "deploy",
    "createServerGroup": "deploy",
    "cloneServerGroup": "deploy",
    "deployManifest": "manifest",
    "patchManifest": "manifest",
    "scaleManifest": "manifest",
    "deleteManifest": "manifest",
    "undoRolloutManifest": "rollback",
    "enableManifest": "enable",
    "disableManifest": "disable",
    "rollingRestartManifest": "manifest",
    "resizeServerGroup": "resize",
    "scaleDownCluster": "resize",
    "enableServerGroup": "enable",
    "enableCluster": "enable",
    "disableServerGroup": "disable",
    "disableCluster": "disable",
    "destroyServerGroup": "destroy",
    "shrinkCluster": "destroy",
    "rollbackServerGroup": "rollback",
    "rollbackCluster": "rollback",
    "runJob": "job",
    "runJobManifest": "job",
}
CHANGE_STAGE_TYPES: tuple[str, ...] = tuple(CHANGE_KINDS)

#: Stage types whose start makes an execution a deployment (dashboard).
DEPLOY_STAGE_TYPES: tuple[str, ...] = ("deploy", "createServerGroup", "cloneServerGroup", "deployManifest")

#: What happens to a server group when a stage of this type performs its operation (lineage).
SERVER_GROUP_ACTIONS: dict[str, str] = {
    "createServerGroup": "created",
    "cloneServerGroup": "created",
    "resizeServerGroup": "resized",
    "scaleDownCluster": "resized",
    "disableServerGroup": "disabled",
    "disableCluster": "disabled",
    "enableServerGroup": "enabled",
    "destroyServerGroup": "destroyed",
    "shrinkCluster": "destroyed",
}

#: Orchestration stages that save a pipeline or an application (pipeline configuration history).
CONFIG_STAGE_TYPES: tuple[str, ...] = (
    "savePipeline",
    "updatePipeline",
    "deletePipeline",
    "updateApplication",
)

#: Keys left out of configuration diffs: they change on every save and are shown as columns anyway.
CONFIG_NOISE_KEYS = frozenset({"updateTs", "lastModifiedBy", "lastModified", "createTs"})

RUN_TYPES: tuple[str, ...] = ("orca:pipeline:*", "orca:orchestration:*")
RUN_START_TYPES: tuple[str, ...] = ("orca:pipeline:starting", "orca:orchestration:starting")
RUN_END_TYPES: tuple[str, ...] = (
    "orca:pipeline:complete",
    "orca:pipeline:failed",
    "orca:orchestration:complete",
    "orca:orchestration:failed",
)
STAGE_TYPES: tuple[str, ...] = ("orca:stage:*",)
_STAGE_END_TYPES = ("orca:stage:complete", "orca:stage:failed")
_JUDGMENT_EVENT_TYPES = ("orca:stage:complete", "orca:stage:failed", "orca:task:complete", "orca:task:failed")
_CONTINUE = frozenset({"SUCCEEDED"})
_STOP = frozenset({"TERMINAL", "STOPPED", "FAILED_CONTINUE"})
_FAILED = frozenset({"TERMINAL", "FAILED", "FAILED_CONTINUE", "STOPPED"})
_CHUNK = 400

REPORTS: dict[str, str] = {
    "production-changes": "Production changes",
    "separation-of-duties": "Separation of duties",
    "lineage": "Infrastructure lineage",
    "pipeline-history": "Pipeline configuration history",
    "unfinished": "Unfinished executions",
}


class ReportError(ValueError):
    """A report asked with parameters it cannot answer; the message says what to pass."""


@dataclass(slots=True)
class Report:
    """A report's answer: rows under named columns, what was asked, and how to read it."""

    name: str
    title: str
    columns: tuple[str, ...]
    rows: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: report-specific structure for the page (e.g. lineage summaries); also in the JSON answer
    extra: dict[str, Any] = field(default_factory=dict)

    def to_api(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "report": self.name,
            "title": self.title,
            "params": self.params,
            "notes": self.notes,
            "columns": list(self.columns),
            "rows": self.rows,
        }
        out.update(self.extra)
        return out


# --------------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------------


def account_patterns(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """Glob patterns (``prod*``, ``*-prod``) from a comma-separated string or a list; empty means none."""
    if text is None:
        return ()
    items = [text] if isinstance(text, str) else list(text)
    out = [p.strip() for item in items for p in item.split(",") if p.strip()]
    return tuple(dict.fromkeys(out))


def matches(account: str, patterns: Sequence[str]) -> bool:
    """Whether an account name matches one of the glob patterns and none of the ``!`` exclusions
    (case-insensitive): ``*prod*,!*nonprod*`` matches ``aws-prod`` but not ``aws-nonprod``."""
    low = account.lower()
    include = [p.lower() for p in patterns if not p.startswith("!")]
    exclude = [p[1:].lower() for p in patterns if p.startswith("!")]
    return any(fnmatch.fnmatchcase(low, p) for p in include) and not any(
        fnmatch.fnmatchcase(low, p) for p in exclude
    )


def _chunks(items: Sequence[str], n: int = _CHUNK) -> Iterator[tuple[str, ...]]:
    for i in range(0, len(items), n):
        yield tuple(items[i : i + n])


def _period(since: int | None, until: int | None) -> dict[str, Any]:
    return {"since": format_time(since), "until": format_time(until)}


def _uniq(values: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(v for v in values if v))


@dataclass(slots=True)
class Judgment:
    """One manual-judgment decision."""

    user: str | None
    time: int
    decision: str  # "continue" or "stop"
    input: str | None
    stage: str | None
    stage_id: str | None
    record_id: int | None


def judgments(records: Iterable[AuditRecord]) -> list[Judgment]:
    """The decisions of an execution's manual-judgment stages (the earliest final event of each stage)."""
    found: dict[str, Judgment] = {}
    for r in sorted(records, key=lambda r: (r.time, r.id or 0)):
        if r.stage_type != "manualJudgment" or r.type not in _JUDGMENT_EVENT_TYPES:
            continue
        status = (r.status or "").upper()
        if status in _CONTINUE:
            decision = "continue"
        elif status in _STOP:
            decision = "stop"
        else:
            continue  # canceled or still waiting: nobody decided
        key = r.stage_id or r.stage or f"#{r.id}"
        if key not in found:
            found[key] = Judgment(r.user, r.time, decision, r.reason, r.stage, r.stage_id, r.id)
    return sorted(found.values(), key=lambda j: j.time)


# --------------------------------------------------------------------------------------------------
# production changes and separation of duties
# --------------------------------------------------------------------------------------------------

PRODUCTION_COLUMNS: tuple[str, ...] = (
    "execution_id",
    "application",
    "execution_type",
    "description",
    "started_by",
    "trigger_type",
    "started_at",
    "first_change_at",
    "changes",
    "accounts",
    "regions",
    "server_groups",
    "namespaces",
    "approved",
    "approved_by",
    "self_approved",
    "tickets",
    "reason",
    "status",
    "ended_at",
    "duration_ms",
)


@dataclass(slots=True)
class _Change:
    execution_id: str
    first: int | None = None  # first production change stage start
    last: int | None = None
    earliest_any: int | None = None
    kinds: dict[str, None] = field(default_factory=dict)
    stage_types: dict[str, None] = field(default_factory=dict)
    accounts: dict[str, None] = field(default_factory=dict)
    regions: dict[str, None] = field(default_factory=dict)
    server_groups: dict[str, None] = field(default_factory=dict)
    namespaces: dict[str, None] = field(default_factory=dict)


def _production_accounts(store: Store, patterns: Sequence[str], base: Filters) -> tuple[str, ...]:
    seen = store.count_by(replace(base, account=()), ["accounts"])
    return tuple(sorted(a for (a,), _n in seen if a and matches(a, patterns)))


def production_change_rows(
    store: Store,
    *,
    accounts: Sequence[str],
    since: int | None = None,
    until: int | None = None,
    application: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """One row per execution that changed a matching account in the period (the report's rows)."""
    patterns = account_patterns(accounts)
    if not any(not p.startswith("!") for p in patterns):
        raise ReportError("give at least one account pattern, e.g. prod* or *-prod")
    base = Filters(
        type=STAGE_TYPES,
        stage_type=CHANGE_STAGE_TYPES,
        application=tuple(application),
        since=since,
        until=until,
    )
    prod = _production_accounts(store, patterns, base)
    if not prod:
        return []
    changes: dict[str, _Change] = {}
    fields = ["execution_id", "time", "type", "stage_type", "status", "accounts", "regions"]
    fields += ["server_groups", "namespaces"]
    for eid, t, etype, stage_type, status, accts, regions, sgs, nss in store.select(
        replace(base, account=prod), fields
    ):
        if not eid or etype == "orca:stage:skipped" or status == "SKIPPED":
            continue
        c = changes.setdefault(eid, _Change(eid))
        c.earliest_any = t if c.earliest_any is None else min(c.earliest_any, t)
        if etype == "orca:stage:starting":
            c.first = t if c.first is None else min(c.first, t)
            c.last = t if c.last is None else max(c.last, t)
        if stage_type:
            c.stage_types[stage_type] = None
            c.kinds[CHANGE_KINDS.get(stage_type, stage_type)] = None
        for a in accts:
            if matches(a, patterns):
                c.accounts[a] = None
        for bag, values in ((c.regions, regions), (c.server_groups, sgs), (c.namespaces, nss)):
            for v in values:
                bag[v] = None
    rows = []
    for c in changes.values():
        records = store.execution(c.execution_id)
        if not records:
            continue
        rows.append(_production_row(c, records))
    rows.sort(key=lambda r: (r["first_change_at"] or "", r["execution_id"]), reverse=True)
    return rows


def _production_row(c: _Change, records: list[AuditRecord]) -> dict[str, Any]:
    tl = build_timeline(c.execution_id, records)
    first = c.first if c.first is not None else c.earliest_any
    last = c.last if c.last is not None else first
    decided = judgments(records)
    approvals = [j for j in decided if j.decision == "continue" and first is not None and j.time < first]
    started_by = tl.user
    self_approved = any(
        j.decision == "continue" and j.user == started_by and last is not None and j.time < last
        for j in decided
    )
    trigger_type = next((r.trigger_type for r in records if r.trigger_type), None)
    reasons = _uniq(r.reason for r in records if r.stage_type != "manualJudgment")
    return {
        "execution_id": c.execution_id,
        "application": tl.application,
        "execution_type": tl.execution_type,
        "description": tl.description,
        "started_by": started_by,
        "trigger_type": trigger_type,
        "started_at": format_time(tl.start),
        "first_change_at": format_time(first),
        "changes": list(c.kinds),
        "accounts": sorted(c.accounts),
        "regions": sorted(c.regions),
        "server_groups": sorted(c.server_groups),
        "namespaces": sorted(c.namespaces),
        "approved": bool(approvals),
        "approved_by": _uniq(j.user for j in approvals),
        "self_approved": self_approved,
        "tickets": list(tl.tickets),
        "reason": "; ".join(reasons) or None,
        "status": tl.status,
        "ended_at": format_time(tl.end),
        "duration_ms": tl.end - tl.start if tl.end is not None and tl.start is not None else None,
    }


def production_changes(
    store: Store,
    *,
    accounts: Sequence[str],
    since: int | None = None,
    until: int | None = None,
    application: Sequence[str] = (),
) -> Report:
    """Every deploy, resize, enable/disable, destroy, rollback, manifest and job change in the accounts
    matching the patterns, with who started it, who approved it, the tickets and the result."""
    rows = production_change_rows(store, accounts=accounts, since=since, until=until, application=application)
    return Report(
        name="production-changes",
        title="Production changes",
        columns=PRODUCTION_COLUMNS,
        rows=rows,
        params={"accounts": list(account_patterns(accounts)), "application": list(application)}
        | _period(since, until),
        notes=[
            "One row per execution that started a change stage (deploy, resize, enable/disable, destroy, "
            "rollback, manifest, job) in an account matching the patterns during the period.",
            "approved: a manual judgment of the same execution answered 'continue' before its first "
            "production change; self_approved: the person who started it answered 'continue' before one.",
            "status RUNNING with no ended_at: no end event was received (still running, or echo dropped it).",
        ],
    )


SOD_COLUMNS: tuple[str, ...] = (
    "finding",
    "execution_id",
    "application",
    "description",
    "started_by",
    "approved_by",
    "tickets",
    "accounts",
    "changes",
    "first_change_at",
    "status",
)

FINDINGS: dict[str, str] = {
    "self_approved": "approved by the person who started it",
    "no_approval": "production change without a manual-judgment approval",
    "no_ticket": "production change without a change ticket",
}


def separation_of_duties(
    store: Store,
    *,
    accounts: Sequence[str],
    since: int | None = None,
    until: int | None = None,
    application: Sequence[str] = (),
) -> Report:
    """Production changes approved by their own starter, and those with no approval or no ticket."""
    rows: list[dict[str, Any]] = []
    for r in production_change_rows(
        store, accounts=accounts, since=since, until=until, application=application
    ):
        found = []
        if r["self_approved"]:
            found.append("self_approved")
        if not r["approved"]:
            found.append("no_approval")
        if not r["tickets"]:
            found.append("no_ticket")
        for finding in found:
            rows.append({"finding": finding, **{c: r[c] for c in SOD_COLUMNS if c != "finding"}})
    order = list(FINDINGS)
    rows.sort(key=lambda r: (order.index(r["finding"]), r["first_change_at"] or ""), reverse=False)
    counts = Counter(r["finding"] for r in rows)
    return Report(
        name="separation-of-duties",
        title="Separation of duties",
        columns=SOD_COLUMNS,
        rows=rows,
        params={"accounts": list(account_patterns(accounts)), "application": list(application)}
        | _period(since, until),
        notes=[f"{k}: {v}" for k, v in FINDINGS.items()],
        extra={"counts": {k: counts.get(k, 0) for k in FINDINGS}},
    )


# --------------------------------------------------------------------------------------------------
# infrastructure lineage
# --------------------------------------------------------------------------------------------------

LINEAGE_COLUMNS: tuple[str, ...] = (
    "server_group",
    "action",
    "time",
    "user",
    "execution_id",
    "description",
    "account",
    "region",
    "image",
    "capacity",
    "reason",
    "event",
)


def _event_of(store: Store, record_id: int) -> dict[str, Any] | None:
    """The echo event of a stored record, parsed from its raw bytes (``None`` when unreadable)."""
    from spintrail.decode import DecodeError, decode_body

    raw = store.raw(record_id)
    if raw is None:
        return None
    try:
        found = decode_body(raw)
    except DecodeError:
        return None
    return found[0].event if found else None


def _context(event: dict[str, Any] | None) -> dict[str, Any]:
    content = event.get("content") if isinstance(event, dict) else None
    ctx = content.get("context") if isinstance(content, dict) else None
    return ctx if isinstance(ctx, dict) else {}


def _targets(ctx: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(server group, region) pairs an operation's stage context says it acted on."""
    out: dict[str, str | None] = {}
    groups = ctx.get("deploy.server.groups")
    if isinstance(groups, dict):
        for region, names in groups.items():
            for n in names if isinstance(names, list) else [names]:
                if isinstance(n, str) and n:
                    out.setdefault(n, str(region))
    if not out:
        for key in ("serverGroupName", "asgName"):
            n = ctx.get(key)
            if isinstance(n, str) and n:
                region = ctx.get("region")
                out.setdefault(n, region if isinstance(region, str) else None)
    return list(out.items())


def _capacity(ctx: dict[str, Any]) -> str | None:
    cap = ctx.get("capacity")
    if isinstance(cap, dict) and cap:
        return "min {} / desired {} / max {}".format(cap.get("min"), cap.get("desired"), cap.get("max"))
    return None


def _image(ctx: dict[str, Any]) -> str | None:
    for key in ("amiName", "imageName", "image", "imageId"):
        v = ctx.get(key)
        if isinstance(v, str) and v:
            extra = ctx.get("imageId") if key == "amiName" else None
            return f"{v} ({extra})" if isinstance(extra, str) and extra else v
    return None


def _belongs(server_group: str, cluster: str) -> bool:
    rest = server_group[len(cluster) :]
    return server_group.startswith(cluster) and rest.startswith("-v") and rest[2:].isdigit()


def lineage(store: Store, *, server_group: str | None = None, cluster: str | None = None) -> Report:
    """The history of a cluster or one server group: each version, who created it, through which execution,
    with which image, and when it was resized, disabled, enabled and destroyed, by whom."""
    if not server_group and not cluster:
        raise ReportError("give a server group (e.g. checkout-prod-v042) or a cluster (e.g. checkout-prod)")
    filters = (
        Filters(server_group=(server_group,), stage_type=tuple(SERVER_GROUP_ACTIONS))
        if server_group
        else Filters(cluster=(str(cluster),), stage_type=tuple(SERVER_GROUP_ACTIONS))
    )

    def wanted(name: str) -> bool:
        return name == server_group if server_group else _belongs(name, str(cluster))

    # The event that shows a stage's operation done: its first successful clouddriver monitor task (the
    # operation finished even if a later wait fails), else the stage's successful completion.
    first_done: dict[tuple[str, str], AuditRecord] = {}
    for r in store.iter_search(filters):
        done = r.status == "SUCCEEDED" and (
            (r.type == "orca:task:complete" and (r.task or "").startswith("monitor"))
            or r.type == "orca:stage:complete"
        )
        if not done or not r.execution_id:
            continue
        key = (r.execution_id, r.stage_id or r.stage or "")
        prev = first_done.get(key)
        if prev is None or (r.time, r.id or 0) < (prev.time, prev.id or 0):
            first_done[key] = r
    rows: list[dict[str, Any]] = []
    for r in sorted(first_done.values(), key=lambda r: (r.time, r.id or 0)):
        assert r.id is not None
        ctx = _context(_event_of(store, r.id))
        targets = [(n, reg) for n, reg in _targets(ctx) if wanted(n)]
        if not targets:
            targets = [(n, None) for n in r.server_groups if wanted(n)] if ctx == {} else []
        action = SERVER_GROUP_ACTIONS.get(r.stage_type or "", r.stage_type or "")
        for name, region in targets:
            rows.append(
                {
                    "server_group": name,
                    "action": action,
                    "time": format_time(r.time),
                    "user": r.user,
                    "execution_id": r.execution_id,
                    "description": r.description,
                    "account": next(iter(r.accounts), None),
                    "region": region or (r.regions[0] if len(r.regions) == 1 else None),
                    "image": _image(ctx) if action == "created" else None,
                    "capacity": _capacity(ctx) if action in ("created", "resized") else None,
                    "reason": r.reason,
                    "event": r.id,
                }
            )
    versions: dict[str, dict[str, Any]] = {}
    for row in rows:
        v = versions.setdefault(
            row["server_group"],
            {
                "server_group": row["server_group"],
                "account": row["account"],
                "region": row["region"],
                "created_at": None,
                "created_by": None,
                "created_execution": None,
                "image": None,
                "state": "unknown",
                "history": 0,
            },
        )
        v["history"] += 1
        action = row["action"]
        if action == "created":
            v.update(
                created_at=row["time"],
                created_by=row["user"],
                created_execution=row["execution_id"],
                image=row["image"],
                state="enabled",
            )
        elif action in ("disabled", "enabled", "destroyed"):
            v["state"] = action
        for who in ("resized", "disabled", "enabled", "destroyed"):
            if action == who:
                v[f"{who}_by"] = row["user"]
                v[f"{who}_at"] = row["time"]
                v[f"{who}_execution"] = row["execution_id"]
    summary = sorted(versions.values(), key=lambda v: v["server_group"], reverse=True)
    return Report(
        name="lineage",
        title="Infrastructure lineage",
        columns=LINEAGE_COLUMNS,
        rows=rows,
        params={"server_group": server_group, "cluster": cluster},
        notes=[
            "An action counts when the clouddriver operation finished (its monitor task succeeded), "
            "even if a later step of the stage failed; the targets are the server groups the stage's own "
            "context names.",
        ],
        extra={"versions": summary},
    )


# --------------------------------------------------------------------------------------------------
# pipeline configuration history
# --------------------------------------------------------------------------------------------------

CONFIG_COLUMNS: tuple[str, ...] = (
    "time",
    "application",
    "kind",
    "name",
    "config_id",
    "operation",
    "user",
    "status",
    "execution_id",
    "version",
    "changed",
    "diff",
    "event",
)


def decode_pipeline(value: Any) -> dict[str, Any] | None:
    """A savePipeline stage's ``pipeline`` context value: base64 JSON (Deck), or a JSON object."""
    if isinstance(value, dict):
        return value
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None
    try:
        parsed = json.loads(base64.b64decode(text + "=" * (-len(text) % 4), validate=False))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    return parsed if isinstance(parsed, dict) else None


def pretty_config(config: dict[str, Any] | None) -> list[str]:
    """A configuration as sorted, indented JSON lines (without keys that change on every save)."""
    if config is None:
        return []
    clean = {k: v for k, v in config.items() if k not in CONFIG_NOISE_KEYS}
    return json.dumps(clean, indent=2, sort_keys=True, ensure_ascii=False).splitlines()


def config_diff(before: dict[str, Any] | None, after: dict[str, Any] | None, *, label: str) -> str:
    """A unified diff of two configurations' pretty JSON ("" when nothing but noise changed)."""
    lines = difflib.unified_diff(
        pretty_config(before),
        pretty_config(after),
        fromfile=f"{label} (before)",
        tofile=f"{label} (after)",
        lineterm="",
        n=2,
    )
    return "\n".join(lines)


def pipeline_history(
    store: Store,
    *,
    application: Sequence[str] = (),
    pipeline: str | None = None,
    since: int | None = None,
    until: int | None = None,
) -> Report:
    """Every save, update and delete of a pipeline and every application update, by whom, with a readable
    diff against the previous version seen."""
    filters = Filters(
        stage_type=CONFIG_STAGE_TYPES,
        type=_STAGE_END_TYPES,
        application=tuple(application),
        since=since,
        until=until,
    )
    records = sorted(store.iter_search(filters), key=lambda r: (r.time, r.id or 0))
    last: dict[str, dict[str, Any] | None] = {}
    versions: Counter[str] = Counter()
    rows: list[dict[str, Any]] = []
    for r in records:
        assert r.id is not None
        ctx = _context(_event_of(store, r.id))
        op = r.stage_type or ""
        if op == "updateApplication":
            kind = "application"
            after = ctx.get("newState") if isinstance(ctx.get("newState"), dict) else None
            if after is None and isinstance(ctx.get("application"), dict):
                after = ctx["application"]
            before = ctx.get("previousState") if isinstance(ctx.get("previousState"), dict) else None
            name = (after or {}).get("name") or r.application
            config_id = str(name or "")
            key = f"application:{str(name).lower()}"
            if before is None:
                before = last.get(key)
        else:
            kind = "pipeline"
            after = decode_pipeline(ctx.get("pipeline"))
            name = (after or {}).get("name") or ctx.get("pipelineName")
            config_id = str((after or {}).get("id") or "")
            key = f"pipeline:{config_id or f'{r.application}/{name}'}"
            before = last.get(key)
            if op == "deletePipeline":
                before, after = (before if before is not None else after), None
        if pipeline and pipeline not in (name, config_id):
            continue
        ok = r.status == "SUCCEEDED"
        label = f"{kind} {name}"
        diff = config_diff(before, after, label=label) if ok and (before or after) else ""
        if ok:
            last[key] = after
            versions[key] += 1
        rows.append(
            {
                "time": format_time(r.time),
                "application": r.application,
                "kind": kind,
                "name": name,
                "config_id": config_id or None,
                "operation": op,
                "user": r.user,
                "status": r.status,
                "execution_id": r.execution_id,
                "version": versions[key] if ok else None,
                "changed": bool(diff),
                "diff": diff,
                "event": r.id,
            }
        )
    rows.reverse()
    return Report(
        name="pipeline-history",
        title="Pipeline configuration history",
        columns=CONFIG_COLUMNS,
        rows=rows,
        params={"application": list(application), "pipeline": pipeline} | _period(since, until),
        notes=[
            "Newest first. The diff compares each saved configuration with the previous one seen for the "
            "same pipeline (or the application's previous state); the first version seen is shown whole.",
            "Keys that change on every save (" + ", ".join(sorted(CONFIG_NOISE_KEYS)) + ") are left out.",
        ],
    )


# --------------------------------------------------------------------------------------------------
# unfinished executions
# --------------------------------------------------------------------------------------------------

UNFINISHED_COLUMNS: tuple[str, ...] = (
    "execution_id",
    "application",
    "execution_type",
    "description",
    "started_by",
    "started_at",
    "last_event_at",
    "last_event",
    "last_status",
    "events",
    "silent_ms",
)


def unfinished(
    store: Store,
    *,
    since: int | None = None,
    until: int | None = None,
    application: Sequence[str] = (),
    now_ms: int | None = None,
) -> Report:
    """Executions whose start was received in the period but whose end never was: still running, or echo
    dropped the final event. Shows the last thing known and how long it has been silent."""
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    starts = {
        eid
        for (eid,) in store.select(
            Filters(type=RUN_START_TYPES, application=tuple(application), since=since, until=until),
            ["execution_id"],
        )
        if eid
    }
    ended: set[str] = set()
    ids = sorted(starts)
    for chunk in _chunks(ids):
        for (eid,) in store.select(Filters(type=RUN_END_TYPES, execution_id=chunk), ["execution_id"]):
            ended.add(eid)
    rows: list[dict[str, Any]] = []
    for eid in ids:
        if eid in ended:
            continue
        records = store.execution(eid)
        if not records:
            continue
        tl = build_timeline(eid, records)
        last = tl.records[-1]
        rows.append(
            {
                "execution_id": eid,
                "application": tl.application,
                "execution_type": tl.execution_type,
                "description": tl.description,
                "started_by": tl.user,
                "started_at": format_time(tl.start),
                "last_event_at": format_time(last.time),
                "last_event": f"{last.type}: {last.description or ''}".strip(": "),
                "last_status": last.status,
                "events": len(records),
                "silent_ms": max(0, now - last.time),
            }
        )
    rows.sort(key=lambda r: r["started_at"] or "", reverse=True)
    return Report(
        name="unfinished",
        title="Unfinished executions",
        columns=UNFINISHED_COLUMNS,
        rows=rows,
        params={"application": list(application)} | _period(since, until),
        notes=[
            "Executions whose starting event was received in the period and whose complete/failed event "
            "never was. A long silence means echo most likely dropped the end (echo does not retry by "
            "default); a short one is usually a run still in progress.",
        ],
    )


# --------------------------------------------------------------------------------------------------
# dashboard
# --------------------------------------------------------------------------------------------------

STATUS_GROUPS: tuple[str, ...] = ("succeeded", "failed", "canceled", "no end received")


def status_group(status: str | None, ended: bool) -> str:
    if not ended:
        return "no end received"
    s = (status or "").upper()
    if s == "SUCCEEDED":
        return "succeeded"
    if s == "CANCELED":
        return "canceled"
    return "failed"


@dataclass(slots=True)
class Deployment:
    execution_id: str
    first_deploy: int
    accounts: set[str] = field(default_factory=set)
    application: str | None = None
    user: str | None = None
    start: int | None = None
    end: int | None = None
    status: str | None = None


@dataclass(slots=True)
class Dashboard:
    """Numbers for the dashboard page (and ``GET /api/v1/dashboard``)."""

    since: int
    until: int
    days: list[str]
    deployments: int = 0
    by_day: dict[str, list[int]] = field(default_factory=dict)  # status group -> count per day
    status_totals: dict[str, int] = field(default_factory=dict)
    failure_rate: float | None = None
    top_applications: list[tuple[str, int]] = field(default_factory=list)
    top_accounts: list[tuple[str, int]] = field(default_factory=list)
    top_users: list[tuple[str, int]] = field(default_factory=list)
    judgments: dict[str, int] = field(default_factory=dict)
    judgments_by_day: dict[str, list[int]] = field(default_factory=dict)
    top_approvers: list[tuple[str, int]] = field(default_factory=list)
    change_kinds: list[str] = field(default_factory=list)
    change_volume: list[tuple[str, dict[str, int]]] = field(default_factory=list)
    mean_duration_ms: int | None = None
    median_duration_ms: int | None = None
    duration_by_day: list[int | None] = field(default_factory=list)
    events_by_day: list[int] = field(default_factory=list)

    def to_api(self) -> dict[str, Any]:
        return {
            "since": format_time(self.since),
            "until": format_time(self.until),
            "days": self.days,
            "deployments": self.deployments,
            "deployments_by_day": self.by_day,
            "deployment_status": self.status_totals,
            "failure_rate": self.failure_rate,
            "top_applications": [{"application": k, "deployments": v} for k, v in self.top_applications],
            "top_accounts": [{"account": k, "deployments": v} for k, v in self.top_accounts],
            "top_users": [{"user": k, "deployments": v} for k, v in self.top_users],
            "judgments": self.judgments,
            "judgments_by_day": self.judgments_by_day,
            "top_approvers": [{"user": k, "approvals": v} for k, v in self.top_approvers],
            "change_volume": [{"account": a, **kinds} for a, kinds in self.change_volume],
            "mean_deployment_duration_ms": self.mean_duration_ms,
            "median_deployment_duration_ms": self.median_duration_ms,
            "mean_deployment_duration_ms_by_day": self.duration_by_day,
            "events_by_day": self.events_by_day,
        }


def day_range(since: int, until: int) -> list[str]:
    """Every UTC day from ``since`` to ``until`` (exclusive), ``YYYY-MM-DD``."""
    days: list[str] = []
    t = since - since % DAY_MS
    while t < until:
        days.append(utc_day(t))
        t += DAY_MS
    return days


def dashboard(
    store: Store,
    *,
    since: int,
    until: int | None = None,
    application: Sequence[str] = (),
    top: int = 8,
) -> Dashboard:
    """Deployments per day by outcome, top applications/accounts/users, failure rate, approvals, change
    volume per account and deployment duration, over a period.

    A *deployment* is an execution that started a deploy stage (deploy, createServerGroup,
    cloneServerGroup, deployManifest) in the period, counted on the day of its first one; its outcome and
    duration are those of the execution.
    """
    end = until if until is not None else int(time.time() * 1000)
    apps = tuple(application)
    days = day_range(since, end)
    index = {d: i for i, d in enumerate(days)}
    dash = Dashboard(since=since, until=end, days=days)

    # Every change stage started in the period, read once: the deploy stages among them make the
    # deployments, all of them the change volume per account (further below).
    deploy_types = frozenset(DEPLOY_STAGE_TYPES)
    deps: dict[str, Deployment] = {}
    # Change volume per account: one change per execution, account and kind.
    changes: set[tuple[str, str, str]] = set()
    for eid, stage_type, t, accts in store.select(
        Filters(
            type=("orca:stage:starting",),
            stage_type=CHANGE_STAGE_TYPES,
            application=apps,
            since=since,
            until=until,
        ),
        ["execution_id", "stage_type", "time", "accounts"],
    ):
        kind = CHANGE_KINDS.get(stage_type or "", "other")
        for a in accts:
            changes.add((eid or "", a, kind))
        if not eid or stage_type not in deploy_types:
            continue
        d = deps.get(eid)
        if d is None:
            d = deps[eid] = Deployment(eid, t)
        d.first_deploy = min(d.first_deploy, t)
        d.accounts.update(accts)
    ids = sorted(deps)
    for chunk in _chunks(ids):
        rows = store.select(
            Filters(type=RUN_TYPES, execution_id=chunk),
            ["execution_id", "type", "time", "status", "user", "application"],
        )
        for eid, etype, t, status, user, app in rows:
            d = deps[eid]
            d.application = d.application or app
            if etype in RUN_START_TYPES:
                d.start = t if d.start is None else min(d.start, t)
                d.user = user or d.user
            elif etype in RUN_END_TYPES and (d.end is None or t > d.end):
                d.end, d.status = t, status
            if d.user is None and user:
                d.user = user
    dash.deployments = len(deps)
    dash.by_day = {g: [0] * len(days) for g in STATUS_GROUPS}
    totals: Counter[str] = Counter()
    apps_c: Counter[str] = Counter()
    accts_c: Counter[str] = Counter()
    users_c: Counter[str] = Counter()
    durations: list[int] = []
    by_day_durations: dict[int, list[int]] = defaultdict(list)
    for d in deps.values():
        g = status_group(d.status, d.end is not None)
        totals[g] += 1
        i = index.get(day_name(d.first_deploy // 86_400_000))  # cached per day
        if i is not None:
            dash.by_day[g][i] += 1
        if d.application:
            apps_c[d.application] += 1
        for a in d.accounts:
            accts_c[a] += 1
        if d.user:
            users_c[d.user] += 1
        if g == "succeeded" and d.start is not None and d.end is not None:
            durations.append(d.end - d.start)
            if i is not None:
                by_day_durations[i].append(d.end - d.start)
    dash.status_totals = {g: totals.get(g, 0) for g in STATUS_GROUPS}
    finished = totals["succeeded"] + totals["failed"]
    dash.failure_rate = round(totals["failed"] / finished, 4) if finished else None
    dash.top_applications = apps_c.most_common(top)
    dash.top_accounts = accts_c.most_common(top)
    dash.top_users = users_c.most_common(top)
    if durations:
        dash.mean_duration_ms = int(statistics.fmean(durations))
        dash.median_duration_ms = int(statistics.median(durations))
    dash.duration_by_day = [
        int(statistics.fmean(by_day_durations[i])) if by_day_durations.get(i) else None
        for i in range(len(days))
    ]

    # Manual judgments: one decision per stage.
    seen: dict[tuple[str, str], tuple[int, str, str | None]] = {}
    for eid, sid, t, status, user in store.select(
        Filters(
            stage_type=("manualJudgment",),
            type=_STAGE_END_TYPES,
            application=apps,
            since=since,
            until=until,
        ),
        ["execution_id", "stage_id", "time", "status", "user"],
    ):
        s = (status or "").upper()
        decision = "continue" if s in _CONTINUE else "stop" if s in _STOP else None
        if decision is None:
            continue
        key = (eid or "", sid or "")
        if key not in seen or t < seen[key][0]:
            seen[key] = (t, decision, user)
    dash.judgments = {"continue": 0, "stop": 0}
    dash.judgments_by_day = {"continue": [0] * len(days), "stop": [0] * len(days)}
    approvers: Counter[str] = Counter()
    for t, decision, user in seen.values():
        dash.judgments[decision] += 1
        i = index.get(day_name(t // 86_400_000))
        if i is not None:
            dash.judgments_by_day[decision][i] += 1
        if decision == "continue" and user:
            approvers[user] += 1
    dash.top_approvers = approvers.most_common(top)

    volume: dict[str, Counter[str]] = defaultdict(Counter)
    kinds: Counter[str] = Counter()
    for _eid, a, kind in changes:
        volume[a][kind] += 1
        kinds[kind] += 1
    dash.change_kinds = [k for k, _n in kinds.most_common()]
    dash.change_volume = sorted(
        ((a, dict(c)) for a, c in volume.items()), key=lambda item: (-sum(item[1].values()), item[0])
    )

    per_day = dict(
        (day, n) for (day,), n in store.count_by(Filters(application=apps, since=since, until=until), ["day"])
    )
    dash.events_by_day = [per_day.get(d, 0) for d in days]
    return dash


def timeline_of(store: Store, execution_id: str) -> Timeline | None:
    """An execution's timeline, or ``None`` when nothing of it is stored."""
    records = store.execution(execution_id)
    return build_timeline(execution_id, records) if records else None


# --------------------------------------------------------------------------------------------------
# one entry point for page, API and CLI
# --------------------------------------------------------------------------------------------------

#: How far back each report looks when no ``since`` is given ("" = all time).
REPORT_DEFAULT_SINCE: dict[str, str] = {
    "production-changes": "30d",
    "separation-of-duties": "30d",
    "unfinished": "30d",
    "pipeline-history": "",
    "lineage": "",
}
#: Columns shown in tables (CLI ``--format table`` and pages) for each report.
REPORT_TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "production-changes": (
        "first_change_at",
        "application",
        "description",
        "changes",
        "accounts",
        "started_by",
        "approved_by",
        "tickets",
        "status",
    ),
    "separation-of-duties": (
        "finding",
        "first_change_at",
        "application",
        "description",
        "started_by",
        "approved_by",
        "tickets",
        "accounts",
        "status",
    ),
    "lineage": ("time", "server_group", "action", "user", "execution_id", "image", "capacity", "reason"),
    "pipeline-history": ("time", "application", "kind", "name", "operation", "user", "version", "changed"),
    "unfinished": (
        "started_at",
        "application",
        "description",
        "started_by",
        "last_event_at",
        "last_event",
        "events",
        "silent_ms",
    ),
}


def run_report(
    store: Store,
    name: str,
    *,
    accounts: Sequence[str] = (),
    since: int | None = None,
    until: int | None = None,
    application: Sequence[str] = (),
    server_group: str | None = None,
    cluster: str | None = None,
    pipeline: str | None = None,
) -> Report:
    """One report by its name (``REPORTS``) with already-parsed parameters."""
    if name == "production-changes":
        return production_changes(store, accounts=accounts, since=since, until=until, application=application)
    if name == "separation-of-duties":
        return separation_of_duties(
            store, accounts=accounts, since=since, until=until, application=application
        )
    if name == "lineage":
        return lineage(store, server_group=server_group, cluster=cluster)
    if name == "pipeline-history":
        return pipeline_history(store, application=application, pipeline=pipeline, since=since, until=until)
    if name == "unfinished":
        return unfinished(store, since=since, until=until, application=application)
    raise ReportError(f"no report named {name!r}: use one of {', '.join(REPORTS)}")
