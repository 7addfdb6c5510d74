"""One backfill run: read executions from Gate, turn them into echo events, store those not yet stored.

What is read:

- ``--execution ID``: those executions (``/pipelines/{id}``, orchestrations from ``/tasks/{id}``);
- ``--repair-unfinished``: exactly the executions the unfinished report lists (their final events were
  never received), read one by one;
- otherwise, for every application (``/applications`` or the ones given): recent pipeline executions
  (``/applications/{app}/pipelines``), older ones page by page (``/applications/{app}/executions/search``
  bounded by trigger time), and ad-hoc orchestrations page by page (``/applications/{app}/tasks``), kept
  when they started within ``since``/``until``.

Every event goes through the same ingest as a live one (redaction, normalize, the tamper-evident log,
forwarding), with the raw bytes of the Gate object it came from and a provenance saying which run fetched
it from where. Events already stored are duplicates: backfilled before (same id), delivered live by echo
(same natural key), including live events stored before natural keys existed (found from their raw bytes).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spintrail.backfill.gate import GateClient, GateError, GateNotFound
from spintrail.backfill.state import RunState, load_or_start, signature_of
from spintrail.backfill.synthesize import BackfilledEvent, raw_of, synthesize
from spintrail.decode import IncomingEvent
from spintrail.integrity import IntegrityLog
from spintrail.normalize import natural_key
from spintrail.record import format_time
from spintrail.settings import Settings
from spintrail.store import PreparedEvent, Store

__all__ = ["BackfillProgress", "BackfillRequest", "BackfillResult", "run_backfill"]

log = logging.getLogger(__name__)

#: Events appended in one commit.
_BATCH = 500


@dataclass(frozen=True, slots=True)
class BackfillRequest:
    """What to backfill. Times are epoch milliseconds; empty ``applications``: every application."""

    applications: tuple[str, ...] = ()
    since: int | None = None
    until: int | None = None
    executions: tuple[str, ...] = ()
    repair_unfinished: bool = False
    dry_run: bool = False
    instance: str | None = None
    page_size: int = 100
    recent_limit: int = 1000


@dataclass(slots=True)
class BackfillProgress:
    """Where a run is, for a progress bar."""

    phase: str
    applications_total: int = 0
    applications_done: int = 0
    executions: int = 0
    events: int = 0
    stored: int = 0
    duplicates: int = 0
    current: str = ""


@dataclass(slots=True)
class BackfillResult:
    """The outcome of a run (also what ``spintrail backfill`` prints)."""

    run_id: str
    gate: str
    dry_run: bool
    resumed: bool
    applications: int = 0
    executions: int = 0
    events: int = 0
    stored: int = 0
    duplicates: int = 0
    not_found: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def to_api(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "gate": self.gate,
            "dry_run": self.dry_run,
            "resumed": self.resumed,
            "applications": self.applications,
            "executions": self.executions,
            "events": self.events,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "not_found": len(self.not_found),
            "failed": len(self.failed),
        }


def _in_window(execution: dict[str, Any], since: int | None, until: int | None) -> bool:
    t = execution.get("startTime") or execution.get("buildTime")
    if not isinstance(t, int) or isinstance(t, bool):
        return since is None
    return (since is None or t >= since) and (until is None or t <= until)


def _parse_event(raw: bytes | None) -> dict[str, Any] | None:
    """The echo event kept as ``raw`` (plain or flattened), ``None`` when it is not one."""
    if not raw:
        return None
    try:
        event = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(event, dict):
        return None
    for part in ("details", "content"):
        if isinstance(event.get(part), str):
            try:
                event[part] = json.loads(event[part])
            except ValueError:
                return None
    return event


class _Runner:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        client: GateClient,
        request: BackfillRequest,
        state: RunState,
        state_path: Path,
        on_progress: Callable[[BackfillProgress], None] | None,
    ) -> None:
        from spintrail.ingest import Ingestor

        self.store = store
        self.client = client
        self.request = request
        self.state = state
        self.state_path = state_path
        self.on_progress = on_progress
        self.ingestor = Ingestor(settings, store)
        self.instance = request.instance or settings.default_instance
        self.progress = BackfillProgress(
            phase="starting",
            executions=state.executions,
            events=state.events,
            stored=state.stored,
            duplicates=state.duplicates,
        )
        self.result = BackfillResult(
            run_id=state.run_id, gate=client.url, dry_run=request.dry_run, resumed=state.resumed > 0
        )
        self.provenance = json.dumps(
            {
                "provenance": "gate",
                "gate": client.url,
                "run": state.run_id,
                "at": format_time(state.started_at),
            },
            separators=(",", ":"),
        )
        self.batch: list[PreparedEvent] = []
        self.batch_executions: list[str] = []
        self.done = set(state.executions_done)

    # -- progress ----------------------------------------------------------------------------------

    def tell(self, **changes: Any) -> None:
        for k, v in changes.items():
            setattr(self.progress, k, v)
        if self.on_progress is not None:
            self.on_progress(self.progress)

    def save(self) -> None:
        if not self.request.dry_run:
            self.state.save(self.state_path)

    # -- storing -----------------------------------------------------------------------------------

    def delivered(self, execution_id: str) -> tuple[set[str], set[tuple[str | None, str | None]]]:
        """Natural keys of the execution's events already stored without one (before natural keys were
        recorded), from their raw bytes; ``(type, stage id)`` of those whose bytes were not kept."""
        records = [r for r in self.store.execution(execution_id) if r.type and r.type.startswith("orca:")]
        if not records:
            return set(), set()
        ids = [r.id for r in records if r.id is not None]
        backfilled = set(self.store.provenance(ids))
        keys: set[str] = set()
        loose: set[tuple[str | None, str | None]] = set()
        for r in records:
            if r.id is None or r.id in backfilled:
                continue
            event = _parse_event(self.store.raw(r.id))
            key = natural_key(event) if event is not None else None
            if key is not None:
                keys.add(key)
            elif event is None:
                loose.add((r.type, r.stage_id))
        return keys, loose

    def take(self, execution: dict[str, Any]) -> None:
        """Synthesize one execution's events and queue those not already delivered."""
        execution_id = execution.get("id")
        if not isinstance(execution_id, str) or execution_id in self.done:
            return
        events: list[BackfilledEvent] = synthesize(execution)
        keys, loose = self.delivered(execution_id)
        raw = raw_of(execution)
        now = int(time.time() * 1000)
        for ev in events:
            details = ev.event["details"]
            stage_id = ev.event["content"].get("stageId")
            if (ev.natural_key is not None and ev.natural_key in keys) or (
                details["type"],
                stage_id,
            ) in loose:
                self.result.duplicates += 1
                self.state.duplicates += 1
                continue
            if self.request.dry_run:
                if self.store.get_by_event_id(ev.event["eventId"]) is not None:
                    self.result.duplicates += 1
                else:
                    self.result.stored += 1
                continue
            item = self.ingestor.prepare(
                IncomingEvent(event=ev.event, raw=raw), received_at=now, instance=self.instance
            )
            item.natural_key = ev.natural_key
            item.provenance = self.provenance
            self.batch.append(item)
        self.result.executions += 1
        self.result.events += len(events)
        self.state.executions += 1
        self.state.events += len(events)
        self.batch_executions.append(execution_id)
        if len(self.batch) >= _BATCH or len(self.batch_executions) >= 50:
            self.flush()
        self.tell(
            executions=self.state.executions,
            events=self.state.events,
            stored=self.state.stored if not self.request.dry_run else self.result.stored,
            duplicates=self.state.duplicates if not self.request.dry_run else self.result.duplicates,
            current=execution_id,
        )

    def flush(self) -> None:
        """Append what is queued, then remember its executions as done."""
        if self.batch:
            results = self.store.append(self.batch)
            dups = sum(1 for r in results if r.duplicate)
            self.result.duplicates += dups
            self.result.stored += len(results) - dups
            self.state.duplicates += dups
            self.state.stored += len(results) - dups
            self.batch.clear()
        self.state.executions_done.extend(self.batch_executions)
        self.done.update(self.batch_executions)
        self.batch_executions.clear()
        self.save()

    # -- what to read ------------------------------------------------------------------------------

    def one(self, execution_id: str) -> None:
        if execution_id in self.done:
            return
        try:
            execution = self.client.execution(execution_id)
        except GateNotFound:
            self.result.not_found.append(execution_id)
            log.warning("backfill: gate no longer has execution %s", execution_id)
            return
        self.take(execution)

    def application(self, app: str) -> None:
        req = self.request
        seen: set[str] = set()

        def fresh(executions: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
            for e in executions:
                eid = e.get("id")
                if isinstance(eid, str) and eid not in seen and _in_window(e, req.since, req.until):
                    seen.add(eid)
                    yield e

        for e in fresh(self.client.recent_pipelines(app, limit=req.recent_limit)):
            self.take(e)
        for e in fresh(self.client.search_pipelines(app, start=req.since, end=req.until, size=req.page_size)):
            self.take(e)
        for e in fresh(self.client.orchestrations(app, limit=req.page_size)):
            self.take(e)

    def run(self) -> BackfillResult:
        req = self.request
        if req.executions or req.repair_unfinished:
            ids = list(dict.fromkeys(req.executions))
            if req.repair_unfinished:
                from spintrail.report import unfinished

                report = unfinished(
                    self.store, since=req.since, until=req.until, application=req.applications
                )
                ids += [row["execution_id"] for row in report.rows if row["execution_id"] not in ids]
            self.tell(phase="executions", applications_total=0)
            for eid in ids:
                self.one(eid)
            self.flush()
        else:
            apps = list(req.applications) or self.client.applications()
            self.result.applications = len(apps)
            finished = set(self.state.applications_done)
            self.tell(phase="applications", applications_total=len(apps), applications_done=len(finished))
            for app in apps:
                if app in finished:
                    continue
                self.tell(current=app)
                try:
                    self.application(app)
                except GateNotFound as exc:
                    self.result.failed.append(f"{app}: {exc}")
                    log.warning("backfill: application %s: %s", app, exc)
                self.flush()
                self.state.applications_done.append(app)
                finished.add(app)
                self.save()
                self.tell(applications_done=len(finished))
        self.state.finished_at = int(time.time() * 1000)
        self.save()
        self.tell(
            phase="done",
            stored=self.state.stored if not req.dry_run else self.result.stored,
            duplicates=self.state.duplicates if not req.dry_run else self.result.duplicates,
        )
        return self.result


def run_backfill(
    settings: Settings,
    store: Store,
    client: GateClient,
    request: BackfillRequest,
    *,
    state_path: Path,
    on_progress: Callable[[BackfillProgress], None] | None = None,
) -> BackfillResult:
    """Backfill what ``request`` asks from ``client`` into ``store``; resumable through ``state_path``.

    ``GateError`` (unavailable, authentication) stops the run: what was stored stays stored and the same
    command resumes it. A dry run reads Gate and counts what would be stored, and writes nothing.
    """
    signature = signature_of(
        gate=client.url,
        applications=sorted(request.applications),
        since=request.since,
        until=request.until,
        executions=sorted(request.executions),
        repair=request.repair_unfinished,
        instance=request.instance,
    )
    state: RunState = load_or_start(state_path, signature)
    runner = _Runner(settings, store, client, request, state, state_path, on_progress)
    try:
        result = runner.run()
    except GateError:
        runner.flush()
        raise
    if not request.dry_run:
        record_run(runner.ingestor.trust.log, result)
    return result


def record_run(log_: IntegrityLog, result: BackfillResult) -> None:
    """Record the run itself in the tamper-evident log as a ``backfill`` administrative action (its id, Gate
    URL and counts), so an auditor sees which records came from Gate and when."""
    index = log_.record_admin_action("backfill", result.to_api())
    log.info(
        "backfill run %s from %s (log leaf %d): %s",
        result.run_id,
        result.gate,
        index,
        json.dumps(result.to_api()),
    )
