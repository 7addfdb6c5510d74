"""Processes the benchmark runs: servers pinned to a core, the wrk load generator, peak RSS readings."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
LUA = Path(__file__).with_name("post.lua")
SERVER_CORE = 0
LOAD_CORE = 1


def have_taskset() -> bool:
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def pinned(cmd: list[str], core: int) -> list[str]:
    """``cmd`` run on one CPU core (when taskset and a second core exist)."""
    return ["taskset", "-c", str(core), *cmd] if have_taskset() else cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A server process on a loopback port."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}"
            )
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server at {url} did not become ready: {log.read_text(errors='replace')[-2000:]}")


@contextlib.contextmanager
def spintrail_server(database: str, workdir: Path, *, env: dict[str, str] | None = None) -> Iterator[Server]:
    """``spintrail serve`` with its default settings on ``database``, pinned to the server core."""
    port = free_port()
    log = workdir / f"spintrail-{port}.log"
    cmd = pinned(
        [sys.executable, "-m", "spintrail", "serve", "--port", str(port), "--database", database], SERVER_CORE
    )
    with log.open("ab") as fp:
        proc = subprocess.Popen(cmd, stdout=fp, stderr=fp, env={**os.environ, **(env or {})}, cwd=workdir)
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        _wait_ready(proc, server.url, log)
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def ceiling_server(workdir: Path) -> Iterator[Server]:
    """The bare Starlette endpoint (reads the body, answers 200) under spintrail's uvicorn settings."""
    port = free_port()
    log = workdir / f"ceiling-{port}.log"
    cmd = pinned(
        [sys.executable, str(Path(__file__).with_name("http_ceiling.py")), "--port", str(port)], SERVER_CORE
    )
    with log.open("ab") as fp:
        proc = subprocess.Popen(cmd, stdout=fp, stderr=fp, cwd=ROOT)
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        _wait_ready(proc, server.url, log)
        yield server
    finally:
        server.stop()


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def wrk(
    url: str,
    pool: Path,
    *,
    start: int,
    count: int,
    seconds: float,
    connections: int,
    path: str = "/api/v1/events",
) -> dict[str, Any]:
    """Run wrk (one thread, on the load core) POSTing pool lines ``start`` .. ``start + count``."""
    cmd = pinned(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "60s",
            "--latency",
            "-s",
            str(LUA),
            url,
            "--",
            str(pool),
            str(start),
            str(count),
            path,
        ],
        LOAD_CORE,
    )
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 600, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH "):
            result: dict[str, Any] = json.loads(line[len("BENCH ") :])
            secs = result["duration_us"] / 1e6
            result["seconds"] = secs
            result["rps"] = result["requests"] / secs if secs else 0.0
            return result
    raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}")


def rss(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a process in bytes, from /proc."""
    cur = peak = 0
    with open(f"/proc/{pid}/status") as fp:
        for line in fp:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    return cur, peak


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process (all its threads) has used so far."""
    with open(f"/proc/{pid}/stat") as fp:
        fields = fp.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def reset_peak_rss(pid: int) -> bool:
    """Reset a process's peak RSS (VmHWM) to its current RSS; False where the kernel does not allow it."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fp:
            fp.write("5")
        return True
    except OSError:
        return False


def process_tree_rss(pid: int) -> tuple[int, int]:
    """RSS of a process (the server runs under taskset, which execs, so the pid is the server's own)."""
    return rss(pid)
