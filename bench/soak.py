"""Soak: a steady, realistic load for minutes or hours, measuring the server's memory and latency over time.

    python bench/soak.py --minutes 10 --report docs/soak.md

Starts ``spintrail serve`` on a fresh database (or targets ``--url``), sends events at ``--rate`` events a
second from ``--clients`` connections, one event per request like echo, and every ``--interval`` seconds
records the server's RSS, threads, open files, database size, and the latency and outcome of the requests of
that interval. At the end it runs ``Store.check`` on the database, stops the server with SIGTERM (timing the
shutdown) and prints a Markdown report (also written to ``--report``) with the command and the machine.

Events come from ``--input`` (an NDJSON file, e.g. ``spintrail simulate --output``), else from the
simulator (``spintrail.simulate``) when it is installed, else from a built-in generator of stage events.
When the source runs out it starts again with new event ids, so every event sent is new.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import queue
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    p.add_argument("--rate", type=float, default=50.0, help="events per second to send (default 50)")
    p.add_argument("--clients", type=int, default=8, help="concurrent connections (default 8)")
    p.add_argument("--batch", type=int, default=1, help="events per request (default 1, like echo)")
    p.add_argument("--interval", type=float, default=30.0, help="seconds per measurement row (default 30)")
    p.add_argument("--input", type=Path, help="NDJSON file of echo events to send (default: simulator)")
    p.add_argument("--url", help="an already running spintrail (default: start one on a fresh database)")
    p.add_argument("--pid", type=int, help="with --url: the server's process id, to measure its memory")
    p.add_argument("--database", help="with --url: its SQLite file, for sizes and the final check")
    p.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the started server, e.g. --setting commit_batch_max=500 (repeatable)",
    )
    p.add_argument("--report", type=Path, help="also write the Markdown report to this file")
    return p.parse_args(argv)


# -- events -----------------------------------------------------------------------------------------------


def ndjson_events(path: Path) -> Iterator[dict[str, Any]]:
    for round_ in itertools.count():
        with path.open("rb") as fp:
            for line in fp:
                if line.strip():
                    yield renamed(json.loads(line), round_)


def simulated_events() -> Iterator[dict[str, Any]] | None:
    try:
        from spintrail.simulate import Simulator  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None

    def gen() -> Iterator[dict[str, Any]]:
        for seed in itertools.count(1):
            for event in Simulator(seed=seed, executions=500, days=1).events():
                yield renamed(event, seed)

    return gen()


def builtin_events() -> Iterator[dict[str, Any]]:
    for n in itertools.count():
        run = n // 8
        yield {
            "details": {
                "source": "orca",
                "type": "orca:stage:complete",
                "created": str(int(time.time() * 1000)),
            },
            "content": {
                "execution": {
                    "type": "PIPELINE",
                    "id": f"SOAK{run}",
                    "application": f"app{run % 40}",
                    "name": "deploy",
                    "trigger": {"type": "manual", "user": f"user{run % 25}@example.com"},
                    "stages": [
                        {
                            "id": f"s{i}",
                            "type": "deploy",
                            "context": {"account": "prod", "region": "us-east-1"},
                        }
                        for i in range(8)
                    ],
                },
                "executionId": f"SOAK{run}",
            },
            "eventId": str(uuid.uuid4()),
        }


def renamed(event: dict[str, Any], round_: int) -> dict[str, Any]:
    """The event with an id unique to this round of the source, so a replayed source sends new events."""
    if round_:
        base = event.get("eventId") or str(uuid.uuid4())
        event["eventId"] = f"{base}-soak{round_}"
    return event


# -- measurement ------------------------------------------------------------------------------------------


@dataclass
class Interval:
    """What happened during one measurement interval."""

    latencies: list[float] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    events: int = 0
    lag: float = 0.0


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.current = Interval()

    def record(self, seconds: float, outcome: str, events: int, lag: float) -> None:
        with self.lock:
            self.current.latencies.append(seconds)
            self.current.outcomes[outcome] = self.current.outcomes.get(outcome, 0) + 1
            if outcome == "200":
                self.current.events += events
            self.current.lag = max(self.current.lag, lag)

    def take(self) -> Interval:
        with self.lock:
            out, self.current = self.current, Interval()
            return out


def proc_status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return out


def db_bytes(database: str | None) -> int:
    if not database:
        return 0
    return sum(os.path.getsize(p) for p in (database, database + "-wal") if os.path.exists(p))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


# -- the run ----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(database: str, settings: list[str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "SPINTRAIL_LOG_LEVEL": "warning"}
    for item in settings:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--setting {item!r} is not NAME=VALUE")
        env["SPINTRAIL_" + name.strip().upper()] = value.strip()
    cmd = [sys.executable, "-m", "spintrail", "serve", "--port", str(port), "--database", database]
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the server did not become ready; see {log}")


def machine() -> dict[str, str]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as fp:
        for line in fp:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as fp:
        for line in fp:
            if line.startswith("MemTotal"):
                mem_kib = int(line.split()[1])
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def run(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="spintrail-soak-"))
    proc: subprocess.Popen[bytes] | None = None
    if args.url:
        url, pid, database = args.url.rstrip("/"), args.pid, args.database
    else:
        database = str(workdir / "soak.db")
        proc, url = start_server(database, args.setting, workdir / "server.log")
        pid = proc.pid
    if args.input:
        source, source_name = ndjson_events(args.input), f"NDJSON file {args.input}"
    elif (sim := simulated_events()) is not None:
        source, source_name = sim, "spintrail simulate (Simulator, 500 executions a seed)"
    else:
        source, source_name = builtin_events(), "built-in stage events (the simulator is not installed)"

    recorder = Recorder()
    work: queue.Queue[tuple[float, bytes, int] | None] = queue.Queue(maxsize=max(10, int(args.rate * 5)))
    stop = threading.Event()
    info = machine()

    def client() -> None:
        with httpx.Client(timeout=60) as c:
            while True:
                item = work.get()
                if item is None:
                    return
                due, body, n = item
                t0 = time.perf_counter()
                lag = time.monotonic() - due
                try:
                    r = c.post(
                        url + "/api/v1/events", content=body, headers={"Content-Type": "application/json"}
                    )
                    outcome = str(r.status_code)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                recorder.record(time.perf_counter() - t0, outcome, n, lag)

    def schedule() -> None:
        period = args.batch / args.rate
        next_due = time.monotonic()
        while not stop.is_set():
            events = list(itertools.islice(source, args.batch))
            if not events:
                break
            body = json.dumps(events if args.batch > 1 else events[0], separators=(",", ":")).encode()
            next_due += period
            delay = next_due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            work.put((next_due, body, len(events)))
        for _ in range(args.clients):
            work.put(None)

    clients = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
    for t in clients:
        t.start()
    scheduler = threading.Thread(target=schedule, daemon=True)
    started = time.monotonic()
    scheduler.start()
    rows: list[dict[str, Any]] = []
    end = started + args.minutes * 60
    print(f"soak: {args.rate:g} events/s for {args.minutes:g} min against {url} (pid {pid})", file=sys.stderr)
    try:
        while time.monotonic() < end:
            time.sleep(min(args.interval, max(0.0, end - time.monotonic())))
            iv = recorder.take()
            st = proc_status(pid) if pid else {}
            row = {
                "t": round(time.monotonic() - started),
                "sent_per_s": round(sum(iv.outcomes.values()) * args.batch / args.interval, 1),
                "stored_per_s": round(iv.events / args.interval, 1),
                "p50_ms": round(percentile(iv.latencies, 0.5) * 1000, 1),
                "p99_ms": round(percentile(iv.latencies, 0.99) * 1000, 1),
                "max_ms": round(max(iv.latencies, default=0) * 1000, 1),
                "errors": {k: v for k, v in iv.outcomes.items() if k != "200"},
                "lag_s": round(iv.lag, 2),
                "rss_mib": round(st.get("VmRSS", 0) / 1024, 1),
                "threads": st.get("Threads", 0),
                "fds": st.get("fds", 0),
                "db_mib": round(db_bytes(database) / 2**20, 1),
            }
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        stop.set()
        scheduler.join(30)
        for t in clients:
            t.join(60)

    check_line = "not run (no --database)"
    if database:
        from spintrail.store.sqlite import SqliteStore

        store = SqliteStore(database)
        try:
            t0 = time.perf_counter()
            report = store.check()
            check_line = (
                f"{'ok' if report.ok else 'PROBLEMS: ' + '; '.join(p.message for p in report.problems[:5])}"
                f" ({report.checks.get('event_raw', 0)} events, {time.perf_counter() - t0:.1f} s)"
            )
        finally:
            store.close()
    shutdown = "not measured (--url)"
    if proc is not None:
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        shutdown = f"{time.monotonic() - t0:.2f} s after SIGTERM (exit status {proc.returncode})"
    text = report_markdown(args, info, source_name, rows, check_line, shutdown)
    print(text)
    if args.report:
        args.report.write_text(text)
    if not args.url:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(not r["errors"] for r in rows) else 1


def report_markdown(
    args: argparse.Namespace,
    info: dict[str, str],
    source_name: str,
    rows: list[dict[str, Any]],
    check_line: str,
    shutdown: str,
) -> str:
    command = "python bench/soak.py " + " ".join(sys.argv[1:])
    lines = [
        "# Soak",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"Load: {args.rate:g} events/s, {args.batch} event(s) a request, {args.clients} connections, "
        f"{args.minutes:g} minutes; events from {source_name}.",
        "",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in info.items()) + ".",
        "",
        "| t (s) | sent/s | stored/s | p50 ms | p99 ms | max ms | errors | sender lag s | RSS MiB | threads"
        " | fds | DB MiB |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0"
        lines.append(
            f"| {r['t']} | {r['sent_per_s']} | {r['stored_per_s']} | {r['p50_ms']} | {r['p99_ms']} | "
            f"{r['max_ms']} | {errors} | {r['lag_s']} | {r['rss_mib']} | {r['threads']} | {r['fds']} | "
            f"{r['db_mib']} |"
        )
    if len(rows) >= 3:
        warm, last = rows[1], rows[-1]
        p99s = [r["p99_ms"] for r in rows[1:]]
        lines += [
            "",
            f"After warm-up (row 2 to the last row): RSS {warm['rss_mib']} -> {last['rss_mib']} MiB "
            f"({last['rss_mib'] - warm['rss_mib']:+.1f}), threads {warm['threads']} -> {last['threads']}, "
            f"open files {warm['fds']} -> {last['fds']}; p99 latency median "
            f"{statistics.median(p99s):.1f} ms, highest {max(p99s):.1f} ms.",
        ]
    lines += ["", f"Store check after the run: {check_line}.", "", f"Shutdown: {shutdown}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
