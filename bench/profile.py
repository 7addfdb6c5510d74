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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import pools, procs  # noqa: E402
from bench.run import MODES  # noqa: E402


def top_frames(raw: Path, n: int = 30) -> str:
    """Inclusive and self shares of the frames in py-spy's raw (collapsed) output."""
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
    lines = [f"{total} samples", "", "inclusive:"]
    lines += [f"  {v / total * 100:5.1f}%  {f}" for f, v in incl.most_common(n)]
    lines += ["", "self:"]
    lines += [f"  {v / total * 100:5.1f}%  {f}" for f, v in own.most_common(n)]
    return "\n".join(lines)


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
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not args.no_profile and not Path(pyspy).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    m = MODES["quick"]
    sc = {s.key: s for s in pools.scenarios(args.cache, small=m.small, mix=m.mix, large=m.large)}[
        args.scenario
    ]
    if procs.have_taskset():
        os.sched_setaffinity(0, {procs.LOAD_CORE})
    work = Path(tempfile.mkdtemp(prefix="spintrail-profile-"))
    try:
        env = dict(e.split("=", 1) for e in args.env)
        with procs.spintrail_server(str(work / "p.db"), work, env=env) as server:
            raw = work / "profile.txt"
            spy = None
            if not args.no_profile:
                spy = subprocess.Popen(
                    [pyspy, "record", "-r", "250", "-f", "raw", "-o", str(raw), "-p", str(server.pid),
                     "-d", str(int(args.seconds + 1)), "--gil", *(["--native"] if args.native else [])],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                time.sleep(0.5)
            cpu = procs.cpu_seconds(server.pid)
            r = procs.wrk(
                server.url,
                sc.pool,
                start=0,
                count=sc.requests,
                seconds=args.seconds,
                connections=args.connections,
            )
            cpu = procs.cpu_seconds(server.pid) - cpu
            if spy is not None:
                spy.wait(60)
        events = r["requests"] * sc.per_request
        print(
            f"{args.scenario}: {r['rps'] * sc.per_request:,.0f} events/s, "
            f"p50 {r['lat_p50_us'] / 1000:.1f} ms, "
            f"p99 {r['lat_p99_us'] / 1000:.1f} ms, server CPU {cpu / max(events, 1) * 1e6:.0f} us/event "
            f"({events / max(cpu, 1e-9):,.0f} events per CPU-second)"
        )
        if spy is not None:
            print(top_frames(raw, args.top))
    finally:
        if os.environ.get("KEEP_PROFILE"):
            shutil.copy(work / "profile.txt", os.environ["KEEP_PROFILE"])
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
