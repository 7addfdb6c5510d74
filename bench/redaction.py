"""Redaction's own cost: CPU time per event of ``Scrubber.scrub`` on the realistic mix.

    python bench/redaction.py                 # 5,000 events of the simulator's realistic mix
    python bench/redaction.py --events 20000 --repeats 5

The events are generated first (the simulator's stream, as echo sends them), then each is decoded and
scrubbed as the receiver does (``raw_events = redact``, the collector tuned as ``spintrail serve`` tunes
it), ``--repeats`` times, each time by a new scrubber warmed on 200 other events (so what redaction
remembers of the places it redacted comes from events measured earlier in the same run, as in a server,
never from an earlier repeat); the figure is the best
repeat's CPU time of this process (``time.process_time``) spent in ``scrub``, divided by the events, so
other work on a loaded machine does not count. It also prints how many events had something replaced
and the time spent on those alone, and, as a yardstick taken at the same moment, what parsing each event
once with orjson costs on this machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.events import dumps, mix_events  # noqa: E402
from spintrail.cli import tune_gc  # noqa: E402
from spintrail.scrub import Scrubber  # noqa: E402

BUDGET_US = 100.0


def measure(events: int = 5_000, repeats: int = 3) -> dict[str, float]:
    """Best-of-``repeats`` CPU µs per event of scrubbing ``events`` events of the realistic mix.

    The pool is kept as bytes and each event decoded just before it is scrubbed (untimed), as the receiver
    does: holding thousands of decoded events at once would make every garbage collection walk them all.
    """
    pool = [dumps(event) for event in mix_events(events)]
    # Other traffic seen before: another installation's stream (another seed), so that no event measured
    # was seen before it is measured (redaction remembers the places it redacted).
    warm = [dumps(event) for event in mix_events(200, seed=2)]
    tune_gc()  # the collector as ``spintrail serve`` sets it up: start-up objects frozen, fewer collections
    best = (float("inf"), 0, 0.0)  # (total, events with secrets, time on those) of the best repeat
    for _ in range(repeats):
        scrubber = Scrubber(b"bench-redaction-key-0123456789", raw_events="redact")  # nothing remembered
        for raw in warm:  # warm the caches and the compiled database
            scrubber.scrub(json.loads(raw), raw)
        replaced_events = 0
        with_secret = 0.0
        total = 0.0
        for raw in pool:
            event = json.loads(raw)
            t0 = time.process_time()
            done = scrubber.scrub(event, raw)
            spent = time.process_time() - t0
            total += spent
            if done.replaced:
                replaced_events += 1
                with_secret += spent
        best = min(best, (total, replaced_events, with_secret))
    total, replaced_events, with_secret = best
    clean = len(pool) - replaced_events
    # A yardstick taken at the same moment: what parsing each event once with orjson costs on this machine.
    parse = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        for raw in pool:
            orjson.loads(raw)
        parse = min(parse, time.process_time() - t0)
    size = sum(len(raw) for raw in pool) / len(pool)
    return {
        "events": float(len(pool)),
        "bytes_per_event": size,
        "us_per_event": total / len(pool) * 1e6,
        "events_with_secrets": float(replaced_events),
        "us_per_event_with_secrets": (with_secret / replaced_events * 1e6) if replaced_events else 0.0,
        "us_per_event_without": ((total - with_secret) / clean * 1e6) if clean else 0.0,
        "us_per_event_orjson_parse": parse / len(pool) * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=5_000, help="events of the realistic mix (5000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs; the best counts (3)")
    args = parser.parse_args(argv)
    r = measure(args.events, args.repeats)
    verdict = "within" if r["us_per_event"] <= BUDGET_US else "OVER"
    print(
        f"{int(r['events'])} events, {r['bytes_per_event']:,.0f} bytes each on average: "
        f"{r['us_per_event']:.1f} µs CPU per event ({verdict} the {BUDGET_US:.0f} µs budget); "
        f"{int(r['events_with_secrets'])} events had secrets replaced, "
        f"{r['us_per_event_with_secrets']:.1f} µs each; the others {r['us_per_event_without']:.1f} µs each. "
        f"Yardstick: orjson parses one of these events in {r['us_per_event_orjson_parse']:.1f} µs here now"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
