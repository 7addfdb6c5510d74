"""Memory is bounded per request whatever the body holds: a real server process, its resident memory read
from /proc, and bodies of countless tiny events on both ingest routes."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import Server

MAX_BODY = 32 * 1024 * 1024  # the default max_body_bytes
MiB = 1024 * 1024
MINIMAL = b'{"details":{"type":"t"}}\n'


def memory(server: Server) -> dict[str, int]:
    """The server process's resident memory now (VmRSS) and at its peak (VmHWM), in bytes."""
    assert server.proc is not None
    fields = {}
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("memory")
    env = {"SPINTRAIL_WRITE_QUEUE_MAX": "20000", "SPINTRAIL_CHECKPOINT_SECONDS": "3600"}
    server = Server(str(directory / "m.db"), env=env).start()
    # Warm up both routes so what is measured is the request, not first-use imports.
    assert server.post(MINIMAL * 10).status_code == 200
    assert httpx.post(server.url + "/services/collector/event", content=b'{"event":"x"}', timeout=30)
    yield server
    server.stop()


def test_a_body_of_countless_tiny_events_is_refused_with_little_memory(live: Server) -> None:
    """31 MiB of minimal events: 1.4 GB and 51 s before there was a limit per request."""
    body = MINIMAL * (31 * MiB // len(MINIMAL))
    hec_body = (b'{"event":{"details":{"type":"t"}}}\n') * (31 * MiB // 35)
    for name, path, content in (
        ("api", "/api/v1/events", body),
        ("hec", "/services/collector/event", hec_body),
    ):
        before = memory(live)["VmRSS"]
        started = time.monotonic()
        r = httpx.post(live.url + path, content=content, timeout=120)
        took = time.monotonic() - started
        grown = memory(live)["VmHWM"] - before
        assert r.status_code == 413, (name, r.status_code, r.text[:300])
        assert "max_events_per_request" in r.text and "10000" in r.text, r.text
        if name == "hec":
            assert r.json()["code"] == 6 and r.json()["text"] == "Invalid data format"
        else:
            assert r.json()["error"] == "too_many_events"
        assert grown < 3 * MAX_BODY, f"{name}: the request added {grown / MiB:.0f} MiB"
        assert took < 30, took


def test_the_most_events_a_request_may_hold_are_stored_within_bounds(live: Server) -> None:
    events = [
        json.dumps({"details": {"type": "t", "source": "s", "application": "a"}, "eventId": f"m-{n}"})
        for n in range(10000)
    ]
    before = memory(live)["VmRSS"]
    r = live.post("\n".join(events))
    grown = memory(live)["VmHWM"] - before
    assert r.status_code == 200, r.text[:300]
    assert r.json()["stored"] == 10000
    assert grown < 3 * MAX_BODY, f"the request added {grown / MiB:.0f} MiB"
    r = live.post("\n".join([*events, '{"details":{"type":"t"},"eventId":"one-more"}']))
    assert r.status_code == 413 and "max_events_per_request" in r.json()["message"]
    assert live.get("/api/v1/events/one-more").status_code == 404


def test_large_events_are_counted_by_their_memory(live: Server) -> None:
    """9,000 events of 3.4 KB fit max_events_per_request and max_body_bytes, but would take more memory
    than one request may."""
    heavy = "\n".join([json.dumps({"details": {"type": "t"}, "content": {"s": "x" * 3400}})] * 9000)
    assert len(heavy) < MAX_BODY
    r = live.post(heavy)
    assert r.status_code == 413 and "memory" in r.json()["message"], r.text[:300]


def test_the_write_queue_bounds_the_events_of_a_request(tmp_path: Path) -> None:
    server = Server(str(tmp_path / "q.db"), env={"SPINTRAIL_WRITE_QUEUE_MAX": "50"}).start()
    try:
        r = server.post(MINIMAL * 51)
        assert r.status_code == 413 and "write_queue_max" in r.json()["message"], r.text
        r = httpx.post(server.url + "/services/collector/event", content=b'{"event":"x"}' * 51, timeout=30)
        assert r.status_code == 413 and r.json()["code"] == 6 and "write_queue_max" in r.text
        assert server.post(MINIMAL * 50).status_code == 200
    finally:
        server.stop()


def test_splunk_clients_see_the_refusals_with_a_code(tmp_path: Path) -> None:
    """413 and the in-flight 503 on the Splunk-compatible route carry a HEC code (Splunk's client
    libraries read success from a body without one), and every 503 says when to retry."""
    env = {"SPINTRAIL_MAX_BODY_BYTES": str(MiB), "SPINTRAIL_MAX_INFLIGHT_BYTES": str(MiB)}
    server = Server(str(tmp_path / "s.db"), env=env).start()
    hec = server.url + "/services/collector/event"
    try:
        r = httpx.post(hec, content=b'{"event":"' + b"x" * MiB + b'"}', timeout=30)
        assert r.status_code == 413 and r.json()["code"] == 6 and r.json()["detail"], r.text
        with socket.create_connection(("127.0.0.1", server.port)) as holder:
            # A slow upload holds 900 kB of the in-flight budget while the others arrive.
            holder.sendall(
                b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 900000\r\n\r\n" + b" " * 1000
            )
            time.sleep(0.5)
            body = b'{"event":{"details":{"type":"t"}},"pad":"' + b"x" * 300_000 + b'"}'
            r = httpx.post(hec, content=body, timeout=30)
            assert r.status_code == 503, r.text
            assert r.json()["code"] == 9 and r.json()["text"] == "Server is busy"
            assert int(r.headers["Retry-After"]) >= 1
            r = server.post(b'{"details":{"type":"t"},"pad":"' + b"x" * 300_000 + b'"}')
            assert r.status_code == 503 and r.json()["error"] == "overloaded"
            assert int(r.headers["Retry-After"]) >= 1
    finally:
        server.stop()
