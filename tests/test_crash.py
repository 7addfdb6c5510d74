"""Crash under load: SIGKILL at random moments, twenty times; every acknowledged event is stored exactly once.

Several clients send batches of stage events (stored as zstd deltas of each other) without pause, like echo
under a burst. The server is killed with SIGKILL at a random moment and restarted, twenty times. Clients
resend whatever was not acknowledged, as echo's retries do, also across restarts. At the end every event
ever acknowledged is stored exactly once, nothing is stored that was never sent, the raw bytes are the ones
sent, and the store passes ``Store.check`` (SQLite integrity, raw blobs, delta bases, tags, full text).
Set ``SPINTRAIL_CRASH_SEED`` to replay a run's kill moments.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Server
from loadgen import event_id, jitter, post_json, stage_event
from spintrail.store.sqlite import SqliteStore

KILLS = 20
CLIENTS = 4


class Ledger:
    """What the clients sent, what was acknowledged, and what waits to be resent."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.next_n = 0
        self.sent: set[int] = set()
        self.acked: set[int] = set()
        self.unacked: list[int] = []
        self.requests_ok = 0

    def take(self, k: int) -> list[int]:
        with self.lock:
            if self.unacked:
                batch, self.unacked = self.unacked[:k], self.unacked[k:]
                return batch
            batch = list(range(self.next_n, self.next_n + k))
            self.next_n += k
            self.sent.update(batch)
            return batch

    def done(self, batch: list[int], acked: bool) -> None:
        with self.lock:
            if acked:
                self.acked.update(batch)
                self.requests_ok += 1
            else:
                self.unacked.extend(batch)


def start_quickly(server: Server) -> Server:
    """``Server.start`` with a cheaper readiness poll (a socket, not a new HTTP client each time)."""
    cmd = [
        sys.executable,
        "-m",
        "spintrail",
        "serve",
        "--port",
        str(server.port),
        "--database",
        server.database,
    ]
    assert server.log_path is not None
    server.proc = subprocess.Popen(
        cmd, env=server.env, stdout=server.log_path.open("ab"), stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert server.proc.poll() is None, server.log()
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=0.5).close()
            return server
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"server did not start: {server.log()}")


def client(url: str, ledger: Ledger, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    with httpx.Client(timeout=5) as c:
        while not stop.is_set():
            batch = ledger.take(rng.randint(1, 3))
            try:
                r = post_json(c, url, [stage_event(n) for n in batch])
            except httpx.HTTPError:
                ledger.done(batch, False)
                return
            ok = r.status_code == 200
            if ok:
                assert [e["event_id"] for e in r.json()["events"]] == [event_id(n) for n in batch]
            ledger.done(batch, ok)


def test_sigkill_twenty_times_under_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    seed = int(os.environ.get("SPINTRAIL_CRASH_SEED", str(time.time_ns() % 1_000_000)))
    rng = random.Random(seed)
    database = str(tmp_path / "crash.db")
    ledger = Ledger()
    started = time.monotonic()
    for kill in range(KILLS):
        server = start_quickly(Server(database))
        stop = threading.Event()
        threads = [
            threading.Thread(target=client, args=(server.url, ledger, stop, seed * 100 + kill * 10 + k))
            for k in range(CLIENTS)
        ]
        for t in threads:
            t.start()
        time.sleep(jitter(rng, 0.05, 0.5))
        server.kill()
        stop.set()
        for t in threads:
            t.join(10)
        assert server.proc is not None and server.proc.returncode == -9, f"kill {kill} (seed {seed})"
    elapsed = time.monotonic() - started

    # Restart once more and resend everything never acknowledged: each is stored once, or is a duplicate.
    server = Server(database).start()
    with httpx.Client(timeout=10) as c:
        pending = sorted(ledger.unacked)
        for i in range(0, len(pending), 50):
            batch = pending[i : i + 50]
            r = post_json(c, server.url, [stage_event(n) for n in batch])
            assert r.status_code == 200, r.text
    server.stop()
    assert server.proc is not None and server.proc.poll() is not None

    assert ledger.requests_ok > KILLS * 5, "the load was too light to mean anything"
    conn = sqlite3.connect(database)
    counts = dict(conn.execute("SELECT event_id, count(*) FROM events GROUP BY event_id").fetchall())
    conn.close()
    acked = {event_id(n) for n in ledger.acked}
    sent = {event_id(n) for n in ledger.sent}
    assert not acked - counts.keys(), f"{len(acked - counts.keys())} acknowledged events lost (seed {seed})"
    assert all(c == 1 for c in counts.values()), f"events stored twice (seed {seed})"
    assert counts.keys() <= sent, "stored events that were never sent"
    assert counts.keys() == sent, "after the final resend every event sent is stored"

    store = SqliteStore(database)
    try:
        report = store.check()
        assert report.ok, [f"{p.check}: {p.message}" for p in report.problems]
        assert report.checks["raw_sha256"] == len(sent)
        for n in rng.sample(sorted(ledger.acked), 50):
            record = store.get_by_event_id(event_id(n))
            assert record is not None and record.id is not None
            raw = store.raw(record.id)
            assert raw is not None and json.loads(raw) == stage_event(n)
    finally:
        store.close()
    print(f"{KILLS} kills in {elapsed:.1f}s, {len(acked)} events acknowledged, seed {seed}")


def test_writer_outlives_a_commit_that_breaks_its_connection(tmp_path: Path) -> None:
    """Whatever a commit raises, even from ROLLBACK, the writer thread survives and takes the next job."""
    from spintrail.decode import IncomingEvent
    from spintrail.ingest import Ingestor
    from spintrail.settings import Settings
    from spintrail.store import StoreUnavailable

    store = SqliteStore(tmp_path / "w.db")
    ingestor = Ingestor(Settings(database=str(tmp_path / "w.db")), store)

    def prepared(n: int) -> list[Any]:
        e = stage_event(n)
        return [ingestor.prepare(IncomingEvent(event=e, raw=json.dumps(e).encode()))]

    def breaks_connection(conn: Any, written: list[Any]) -> None:
        conn.close()  # then COMMIT and ROLLBACK both fail on a closed connection
        raise RuntimeError("boom")

    try:
        store.write_hooks.append(breaks_connection)
        with pytest.raises(StoreUnavailable):
            store.submit(prepared(1)).result(timeout=10)  # before the fix the writer died: a hang
        store.write_hooks.clear()
        assert store.submit(prepared(2)).result(timeout=10)[0].duplicate is False
        store.ping()
        assert store.get_by_event_id(event_id(1)) is None
        assert store.get_by_event_id(event_id(2)) is not None
        assert store.pending == 0
    finally:
        store.close()
