"""PostgreSQL specifics: partitions, replicas sharing one database, a database restart during ingest,
migrations run by several processes at once, and full-text answers equal to SQLite's."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from conftest import PG_URL, Server, make_record, require_pg
from echo_gen import DAY, ingest, pipeline_run
from spintrail.query import Filters
from spintrail.store import PreparedEvent, StoreOverloaded, StoreUnavailable, open_store
from spintrail.store.base import Written
from spintrail.store.postgres import PostgresStore, month_of, months_ahead
from test_receive import event

NOW = int(time.time() * 1000)


def prepared(n: int, text: str = "", **fields: Any) -> PreparedEvent:
    return PreparedEvent(record=make_record(n, **fields), raw=json.dumps({"n": n}).encode(), text=text)


def where(store: PostgresStore, event_id: str) -> tuple[str, str]:
    """The partitions holding an event's row and its raw blob."""
    rows = store._read(
        "SELECT e.tableoid::regclass::text, r.tableoid::regclass::text FROM events e"
        " JOIN raw r ON r.id = e.raw_id AND r.time = e.time WHERE e.event_id = %s",
        (event_id,),
    )
    return rows[0][0], rows[0][1]


def test_partitions_ahead_on_demand_and_default(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    try:
        tables = {
            r[0] for r in store._read("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        }
        for m in months_ahead(NOW):
            assert {m.events_table, m.raw_table} <= tables
        old = NOW - 4 * 365 * DAY
        store.append([prepared(1, time=old), prepared(2, time=1000), prepared(3, time=NOW + 5 * 365 * DAY)])
        m = month_of(old)
        assert m is not None
        assert where(store, "evt-000001") == (m.events_table, m.raw_table)
        # Outside the partition window (1970, five years ahead): the default partitions take them.
        assert where(store, "evt-000002") == ("events_default", "raw_default")
        assert where(store, "evt-000003") == ("events_default", "raw_default")
        assert [r.event_id for r in store.search(Filters(), limit=10).records] == [
            "evt-000003",
            "evt-000001",
            "evt-000002",
        ]
        assert store.stats().extra["partitions"] >= 4
    finally:
        store.close()


def test_rows_in_the_default_partition_move_when_their_month_gets_one(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    try:
        t = NOW - 2 * 365 * DAY
        m = month_of(t)
        assert m is not None
        store._month_retry[m.key] = time.monotonic() + 3600  # as if creating it had failed (a lock timeout)
        run = pipeline_run("MOVE", t, stages=2)
        results = ingest(store, run[:4])
        assert where(store, run[0]["eventId"]) == ("events_default", "raw_default")
        store._month_retry.clear()
        results += ingest(store, run[4:])  # the same month again: now the partition is created
        for e in run:
            assert where(store, e["eventId"]) == (m.events_table, m.raw_table)
        assert store._read("SELECT count(*) FROM events_default")[0][0] == 0
        # The delta chain spanning the move is intact.
        for e, r in zip(run, results, strict=True):
            assert store.raw(r.id) == json.dumps(e, separators=(",", ":")).encode()
    finally:
        store.close()


def test_two_stores_claiming_the_same_events_at_once_store_each_once(pg_url: str) -> None:
    a, b = PostgresStore(pg_url), PostgresStore(pg_url)
    outcomes: list[tuple[str, bool]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def writer(store: PostgresStore, seed: int) -> None:
        rnd = random.Random(seed)
        try:
            for k in range(15):
                batch = [prepared(n, execution_id=f"E{n % 7}") for n in range(k * 10, k * 10 + 20)]
                rnd.shuffle(batch)
                res = store.append(batch)
                with lock:
                    outcomes.extend((p.record.event_id, r.duplicate) for p, r in zip(batch, res, strict=True))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(s, k)) for k, s in enumerate((a, b, a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors
        stored = [e for e, dup in outcomes if not dup]
        assert len(stored) == len(set(stored)) == 160  # each event stored by exactly one writer
        assert a.stats().events == 160
        # No raw blob was left behind by a writer that lost a race.
        assert a._read("SELECT count(*) FROM raw")[0][0] == 160
        for r in a.search(Filters(), limit=1000).records:
            assert b.raw(r.id) == json.dumps({"n": int(r.event_id[4:])}).encode()
    finally:
        a.close()
        b.close()


def test_migrations_from_many_processes_at_once_and_components(pg_url: str) -> None:
    stores: list[PostgresStore] = []
    errors: list[BaseException] = []

    def opener() -> None:
        try:
            s = PostgresStore(pg_url)
            s.migrate_component("outbox", [(1, "CREATE TABLE outbox (id bigint PRIMARY KEY, sink text)")])
            stores.append(s)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        rows = stores[0]._read("SELECT component, version FROM schema_migrations ORDER BY 1, 2")
        assert rows == [
            ("events", 1),
            ("events-keys", 1),
            ("events-reports", 1),
            ("events-reports", 2),
            ("outbox", 1),
        ]
        # A component's write hook writes with the writer's connection, inside the commit.
        store = stores[0]

        def hook(conn: psycopg.Connection[Any], written: list[Written]) -> None:
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO outbox VALUES (%s, 'splunk')", [(w.id,) for w in written])
            if any(w.item.record.event_id == "evt-000666" for w in written):
                raise RuntimeError("hook refused")

        store.write_hooks.append(hook)
        res = store.append([prepared(1), prepared(2)])
        with pytest.raises(StoreUnavailable, match="hook refused"):
            store.append([prepared(666)])
        conn = store.connect()
        try:
            assert [r[0] for r in conn.execute("SELECT id FROM outbox ORDER BY id")] == [r.id for r in res]
        finally:
            conn.close()
        assert store.get_by_event_id("evt-000666") is None
        assert store._read("SELECT count(*) FROM raw")[0][0] == 2
    finally:
        for s in stores:
            s.close()


TEXTS = [
    "Resize Server Group: checkout-prod-v042 alice@example.com OPS-77",
    "Deploy to Prod checkout-prod-v043 bob@example.com",
    "bake ami-0abc snake_case_name CamelCaseName",
    "Déploiement résumé naïve Ünïcödé ÉTÉ",
    "数据 部署 服务器 日本語テキスト",
    "v1.2.3 10.0.0.1 2024-06-14T13:01:35Z 0xdeadbeef",
    "tab\tseparated\nnew line 'quoted' \"double\" back\\slash",
]
QUERIES = [
    "checkout-prod-v042",
    "prod-v04",
    "checkout",
    "checkout bob",
    '"server group"',
    "alice@example.com",
    "example.com",
    "ops-77",
    "snake_case",
    "case_name",
    "camelcase",
    "resume",
    "Résumé",
    "ete",
    "unicode",
    "部署",
    "1.2",
    "10.0.0",
    "2024-06-14",
    "0xdead",
    "'quoted'",
    "back\\slash",
    "new line",
    "tab separated",
    '"',
    "AND",
    "OR NOT",
    "NEAR(",
    "*",
    ":*",
    "a & b | !c",
    "<->",
    "\\",
    "🙂",
]


def test_full_text_answers_equal_sqlites(tmp_path: Path, pg_url: str) -> None:
    answers = {}
    for db in (str(tmp_path / "fts.db"), pg_url):
        store = open_store(db)
        try:
            store.append([prepared(i + 1, text=t) for i, t in enumerate(TEXTS)])
            answers[store.backend] = {
                q: [r.id for r in store.search(Filters.from_params({"q": q}), limit=50).records]
                for q in QUERIES
            }
        finally:
            store.close()
    assert answers["postgresql"] == answers["sqlite"]
    assert answers["postgresql"]["prod-v04"] == [2, 1]
    assert answers["postgresql"]["resume"] == [4]
    assert answers["postgresql"]["部署"] == [5]


def test_text_postgresql_cannot_hold_is_kept_readable(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    try:
        raw = b'{"description": "a\\u0000b \\ud800"}'
        [r] = store.append(
            [
                PreparedEvent(
                    record=make_record(1, description="a\x00b \ud800", accounts=["p\x00"], user="u\x00"),
                    raw=raw,
                    text="a\x00b",
                )
            ]
        )
        got = store.get(r.id)
        assert got is not None and got.description == "a\ufffdb \ufffd" and got.accounts == ["p\ufffd"]
        assert store.raw(r.id) == raw
        assert [x.id for x in store.search(Filters.from_params({"user": "u\x00"})).records] == [r.id]
        assert [x.id for x in store.search(Filters.from_params({"account": "p\x00"})).records] == [r.id]
        # Out-of-range numbers are simply not found.
        assert store.get(2**70) is None and store.raw(-(2**70)) is None
        assert store.search(Filters(since=2**70)).records == []
    finally:
        store.close()


def test_database_unreachable_is_a_clear_error(tmp_path: Path) -> None:
    from test_cli import run

    bad = "postgresql://spintrail:s3cret@127.0.0.1:1/spintrail"
    with pytest.raises(StoreUnavailable, match="cannot connect to PostgreSQL") as info:
        PostgresStore(bad, connect_timeout=2)
    assert "s3cret" not in str(info.value) and "***" in str(info.value)
    r = run("search", "--database", bad)
    assert r.returncode == 1 and "cannot connect to PostgreSQL" in r.stderr and "s3cret" not in r.stderr
    # serve waits for the database instead of exiting (an orchestrator would restart it in a loop),
    # saying why once per interval; SIGTERM ends it.
    err = tmp_path / "serve.err"
    with err.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spintrail", "serve", "--database", bad, "--port", "0"],
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
        try:
            deadline = time.monotonic() + 30
            while "cannot connect to PostgreSQL" not in err.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, err.read_text()
                time.sleep(0.2)
            time.sleep(2.5)
            text = err.read_text()
            assert proc.poll() is None and "retrying" in text, text
            assert "s3cret" not in text and text.count("cannot connect to PostgreSQL") == 1, text
        finally:
            proc.terminate()
            proc.wait(10)


def test_server_on_postgresql_end_to_end(server_factory: Any, pg_url: str) -> None:
    server: Server = server_factory(pg_url, env={"SPINTRAIL_RAW_EVENTS": "keep"})
    assert server.get("/readyz").json() == {"status": "ready", "store": "postgresql"}
    r = server.post([event(1), event(2), event(1)])
    assert r.status_code == 200 and (r.json()["stored"], r.json()["duplicates"]) == (2, 1)
    first = r.json()["events"][0]["id"]
    assert server.get(f"/api/v1/events/{first}/raw").content == json.dumps(event(1)).encode()
    assert server.get("/api/v1/events?q=checkout-prod-v002").json()["events"][0]["execution_id"] == "EXEC2"
    page = server.get("/api/v1/events?limit=1").json()
    assert len(page["events"]) == 1 and page["next_cursor"]
    rest = server.get("/api/v1/events", params={"limit": "5", "cursor": page["next_cursor"]}).json()
    assert [e["execution_id"] for e in rest["events"]] == ["EXEC1"]
    assert server.get("/api/v1/executions/EXEC1").status_code == 200


def test_two_servers_on_one_database_store_each_event_once(server_factory: Any, pg_url: str) -> None:
    a: Server = server_factory(pg_url)
    b: Server = server_factory(pg_url)
    events = [event(n) for n in range(240)]
    stored: list[str] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client(server: Server, seed: int) -> None:
        rnd = random.Random(seed)
        order = events[:]
        rnd.shuffle(order)
        with httpx.Client(timeout=30) as c:
            for k in range(0, len(order), 8):
                r = c.post(server.url + "/api/v1/events", content=json.dumps(order[k : k + 8]))
                with lock:
                    if r.status_code != 200:
                        failures.append(r.text)
                        continue
                    stored.extend(e["event_id"] for e in r.json()["events"] if not e["duplicate"])

    threads = [threading.Thread(target=client, args=(s, k)) for k, s in enumerate((a, b, a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert len(stored) == len(set(stored)) == 240
    ids = set()
    cursor = None
    while True:
        page = a.get(
            "/api/v1/events", params={"limit": "100", **({"cursor": cursor} if cursor else {})}
        ).json()
        ids.update(e["event_id"] for e in page["events"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert ids == {e["eventId"] for e in events}
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM raw").fetchone() == (240,)


def _cluster() -> tuple[str, str] | None:
    """(version, name) of the local PostgreSQL cluster when this process may restart it."""
    if shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir() or os.geteuid() != 0:
        return None
    versions = sorted(p.name for p in Path("/etc/postgresql").iterdir() if (p / "main").is_dir())
    return (versions[-1], "main") if versions else None


def _pg_ctl(action: str, cluster: tuple[str, str]) -> None:
    args = ["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, action]
    if action == "stop":
        args += ["-m", "fast"]
    for attempt in range(3):  # the shared server must come back even if a first start fails
        done = subprocess.run(args, capture_output=True, text=True, timeout=60)
        if done.returncode == 0 or (action == "start" and "already running" in done.stderr):
            return
        if attempt == 2:
            raise AssertionError(f"pg_ctlcluster {action} failed: {done.stderr}")
        time.sleep(1)


def _wait(predicate: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return False


def test_postgresql_restart_during_ingest_loses_nothing_acknowledged(
    server_factory: Any, pg_url: str
) -> None:
    require_pg()
    cluster = _cluster()
    if cluster is None:
        pytest.skip("needs root and pg_ctlcluster to restart the local PostgreSQL")
    server: Server = server_factory(pg_url)
    acked: set[str] = set()
    statuses: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(k: int) -> None:
        n = 0
        with httpx.Client(timeout=20) as c:
            while not stop.is_set():
                batch = [event(k * 1_000_000 + n + j) for j in range(3)]
                n += 3
                try:
                    r = c.post(server.url + "/api/v1/events", content=json.dumps(batch))
                except httpx.HTTPError:
                    continue
                with lock:
                    statuses.append(r.status_code)
                    if r.status_code == 200:
                        acked.update(e["event_id"] for e in r.json()["events"])
                    else:
                        assert r.status_code == 503, r.text
                        assert r.headers.get("Retry-After")
                if r.status_code != 200:
                    time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        assert _wait(lambda: len(acked) >= 150, 30)
        _pg_ctl("stop", cluster)
        try:
            # While the database is down: ingest answers 503 (echo retries), /readyz says why.
            assert _wait(lambda: 503 in statuses[-5:], 15), statuses[-20:]
            ready = server.get("/readyz")
            assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
            assert "PostgreSQL" in ready.json()["reason"] or "postgresql" in ready.json()["reason"].lower()
            with lock:
                before_restart = len(acked)
        finally:
            _pg_ctl("start", cluster)
        # Back by itself, no restart of spintrail.
        assert _wait(lambda: server.get("/readyz").status_code == 200, 30)
        assert _wait(lambda: len(acked) >= before_restart + 150, 30)
    finally:
        stop.set()
        for t in threads:
            t.join()
    stored: set[str] = set()
    cursor = None
    while True:
        params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
        page = server.get("/api/v1/events", params=params).json()
        stored.update(e["event_id"] for e in page["events"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert acked <= stored, f"{len(acked - stored)} acknowledged events lost"
    assert 503 in statuses


def test_pg_url_helper_isolates_tests(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        schema = conn.execute("SELECT current_schema()").fetchone()
    assert schema is not None and schema[0].startswith("t_")
    with psycopg.connect(PG_URL) as conn:
        assert conn.execute("SELECT current_schema()").fetchone() == ("public",)


def test_full_write_queue_is_refused_at_once(pg_url: str) -> None:
    store = PostgresStore(pg_url, queue_max=5)
    blocker = psycopg.connect(pg_url)
    try:
        store.append([prepared(1)])
        blocker.execute("LOCK TABLE event_ids IN EXCLUSIVE MODE")  # the writer now waits for this lock
        waiting = store.submit([prepared(n) for n in range(2, 6)])
        deadline = time.monotonic() + 10
        while store.pending < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(StoreOverloaded, match="waiting"):
            store.submit([prepared(10), prepared(11)])
        blocker.rollback()
        assert [r.duplicate for r in waiting.result(timeout=30)] == [False] * 4
        assert store.pending == 0
    finally:
        blocker.close()
        store.close()


def test_ci_fails_instead_of_skipping_when_postgresql_is_missing(tmp_path: Path) -> None:
    import sys

    test = "tests/test_postgres.py::test_pg_url_helper_isolates_tests"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "SPINTRAIL_TEST_POSTGRES": "postgresql://nobody@127.0.0.1:1/none"}
    env.pop("CI", None)
    skipped = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout
    failed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
        cwd=root,
        env={**env, "CI": "true"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == 1 and "CI must run the PostgreSQL tests" in failed.stdout, failed.stdout


def test_a_replica_killed_mid_request_loses_nothing_acknowledged(server_factory: Any, pg_url: str) -> None:
    """Two replicas on one database; one is SIGKILLed while clients send to both. Every event either
    replica acknowledged is stored exactly once, and the surviving replica keeps serving."""
    a: Server = server_factory(pg_url)
    b: Server = server_factory(pg_url)
    acked: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()
    served_after_kill: list[int] = []

    def client(server: Server, k: int) -> None:
        with httpx.Client(timeout=10) as c:
            n = 0
            while not stop.is_set():
                batch = [event(k * 100_000 + n + j) for j in range(3)]
                n += 3
                try:
                    r = c.post(server.url + "/api/v1/events", content=json.dumps(batch))
                except httpx.HTTPError:
                    continue  # the killed replica: not acknowledged, nothing to check
                if r.status_code == 200:
                    with lock:
                        acked.update(e["event_id"] for e in r.json()["events"])
                        if killed.is_set() and server is b:
                            served_after_kill.append(len(batch))

    killed = threading.Event()
    threads = [threading.Thread(target=client, args=(s, k)) for k, s in enumerate((a, b, a, b))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 150 and time.monotonic() < deadline:
        time.sleep(0.01)
    a.kill()  # SIGKILL, with requests in flight
    killed.set()
    while sum(served_after_kill) < 60 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join()
    assert sum(served_after_kill) >= 60, "the surviving replica stopped serving"
    with lock:
        expected = set(acked)
    stored: list[str] = []
    cursor = None
    while True:
        params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
        page = b.get("/api/v1/events", params=params).json()
        stored += [e["event_id"] for e in page["events"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(stored) == len(set(stored)), "an event was stored twice"
    missing = expected - set(stored)
    assert not missing, f"{len(missing)} acknowledged events lost"
