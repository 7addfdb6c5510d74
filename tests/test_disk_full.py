"""Full disk, on a real small filesystem: 507 and a clear log line, nothing acknowledged that was not stored,
and recovery by itself once space is freed.

The store lives on a freshly mounted 24 MiB filesystem, tmpfs and ext4 on a loop device (mounting needs
root; the tests skip and say so elsewhere). A filler file takes all but a few hundred KiB; events are sent
until the disk is full; then the filler is deleted and ingest must work again without a restart.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import Server
from loadgen import small_filesystem, stage_event
from spintrail.store.sqlite import SqliteStore


def noisy_event(n: int) -> dict[str, object]:
    """A stage event with 8 KB of incompressible text, so the disk fills after a few events."""
    event = stage_event(n)
    event["content"]["noise"] = os.urandom(4096).hex()  # type: ignore[index]
    return event


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path, leave: int) -> Path:
    filler = path / "filler"
    size = max(0, free_bytes(path) - leave)
    with filler.open("wb") as fp:
        os.posix_fallocate(fp.fileno(), 0, size)
        fp.flush()
        os.fsync(fp.fileno())
    return filler


@pytest.mark.parametrize("kind", ["tmpfs", "ext4"])
def test_full_disk_answers_507_stores_nothing_unacknowledged_and_recovers(kind: str, tmp_path: Path) -> None:
    mount = tmp_path / "disk"
    try:
        ctx = small_filesystem(mount, kind, 24)
        ctx.__enter__()
    except PermissionError as exc:
        pytest.skip(f"cannot mount a small {kind} filesystem here ({exc}); the full-disk test needs root")
    server = Server(str(mount / "spintrail.db"))
    server.log_path = tmp_path / "server.log"  # not on the disk that is about to fill up
    try:
        server.start()
        acked: set[str] = set()
        refused: set[str] = set()
        with httpx.Client(timeout=30) as c:

            def send(n: int) -> httpx.Response:
                r = c.post(server.url + "/api/v1/events", content=json.dumps(noisy_event(n)))
                if r.status_code == 200:
                    acked.add(r.json()["events"][0]["event_id"])
                return r

            for n in range(20):
                assert send(n).status_code == 200
            filler = fill(mount, leave=400 << 10)
            n = 20
            while True:
                t0 = time.perf_counter()
                r = send(n)
                n += 1
                if r.status_code != 200:
                    break
                assert n < 2000, "the disk never filled up"
            assert r.status_code == 507, r.text
            assert time.perf_counter() - t0 < 5
            assert r.json()["error"] == "disk_full" and "disk is full" in r.json()["message"]
            refused.add(stage_event(n - 1)["eventId"])  # type: ignore[arg-type]
            for _ in range(5):  # still full: refused quickly every time, nothing acknowledged
                t0 = time.perf_counter()
                r = send(n)
                assert r.status_code == 507 and time.perf_counter() - t0 < 5
                refused.add(stage_event(n)["eventId"])  # type: ignore[arg-type]
                n += 1

            # Concurrent requests share group commits: a whole group fails alike, all refused.
            def batch(k: int) -> tuple[int, list[str]]:
                events = [noisy_event(100_000 + k * 10 + i) for i in range(5)]
                with httpx.Client(timeout=30) as own:
                    r = own.post(server.url + "/api/v1/events", content=json.dumps(events))
                return r.status_code, [e["eventId"] for e in events]  # type: ignore[misc]

            with ThreadPoolExecutor(8) as pool:
                burst = list(pool.map(batch, range(8)))
            assert [code for code, _ in burst] == [507] * 8
            refused.update(eid for _, ids in burst for eid in ids)
            assert "spintrail_store_disk_full 1.0" in c.get(server.url + "/metrics").text
            assert c.get(server.url + "/readyz").status_code == 200  # reads still work

            filler.unlink()  # space comes back: no restart, the next request is stored
            r = send(n)
            assert r.status_code == 200, r.text
            assert "spintrail_store_disk_full 0.0" in c.get(server.url + "/metrics").text
            for k in range(n + 1, n + 20):
                assert send(k).status_code == 200
        server.stop()
        log = server.log()
        assert "DISK FULL: cannot commit" in log and "disk space is back" in log, log
        assert log.count("DISK FULL") <= 2, "one log line per episode, not one per request"

        conn = sqlite3.connect(server.database)
        stored = {row[0] for row in conn.execute("SELECT event_id FROM events")}
        conn.close()
        assert acked <= stored, f"{len(acked - stored)} acknowledged events lost"
        assert not refused & stored, "an event answered 507 was stored"
        store = SqliteStore(server.database)
        try:
            report = store.check()
            assert report.ok, report.problems
        finally:
            store.close()
    finally:
        server.stop()
        ctx.__exit__(None, None, None)
