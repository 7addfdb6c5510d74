"""Profile ``spintrail serve`` under load: py-spy samples the server (all threads) while wrk drives it.

    python bench/profile.py small|mix|mix_batch|large [--seconds 10] [--native]

Prints the top frames, inclusive and self, over every thread (pip install py-spy first). Uses the pools
``bench/run.py --quick`` generated.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import pools, procs  # noqa: E402
from bench.ingest import Run, Scenario, connections_for  # noqa: E402


def _shares(raw: Path) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """Samples in py-spy's raw (collapsed) output: the total, and per frame inclusive and self counts."""
    incl: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        k = int(count)
        total += k
        frames = [_short(f) for f in stack.split(";")]
        for f in set(frames):
            incl[f] += k
        own[frames[-1]] += k
    return total, incl, own


def top_frames(raw: Path, n: int = 30) -> str:
    """Inclusive and self shares of the frames in py-spy's raw (collapsed) output."""
    total, incl, own = _shares(raw)
    lines = [f"{total} samples", "", "inclusive:"]
    lines += [f"  {v / total * 100:5.1f}%  {f}" for f, v in incl.most_common(n)]
    lines += ["", "self:"]
    lines += [f"  {v / total * 100:5.1f}%  {f}" for f, v in own.most_common(n)]
    return "\n".join(lines)


def summary(raw: Path, n: int = 12) -> list[str]:
    """The report's view of a profile: spintrail's own functions by inclusive share, all frames by self."""
    total, incl, own = _shares(raw)
    total = max(total, 1)
    ours = collections.Counter(
        {
            f: k
            for f, k in incl.items()
            if "(spintrail/" in f and not f.startswith(("main ", "serve ", "run_server ", "<module>"))
        }
    )
    rows = ["| inclusive (spintrail's functions) | | self (every frame) | |", "|---|---:|---|---:|"]
    a, b = ours.most_common(n), own.most_common(n)
    for i in range(max(len(a), len(b))):
        left = f"`{a[i][0]}` | {a[i][1] / total * 100:.1f}%" if i < len(a) else " | "
        right = f"`{b[i][0]}` | {b[i][1] / total * 100:.1f}%" if i < len(b) else " | "
        rows.append(f"| {left} | {right} |")
    return [f"{total} samples.", "", *rows]


def pyspy_path() -> str | None:
    """py-spy's executable (beside this Python, or on PATH), or None when it is not installed."""
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return found if Path(found).exists() else None


@dataclass
class Profile:
    events_per_s: float
    cpu_us_per_event: float
    p50_ms: float
    p99_ms: float
    raw: Path | None  # py-spy's collapsed samples (None when not profiled)


def profile_scenario(
    sc: Scenario,
    work: Path,
    *,
    database: str | None = None,
    seconds: float = 10,
    connections: int = 32,
    native: bool = False,
    env: dict[str, str] | None = None,
    pyspy: str | None = None,
) -> Profile:
    """Drive ``spintrail serve`` with ``sc``'s pool while py-spy samples it (the threads holding the GIL)."""
    with procs.spintrail_server(database or str(work / "p.db"), work, env=env) as server:
        raw = work / f"profile-{sc.key}.txt"
        spy = None
        if pyspy is not None:
            spy = subprocess.Popen(
                [pyspy, "record", "-r", "250", "-f", "raw", "-o", str(raw), "-p", str(server.pid),
                 "-d", str(int(seconds + 1)), "--gil", *(["--native"] if native else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(0.5)
        cpu = procs.cpu_seconds(server.pid)
        r = procs.wrk(
            server.url, sc.pool, start=0, count=sc.requests, seconds=seconds, connections=connections
        )
        cpu = procs.cpu_seconds(server.pid) - cpu
        if spy is not None:
            spy.wait(60)
    run = Run.of(r, sc.per_request)
    run.cpu_seconds = cpu
    return Profile(
        run.events_per_s,
        run.cpu_us_per_event,
        run.p50_ms,
        run.p99_ms,
        raw if spy is not None and raw.exists() else None,
    )


def _short(frame: str) -> str:
    name, _, where = frame.partition(" (")
    path = where.split(":")[0]
    parts = Path(path).parts
    path = "/".join(parts[parts.index("spintrail") :]) if "spintrail" in parts else Path(path).name
    return f"{name} ({path})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenario", choices=["small", "mix", "mix_batch", "large"])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--native", action="store_true", help="include native (C) frames")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "spintrail-bench",
    )
    parser.add_argument("--top", type=int, default=35)
    parser.add_argument("--no-profile", action="store_true", help="only measure (CPU per event), no py-spy")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server (repeatable)")
    args = parser.parse_args()
    pyspy = None if args.no_profile else pyspy_path()
    if not args.no_profile and pyspy is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    from bench.run import MODES

    m = MODES["quick"]
    sc = {s.key: s for s in pools.scenarios(args.cache, small=m.small, mix=m.mix, large=m.large)}[
        args.scenario
    ]
    if procs.have_taskset():
        os.sched_setaffinity(0, {procs.LOAD_CORE})
    work = Path(tempfile.mkdtemp(prefix="spintrail-profile-"))
    try:
        env = dict(e.split("=", 1) for e in args.env)
        p = profile_scenario(
            sc,
            work,
            seconds=args.seconds,
            connections=connections_for(sc, args.connections),
            native=args.native,
            env=env,
            pyspy=pyspy,
        )
        print(
            f"{args.scenario}: {p.events_per_s:,.0f} events/s, p50 {p.p50_ms:.1f} ms, p99 {p.p99_ms:.1f} ms, "
            f"server CPU {p.cpu_us_per_event:.0f} us/event "
            f"({1e6 / max(p.cpu_us_per_event, 1e-9):,.0f} events per CPU-second)"
        )
        if p.raw is not None:
            print(top_frames(p.raw, args.top))
            if os.environ.get("KEEP_PROFILE"):
                shutil.copy(p.raw, os.environ["KEEP_PROFILE"])
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
