"""Forwarding end to end with real processes: spintrail -> HEC -> a second spintrail, a receiver that is down
while 1,000 events arrive, spintrail -> a real rsyslogd over TCP, TLS and UDP, and ingest latency with dead
sinks."""

from __future__ import annotations

import json
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Server, free_port
from echo_samples import echo_event
from syslog_server import RsyslogServer, msg_text, rsyslog, structured_data

__all__ = ["rsyslog"]  # the module-scoped rsyslogd fixture

TOKEN = "b6a3c1d2-7e8f-4a5b-9c0d-1e2f3a4b5c6d"
FAST = {
    "SPINTRAIL_FORWARD_POLL_INTERVAL": "0.1",
    "SPINTRAIL_FORWARD_RETRY_INITIAL": "0.05",
    "SPINTRAIL_FORWARD_RETRY_MAX": "0.3",
}
VOLATILE = ("id", "received_at")


def sender_env(*sinks: dict[str, Any]) -> dict[str, str]:
    return {"SPINTRAIL_SINKS": json.dumps(list(sinks)), **FAST}


def all_records(server: Server) -> list[dict[str, Any]]:
    """Every record on the server, in store order."""
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
        page = server.get("/api/v1/events", params=params).json()
        out += page["events"]
        cursor = page["next_cursor"]
        if not cursor:
            return sorted(out, key=lambda r: r["id"])


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def sink_row(server: Server, name: str) -> dict[str, Any]:
    rows = {r["name"]: r for r in server.get("/api/v1/sinks").json()["sinks"]}
    return rows[name]


def metric(server: Server, sample: str) -> float | None:
    for line in server.get("/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return None


def test_forward_over_hec_into_a_second_spintrail(server_factory: Any, tmp_path: Path) -> None:
    receiver = server_factory(str(tmp_path / "receiver.db"), env={"SPINTRAIL_HEC_TOKENS": TOKEN})
    sink = {
        "name": "downstream",
        "kind": "splunk_hec",
        "url": receiver.url,
        "token": TOKEN,
        "payload": "event",
    }
    sender = server_factory(str(tmp_path / "sender.db"), env=sender_env(sink))

    events = [echo_event(i) for i in range(30)]
    no_id = {k: v for k, v in echo_event(30).items() if k != "eventId"}  # old echo: id derived from content
    flat = echo_event(31)
    flat = {**flat, "details": json.dumps(flat["details"]), "content": json.dumps(flat["content"])}
    wrapped = {"eventName": "spinnaker_events", "payload": echo_event(32)}
    headers = {"X-Spinnaker-Instance": "prod-us"}
    assert sender.post(events[:20], headers=headers).status_code == 200
    for body in (*events[20:], no_id, flat, wrapped):
        assert sender.post(body, headers=headers).status_code == 200

    wait_until(lambda: len(all_records(receiver)) >= 33, 30, "33 records at the receiver")
    time.sleep(0.3)
    sent, got = all_records(sender), all_records(receiver)
    assert len(got) == 33
    assert [r["event_id"] for r in got] == [r["event_id"] for r in sent]
    for mine, theirs in zip(sent, got, strict=True):
        assert {k: v for k, v in theirs.items() if k not in VOLATILE} == {
            k: v for k, v in mine.items() if k not in VOLATILE
        }
    assert got[0]["spinnaker_instance"] == "prod-us" and got[0]["user"] == "dana@example.com"
    # The receiver keeps the echo event itself as its raw evidence.
    first = receiver.get(f"/api/v1/events/{got[0]['event_id']}/raw").content
    assert json.loads(first) == events[0]

    row = sink_row(sender, "downstream")
    assert (row["state"], row["backlog"], row["delivered"], row["dead_letters"]) == ("idle", 0, 33, 0)
    assert metric(sender, 'spintrail_sink_delivered_total{sink="downstream"}') == 33
    assert metric(sender, 'spintrail_sink_backlog{sink="downstream"}') == 0
    assert metric(receiver, "spintrail_events_stored_total") == 33


def test_events_ingested_while_the_receiver_is_down_all_arrive_once_in_order(
    server_factory: Any, tmp_path: Path
) -> None:
    receiver = server_factory(str(tmp_path / "receiver.db"), env={"SPINTRAIL_HEC_TOKENS": TOKEN})
    sink = {
        "name": "downstream",
        "kind": "splunk_hec",
        "url": receiver.url,
        "token": TOKEN,
        "payload": "event",
    }
    sender = server_factory(str(tmp_path / "sender.db"), env=sender_env(sink))
    receiver.stop()

    started = time.monotonic()
    for batch in range(10):
        body = [echo_event(1000 + batch * 100 + i) for i in range(100)]
        r = sender.post(body)
        assert r.status_code == 200 and r.json()["stored"] == 100
    ingest_seconds = time.monotonic() - started
    wait_until(lambda: sink_row(sender, "downstream")["state"] == "retrying", 10, "the sink to be retrying")
    row = sink_row(sender, "downstream")
    assert row["backlog"] == 1000 and row["delivered"] == 0
    assert "cannot reach" in row["last_error"]
    assert (metric(sender, 'spintrail_sink_failed_total{kind="unavailable",sink="downstream"}') or 0) >= 1

    receiver.start()
    wait_until(lambda: sink_row(sender, "downstream")["backlog"] == 0, 60, "the backlog to drain")
    got = all_records(receiver)
    sent = all_records(sender)
    assert len(got) == 1000
    assert len({r["event_id"] for r in got}) == 1000
    assert [r["event_id"] for r in got] == [r["event_id"] for r in sent]  # in order
    assert sink_row(sender, "downstream")["delivered"] == 1000
    print(f"ingested 1000 events with the sink down in {ingest_seconds:.2f} s")


class BlackHole:
    """A TCP port that completes connections (kernel backlog) and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


def interleaved_latencies(servers: list[Server], n: int, offset: int) -> list[list[float]]:
    """POST ``n`` single events to each server, alternating, so every server sees the same machine load."""
    times: list[list[float]] = [[] for _ in servers]
    with httpx.Client(timeout=30) as client:
        for i in range(n):
            body = json.dumps(echo_event(offset + i)).encode()
            for k, server in enumerate(servers):
                started = time.perf_counter()
                r = client.post(server.url + "/api/v1/events", content=body)
                times[k].append(time.perf_counter() - started)
                assert r.status_code == 200
    return times


def test_dead_and_hanging_sinks_do_not_slow_ingest(
    server_factory: Any, tmp_path: Path, black_hole: BlackHole
) -> None:
    baseline = server_factory(str(tmp_path / "plain.db"))
    sinks = [
        {"name": "refused", "kind": "splunk_hec", "url": f"http://127.0.0.1:{free_port()}", "token": TOKEN},
        {"name": "hanging", "kind": "webhook", "url": f"http://127.0.0.1:{black_hole.port}/x", "timeout": 30},
    ]
    env = {
        **sender_env(*sinks),
        "SPINTRAIL_FORWARD_RETRY_INITIAL": "0.01",
        "SPINTRAIL_FORWARD_RETRY_MAX": "0.02",
    }
    with_dead = server_factory(str(tmp_path / "dead.db"), env=env)
    interleaved_latencies([baseline, with_dead], 5, 0)  # warm up
    base, dead = (statistics.median(t) for t in interleaved_latencies([baseline, with_dead], 60, 100))
    print(f"median ingest latency: {base * 1000:.1f} ms without sinks, {dead * 1000:.1f} ms with dead sinks")
    assert dead < base * 2 + 0.01
    assert sink_row(with_dead, "refused")["state"] == "retrying"
    assert sink_row(with_dead, "refused")["backlog"] == 65
    assert sink_row(with_dead, "hanging")["backlog"] == 65


def test_records_forwarded_by_the_server_arrive_in_rsyslog(
    server_factory: Any, tmp_path: Path, rsyslog: RsyslogServer
) -> None:
    sinks: list[dict[str, Any]] = [
        {
            "name": "tcp",
            "kind": "syslog",
            "host": "127.0.0.1",
            "port": rsyslog.tcp_port,
            "app_name": "st-tcp",
        },
        {
            "name": "udp",
            "kind": "syslog",
            "host": "127.0.0.1",
            "port": rsyslog.udp_port,
            "transport": "udp",
            "app_name": "st-udp",
            "max_udp_bytes": 8000,
        },
    ]
    if rsyslog.tls_port and rsyslog.pki:
        sinks.append(
            {
                "name": "tls",
                "kind": "syslog",
                "host": "127.0.0.1",
                "port": rsyslog.tls_port,
                "transport": "tls",
                "ca_file": str(rsyslog.pki.ca_cert),
                "app_name": "st-tls",
                "payload": "both",
            }
        )
    server = server_factory(str(tmp_path / "syslog.db"), env=sender_env(*sinks))
    odd = echo_event(7)
    odd["content"]["execution"]["authentication"]["user"] = 'o"brien]\\ops@example.com'
    odd["content"]["execution"]["trigger"]["user"] = 'o"brien]\\ops@example.com'
    events = [echo_event(i) for i in range(4)] + [odd]
    assert server.post(events, headers={"X-Spinnaker-Instance": "prod-us"}).status_code == 200
    records = all_records(server)
    ids = [r["event_id"] for r in records]

    for app in ("st-tcp", "st-udp") + (("st-tls",) if len(sinks) == 3 else ()):
        messages = rsyslog.wait_for(app, 5, timeout=15)
        assert len(messages) == 5, (
            f"{app}: {[m.get('rawmsg') for m in messages]}"
        )  # framing: none split/merged
        sds = [structured_data(m, "spintrail@32473") for m in messages]
        assert sorted(sd["event_id"] for sd in sds) == sorted(ids)
        by_id = {sd["event_id"]: (sd, m) for sd, m in zip(sds, messages, strict=True)}
        sd, message = by_id[records[-1]["event_id"]]
        assert sd["user"] == 'o"brien]\\ops@example.com'  # escaped on the wire, parsed back by rsyslog
        assert sd["spinnaker_instance"] == "prod-us"
        assert sd["account"] == ",".join(records[-1]["accounts"]) and sd["type"] == records[-1]["type"]
        assert message["app-name"] == app
        payload = json.loads(msg_text(message))
        if app == "st-tls":
            assert payload["record"] == records[-1]
            assert payload["event"]["eventId"] == records[-1]["event_id"]
        else:
            assert payload == records[-1]
    assert sink_row(server, "tcp")["delivered"] == 5
