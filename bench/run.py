"""Run the spintrail benchmark and write the results to docs/benchmarks.md.

    python bench/run.py --quick      # a few minutes: short ingest runs, storage and queries at 100k events
    python bench/run.py              # longer ingest runs, best of two; storage and queries at 100k events
    python bench/run.py --full       # also 1M events: storage, then queries and memory at 1M

Filling 1M events takes a while (tens of minutes): ``--query-db FILE`` (SQLite) or ``--query-db
postgresql://host/NAME`` fills that database once, keeps it, and reuses it on later runs, and
``--fill-minutes`` bounds a fill (the report then says how many events the database holds).

``--database postgresql://user@host/db`` runs everything on PostgreSQL instead (the benchmark creates and
drops its own databases on that server). The server under test is pinned to CPU 0, the load generator
(wrk) and this harness to CPU 1. Generated request bodies are cached (``--cache``) between runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import backends, ingest, memory, pools, procs, queries, storage  # noqa: E402
from bench.backends import Backend, backend, is_postgres  # noqa: E402
from bench.events import huge_event  # noqa: E402
from bench.report import Report, ingest_target, render  # noqa: E402

PARTS = ("ingest", "storage", "queries", "memory")
SCENARIOS = ("small", "mix", "mix_batch", "large")
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "spintrail-bench"


@dataclass
class Mode:
    """How much a run does."""

    name: str
    seconds: float  # length of each measured ingest run
    repeats: int  # ingest runs per scenario (the best is reported)
    small: int  # distinct events in each pool
    mix: int
    large: int
    storage_counts: tuple[int, ...]  # storage measured at these numbers of events
    query_count: int  # queries and the export's memory run on this many events
    per_kind: int  # parameters per query kind
    export_rows: int
    exports: int
    huge_bytes: int = 10 << 20
    probe: float = 2.0  # warm-up before each measured ingest run
    batch: int = 100  # events per request in the batched scenario


MODES = {
    "smoke": Mode("smoke", 1, 1, 40_000, 1_500, 300, (600,), 600, 5, 500, 1, 1 << 20, 1.0, 10),
    "quick": Mode("quick", 5, 1, 150_000, 60_000, 6_000, (100_000,), 100_000, 30, 100_000, 2),
    "default": Mode("default", 15, 2, 400_000, 150_000, 12_000, (100_000,), 100_000, 50, 100_000, 3),
    "full": Mode("full", 15, 2, 400_000, 150_000, 12_000, (100_000, 1_000_000), 1_000_000, 50, 100_000, 3),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="short runs (a few minutes)")
    size.add_argument("--full", action="store_true", help="also 1M events: storage, queries, memory")
    size.add_argument("--smoke", action="store_true", help="a few events through every part (tests)")
    parser.add_argument(
        "--database",
        default="sqlite",
        help="sqlite (default: files in a scratch directory), a directory for the SQLite files, "
        "or a postgresql:// URL of a server where the benchmark may create databases",
    )
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated parts to run")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "benchmarks.md", help="Markdown report to write"
    )
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help="where generated request bodies are kept"
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated ingest traffic to measure ({', '.join(SCENARIOS)})",
    )
    parser.add_argument("--connections", type=int, default=32, help="connections of the load generator")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile each ingest scenario that misses its target with py-spy (pip install py-spy)",
    )
    parser.add_argument("--seconds", type=float, help="length of each measured ingest run")
    parser.add_argument(
        "--ingest-mode",
        choices=["smoke", "quick", "default", "full"],
        help="run the ingest part as this mode does (run length, repeats, request pools), e.g. "
        "--full --ingest-mode quick for the 1M-event parts with short ingest runs",
    )
    parser.add_argument(
        "--query-db",
        help="database filled by an earlier run to reuse for queries and memory: a SQLite file, or a "
        "postgresql:// URL naming a database on that server (filled and kept when it does not exist yet)",
    )
    parser.add_argument(
        "--fill-minutes",
        type=float,
        help="stop filling a database after this long (the report says how many events it holds)",
    )
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    if parts - set(PARTS):
        parser.error(f"--only: unknown parts {', '.join(sorted(parts - set(PARTS)))}; use {', '.join(PARTS)}")
    args.parts = parts
    if args.query_db and is_postgres(args.query_db) != is_postgres(args.database):
        parser.error("--query-db must be on the backend of --database (a postgresql:// URL for PostgreSQL)")
    args.scenario_keys = [k.strip() for k in args.scenarios.split(",") if k.strip()]
    if set(args.scenario_keys) - set(SCENARIOS):
        parser.error(f"--scenarios: use {', '.join(SCENARIOS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    mode = MODES["smoke" if args.smoke else "quick" if args.quick else "full" if args.full else "default"]
    if args.ingest_mode:
        ingest_mode = MODES[args.ingest_mode]
        mode = dataclasses.replace(
            mode,
            seconds=ingest_mode.seconds,
            repeats=ingest_mode.repeats,
            small=ingest_mode.small,
            mix=ingest_mode.mix,
            large=ingest_mode.large,
            probe=ingest_mode.probe,
            batch=ingest_mode.batch,
        )
    if args.seconds:
        mode.seconds = args.seconds
    if procs.have_taskset():
        os.sched_setaffinity(0, {procs.LOAD_CORE})
    command = "python bench/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    kind = "postgresql" if is_postgres(args.database) else "sqlite"
    report = Report(mode.name, mode.seconds, mode.repeats, command.strip(), kind, args.connections)
    with backend(args.database) as be:
        if "ingest" in args.parts:
            run_ingest(report, be, mode, args)
        query_db = run_storage(report, be, mode, args)
        if query_db is not None and "queries" in args.parts:
            run_queries(report, be, mode, query_db, args.cache)
        if "memory" in args.parts:
            run_memory(report, be, mode, query_db)
        if query_db is not None and query_db != args.query_db:
            be.drop(query_db)
    report.finished = time.time()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(report))
    log(f"wrote {args.out}")


def run_ingest(report: Report, be: Backend, mode: Mode, args: argparse.Namespace) -> None:
    if not procs.have_wrk():
        report.notes.append("ingest skipped: wrk is not installed (apt-get install wrk)")
        return
    log(f"request pools (generated once, cached in {args.cache})")
    scenarios = pools.scenarios(
        args.cache, small=mode.small, mix=mode.mix, large=mode.large, batch=mode.batch
    )
    for s in scenarios:
        if s.key not in args.scenario_keys:
            continue
        best: ingest.Result | None = None
        for k in range(mode.repeats):
            log(f"ingest {s.key} (run {k + 1} of {mode.repeats})")
            r = ingest.run_scenario(
                s,
                be,
                be.scratch,
                connections=ingest.connections_for(s, args.connections),
                seconds=mode.seconds,
                probe_seconds=mode.probe,
            )
            assert r.spintrail is not None and r.http_ceiling is not None
            log(
                f"  spintrail {r.spintrail.events_per_s:,.0f} events/s, HTTP ceiling "
                f"{r.http_ceiling.events_per_s:,.0f}, storage ceiling {r.storage_ceiling or 0:,.0f}"
            )
            if best is None or r.http_fraction > best.http_fraction:
                best = r
        assert best is not None
        report.ingest.append(best)
    if args.profile:
        run_profiles(report, be, mode, args)


def run_profiles(report: Report, be: Backend, mode: Mode, args: argparse.Namespace) -> None:
    """py-spy over the server for every ingest scenario whose target was missed."""
    from bench import profile

    pyspy = profile.pyspy_path()
    if pyspy is None:
        report.notes.append("profiles skipped: py-spy is not installed (pip install py-spy)")
        return
    for res in report.ingest:
        what, ok, how = ingest_target(res)
        if ok:
            continue
        s = res.scenario
        log(f"profiling {s.key} ({what}: {how})")
        database = be.fresh(f"profile_{s.key}")
        try:
            p = profile.profile_scenario(
                s,
                be.scratch,
                database=database,
                seconds=mode.seconds,
                connections=res.connections,
                pyspy=pyspy,
            )
        finally:
            be.drop(database)
        if p.raw is None:
            report.notes.append(f"profile of {s.key}: py-spy recorded nothing")
            continue
        figures = (
            f"While profiled: {p.events_per_s:,.0f} events/s, server CPU {p.cpu_us_per_event:,.0f} µs per "
            f"event ({what}; {how})."
        )
        report.profiles.append((s.title, figures, profile.summary(p.raw)))


def run_storage(report: Report, be: Backend, mode: Mode, args: argparse.Namespace) -> str | None:
    """Fill and measure the storage databases; returns the one queries and memory use (kept)."""
    if not args.parts & {"storage", "queries", "memory"}:
        return None
    query_db: str | None = None
    for count in mode.storage_counts:
        if "storage" not in args.parts and count != mode.query_count:
            continue
        keep = args.query_db if count == mode.query_count else None
        if keep and backends.exists(keep):
            held = queries_count(keep)
            log(f"reusing {keep} ({held:,} events) for queries and memory")
            if held != count:
                report.notes.append(
                    f"queries and memory ran on a reused database of {held:,} events"
                    f" (this mode fills {count:,})"
                )
            fill_record = _fill_record(keep, args.cache)
            if "storage" in args.parts and fill_record.exists() and held == count:
                # The fill's own figures (raw bytes sent, sampled hashes) were kept beside the database.
                res = storage.measure(keep, json.loads(fill_record.read_text()))
                report.storage.append(res)
                log(f"  {res.per_event:.0f} bytes/event, {res.fraction * 100:.2f}% of the raw JSON")
            query_db = keep
            continue
        if keep:
            backends.create_kept(keep)
        database = keep or be.fresh(f"storage{count}")
        shutil.rmtree(_signer_dir(database, args.cache), ignore_errors=True)  # a new log: a new signer
        log(f"storage: ingesting {count:,} events directly (no HTTP)")
        max_seconds = args.fill_minutes * 60 if args.fill_minutes else None
        loaded = storage.fill(database, count, progress=count >= 100_000, max_seconds=max_seconds)
        if loaded.get("stopped_early"):
            report.notes.append(
                f"the fill of {count:,} events stopped after --fill-minutes {args.fill_minutes:g}:"
                f" the database holds {loaded['events']:,}"
            )
        if keep and not loaded.get("stopped_early"):
            record = _fill_record(keep, args.cache)
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps(loaded))
        if "storage" in args.parts:
            res = storage.measure(database, loaded)
            report.storage.append(res)
            log(f"  {res.per_event:.0f} bytes/event, {res.fraction * 100:.2f}% of the raw JSON")
        if count == mode.query_count:
            backends.settle(database)
            if is_postgres(database):
                report.notes.append(
                    "the query database was vacuumed and analyzed after its fill (VACUUM (ANALYZE)), as "
                    "autovacuum does in a running installation"
                )
            query_db = database
        elif database != keep:
            be.drop(database)
    return query_db


def _database_name(database: str) -> str:
    """The last part of a database's path or URL, without its query: what names its files in the cache."""
    return database.rsplit("/", 1)[-1].split("?")[0]


def _fill_record(database: str, cache: Path) -> Path:
    """Where the figures of a kept query database's fill are kept (so a reuse can measure its storage):
    beside a SQLite file, in the cache for a PostgreSQL database (by its name)."""
    if is_postgres(database):
        return cache / "fills" / (_database_name(database) + ".json")
    return Path(database + ".fill.json")


def _signer_dir(database: str, cache: Path) -> Path:
    """Where the signing key and signer state of a kept query database live between runs: a database
    keeps signing with the key it recorded, and its signer must remember what it signed. SQLite keeps
    both beside the file by default; a PostgreSQL database gets a directory in the cache (by its name)."""
    return cache / "signers" / _database_name(database)


def run_queries(report: Report, be: Backend, mode: Mode, query_db: str, cache: Path) -> None:
    report.query_events = queries_count(query_db)
    log(f"queries on {report.query_events:,} events")
    records = queries.sample_records(query_db, mode.per_kind * 6)
    newest = queries.newest_time(query_db)
    env: dict[str, str] = {}
    if is_postgres(query_db):
        signer = _signer_dir(query_db, cache)
        signer.mkdir(parents=True, exist_ok=True)
        env = {
            "SPINTRAIL_SIGNING_KEY_FILE": str(signer / "signing.key"),
            "SPINTRAIL_SIGNER_STATE_DIR": str(signer),
        }
    with procs.spintrail_server(query_db, be.scratch, env=env) as server:
        report.queries = queries.run_queries(
            server.url,
            records,
            per_kind=mode.per_kind,
            export_rows=mode.export_rows,
            exports=mode.exports,
            end_ms=newest,
        )
    if not any(q.key == "dashboard_30d" for q in report.queries):
        report.notes.append("dashboard: this build has no GET /api/v1/dashboard, so it was not measured")


def run_memory(report: Report, be: Backend, mode: Mode, query_db: str | None) -> None:
    log("memory: one large event")
    database = be.fresh("memory")
    try:
        report.memory.append(memory.big_event(database, be.scratch, huge_event(mode.huge_bytes)))
    finally:
        be.drop(database)
    if query_db is not None:
        rows = queries_count(query_db)
        log(f"memory: exporting {rows:,} rows")
        report.memory.append(memory.export_all(query_db, be.scratch, rows))


def queries_count(database: str) -> int:
    from spintrail.store import open_store

    store = open_store(database)
    try:
        return store.stats().events
    finally:
        store.close()


if __name__ == "__main__":
    main()
