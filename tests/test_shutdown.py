"""Graceful shutdown: SIGTERM stops accepting, finishes and commits requests in flight, runs the shutdown
hooks before the store closes, and the process exits within ``shutdown_grace_seconds`` whatever happens."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import Server, free_port
from loadgen import InProcessServer, post_json, stage_event, trickle_post
from spintrail.app import create_app
from spintrail.lifecycle import on_shutdown
from spintrail.server import WATCHDOG_EXIT
from spintrail.settings import Settings
from spintrail.store import StoreUnavailable
from spintrail.store.sqlite import SqliteStore


def stored_ids(database: str) -> set[str]:
    conn = sqlite3.connect(database)
    try:
        return {r[0] for r in conn.execute("SELECT event_id FROM events")}
    finally:
        conn.close()


def test_sigterm_finishes_requests_in_flight_and_exits_within_the_grace(tmp_path: Path) -> None:
    server = Server(str(tmp_path / "term.db"), env={"SPINTRAIL_SHUTDOWN_GRACE_SECONDS": "5"}).start()
    assert server.proc is not None
    lock = threading.Lock()
    acked: set[str] = set()
    failed: set[str] = set()
    stop = threading.Event()

    def client(k: int) -> None:
        n = k * 100_000
        with httpx.Client(timeout=10) as c:
            while not stop.is_set():
                batch = [stage_event(n + i) for i in range(3)]
                n += 3
                try:
                    r = post_json(c, server.url, batch)
                except httpx.HTTPError:
                    with lock:
                        failed.update(e["eventId"] for e in batch)
                    return
                with lock:
                    if r.status_code == 200:
                        acked.update(e["event_id"] for e in r.json()["events"])
                    else:
                        failed.update(e["eventId"] for e in batch)

    # A slow upload in flight when SIGTERM comes: its body takes 1.5 s, well within the grace.
    slow_event = stage_event(9_999_999)
    slow: list[tuple[int | None, bytes]] = []
    uploader = threading.Thread(
        target=lambda: slow.append(
            trickle_post(server.port, json.dumps(slow_event).encode(), seconds=1.5, pieces=15)
        )
    )
    clients = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in clients:
        t.start()
    uploader.start()
    time.sleep(0.4)
    term_at = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(OSError):  # no longer accepting, while the slow upload is still in flight
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
    server.proc.wait(10)
    exited_after = time.monotonic() - term_at
    stop.set()
    for t in [*clients, uploader]:
        t.join(10)

    assert exited_after < 5, f"exited {exited_after:.1f}s after SIGTERM, grace is 5s"
    assert slow and slow[0][0] == 200, slow
    assert len(acked) > 10
    stored = stored_ids(server.database)
    assert acked <= stored, f"{len(acked - stored)} acknowledged events lost"
    assert slow_event["eventId"] in stored


def test_a_request_slower_than_the_grace_is_cut_off_unacknowledged(tmp_path: Path) -> None:
    server = Server(
        str(tmp_path / "cut.db"),
        env={"SPINTRAIL_SHUTDOWN_GRACE_SECONDS": "2", "SPINTRAIL_BODY_READ_TIMEOUT_SECONDS": "60"},
    ).start()
    assert server.proc is not None
    event = stage_event(1)
    answer: list[tuple[int | None, bytes]] = []
    t = threading.Thread(
        target=lambda: answer.append(
            trickle_post(server.port, json.dumps(event).encode(), seconds=20, pieces=200, timeout=10)
        )
    )
    t.start()
    time.sleep(0.5)
    term_at = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(10)
    exited_after = time.monotonic() - term_at
    t.join(15)
    assert exited_after < 2.5, f"exited {exited_after:.1f}s after SIGTERM, grace is 2s"
    assert answer and answer[0][0] != 200, "a cut-off request must not be acknowledged"
    assert event["eventId"] not in stored_ids(server.database)


def test_shutdown_hooks_run_in_order_before_the_store_closes(tmp_path: Path) -> None:
    settings = Settings(database=str(tmp_path / "hooks.db"), shutdown_grace_seconds=3)
    store = SqliteStore(settings.database)
    app = create_app(settings, store, close_store=True)
    ran: list[str] = []

    def flush_outbox() -> None:  # what the forwarding outbox will do: write its position, then return
        from spintrail.decode import IncomingEvent

        e = stage_event(42)
        prepared = app.state.ingestor.prepare(IncomingEvent(event=e, raw=json.dumps(e).encode()))
        store.append([prepared])
        ran.append("flush")

    async def async_hook() -> None:
        ran.append("async")

    def broken() -> None:
        ran.append("broken")
        raise RuntimeError("sink unreachable")

    def hangs() -> None:
        ran.append("hangs")
        time.sleep(30)

    def after() -> None:
        ran.append("after")

    for hook in (flush_outbox, async_hook, broken, hangs, after):
        on_shutdown(app, hook)
    with InProcessServer(app, settings) as srv:
        assert httpx.get(srv.url + "/healthz").status_code == 200
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 4, "a hanging hook must not hold the shutdown past the grace"
    assert ran == ["flush", "async", "broken", "hangs"], "later hooks are skipped once the grace is used up"
    with pytest.raises(StoreUnavailable):
        store.submit([object()])  # type: ignore[list-item]
    assert stage_event(42)["eventId"] in stored_ids(settings.database)


WATCHDOG_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from spintrail.app import create_app
    from spintrail.lifecycle import on_shutdown
    from spintrail.server import run_server
    from spintrail.settings import Settings

    settings = Settings(database=sys.argv[1], port=int(sys.argv[2]), shutdown_grace_seconds=2)
    app = create_app(settings)

    async def blocks_the_loop() -> None:  # a bug no timeout can interrupt
        time.sleep(3600)

    on_shutdown(app, blocks_the_loop)
    run_server(app, settings)
    """
)


def test_watchdog_ends_the_process_when_shutdown_overruns_the_grace(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", WATCHDOG_SCRIPT, str(tmp_path / "wd.db"), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "server did not start"
            time.sleep(0.05)
        r = httpx.post(f"http://127.0.0.1:{port}/api/v1/events", content=json.dumps(stage_event(5)))
        assert r.status_code == 200
        term_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(10)
        exited_after = time.monotonic() - term_at
    finally:
        if proc.poll() is None:
            proc.kill()
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert code == WATCHDOG_EXIT, output
    assert 1.8 < exited_after < 2.6, exited_after
    assert "shutdown grace period over" in output
    assert stage_event(5)["eventId"] in stored_ids(str(tmp_path / "wd.db"))
