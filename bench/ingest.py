"""Ingest throughput and latency over real HTTP with wrk, against the HTTP and storage ceilings.

Each scenario POSTs pre-generated, distinct events (no body is sent twice unless the pool wraps, which the
report flags) with ``connections`` concurrent connections from one wrk thread on the load core, to a
server pinned to the server core. Every figure is measured in the same run as its baselines:

- HTTP ceiling: a bare Starlette endpoint reading the body and answering 200 (same uvicorn settings);
- storage ceiling: a plain loop inserting the same event bytes into the same backend with the same
  durability, one commit per event; and the same loop committing as many events at once as the clients
  can have in flight (connections x events per request, at most the store's ``commit_batch_max``), the
  most any group commit could reach.

A run first probes for 2 s (which also warms the server up), then measures for up to ``seconds`` from
the next unused body, shortened when the pool would otherwise run out.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import procs
from bench.backends import Backend

COMMIT_BATCH_MAX = 2000  # spintrail's default commit_batch_max


@dataclass
class Scenario:
    """One kind of traffic: a pool of request bodies and the single events they hold."""

    key: str
    title: str
    pool: Path
    requests: int
    per_request: int
    event_bytes: float  # mean bytes of one event
    rows: Path  # the same events one per line (for the storage ceiling)


def connections_for(s: Scenario, connections: int) -> int:
    """Connections for a scenario: batched bodies are kept within half the server's default in-flight
    byte budget (``max_inflight_bytes``), which would otherwise answer part of them 503 by design."""
    if s.per_request == 1:
        return connections
    from spintrail.settings import Settings

    budget = Settings.model_fields["max_inflight_bytes"].default
    return max(1, min(connections, int(budget / 2 // (s.event_bytes * s.per_request))))


@dataclass
class Run:
    """One measured wrk run."""

    events_per_s: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    seconds: float
    requests: int
    non_200: int
    errors: int
    duplicate_answers: int
    wrapped: int
    first_bad: str = ""
    short: bool = False  # the pool ran out after the warm-up: this is the warm-up run
    cpu_seconds: float = 0.0  # server CPU (all threads) during the run

    @property
    def cpu_us_per_event(self) -> float:
        events = self.events_per_s * self.seconds  # the events stored (refused requests do not count)
        return self.cpu_seconds / max(events, 1) * 1e6

    @property
    def events_per_cpu_second(self) -> float:
        return 1e6 / self.cpu_us_per_event if self.cpu_us_per_event else 0.0

    @classmethod
    def of(cls, r: dict[str, Any], per_request: int) -> Run:
        # Only answers of 200 count: a 503 (over the in-flight budget) stored nothing.
        ok_rps = r["rps"] * (r["requests"] - r["non_200"]) / max(r["requests"], 1)
        return cls(
            events_per_s=ok_rps * per_request,
            requests_per_s=ok_rps,
            p50_ms=r["lat_p50_us"] / 1000,
            p99_ms=r["lat_p99_us"] / 1000,
            seconds=r["seconds"],
            requests=r["requests"],
            non_200=r["non_200"],
            errors=r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"],
            duplicate_answers=r["duplicate_answers"],
            wrapped=r["wrapped"],
            first_bad=r.get("first_bad", ""),
        )


@dataclass
class Result:
    """A scenario's figures: spintrail and both ceilings, from the same run."""

    scenario: Scenario
    connections: int
    spintrail: Run | None = None
    http_ceiling: Run | None = None
    storage_ceiling: float | None = None  # events/s of the plain loop, one commit per event
    storage_grouped: float | None = None  # events/s of the same loop committing storage_group at once
    storage_group: int = 0
    stored: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def http_fraction(self) -> float:
        """spintrail's events/s as a fraction of the bare HTTP endpoint's (same bodies, same run)."""
        if self.spintrail is None or self.http_ceiling is None or not self.http_ceiling.events_per_s:
            return 0.0
        return self.spintrail.events_per_s / self.http_ceiling.events_per_s


def _measure(
    server: procs.Server, s: Scenario, connections: int, seconds: float, probe_seconds: float
) -> Run:
    cpu = procs.cpu_seconds(server.pid)
    probe = procs.wrk(
        server.url, s.pool, start=0, count=s.requests, seconds=probe_seconds, connections=connections
    )
    probe_cpu = procs.cpu_seconds(server.pid) - cpu
    start = probe["requests"] + connections  # skip what was still in flight when the probe stopped
    left = s.requests - start
    if left <= connections * 2 or probe["wrapped"]:
        run = Run.of(probe, s.per_request)
        run.short = True
        run.cpu_seconds = probe_cpu
        return run
    rate = max(probe["rps"], 1.0)
    run_seconds = max(1.0, min(seconds, left / (rate * 1.5)))
    cpu = procs.cpu_seconds(server.pid)
    main = procs.wrk(
        server.url, s.pool, start=start, count=left, seconds=run_seconds, connections=connections
    )
    run = Run.of(main, s.per_request)
    run.cpu_seconds = procs.cpu_seconds(server.pid) - cpu
    return run


def _stored_events(database: str) -> int:
    from spintrail.store import open_store

    store = open_store(database)
    try:
        return store.stats().events
    finally:
        store.close()


def run_scenario(
    s: Scenario,
    backend: Backend,
    workdir: Path,
    *,
    connections: int,
    seconds: float,
    probe_seconds: float = 2.0,
) -> Result:
    """Measure the HTTP ceiling, spintrail, then the storage ceiling with as many events as spintrail took."""
    res = Result(s, connections)
    with procs.ceiling_server(workdir) as server:
        res.http_ceiling = _measure(server, s, connections, seconds, probe_seconds)
    database = backend.fresh(s.key)
    try:
        with procs.spintrail_server(database, workdir) as server:
            res.spintrail = _measure(server, s, connections, seconds, probe_seconds)
        res.stored = _stored_events(database)
    finally:
        backend.drop(database)
    run = res.spintrail
    if run.non_200 or run.errors:
        res.notes.append(f"{run.non_200} non-200 answers and {run.errors} socket errors: {run.first_bad}")
    if run.short:
        res.notes.append("the pool ran out during the warm-up: the figures are the warm-up's")
    if run.wrapped or run.duplicate_answers:
        res.notes.append(f"the pool ran out: {run.duplicate_answers} requests repeated stored events")
    count = max(1000, min(int(run.requests * s.per_request), s.requests * s.per_request, 20_000))
    res.storage_group = min(connections * s.per_request, COMMIT_BATCH_MAX)
    res.storage_ceiling = _storage_ceiling(backend, s, count, 1)
    res.storage_grouped = _storage_ceiling(backend, s, count, res.storage_group)
    return res


def _storage_ceiling(backend: Backend, s: Scenario, count: int, group: int) -> float:
    """Events/s of the plain insert loop (a process on the server core) on a fresh database."""
    database = backend.fresh(s.key + "-ceiling")
    try:
        cmd = procs.pinned(
            [
                sys.executable,
                str(Path(__file__).with_name("ceiling_storage.py")),
                "--database",
                database,
                "--rows",
                str(s.rows),
                "--count",
                str(count),
                "--group",
                str(group),
            ],
            procs.SERVER_CORE,
        )
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=3600)
        return float(json.loads(out.stdout.strip().splitlines()[-1])["events_per_s"])
    finally:
        backend.drop(database)
