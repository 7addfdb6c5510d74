"""Group commit: the writer holds a commit open for events that requests are still preparing.

A commit costs the CPU of several events, so under load ``commit_wait`` lets the events of requests in
progress (``Store.arrival``) share one; with no request in progress a commit starts at once, whatever the
setting. Both backends' writers gather the same way.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import new_pg_schema, require_pg
from echo_samples import echo_event
from spintrail.decode import IncomingEvent
from spintrail.ingest import Ingestor
from spintrail.settings import Settings
from spintrail.store import Store, open_store


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "g.db")
        return
    require_pg()
    url, drop = new_pg_schema()
    yield url
    drop()


def _events(ingestor: Ingestor, *ns: int) -> list:
    return [ingestor.prepare(IncomingEvent(echo_event(n), b"")) for n in ns]


def test_a_commit_waits_for_a_request_in_progress_and_no_longer(database: str) -> None:
    store: Store = open_store(database)
    ingestor = Ingestor(Settings(database=database), store)
    groups: list[int] = []
    store.commit_observer = lambda seconds, events: groups.append(events)  # type: ignore[attr-defined]
    store.commit_wait = 30.0  # longer than the test: what ends each wait is what the test does
    try:
        arrival = store.arrival()
        first = store.submit(_events(ingestor, 1))
        time.sleep(0.3)
        assert not first.done()  # held open for the request still preparing its events
        second = store.submit(_events(ingestor, 2, 3))
        arrival.done()
        assert [r.duplicate for r in first.result(10) + second.result(10)] == [False] * 3
        assert groups[-1] == 3  # one commit for both requests

        # With nothing in progress a commit starts at once, well before commit_wait runs out.
        started = time.monotonic()
        store.append(_events(ingestor, 4))
        assert time.monotonic() - started < 10 and groups[-1] == 1

        # A request that fails before submitting (a refused body) releases the wait too.
        failed = store.arrival()
        third = store.submit(_events(ingestor, 5))
        failed.done()
        failed.done()  # idempotent
        third.result(10)
        assert groups[-1] == 1
    finally:
        ingestor.trust.close()
        store.close()
