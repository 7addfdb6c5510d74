"""Signed checkpoints forwarded to sinks: a real server sends each new checkpoint to the HEC stand-in of a
sink with ``checkpoints`` on (and not to the others), the notes open with the server's verifier key, and a
sink that is down costs neither the writer nor the request, only a logged, counted failure."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from conftest import Server
from echo_samples import echo_event
from spintrail import checkpoint
from spintrail.checkpoint_forward import CHECKPOINT_TYPE, CheckpointForwarder
from spintrail.integrity import StoredCheckpoint
from spintrail.sinks import WebhookSink, WebhookSinkConfig
from splunk_standin import SplunkStandin

TOKEN = "b6a3c1d2-7e8f-4a5b-9c0d-1e2f3a4b5c6d"


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def checkpoints_in(standin: SplunkStandin) -> list[dict[str, Any]]:
    return [e["event"] for e in list(standin.events) if e["event"].get("type") == CHECKPOINT_TYPE]


def test_each_signed_checkpoint_reaches_the_chosen_sinks(server_factory: Any, tmp_path: Path) -> None:
    with SplunkStandin((TOKEN,)) as chosen, SplunkStandin((TOKEN,)) as other:
        sinks = [
            {"name": "siem", "kind": "splunk_hec", "url": chosen.url, "token": TOKEN, "checkpoints": True},
            {"name": "plain", "kind": "splunk_hec", "url": other.url, "token": TOKEN},
        ]
        env = {
            "SPINTRAIL_SINKS": json.dumps(sinks),
            "SPINTRAIL_CHECKPOINT_EVENTS": "2",
            "SPINTRAIL_CHECKPOINT_SECONDS": "3600",
            "SPINTRAIL_FORWARD_POLL_INTERVAL": "0.1",
        }
        server: Server = server_factory(str(tmp_path / "a.db"), env=env)
        key = server.get("/api/v1/integrity/key").json()
        # the first checkpoint is signed right at start-up, of the empty log
        wait_until(lambda: len(checkpoints_in(chosen)) == 1, 15, "the start-up checkpoint")
        for n in range(4):
            assert server.post(echo_event(n)).status_code in (200, 202)
        wait_until(lambda: any(c["size"] == 4 for c in checkpoints_in(chosen)), 15, "checkpoint of size 4")
        assert server.post(echo_event(4)).status_code in (200, 202)
        wait_until(lambda: len(other.events) == 5, 15, "the events at the plain sink")
        server.stop()  # the final checkpoint (size 5) is signed at shutdown and still sent

        got = checkpoints_in(chosen)
        sizes = [c["size"] for c in got]
        assert sizes[0] == 0 and sizes[-1] == 5 and sizes == sorted(sizes)
        for message in got:
            opened = checkpoint.open_checkpoint(message["note"], key["verifier_key"], origin=key["origin"])
            assert (opened.size, message["origin"]) == (message["size"], key["origin"])
            assert message["root"] in message["note"]
            assert message["time"].endswith("Z")
        # HEC envelope: the checkpoint is one event, with an id naming it
        ids = [e["fields"]["event_id"] for e in chosen.events if e["event"].get("type") == CHECKPOINT_TYPE]
        assert all(i.startswith("checkpoint-") for i in ids) and len(set(ids)) == len(ids)
        # the audit events themselves still arrive, and the plain sink never sees a checkpoint
        assert len([e for e in chosen.events if e["event"].get("type") != CHECKPOINT_TYPE]) == 5
        assert checkpoints_in(other) == []
        # every checkpoint the server stored was sent
        server.start()
        listed = server.get("/api/v1/integrity/checkpoints").json()["checkpoints"]
        assert {c["note"] for c in listed if c["size"] <= 5} <= {c["note"] for c in got}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cp(n: int) -> StoredCheckpoint:
    return StoredCheckpoint(n, n, bytes(32), 1_718_370_000_000, f"example/log\n{n}\nroot\n\n— sig\n")


def _sample(registry: CollectorRegistry, name: str, sink: str) -> float:
    return registry.get_sample_value(name, {"sink": sink}) or 0.0


def test_a_sink_that_is_down_is_retried_then_counted_without_blocking() -> None:
    config = WebhookSinkConfig(name="down", url=f"http://127.0.0.1:{_closed_port()}/", timeout=1)
    registry = CollectorRegistry()
    fwd = CheckpointForwarder([WebhookSink(config)], registry, attempts=3, retry_initial=0.01).start()
    try:
        started = time.monotonic()
        for n in range(3):
            fwd.offer(_cp(n))
        assert time.monotonic() - started < 0.1  # offering never waits for the sink
        wait_until(
            lambda: _sample(registry, "spintrail_checkpoint_forward_failed_total", "down") == 3,
            10,
            "failures",
        )
        assert _sample(registry, "spintrail_checkpoint_forward_sent_total", "down") == 0
    finally:
        fwd.stop()


def test_a_busy_sink_gets_the_checkpoint_on_a_retry() -> None:
    with SplunkStandin((TOKEN,)) as hec:
        from spintrail.sinks import HecSink, HecSinkConfig

        hec.fail(9, times=2)  # "Server is busy" twice, then accepted
        sink = HecSink(HecSinkConfig(name="hec", url=hec.url, token=TOKEN, checkpoints=True))
        registry = CollectorRegistry()
        fwd = CheckpointForwarder([sink], registry, attempts=4, retry_initial=0.01).start()
        try:
            fwd.offer(_cp(7))
            wait_until(lambda: len(checkpoints_in(hec)) == 1, 10, "the checkpoint")
            assert checkpoints_in(hec)[0]["size"] == 7
            assert checkpoints_in(hec)[0]["origin"] == "example/log"
            assert _sample(registry, "spintrail_checkpoint_forward_failed_total", "hec") == 0
        finally:
            fwd.stop()
        assert _sample(registry, "spintrail_checkpoint_forward_sent_total", "hec") == 1
