"""Request-body pools on disk, generated once and cached (generation is slower than ingest)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench import events
from bench.ingest import Scenario

#: Bump when the generators change, so cached pools are rebuilt.
VERSION = 1


def _pool(
    cache: Path, name: str, make: Callable[[], Iterator[dict[str, Any]]], per_request: int = 1
) -> tuple[Path, int, int]:
    path = cache / f"{name}.v{VERSION}.ndjson"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        m = json.loads(meta.read_text())
        return path, m["requests"], m["bytes"]
    cache.mkdir(parents=True, exist_ok=True)
    requests, size = events.write_pool(path, make(), per_request=per_request)
    meta.write_text(json.dumps({"requests": requests, "bytes": size}))
    return path, requests, size


def _batched(cache: Path, src: Path, name: str, per_request: int) -> tuple[Path, int]:
    """The bodies of ``src`` joined ``per_request`` at a time into JSON arrays (the same bytes inside)."""
    path = cache / f"{name}.v{VERSION}.ndjson"
    if path.exists():
        return path, sum(1 for _ in path.open("rb"))
    tmp = path.with_suffix(".tmp")
    n = 0
    with tmp.open("wb") as fp:
        bodies = events.read_pool(src)
        while chunk := take(bodies, per_request):
            fp.write(b"[" + b",".join(chunk) + b"]\n")
            n += 1
    tmp.replace(path)
    return path, n


def scenarios(cache: Path, *, small: int, mix: int, large: int, batch: int = 100) -> list[Scenario]:
    """The four traffic kinds, with pools of the given numbers of events."""
    out = []
    p, n, b = _pool(cache, f"small-{small}", lambda: events.small_events(small))
    out.append(Scenario("small", "small events (igor builds), one per request", p, n, 1, b / n, p))
    mp, mn, mb = _pool(cache, f"mix-{mix}", lambda: events.mix_events(mix))
    out.append(Scenario("mix", "realistic mix, one per request", mp, mn, 1, mb / mn, mp))

    p, n = _batched(cache, mp, f"mix-{mix}-batch{batch}", batch)
    out.append(Scenario("mix_batch", f"realistic mix, {batch} per request", p, n, batch, mb / mn, mp))
    p, n, b = _pool(cache, f"large-{large}", lambda: events.large_events(large))
    out.append(Scenario("large", "large stage/task events (~260 KB), one per request", p, n, 1, b / n, p))
    return out


def take(it: Iterator[Any], n: int) -> list[Any]:
    return list(itertools.islice(it, n))
