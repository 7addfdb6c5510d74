"""Shared test fixtures: real SQLite files, real server processes on loopback, the shared echo samples."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from spintrail.record import AuditRecord
from spintrail.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = ROOT.parent / "shared" / "fixtures" / "echo"
#: The PostgreSQL the tests use (trust auth); each test gets a schema of its own there.
PG_URL = os.environ.get("SPINTRAIL_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
#: ``SPINTRAIL_TEST_BACKEND=postgres`` runs the server tests (``server``/``server_factory``) on PostgreSQL.
TEST_BACKEND = os.environ.get("SPINTRAIL_TEST_BACKEND", "sqlite")


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [
        f"sqlite: {sqlite3.sqlite_version}",
        f"shared fixtures: {SHARED_FIXTURES if SHARED_FIXTURES.is_dir() else 'absent'}",
        f"postgresql: {pg_problem() or PG_URL}; server tests on {TEST_BACKEND}",
    ]


_pg_checked: list[str | None] = []


def pg_problem() -> str | None:
    """Why the test PostgreSQL cannot be used, or ``None`` when it answers (checked once per run)."""
    if not _pg_checked:
        import psycopg

        try:
            with psycopg.connect(PG_URL, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            _pg_checked.append(None)
        except psycopg.Error as exc:
            _pg_checked.append(f"PostgreSQL at {PG_URL} is not reachable ({str(exc).strip()})")
    return _pg_checked[0]


def require_pg() -> None:
    """Skip the test when PostgreSQL is not reachable, except under CI (``CI`` set), where it fails."""
    problem = pg_problem()
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{problem}; CI must run the PostgreSQL tests (start it: bash scripts/test)")
    pytest.skip(f"{problem}: start it (bash scripts/test does) or set SPINTRAIL_TEST_POSTGRES")


def url_with_schema(url: str, schema: str) -> str:
    """The URL with ``search_path`` set to ``schema`` (libpq ``options``)."""
    return url + ("&" if "?" in url else "?") + f"options=-csearch_path%3D{schema}"


def new_pg_schema() -> tuple[str, Callable[[], None]]:
    """A fresh empty schema: (URL selecting it, function dropping it)."""
    import psycopg

    require_pg()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')

    def drop() -> None:
        for _ in range(50):  # PostgreSQL may be restarting (the restart test)
            try:
                with psycopg.connect(PG_URL, autocommit=True, connect_timeout=3) as conn:
                    conn.execute("SET lock_timeout = '10s'")
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                return
            except psycopg.Error:
                time.sleep(0.2)

    return url_with_schema(PG_URL, schema), drop


@pytest.fixture()
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL selecting a fresh schema of its own, dropped after the test."""
    url, drop = new_pg_schema()
    yield url
    drop()


@pytest.fixture(scope="session")
def echo_fixtures() -> Path:
    """The folder of shared echo samples; tests using it skip where it is absent (a user's clone)."""
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(
            f"shared echo samples not found at {SHARED_FIXTURES} (they live beside the repository in CI)"
        )
    return SHARED_FIXTURES


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A real ``spintrail serve`` process on a loopback port."""

    def __init__(
        self, database: str, *, env: dict[str, str] | None = None, args: list[str] | None = None
    ) -> None:
        self.database = database
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "SPINTRAIL_LOG_LEVEL": "warning", **(env or {})}
        if "://" in database and "SPINTRAIL_SIGNING_KEY_FILE" not in self.env:
            # One installation, one key: servers of one test database share theirs, and only theirs.
            digest = hashlib.sha256(database.encode()).hexdigest()[:16]
            key = Path(tempfile.gettempdir()) / f"spintrail-test-{digest}" / "signing.key"
            self.env["SPINTRAIL_SIGNING_KEY_FILE"] = str(key)
        self.args = args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = (
            Path(database + f".{self.port}.log")
            if "://" not in database
            else Path(tempfile.gettempdir()) / f"spintrail-test-server.{self.port}.log"
        )

    def start(self, timeout: float = 20.0) -> Server:
        cmd = [
            sys.executable,
            "-m",
            "spintrail",
            "serve",
            "--port",
            str(self.port),
            "--database",
            self.database,
        ]
        log = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen([*cmd, *self.args], env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not become ready: {self.log()}")

    def log(self) -> str:
        return (
            self.log_path.read_text(errors="replace")[-4000:]
            if self.log_path and self.log_path.exists()
            else ""
        )

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def post(self, body: bytes | str | Any, **kwargs: Any) -> httpx.Response:
        if not isinstance(body, bytes | str):
            body = json.dumps(body)
        headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
        return httpx.post(
            self.url + kwargs.pop("path", "/api/v1/events"),
            content=body,
            headers=headers,
            timeout=60,
            **kwargs,
        )

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=60, **kwargs)


@pytest.fixture()
def server_factory(tmp_path: Path) -> Iterator[Any]:
    servers: list[Server] = []
    drops: list[Callable[[], None]] = []

    def make(database: str | None = None, **kwargs: Any) -> Server:
        if database is None and TEST_BACKEND == "postgres":
            database, drop = new_pg_schema()
            drops.append(drop)
        s = Server(database or str(tmp_path / "spintrail.db"), **kwargs)
        servers.append(s)
        return s.start()

    yield make
    for s in servers:
        s.stop()
    for drop in drops:
        drop()


@pytest.fixture()
def server(server_factory: Any) -> Server:
    """A fresh server on an empty store (SQLite; PostgreSQL with SPINTRAIL_TEST_BACKEND=postgres)."""
    return server_factory()  # type: ignore[no-any-return]


@pytest.fixture()
def sqlite_store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "store.db")
    yield store
    store.close()


def make_record(n: int, **fields: Any) -> AuditRecord:
    """A record for store tests, independent of normalization."""
    base: dict[str, Any] = {
        "event_id": f"evt-{n:06d}",
        "received_at": 1_700_000_000_000 + n * 1000,
        "time": 1_700_000_000_000 + n * 1000,
        "source": "orca",
        "type": "orca:stage:complete",
        "application": "checkout",
        "user": "alice@example.com",
    }
    base.update(fields)
    return AuditRecord(**base)


STORE_BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=STORE_BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Each store backend, empty (the store contract tests run once per backend)."""
    from spintrail.store import open_store

    drop: Callable[[], None] | None = None
    if request.param == "sqlite":
        s = open_store(str(tmp_path / "contract.db"))
    elif request.param == "postgres":
        url, drop = new_pg_schema()
        s = open_store(url)
    else:  # pragma: no cover - other backends register themselves here
        raise AssertionError(request.param)
    yield s
    s.close()
    if drop is not None:
        drop()


class SimulatedData:
    """A SQLite file loaded with simulated history through the Ingestor, and the simulator's ground truth."""

    def __init__(self, path: Path, facts: Any) -> None:
        self.path = path
        self.database = str(path)
        self.facts = facts
        self.since = facts.window_start - 3_600_000


def load_simulated(path: Path, **kwargs: Any) -> Any:
    """Load a ``Simulator(**kwargs)``'s events into a SQLite file at ``path``; returns the facts."""
    from spintrail.decode import IncomingEvent
    from spintrail.ingest import Ingestor
    from spintrail.settings import Settings
    from spintrail.simulate import Simulator

    sim = Simulator(**kwargs)
    store = SqliteStore(path)
    try:
        ingestor = Ingestor(Settings(database=str(path)), store)
        batch = []
        for event in sim.events():
            raw = json.dumps(event, separators=(",", ":")).encode()
            batch.append(ingestor.prepare(IncomingEvent(event=event, raw=raw)))
            if len(batch) >= 1000:
                store.append(batch)
                batch.clear()
        store.append(batch)
    finally:
        store.close()
    return sim.facts


@pytest.fixture(scope="session")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> SimulatedData:
    """Three weeks of simulated Spinnaker history ending now, loaded once per test session (read-only)."""
    path = tmp_path_factory.mktemp("simulated") / "simulated.db"
    seed = int(os.environ.get("SPINTRAIL_TEST_SEED", "11"))  # try other worlds: the tests hold for any
    facts = load_simulated(path, seed=seed, days=21.0, executions=220)
    return SimulatedData(path, facts)


@pytest.fixture(scope="session")
def simulated_server(simulated: SimulatedData) -> Iterator[Server]:
    """A real server process on the simulated data (shared by the session: do not write to it)."""
    server = Server(simulated.database)
    server.start()
    yield server
    server.stop()
