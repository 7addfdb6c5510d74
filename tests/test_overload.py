"""Overload: a full write queue or in-flight byte budget is refused at once; memory stays bounded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from fastapi import Request
from fastapi.responses import JSONResponse

from conftest import Server
from loadgen import InProcessServer, RssSampler, post_json, stage_event, vm_rss_kib
from spintrail.app import create_app
from spintrail.guard import InflightBytes, OverBudget, Reservation
from spintrail.receive import RequestRejected, read_body
from spintrail.settings import Settings
from spintrail.store.sqlite import SqliteStore


def test_full_write_queue_answers_503_with_retry_after_at_once(tmp_path: Path) -> None:
    settings = Settings(database=str(tmp_path / "q.db"), write_queue_max=5, commit_batch_max=5)
    store = SqliteStore(settings.database, batch_max=5, queue_max=5)
    gate = threading.Event()
    in_hook = threading.Event()

    def slow_writer(conn: Any, written: list[Any]) -> None:  # a disk that has stalled
        in_hook.set()
        gate.wait(20)

    store.write_hooks.append(slow_writer)
    app = create_app(settings, store)
    try:
        with (
            InProcessServer(app, settings) as srv,
            httpx.Client(timeout=20) as c,
            httpx.Client(timeout=20) as c2,
        ):
            first: list[httpx.Response] = []
            t = threading.Thread(
                target=lambda: first.append(post_json(c, srv.url, [stage_event(n) for n in range(5)]))
            )
            t.start()
            assert in_hook.wait(10), "the first request never reached the writer"

            # Everything else is refused at once while the writer is stuck: one client, one at a time ...
            seconds = []
            for k in range(10):
                t0 = time.perf_counter()
                r = post_json(c2, srv.url, [stage_event(100 + k * 5 + i) for i in range(5)])
                seconds.append(time.perf_counter() - t0)
                assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
                assert r.json()["error"] == "overloaded"
                assert "waiting to be committed" in r.json()["message"]
            seconds.sort()
            assert seconds[5] < 0.1 and seconds[-1] < 1, f"refusals took {seconds}"

            # ... and many at once: all refused long before the stuck writer (20 s) would let go.
            def refused(n: int) -> int:
                with httpx.Client(timeout=20) as own:
                    return post_json(
                        own, srv.url, [stage_event(200 + n * 5 + i) for i in range(5)]
                    ).status_code

            t0 = time.perf_counter()
            with ThreadPoolExecutor(10) as pool:
                codes = list(pool.map(refused, range(30)))
            assert codes == [503] * 30 and time.perf_counter() - t0 < 8
            assert store.stats().events == 0

            gate.set()
            t.join(20)
            assert first[0].status_code == 200 and first[0].json()["stored"] == 5
            # Once the writer catches up the same events are taken: nothing refused was half-stored.
            r = post_json(c, srv.url, [stage_event(100 + i) for i in range(5)])
            assert r.status_code == 200 and r.json()["stored"] == 5
            metrics = c.get(srv.url + "/metrics").text
            assert 'spintrail_requests_rejected_total{reason="overloaded"} 40.0' in metrics
    finally:
        gate.set()
        store.close()


def test_inflight_budget_admits_a_lone_request_and_refuses_beyond_the_limit() -> None:
    budget = InflightBytes(1000)
    big = Reservation(budget)
    big.take(5000)  # alone: admitted even though over the limit, so any body can get through eventually
    other = Reservation(budget)
    try:
        other.take(1)
        raise AssertionError("admitted over the limit")
    except OverBudget as exc:
        assert "5000 bytes of requests are in flight, the limit is 1000" in str(exc)
    big.take(100)  # more for the request already holding bytes: it is alone, still admitted
    big.release()
    assert budget.used == 0
    a, b = Reservation(budget), Reservation(budget)
    a.take(600)
    b.take(400)
    try:
        b.take(1)
        raise AssertionError("admitted over the limit")
    except OverBudget:
        pass
    a.release()
    b.release()
    assert budget.used == 0 and budget.peak == 5100 and budget.refused == 2


def flood(server: Server, clients: int, seconds: float) -> dict[str | int, int]:
    """Clients posting ~4 MB bodies of large stage events back to back; returns the answers by status."""
    codes: dict[str | int, int] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def client(k: int) -> None:
        i = 0
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                events = [stage_event(k * 1_000_000 + i + j, stages=60, payload=4000) for j in range(16)]
                i += 16
                try:
                    key: str | int = post_json(c, server.url, events).status_code
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                with lock:
                    codes[key] = codes.get(key, 0) + 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(60)
    return codes


def test_memory_stays_bounded_under_a_flood_of_large_events(server_factory: Any) -> None:
    # 24 clients x 4 MB bodies: unbounded, the server holds ~100 MB of bodies and their decoded JSON at
    # once (RSS measured at +400 MiB); with an 8 MiB budget it takes what it can and refuses the rest.
    server: Server = server_factory(env={"SPINTRAIL_MAX_INFLIGHT_BYTES": str(8 << 20)})
    assert server.proc is not None
    base = vm_rss_kib(server.proc.pid)
    with RssSampler(server.proc.pid) as rss:
        codes = flood(server, clients=24, seconds=3)
    grown_mib = (rss.peak_kib - base) / 1024
    assert codes.get(200, 0) >= 10, codes
    assert codes.get(503, 0) >= 10, codes
    assert set(codes) <= {200, 503}, f"only stored or refused, never a broken connection: {codes}"
    # The raw-delta cache alone may hold up to 64 MiB of recent events; the rest is the budget's doing.
    assert grown_mib < 160, f"RSS grew by {grown_mib:.0f} MiB under the flood ({codes})"
    metrics = server.get("/metrics").text
    assert "spintrail_inflight_bytes 0.0" in metrics
    r = server.post(json.dumps([stage_event(5_000_000)]))
    assert r.status_code == 200, r.text


def test_any_endpoint_reading_a_body_takes_part_in_the_budget(tmp_path: Path) -> None:
    """Endpoints other than the echo webhook (e.g. a Splunk-compatible collector) that read their body with
    ``read_body`` are bounded alike, and their bytes are given back when the request ends, even on error."""
    settings = Settings(database=str(tmp_path / "b.db"), max_inflight_bytes=4096)
    app = create_app(settings)
    entered = threading.Event()
    gate = threading.Event()

    @app.post("/other")
    async def other(request: Request) -> JSONResponse:
        try:
            body = await read_body(request, settings.max_body_bytes)
        except RequestRejected as exc:
            return exc.response()
        if body == b"hold":
            entered.set()
            while not gate.is_set():  # holds its bytes, like a request waiting for its commit
                await asyncio.sleep(0.01)
        if body == b"fail":
            raise RuntimeError("boom")
        return JSONResponse({"n": len(body), "in_flight": app.state.inflight.used})

    with InProcessServer(app, settings) as srv, httpx.Client(timeout=10) as c:
        assert c.post(srv.url + "/other", content=b"x" * 3000).json() == {"n": 3000, "in_flight": 3000}
        assert app.state.inflight.used == 0
        holder = threading.Thread(target=lambda: c.post(srv.url + "/other", content=b"hold"))
        holder.start()
        assert entered.wait(10)
        with httpx.Client(timeout=10) as c2:
            r = c2.post(srv.url + "/other", content=b"y" * 4093)
            assert r.status_code == 503 and r.json()["error"] == "overloaded"
            gate.set()
            holder.join(10)
            with contextlib.suppress(httpx.HTTPError):
                c2.post(srv.url + "/other", content=b"fail")
        assert app.state.inflight.used == 0, "bytes of finished requests must be given back"
