"""Helpers for the resilience tests: realistic events, load clients, an in-process server, RSS, mounts."""

from __future__ import annotations

import contextlib
import json
import random
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from conftest import free_port
from spintrail.server import protocol_class
from spintrail.settings import Settings


def stage_event(n: int, *, stages: int = 6, payload: int = 0) -> dict[str, Any]:
    """An orca stage event of a pipeline with ``stages`` stages; seven consecutive events share a run.

    Consecutive events of one run repeat the execution, so they are stored as deltas of each other.
    """
    run = n // 7
    execution = {
        "type": "PIPELINE",
        "id": f"01HRUN{run:08d}",
        "application": "checkout",
        "name": "deploy-prod",
        "status": "RUNNING",
        "authentication": {"user": "dana@example.com", "allowedAccounts": ["prod", "staging"]},
        "trigger": {"type": "manual", "user": "dana@example.com", "parameters": {"ticket": f"OPS-{run}"}},
        "stages": [
            {
                "id": f"stage-{run}-{i}",
                "type": "deploy",
                "name": f"Deploy {i}",
                "status": "SUCCEEDED" if i < n % 7 else "NOT_STARTED",
                "context": {
                    "account": "prod",
                    "region": "us-east-1",
                    "serverGroupName": f"checkout-prod-v{run % 1000:03d}",
                    "notes": "x" * payload,
                },
            }
            for i in range(stages)
        ],
    }
    return {
        "details": {
            "source": "orca",
            "type": "orca:stage:complete",
            "created": str(1_718_370_000_000 + n),
            "application": "checkout",
            "requestHeaders": {},
        },
        "content": {
            "execution": execution,
            "executionId": execution["id"],
            "stageId": f"stage-{run}-{n % 7 % stages}",
        },
        "eventId": str(uuid.UUID(int=(1 << 100) + n)),
    }


def event_id(n: int) -> str:
    return str(uuid.UUID(int=(1 << 100) + n))


def vm_rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


class RssSampler:
    """Samples a process's RSS every ``interval`` seconds in a thread; ``peak_kib`` is the highest seen."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError, RuntimeError):
                self.peak_kib = max(self.peak_kib, vm_rss_kib(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class InProcessServer:
    """The real app and uvicorn (with spintrail's protocol) on a loopback port, in a thread of the test.

    For tests that must reach into the running server, e.g. to make the writer slow with a write hook.
    """

    def __init__(self, app: FastAPI, settings: Settings) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            http=protocol_class(settings),
            limit_concurrency=settings.max_connections,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> InProcessServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("in-process server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def post_json(client: httpx.Client, url: str, events: list[dict[str, Any]]) -> httpx.Response:
    return client.post(
        url + "/api/v1/events", content=json.dumps(events), headers={"Content-Type": "application/json"}
    )


@contextlib.contextmanager
def small_filesystem(path: Path, kind: str, size_mib: int) -> Iterator[Path]:
    """A freshly made filesystem of ``size_mib`` MiB mounted at ``path`` (tmpfs, or ext4 on a loop file).

    Raises ``PermissionError`` when mounting is not permitted here (not root, no loop devices, ...).
    """
    path.mkdir(parents=True, exist_ok=True)
    image = path.with_name(path.name + ".img")
    if kind == "tmpfs":
        cmd = ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(path)]
    else:
        with image.open("wb") as fp:
            fp.truncate(size_mib << 20)
        made = subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], capture_output=True)
        if made.returncode != 0:
            raise PermissionError(f"mkfs.ext4 failed: {made.stderr.decode(errors='replace').strip()}")
        cmd = ["mount", "-o", "loop", str(image), str(path)]
    try:
        done = subprocess.run(cmd, capture_output=True)
    except FileNotFoundError as exc:
        raise PermissionError(f"{cmd[0]} is not available: {exc}") from None
    if done.returncode != 0:
        image.unlink(missing_ok=True)
        raise PermissionError(f"{' '.join(cmd)} failed: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield path
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        image.unlink(missing_ok=True)


def jitter(rng: random.Random, low: float, high: float) -> float:
    return low + (high - low) * rng.random()


def raw_request_head(body_length: int, path: str = "/api/v1/events") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {body_length}\r\n\r\n"
    ).encode()


def read_response(sock: socket.socket, timeout: float) -> tuple[int | None, bytes]:
    """(status, bytes) the server answers before closing or ``timeout``; status None when nothing came."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            head, sep, rest = data.partition(b"\r\n\r\n")
            if sep:
                length = next(
                    (
                        int(h.split(b":", 1)[1])
                        for h in head.split(b"\r\n")
                        if h.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                if len(rest) >= length:
                    break
    except (TimeoutError, ConnectionResetError, BrokenPipeError):
        pass
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None
    return status, data


def trickle_post(
    port: int, body: bytes, *, seconds: float, pieces: int = 20, timeout: float = 30
) -> tuple[int | None, bytes]:
    """POST ``body`` over a raw socket in ``pieces`` spread over ``seconds``; the server's answer."""
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        sock.sendall(raw_request_head(len(body)))
        step = max(1, -(-len(body) // pieces))
        for i in range(0, len(body), step):
            try:
                sock.sendall(body[i : i + step])
            except OSError:
                break
            time.sleep(seconds / pieces)
        return read_response(sock, timeout)
    finally:
        sock.close()


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True when the server closes ``sock`` (EOF or reset) within ``timeout`` seconds."""
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
