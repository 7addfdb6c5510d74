"""Acknowledged means committed: a server killed with SIGKILL right after answering loses nothing."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import httpx

from test_receive import event


def test_sigkill_after_acknowledged_writes_loses_nothing(server_factory: Any) -> None:
    server = server_factory()
    acknowledged: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def client(k: int) -> None:
        with httpx.Client(timeout=10) as c:
            i = 0
            while not stop.is_set():
                batch = [event(k * 100_000 + i + j) for j in range(k % 3 + 1)]
                i += len(batch)
                try:
                    r = c.post(server.url + "/api/v1/events", content=json.dumps(batch))
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    with lock:
                        acknowledged.update(e["event_id"] for e in r.json()["events"])

    threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    while True:
        with lock:
            if len(acknowledged) >= 300:
                break
        threading.Event().wait(0.01)
    server.kill()  # SIGKILL while clients are still sending
    stop.set()
    for t in threads:
        t.join()
    with lock:
        acked = set(acknowledged)
    restarted = server_factory(server.database)
    stored: set[str] = set()
    cursor = None
    while True:
        params: dict[str, str] = {"limit": "1000"}
        if cursor:
            params["cursor"] = cursor
        page = restarted.get("/api/v1/events", params=params).json()
        stored.update(e["event_id"] for e in page["events"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert acked <= stored, f"{len(acked - stored)} acknowledged events lost"
    # Resending everything after the restart stores nothing twice.
    some = [event(int(uuid.UUID(eid).int) - 1) for eid in sorted(acked)[:50]]
    r = restarted.post(json.dumps(some))
    assert r.json()["stored"] == 0 and r.json()["duplicates"] == 50
