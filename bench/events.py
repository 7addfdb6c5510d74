"""Pools of distinct echo events for the benchmark, written as one compact JSON body per line.

- small: igor ``build`` events (about 450 bytes), each with its own eventId, job, build number and times;
- mix: the simulator's realistic stream (pipelines of 5-40 stages with full executions, ad-hoc operations,
  judgments, builds), exactly as ``spintrail.simulate.Simulator`` yields it;
- large: stage and task events of the mix whose execution is padded with more stages to about 260 KB (all
  events of one execution share the padding, so consecutive events differ the way real ones do);
- huge: one stage event padded to about 10 MB (the memory test).

Bodies never contain a raw newline (compact JSON escapes them), so a pool file has one request per line.
"""

from __future__ import annotations

import copy
import itertools
import json
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spintrail.simulate import Simulator

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

DAY_MS = 86_400_000
#: The simulated window ends here (a fixed instant keeps every run's events and sizes the same).
END_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def dumps(value: Any) -> bytes:
    """Compact JSON bytes, as echo sends them."""
    return _dumps(value).encode("utf-8")


def mix_events(
    n: int, *, seed: int = 1, days: float = 90.0, end_ms: int = END_MS
) -> Iterator[dict[str, Any]]:
    """The first ``n`` events of a simulated installation over ``days`` (about 45 events per execution)."""
    executions = max(1, n // 40 + 10)
    sim = Simulator(seed=seed, days=days, executions=executions, start_ms=end_ms - int(days * DAY_MS))
    return itertools.islice(sim.events(), n)


_JOBS = ("build-master", "integration", "release", "nightly", "pr-check", "deploy-artifacts")
_APPS = (
    "checkout", "payments", "search", "catalog", "inventory", "ledger", "identity", "notifier",
    "recommender", "billing", "shipping", "reviews", "gateway", "profile", "pricing", "fraud",
)  # fmt: skip


def small_events(n: int, *, seed: int = 2, end_ms: int = END_MS) -> Iterator[dict[str, Any]]:
    """``n`` distinct igor build events, about 450 bytes each."""
    rng = random.Random(f"bench-small:{seed}")
    numbers: dict[str, int] = {}
    t = end_ms - n * 50
    for _ in range(n):
        t += rng.randint(1, 100)
        job = f"{rng.choice(_APPS)}-{rng.choice(_JOBS)}"
        numbers[job] = numbers.get(job, rng.randint(50, 3000)) + 1
        number = numbers[job]
        duration = rng.randint(20_000, 900_000)
        yield {
            "details": {
                "source": "igor",
                "type": "build",
                "created": str(t),
                "organization": None,
                "project": None,
                "_content_id": None,
                "requestHeaders": {},
            },
            "content": {
                "project": {
                    "name": job,
                    "lastBuild": {
                        "building": False,
                        "number": number,
                        "result": rng.choices(("SUCCESS", "FAILURE", "UNSTABLE"), (0.85, 0.12, 0.03))[0],
                        "timestamp": str(t - duration - rng.randint(1000, 60_000)),
                        "duration": duration,
                        "url": f"https://jenkins.example.com/job/{job}/{number}/",
                    },
                },
                "master": "jenkins-main",
            },
            "eventId": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        }


def _pad_stages(stages: list[Any], target: int, key: str) -> list[Any]:
    """Copies of an execution's stages (new ids and names) whose JSON adds about ``target`` bytes."""
    if not stages:
        return []
    rng = random.Random(key)
    out: list[Any] = []
    size = 0
    k = 0
    while size < target:
        src = stages[k % len(stages)]
        k += 1
        if not isinstance(src, dict):
            continue
        st = copy.deepcopy(src)
        st["id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        st["refId"] = f"pad{k}"
        st["name"] = f"{st.get('name', 'stage')} (region {k})"
        ctx = st.setdefault("context", {}) if isinstance(st.get("context"), dict) else {}
        ctx["padNote"] = f"stage {k} of a large pipeline"
        out.append(st)
        size += len(dumps(st))
    return out


def large_events(n: int, *, target: int = 260_000, seed: int = 3) -> Iterator[dict[str, Any]]:
    """``n`` stage and task events of the mix, each execution padded with stages to about ``target`` bytes."""
    pads: dict[str, list[Any]] = {}
    made = 0
    for ev in mix_events(n * 3 + 1000, seed=seed):
        content = ev.get("content")
        execution = content.get("execution") if isinstance(content, dict) else None
        if not isinstance(execution, dict) or not isinstance(execution.get("stages"), list):
            continue
        ex_id = str(execution.get("id"))
        if ex_id not in pads:
            base = len(dumps(ev))
            pads[ex_id] = _pad_stages(execution["stages"], max(0, target - base), ex_id)
        out = dict(ev)
        out["content"] = dict(content)
        out["content"]["execution"] = dict(execution, stages=[*execution["stages"], *pads[ex_id]])
        yield out
        made += 1
        if made >= n:
            return


def huge_event(size: int = 10 << 20, *, seed: int = 4) -> bytes:
    """One stage event whose execution is padded to about ``size`` bytes."""
    for ev in mix_events(2000, seed=seed):
        content = ev.get("content")
        execution = content.get("execution") if isinstance(content, dict) else None
        if isinstance(execution, dict) and len(execution.get("stages") or []) >= 5:
            ev = json.loads(dumps(ev))
            execution = ev["content"]["execution"]
            execution["stages"] += _pad_stages(execution["stages"], size - len(dumps(ev)), "huge")
            return dumps(ev)
    raise RuntimeError("the simulator produced no stage event with an execution")


def write_pool(path: Path, events: Iterator[dict[str, Any]], *, per_request: int = 1) -> tuple[int, int]:
    """Write request bodies (one event, or a JSON array of ``per_request``) one per line.

    Returns (requests, bytes of the bodies).
    """
    requests = 0
    total = 0
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("wb") as fp:
        while True:
            chunk = list(itertools.islice(events, per_request))
            if not chunk:
                break
            body = dumps(chunk[0]) if per_request == 1 else b"[" + b",".join(map(dumps, chunk)) + b"]"
            fp.write(body)
            fp.write(b"\n")
            requests += 1
            total += len(body)
    tmp.replace(path)
    return requests, total


def read_pool(path: Path, start: int = 0, count: int | None = None) -> Iterator[bytes]:
    """Bodies ``start`` .. ``start + count`` of a pool file."""
    with path.open("rb") as fp:
        for line in itertools.islice(fp, start, None if count is None else start + count):
            yield line.rstrip(b"\n")


def main() -> None:
    """Write the realistic mix to standard output as NDJSON (the direct-ingest feeder)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="Write simulated echo events as NDJSON to stdout.")
    parser.add_argument("--count", type=int, required=True, help="events to write")
    parser.add_argument("--seed", type=int, default=1, help="simulator seed")
    parser.add_argument("--days", type=float, default=90.0, help="days of history")
    args = parser.parse_args()
    out = sys.stdout.buffer
    for ev in mix_events(args.count, seed=args.seed, days=args.days):
        out.write(dumps(ev))
        out.write(b"\n")
    out.flush()


if __name__ == "__main__":
    main()
