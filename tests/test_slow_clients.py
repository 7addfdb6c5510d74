"""Slow clients over raw sockets: slowloris headers and trickling bodies starve no one and are cut off."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import httpx

from conftest import Server
from loadgen import closed_by_peer, raw_request_head, read_response, stage_event, trickle_post

FAST = {
    "SPINTRAIL_HEADER_READ_TIMEOUT_SECONDS": "1",
    "SPINTRAIL_BODY_READ_TIMEOUT_SECONDS": "1",
}


def slowloris(port: int, stop: threading.Event, closed: list[float], started: float) -> None:
    """Send a request head one byte at a time, a byte every 0.2 s, until the server hangs up."""
    head = raw_request_head(100) + b"x" * 100
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        for byte in head[:-10]:  # never complete
            if stop.is_set():
                return
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            if closed_by_peer(sock, 0.2):
                break
        else:
            return
        closed.append(time.monotonic() - started)
    finally:
        sock.close()


def test_fifty_slowloris_connections_do_not_starve_normal_requests(server_factory: Any) -> None:
    server: Server = server_factory(env=FAST)
    stop = threading.Event()
    closed: list[float] = []
    started = time.monotonic()
    lorises = [
        threading.Thread(target=slowloris, args=(server.port, stop, closed, started)) for _ in range(50)
    ]
    for t in lorises:
        t.start()
    # Bodies that trickle in too: 10 requests with complete headers sending 10 bytes a second.
    trickled: list[tuple[int | None, bytes]] = []
    body = json.dumps(stage_event(1)).encode()
    tricklers = [
        threading.Thread(
            target=lambda: trickled.append(trickle_post(server.port, body, seconds=60, pieces=600))
        )
        for _ in range(10)
    ]
    for t in tricklers:
        t.start()
    time.sleep(0.2)
    latencies = []
    with httpx.Client(timeout=10) as c:
        for n in range(40):
            t0 = time.perf_counter()
            r = c.post(server.url + "/api/v1/events", content=json.dumps(stage_event(100 + n)))
            latencies.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
            if n % 10 == 9:  # and new connections are accepted too
                assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200
    latencies.sort()
    assert latencies[20] < 0.2 and latencies[-1] < 1, f"normal requests beside slow clients took {latencies}"
    for t in tricklers:
        t.join(15)
    for t in lorises:
        t.join(15)
    stop.set()
    # The server hung up on every slowloris after the header deadline, and answered 408 to every trickler.
    assert len(closed) == 50 and all(0.8 < s < 4 for s in closed), sorted(closed)
    assert [status for status, _ in trickled] == [408] * 10
    assert all(b"connection: close" in raw.lower() and b"body_timeout" in raw for _, raw in trickled)
    assert (
        server.get("/api/v1/events?limit=1000").json()["events"][-1]["event_id"] != stage_event(1)["eventId"]
    ), "a body cut off by the timeout was stored"
    assert 'spintrail_requests_rejected_total{reason="body_timeout"} 10.0' in server.get("/metrics").text


def test_idle_connection_is_closed_after_the_header_deadline(server_factory: Any) -> None:
    server: Server = server_factory(env=FAST)
    sock = socket.create_connection(("127.0.0.1", server.port))
    try:
        t0 = time.monotonic()
        assert closed_by_peer(sock, 6)
        assert 0.8 < time.monotonic() - t0 < 3
    finally:
        sock.close()


def test_kept_alive_connection_still_works_and_a_stalled_next_request_is_cut(server_factory: Any) -> None:
    server: Server = server_factory(
        env={"SPINTRAIL_HEADER_READ_TIMEOUT_SECONDS": "2", "SPINTRAIL_KEEP_ALIVE_TIMEOUT_SECONDS": "30"}
    )
    body = json.dumps(stage_event(7)).encode()
    sock = socket.create_connection(("127.0.0.1", server.port))
    try:
        for _ in range(3):  # a well-behaved client reuses the connection, beyond the header deadline
            sock.sendall(raw_request_head(len(body)) + body)
            status, _ = read_response(sock, 5)
            assert status == 200
            time.sleep(0.8)
    finally:
        sock.close()
    # A client whose second request stalls mid-headers right after the first, then never sends another byte.
    sock = socket.create_connection(("127.0.0.1", server.port))
    try:
        sock.sendall(raw_request_head(len(body)) + body)
        assert read_response(sock, 5)[0] == 200
        sock.sendall(b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\n")
        t0 = time.monotonic()
        assert closed_by_peer(sock, 6), "a stalled request head must not keep the connection forever"
        assert 1.7 < time.monotonic() - t0 < 4
    finally:
        sock.close()
    # A body in flight is not mistaken for stalled headers: a 3 s upload with a 2 s header deadline.
    status, _ = trickle_post(server.port, body, seconds=3, pieces=30)
    assert status == 200


def test_oversized_headers_are_refused_and_the_connection_closed(server_factory: Any) -> None:
    server: Server = server_factory(env={"SPINTRAIL_MAX_HEADER_BYTES": "4096"})
    sock = socket.create_connection(("127.0.0.1", server.port))
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n")
        status, _ = read_response(sock, 5)
        assert status == 400
        assert closed_by_peer(sock, 5)
    finally:
        sock.close()
    assert httpx.get(server.url + "/healthz", headers={"X-Ok": "a" * 3000}).status_code == 200


def test_connection_limit_answers_503_and_recovers(server_factory: Any) -> None:
    server: Server = server_factory(env={**FAST, "SPINTRAIL_MAX_CONNECTIONS": "20"})
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
    try:
        time.sleep(0.2)
        t0 = time.perf_counter()
        r = httpx.get(server.url + "/healthz", timeout=5)
        assert r.status_code == 503 and time.perf_counter() - t0 < 1
        assert int(r.headers["Retry-After"]) >= 1 and r.json()["error"] == "overloaded"
        r = httpx.post(server.url + "/services/collector/event", content=b'{"event":"x"}', timeout=5)
        assert r.status_code == 503 and r.json() == {"text": "Server is busy", "code": 9}
        assert int(r.headers["Retry-After"]) >= 1
    finally:
        for s in idle:
            s.close()
    time.sleep(0.2)
    assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200
