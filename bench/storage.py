"""Storage: bytes on disk per event and as a fraction of the raw JSON received, part by part.

The realistic mix is ingested directly through the Ingestor and the store (``bench/load.py``, no HTTP),
then the database is checkpointed and measured: SQLite with the ``dbstat`` virtual table (every table and
index), PostgreSQL with ``pg_relation_size`` (TOAST included). A sample of events spread over the stream is
then read back and compared byte for byte (SHA-256 of the bytes sent) with what the store returns.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import procs
from bench.backends import size_breakdown


@dataclass
class StorageResult:
    events: int
    raw_bytes: int
    disk_bytes: int
    parts: dict[str, int]
    ingest_seconds: float
    ingest_busy_seconds: float
    verified: int = 0
    mismatched: int = 0
    raw_read_ms: list[float] = field(default_factory=list)

    @property
    def per_event(self) -> float:
        return self.disk_bytes / max(self.events, 1)

    @property
    def fraction(self) -> float:
        return self.disk_bytes / max(self.raw_bytes, 1)


def fill(
    database: str,
    count: int,
    *,
    seed: int = 1,
    days: float = 90.0,
    progress: bool = False,
    max_seconds: float | None = None,
) -> dict:
    """Ingest ``count`` events of the mix into ``database`` (a subprocess on the server core).

    With ``max_seconds`` the fill stops after that long: the answer's ``events`` says how many it holds
    and ``stopped_early`` that it is fewer than asked.
    """
    cmd = procs.pinned(
        [
            sys.executable,
            str(Path(__file__).with_name("load.py")),
            "--database",
            database,
            "--count",
            str(count),
            "--seed",
            str(seed),
            "--days",
            str(days),
            *(["--progress"] if progress else []),
            *(["--max-seconds", str(max_seconds)] if max_seconds else []),
        ],
        procs.SERVER_CORE,
    )
    out = subprocess.run(cmd, stdout=subprocess.PIPE, check=True, timeout=6 * 3600)
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


def measure(database: str, loaded: dict) -> StorageResult:
    """Sizes of a filled database, and the byte-for-byte check of the sampled events."""
    from spintrail.store import open_store

    total, parts = size_breakdown(database)
    res = StorageResult(
        events=loaded["events"],
        raw_bytes=loaded["raw_bytes"],
        disk_bytes=total,
        parts=parts,
        ingest_seconds=loaded["seconds"],
        ingest_busy_seconds=loaded["busy_seconds"],
    )
    store = open_store(database)
    try:
        for event_id, digest in loaded["sample"]:
            rec = store.get_by_event_id(event_id)
            t = time.perf_counter()
            raw = store.raw(rec.id) if rec is not None and rec.id is not None else None
            res.raw_read_ms.append((time.perf_counter() - t) * 1000)
            res.verified += 1
            if raw is None or hashlib.sha256(raw).hexdigest() != digest:
                res.mismatched += 1
    finally:
        store.close()
    return res
