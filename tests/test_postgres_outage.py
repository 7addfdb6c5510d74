"""PostgreSQL outages, for real: a private cluster on a free port, stopped and started under a running
spintrail. During the outage ingest answers 503 with Retry-After, /readyz 503, /healthz 200, never 500;
within seconds of the database coming back spintrail serves again by itself, and a replica started while
the database is down waits for it instead of exiting."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import Server, free_port

ADMIN = "outage-admin-token"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def _bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


class Cluster:
    """A private PostgreSQL cluster under a temporary directory, owned by the ``postgres`` user when run
    as root (initdb refuses root)."""

    def __init__(self, root: Path) -> None:
        bindir = _bin()
        assert bindir is not None
        self.bindir = bindir
        self.data = root / "pgdata"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.log = root / "pg.log"
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            entry = pwd.getpwnam(self.user)
            root.chmod(0o777)
            for path in (root, *root.parents):
                if path == Path("/"):
                    break
                path.chmod(path.stat().st_mode | 0o011)  # traversable by the cluster's owner
            self._owner = (entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bindir / tool), *args]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        options = f"-p {self.port} -k {tempfile.gettempdir()} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")


@pytest.fixture()
def cluster() -> Iterator[Cluster]:
    if _bin() is None or (os.geteuid() == 0 and shutil.which("runuser") is None):
        pytest.skip("no PostgreSQL server binaries to start a private cluster")
    root = Path(tempfile.mkdtemp(prefix="spintrail-pg-"))
    c = Cluster(root)
    c.start()
    yield c
    with contextlib.suppress(subprocess.CalledProcessError):
        c.stop()
    shutil.rmtree(root, ignore_errors=True)


def event(n: int) -> dict[str, object]:
    return {
        "details": {
            "source": "orca",
            "type": "orca:pipeline:complete",
            "created": "1718370000000",
            "application": "app",
        },
        "content": {"execution": {"id": f"E{n}", "type": "PIPELINE", "stages": []}},
        "eventId": f"outage-{n}",
    }


def metric(text: str, name: str) -> float:
    """The value of one sample in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def wait_for(check: object, seconds: float) -> float:
    """Poll ``check()`` until it is true; the seconds it took (fails after ``seconds``)."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            if check():  # type: ignore[operator]
                return time.monotonic() - started
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(0.2)
    raise AssertionError(f"not within {seconds} s")


def test_an_outage_is_survived_and_recovered_by_itself(cluster: Cluster) -> None:
    env = {"SPINTRAIL_ADMIN_TOKEN": ADMIN, "SPINTRAIL_CHECKPOINT_SECONDS": "1", "SPINTRAIL_LOG_LEVEL": "info"}
    server = Server(cluster.url, env=env).start()
    try:
        assert server.post(event(1), headers=AUTH).status_code == 200
        cluster.stop()
        statuses: dict[str, set[int]] = {"ingest": set(), "readyz": set(), "healthz": set(), "search": set()}
        deadline = time.monotonic() + 6
        n = 100
        while time.monotonic() < deadline:
            n += 1
            r = server.post(event(n), headers=AUTH)
            statuses["ingest"].add(r.status_code)
            if r.status_code == 503:
                assert int(r.headers["Retry-After"]) >= 1
            statuses["readyz"].add(server.get("/readyz").status_code)
            statuses["healthz"].add(server.get("/healthz").status_code)
            statuses["search"].add(server.get("/api/v1/events", headers=AUTH).status_code)
            time.sleep(0.2)
        assert statuses["healthz"] == {200}, statuses
        assert 503 in statuses["ingest"] and statuses["ingest"] <= {503}, statuses
        assert statuses["readyz"] == {503}, statuses
        assert all(code < 500 or code == 503 for codes in statuses.values() for code in codes), statuses
        metrics = server.get("/metrics").text
        assert "spintrail_database_up 0.0" in metrics
        assert metric(metrics, 'spintrail_store_errors_total{kind="unavailable"}') >= 1
        cluster.start()
        took = wait_for(lambda: server.post(event(2), headers=AUTH).status_code == 200, 30)
        assert took < 15, took
        assert server.get("/readyz").status_code == 200
        assert server.get("/api/v1/events/outage-2", headers=AUTH).status_code == 200
        assert "spintrail_database_up 1.0" in server.get("/metrics").text
        # The checkpoint signer came back too: a new checkpoint covers the event stored after the outage.
        wait_for(
            lambda: server.get("/api/v1/integrity/checkpoints?limit=1", headers=AUTH).json()["log_size"] >= 2,
            15,
        )
        metrics = server.get("/metrics").text
        assert metric(metrics, "spintrail_checkpoint_age_seconds") < 10
        for name in (
            "process_start_time_seconds",
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
        ):
            assert metric(metrics, name) > 0
        log = server.log_path.read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]
        assert log.count("\n") < 200, f"{log.count(chr(10))} log lines for a short outage"
    finally:
        server.stop()


def test_a_replica_started_while_the_database_is_down_waits_for_it(cluster: Cluster) -> None:
    cluster.stop()
    server = Server(cluster.url, env={"SPINTRAIL_ADMIN_TOKEN": ADMIN})
    proc_started = time.monotonic()
    try:
        with pytest.raises(RuntimeError, match="did not become ready"):
            server.start(timeout=4)
        assert server.proc is not None and server.proc.poll() is None, server.log()
        wait_for(lambda: "opening the store failed" in server.log(), 20)
        time.sleep(3)  # a few more attempts (every 2 s), not logged again
        assert server.proc.poll() is None, server.log()
        assert "retrying" in server.log()
        assert server.log().count("opening the store failed") == 1, "once per interval, not per attempt"
        cluster.start()
        wait_for(lambda: httpx.get(server.url + "/readyz", timeout=5).status_code == 200, 30)
        assert server.post(event(3), headers=AUTH).status_code == 200
        assert time.monotonic() - proc_started < 55
    finally:
        server.stop()
