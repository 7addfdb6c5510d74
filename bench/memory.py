"""Peak memory (RSS) of the server: receiving one ~10 MB event, and exporting every stored row.

The server's peak RSS is reset (``/proc/<pid>/clear_refs``) right before the operation, so the figure is
what the operation added on top of the warmed-up server.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import procs
from bench.queries import export, server_paths

JSON = {"Content-Type": "application/json"}


@dataclass
class MemResult:
    key: str
    title: str
    before: int
    peak: int
    size: int  # bytes of the event, or rows exported
    seconds: float
    note: str = ""

    @property
    def added(self) -> int:
        return max(0, self.peak - self.before)


def big_event(database: str, workdir: Path, body: bytes) -> MemResult:
    """Peak RSS added while one large event is received, stored and acknowledged."""
    from bench.events import dumps, small_events

    with (
        procs.spintrail_server(database, workdir) as server,
        httpx.Client(base_url=server.url, timeout=300) as c,
    ):
        for ev in small_events(50, seed=9):
            c.post("/api/v1/events", content=dumps(ev), headers=JSON)
        time.sleep(0.5)
        before, _ = procs.rss(server.pid)
        ok = procs.reset_peak_rss(server.pid)
        t = time.perf_counter()
        resp = c.post("/api/v1/events", content=body, headers=JSON)
        seconds = time.perf_counter() - t
        _, peak = procs.rss(server.pid)
        note = "" if resp.status_code == 200 else f"HTTP {resp.status_code}: {resp.text[:200]}"
        if not ok:
            note += " (peak RSS could not be reset: the figure includes start-up)"
    title = f"receive one {len(body) / 1e6:.1f} MB event"
    return MemResult("event_10mb", title, before, peak, len(body), seconds, note)


def export_all(database: str, workdir: Path, rows: int) -> MemResult:
    """Peak RSS added while a client exports ``rows`` records."""
    with (
        procs.spintrail_server(database, workdir) as server,
        httpx.Client(base_url=server.url, timeout=3600) as c,
    ):
        streamed = "/api/v1/export" in server_paths(c)
        export(c, 1000, streamed=streamed)
        time.sleep(0.5)
        before, _ = procs.rss(server.pid)
        ok = procs.reset_peak_rss(server.pid)
        t = time.perf_counter()
        got = export(c, rows, streamed=streamed)
        seconds = time.perf_counter() - t
        _, peak = procs.rss(server.pid)
    how = "streamed from /api/v1/export" if streamed else "keyset pages of 1000"
    note = "" if ok else "peak RSS could not be reset: the figure includes start-up"
    return MemResult("export", f"export {got:,} rows ({how})", before, peak, got, seconds, note)
