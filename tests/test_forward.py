"""Forwarding through the outbox against the Splunk HEC stand-in: delivery in order, retries, dead letters,
pauses, several replicas, replay; and the ``spintrail sinks`` commands."""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from echo_samples import echo_event
from spintrail.decode import decode_body
from spintrail.forward import (
    Forwarder,
    SinkMetrics,
    dead_letter_rows,
    forwarded_event,
    replay,
    retry_dead_letters,
    sink_rows,
)
from spintrail.ingest import Ingestor
from spintrail.outbox import SqliteOutbox
from spintrail.settings import Settings
from spintrail.store.sqlite import SqliteStore
from splunk_standin import SplunkStandin

TOKEN = "3f0e8a55-94f1-4d0b-8d0e-6c1a2b3c4d5e"
FAST = {
    "forward_poll_interval": 0.1,
    "forward_retry_initial": 0.02,
    "forward_retry_max": 0.1,
}


def wait_until(check: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Harness:
    """A real SQLite store, the ingest path, and forwarders on it."""

    def __init__(self, path: Path, sinks: list[dict[str, Any]], **settings: Any) -> None:
        self.settings = Settings(database=str(path), sinks=sinks, **{**FAST, **settings})
        self.store = SqliteStore(path)
        self.ingestor = Ingestor(self.settings, self.store)
        self.forwarders: list[Forwarder] = []
        self.registry = CollectorRegistry()
        self.n = 0

    def forwarder(self, settings: Settings | None = None) -> Forwarder:
        registry = self.registry if not self.forwarders else CollectorRegistry()
        f = Forwarder(settings or self.settings, self.store, SinkMetrics(registry))
        self.forwarders.append(f)
        previous = self.store.commit_observer
        self.store.commit_observer = lambda s, n: (previous and previous(s, n), f.notify())
        return f.start()

    def ingest(self, count: int, **details: Any) -> list[str]:
        events = [echo_event(self.n + i, **details) for i in range(count)]
        self.n += count
        body = json.dumps(events).encode()
        self.ingestor.store_all([self.ingestor.prepare(e) for e in decode_body(body)])
        return [e["eventId"] for e in events]

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def close(self) -> None:
        for f in self.forwarders:
            f.stop()
        self.store.close()


@pytest.fixture
def hec() -> Iterator[SplunkStandin]:
    with SplunkStandin((TOKEN,)) as standin:
        yield standin


@pytest.fixture
def harness_factory(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(sinks: list[dict[str, Any]], **settings: Any) -> Harness:
        h = Harness(tmp_path / f"fwd{len(made)}.db", sinks, **settings)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def hec_sink(standin: SplunkStandin, **options: Any) -> dict[str, Any]:
    return {"name": "splunk", "kind": "splunk_hec", "url": standin.url, "token": TOKEN, **options}


def received_ids(standin: SplunkStandin) -> list[str]:
    return [e["fields"]["event_id"] for e in standin.events]


def test_every_event_is_delivered_once_in_order_with_its_id(
    hec: SplunkStandin, harness_factory: Callable[..., Harness]
) -> None:
    h = harness_factory([hec_sink(hec, payload="both", max_events=7)])
    h.forwarder()
    ids = h.ingest(20) + h.ingest(5)
    wait_until(lambda: len(hec.events) >= 25, what="25 events at the stand-in")
    time.sleep(0.2)
    assert received_ids(hec) == ids
    first = hec.events[0]["event"]
    stored = h.store.get_by_event_id(ids[0])
    assert stored is not None
    assert first["record"] == stored.to_api()
    assert first["event"] == echo_event(0)
    wait_until(lambda: h.metric("spintrail_sink_delivered_total", sink="splunk") == 25, what="metric")
    [row] = sink_rows(h.settings.sinks, h.forwarders[0].outbox)
    assert (row["delivered"], row["backlog"], row["dead_letters"], row["state"]) == (25, 0, 0, "idle")


def test_a_sink_that_is_busy_is_retried_with_backoff_and_nothing_is_lost(
    hec: SplunkStandin, harness_factory: Callable[..., Harness]
) -> None:
    h = harness_factory([hec_sink(hec, max_events=5)])
    hec.fail(9, times=3, after=1)  # the second request and two retries answer "Server is busy"
    h.forwarder()
    ids = h.ingest(12)
    wait_until(lambda: len(hec.events) >= 12, what="all events")
    time.sleep(0.2)
    assert received_ids(hec) == ids
    assert h.metric("spintrail_sink_failed_total", sink="splunk", kind="unavailable") == 3
    assert h.metric("spintrail_sink_delivered_total", sink="splunk") == 12
    state = h.forwarders[0].outbox.state("splunk")
    assert state is not None and "Server is busy" in (state.last_error or "")
    assert state.dead_letters == 0


def test_backoff_grows_exponentially_and_is_capped(
    hec: SplunkStandin, harness_factory: Callable[..., Harness]
) -> None:
    h = harness_factory([hec_sink(hec)], forward_retry_initial=0.05, forward_retry_max=0.2)
    hec.fail(9, times=6)
    h.forwarder()
    h.ingest(1)
    wait_until(lambda: len(hec.events) == 1, what="the event after six refusals")
    requests = hec.event_requests()
    assert len(requests) == 7
    gaps = [b.at - a.at for a, b in itertools.pairwise(requests)]
    # nominal waits 0.05, 0.1, 0.2 then capped at 0.2; each drawn from [half, all] of it
    for gap, nominal in zip(gaps, (0.05, 0.1, 0.2, 0.2, 0.2, 0.2), strict=True):
        assert nominal / 2 - 0.005 <= gap <= nominal + 0.15, gaps


def test_refused_event_is_dead_lettered_with_the_reason_and_the_rest_goes_on(
    hec: SplunkStandin, harness_factory: Callable[..., Harness]
) -> None:
    h = harness_factory([hec_sink(hec, max_events=4)])
    hec.fail(
        6, after=1
    )  # the second request: {"text":"Invalid data format","code":6,"invalid-event-number":0}
    h.forwarder()
    ids = h.ingest(10)
    wait_until(lambda: len(hec.events) >= 9, what="nine events")
    time.sleep(0.2)
    assert received_ids(hec) == ids[:4] + ids[5:]
    outbox = h.forwarders[0].outbox
    [letter] = dead_letter_rows(h.store, outbox, "splunk")
    assert letter["event_id"] == ids[4]
    assert "HEC code 6 (Invalid data format)" in letter["reason"]
    assert h.metric("spintrail_sink_failed_total", sink="splunk", kind="rejected") == 1
    [row] = sink_rows(h.settings.sinks, outbox)
    assert row["dead_letters"] == 1 and row["backlog"] == 0
    # Sent again by hand, the stand-in now accepts it: it leaves the dead letters.
    result = retry_dead_letters(h.store, outbox, h.settings.sinks[0])
    assert (result.events, result.sent, result.error) == (1, 1, None)
    assert received_ids(hec)[-1] == ids[4]
    assert dead_letter_rows(h.store, outbox, "splunk") == []


def test_unnamed_refusal_is_narrowed_down_to_the_one_bad_event(
    harness_factory: Callable[..., Harness],
) -> None:
    with SplunkStandin((TOKEN,), max_body=4000) as hec:
        h = harness_factory([hec_sink(hec, payload="event", start="beginning", max_bytes=10_000_000)])
        ids = h.ingest(3)
        big = h.ingest(1, padding="x" * 5000)
        ids += h.ingest(3)
        h.forwarder()
        wait_until(lambda: len(hec.events) >= 6, what="six events")
        time.sleep(0.2)
        assert received_ids(hec) == ids
        [letter] = dead_letter_rows(h.store, h.forwarders[0].outbox, "splunk")
        assert letter["event_id"] == big[0] and "HTTP 413" in letter["reason"]
        statuses = [r.status for r in hec.event_requests()]
        assert statuses[0] == 413  # the whole batch, then one event at a time
        assert statuses.count(413) == 2


def test_invalid_token_pauses_the_sink_until_resumed(
    hec: SplunkStandin, harness_factory: Callable[..., Harness]
) -> None:
    h = harness_factory([hec_sink(hec)], forward_auth_pause=0)
    hec.fail(4)
    h.forwarder()
    ids = h.ingest(5)
    outbox = h.forwarders[0].outbox

    def paused() -> bool:
        return sink_rows(h.settings.sinks, outbox)[0]["state"] == "paused"

    wait_until(paused, what="the sink to pause")
    row = sink_rows(h.settings.sinks, outbox)[0]
    assert "HEC code 4 (Invalid token)" in row["pause_reason"]
    assert row["paused_until"] == "resume by hand" and row["backlog"] == 5
    assert h.metric("spintrail_sink_failed_total", sink="splunk", kind="auth") == 1
    wait_until(lambda: h.metric("spintrail_sink_paused", sink="splunk") == 1, what="paused gauge")
    more = h.ingest(2)
    time.sleep(0.4)
    assert hec.events == []  # paused: nothing is sent, nothing is skipped
    SqliteOutbox(h.store.path).resume("splunk")  # what `spintrail sinks resume` does, from elsewhere
    wait_until(lambda: len(hec.events) >= 7, what="delivery after resume")
    assert received_ids(hec) == ids + more
    assert h.metric("spintrail_sink_paused", sink="splunk") == 0


def test_a_paused_sink_resumes_by_itself_after_the_pause(
    hec: SplunkStandin, harness_factory: Callable[..., Harness]
) -> None:
    h = harness_factory([hec_sink(hec)], forward_auth_pause=0.3)
    hec.fail(7)  # Incorrect index
    h.forwarder()
    started = time.monotonic()
    ids = h.ingest(3)
    wait_until(lambda: len(hec.events) == 3, what="delivery after the pause")
    assert time.monotonic() - started >= 0.3
    assert received_ids(hec) == ids


def test_two_replicas_deliver_each_event_once_and_hand_over(
    hec: SplunkStandin, harness_factory: Callable[..., Harness]
) -> None:
    h = harness_factory([hec_sink(hec, max_events=3)])
    first = h.forwarder()
    second = h.forwarder()
    ids = h.ingest(10)
    wait_until(lambda: len(hec.events) >= 10, what="ten events")
    time.sleep(0.3)
    assert received_ids(hec) == ids
    owner = first.outbox.state("splunk").owner  # type: ignore[union-attr]
    assert owner in (first.owner, second.owner)
    stopping, other = (first, second) if owner == first.owner else (second, first)
    stopping.stop()  # the owner stops and hands over at once
    ids += h.ingest(5)
    wait_until(lambda: len(hec.events) >= 15, what="delivery by the other replica")
    time.sleep(0.3)
    assert received_ids(hec) == ids
    assert other.outbox.state("splunk").owner == other.owner  # type: ignore[union-attr]


def test_a_new_sink_starts_now_unless_told_to_start_at_the_beginning(
    hec: SplunkStandin, harness_factory: Callable[..., Harness]
) -> None:
    h = harness_factory([hec_sink(hec)])
    old = h.ingest(3)
    h.forwarder()
    new = h.ingest(2)
    wait_until(lambda: len(hec.events) >= 2, what="new events")
    time.sleep(0.2)
    assert received_ids(hec) == new
    everything = Settings(
        database=h.settings.database, sinks=[hec_sink(hec, name="all", start="beginning")], **FAST
    )
    h.forwarder(everything)
    wait_until(lambda: len(hec.events) >= 7, what="history")
    assert received_ids(hec)[2:] == old + new


def test_replay_sends_a_range_again_without_moving_the_cursor(
    hec: SplunkStandin, harness_factory: Callable[..., Harness]
) -> None:
    h = harness_factory([hec_sink(hec)])
    h.forwarder()
    ids = h.ingest(6)
    wait_until(lambda: len(hec.events) >= 6, what="delivery")
    rows = [h.store.get_by_event_id(i).id for i in ids[2:5]]  # type: ignore[union-attr]
    progress: list[int] = []
    result = replay(h.store, h.settings.sinks[0], rows, batch=2, progress=progress.append)
    assert (result.events, result.sent, result.rejected, result.error) == (3, 3, [], None)
    assert sum(progress) == 3
    assert received_ids(hec) == ids + ids[2:5]
    assert h.forwarders[0].outbox.state("splunk").delivered == 6  # type: ignore[union-attr]


def test_forwarded_event_is_the_echo_event_whatever_envelope_it_arrived_in() -> None:
    event = echo_event(1)
    wrapped = json.dumps({"eventName": "spinnaker_events", "payload": event}).encode()
    assert forwarded_event(wrapped, "x") == event
    assert forwarded_event(json.dumps({"event": event}).encode(), "x") == event
    no_id = {k: v for k, v in event.items() if k != "eventId"}
    assert forwarded_event(json.dumps(no_id).encode(), "derived-id") == {**no_id, "eventId": "derived-id"}
    assert forwarded_event(None, "gone") == {"eventId": "gone"}


def test_a_sink_that_cannot_be_built_fails_forwarding_with_its_name(tmp_path: Path) -> None:
    from spintrail.forward import ForwardingError

    settings = Settings(
        database=str(tmp_path / "x.db"),
        sinks=[
            {
                "name": "tls-hec",
                "kind": "splunk_hec",
                "url": "https://h",
                "token": "t",
                "ca_file": "/nope.pem",
            }
        ],
    )
    store = SqliteStore(tmp_path / "x.db")
    try:
        with pytest.raises(ForwardingError, match="sink 'tls-hec' cannot be used: cannot load CA file"):
            Forwarder(settings, store)
    finally:
        store.close()


# ------------------------------------------------------------------------------------------------ CLI


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spintrail", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=120,
    )


def test_sinks_commands(hec: SplunkStandin, harness_factory: Callable[..., Harness], tmp_path: Path) -> None:
    config = tmp_path / "spintrail.toml"
    h = harness_factory([hec_sink(hec)], forward_auth_pause=0)
    config.write_text(
        f"""
database = "{h.store.path}"

[[sinks]]
name = "splunk"
kind = "splunk_hec"
[sinks.options]
url = "{hec.url}"
token = "{TOKEN}"

[[sinks]]
name = "archive"
kind = "webhook"
payload = "event"
url = "http://127.0.0.1:9/never-started"
"""
    )
    hec.fail(6)  # invalid-event-number 0: the first event is refused
    h.forwarder()
    ids = h.ingest(3)
    wait_until(lambda: len(hec.events) >= 2, what="delivery")
    time.sleep(0.3)

    listing = run("sinks", "--config", str(config), "--format", "json")
    assert listing.returncode == 0, listing.stderr
    rows = {r["name"]: r for r in json.loads(listing.stdout)}
    assert rows["splunk"]["delivered"] == 2 and rows["splunk"]["dead_letters"] == 1
    assert rows["splunk"]["backlog"] == 0 and rows["splunk"]["state"] == "idle"
    assert rows["archive"]["state"] == "new" and rows["archive"]["kind"] == "webhook"
    assert TOKEN not in listing.stdout

    as_csv = run("sinks", "--config", str(config), "--format", "csv")
    table = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["name"] for r in table] == ["splunk", "archive"]
    as_table = run("sinks", "--config", str(config))
    assert "splunk" in as_table.stdout and "archive" in as_table.stdout

    letters = run("sinks", "dead-letters", "splunk", "--config", str(config), "--format", "json")
    assert letters.returncode == 0, letters.stderr
    [letter] = json.loads(letters.stdout)
    assert letter["event_id"] == ids[0] and "Invalid data format" in letter["reason"]

    replayed = run("sinks", "replay", "splunk", "--since", "2024-06-14T00:00:00Z", "--config", str(config))
    assert replayed.returncode == 0, replayed.stderr
    assert received_ids(hec)[-3:] == ids

    retried = run("sinks", "dead-letters", "splunk", "--retry", "--config", str(config), "--format", "json")
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout)[0]["sent"] == 1
    assert (
        json.loads(run("sinks", "dead-letters", "splunk", "--config", str(config), "--format", "json").stdout)
        == []
    )

    hec.fail(4)
    ids += h.ingest(1)
    wait_until(
        lambda: (
            json.loads(run("sinks", "--config", str(config), "--format", "json").stdout)[0]["state"]
            == "paused"
        ),
        what="pause",
    )
    resumed = run("sinks", "resume", "splunk", "--config", str(config))
    assert resumed.returncode == 0 and "resumed" in resumed.stderr
    wait_until(lambda: received_ids(hec)[-1] == ids[-1], what="delivery after resume")

    unknown = run("sinks", "resume", "nope", "--config", str(config))
    assert unknown.returncode == 2 and "no sink named 'nope' (configured: splunk, archive)" in unknown.stderr
    since = "2024-06-14T00:00:00Z"
    down = run("sinks", "replay", "archive", "--since", since, "--retries", "1", "--config", str(config))
    assert down.returncode == 1 and "still down" in down.stderr
    bad_time = run("sinks", "replay", "splunk", "--since", "yesterday", "--config", str(config))
    assert bad_time.returncode == 2 and "since must be" in bad_time.stderr


def test_sinks_command_on_a_missing_database_says_what_to_do(tmp_path: Path) -> None:
    result = run("sinks", "--database", str(tmp_path / "nothing.db"))
    assert result.returncode == 1
    assert "no spintrail database at" in result.stderr


def test_duplicate_sink_names_are_refused(tmp_path: Path) -> None:
    sinks = json.dumps([{"name": "a", "kind": "webhook", "url": "http://x/y"}] * 2)
    result = run("sinks", "--database", str(tmp_path / "x.db"), env={"SPINTRAIL_SINKS": sinks})
    assert result.returncode == 1 and "two sinks are named 'a'" in result.stderr


def test_every_sink_option_is_documented() -> None:
    from spintrail.sinks import HecSinkConfig, SyslogSinkConfig, WebhookSinkConfig

    text = (Path(__file__).resolve().parents[1] / "docs" / "forwarding.md").read_text()
    for model in (HecSinkConfig, SyslogSinkConfig, WebhookSinkConfig):
        for name in model.model_fields:
            assert f"| `{name}` |" in text, f"{model.__name__}.{name} is not in docs/forwarding.md"
