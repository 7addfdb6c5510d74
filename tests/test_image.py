"""The container image, built for real and run with podman: `bash scripts/test-image` builds it and runs
this file with SPINTRAIL_TEST_IMAGE set (the suite alone skips it). The container is reached over loopback
only, runs read-only as uid 10001 with its data on a volume, and must store, answer and stop like the
server it wraps."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import free_port

IMAGE = os.environ.get("SPINTRAIL_TEST_IMAGE", "")
ADMIN = "admin-" + uuid.uuid4().hex
INGEST = "ingest-" + uuid.uuid4().hex
GRACE = 5.0

pytestmark = pytest.mark.skipif(
    not IMAGE or shutil.which("podman") is None,
    reason="built and tested by `bash scripts/test-image` (podman; it sets SPINTRAIL_TEST_IMAGE)",
)


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


def echo_event(n: int) -> dict[str, Any]:
    return {
        "details": {
            "source": "orca",
            "type": "orca:orchestration:starting",
            "created": str(1_718_370_000_000 + n),
            "application": "checkout",
        },
        "content": {
            "execution": {
                "type": "ORCHESTRATION",
                "id": f"EXEC{n}",
                "application": "checkout",
                "description": f"Resize Server Group: checkout-prod-v{n:03d}",
                "authentication": {"user": "carol@example.com"},
                "trigger": {"type": "manual", "user": "carol@example.com"},
                "stages": [],
                "status": "RUNNING",
            },
            "executionId": f"EXEC{n}",
        },
        "eventId": str(uuid.UUID(int=n + 1)),
    }


class Container:
    """One run of the image: read-only root (not even /tmp is writable), data on ``data`` (a host
    directory), no capabilities."""

    def __init__(self, data: Path, *options: str) -> None:
        self.data = data
        self.options = options
        self.port = free_port()
        self.name = f"spintrail-test-{uuid.uuid4().hex[:12]}"
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> Container:
        podman(
            "run", "--detach", "--name", self.name,
            "--read-only", "--read-only-tmpfs=false",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--publish", f"127.0.0.1:{self.port}:8080",
            "--volume", f"{self.data}:/var/lib/spintrail",
            "--env", f"SPINTRAIL_ADMIN_TOKEN={ADMIN}",
            "--env", f"SPINTRAIL_INGEST_TOKENS=echo={INGEST}",
            "--env", f"SPINTRAIL_SHUTDOWN_GRACE_SECONDS={GRACE}",
            *self.options,
            IMAGE,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            state = self.inspect()["State"]
            if not state["Running"]:
                raise AssertionError(f"the container exited ({state['ExitCode']}):\n{self.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not ready within 60 s:\n{self.logs()}")
            time.sleep(0.3)

    def inspect(self) -> dict[str, Any]:
        return json.loads(podman("container", "inspect", self.name).stdout)[0]  # type: ignore[no-any-return]

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def exec(self, *args: str) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name, *args, check=False)

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name, check=False)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """The data volume: a host directory owned by the image's user."""
    path = tmp_path / "data"
    path.mkdir()
    os.chown(path, 10001, 10001)
    return path


@pytest.fixture
def container(data: Path) -> Iterator[Container]:
    c = Container(data)
    try:
        yield c.start()
    finally:
        c.remove()


def test_image_metadata() -> None:
    image = json.loads(podman("image", "inspect", IMAGE).stdout)[0]
    config = image["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["spintrail"] and config["Cmd"] == ["serve"]
    healthcheck = image.get("Healthcheck") or config.get("Healthcheck")  # kept by --format docker
    assert healthcheck and healthcheck["Test"][0] == "CMD", "no HEALTHCHECK"
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["SPINTRAIL_HOST"] == "0.0.0.0"
    assert env["SPINTRAIL_AUTH"] == "on"
    assert env["SPINTRAIL_DATABASE"].startswith("/var/lib/spintrail/")
    assert env["SPINTRAIL_SIGNER_STATE_DIR"].startswith("/var/lib/spintrail/")
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"]
    assert labels["org.opencontainers.image.source"]
    assert "/var/lib/spintrail" in config["Volumes"]


def test_no_compiler_and_no_build_secret_in_the_image(container: Container) -> None:
    for tool in ("gcc", "cc", "pip", "pip3"):
        assert container.exec("sh", "-c", f"command -v {tool}").returncode != 0, f"{tool} is in the image"
    assert container.exec("test", "-e", "/run/secrets/pip_ca").returncode != 0


def test_stores_an_event_and_reads_it_back(container: Container) -> None:
    assert httpx.get(container.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(container.url + "/readyz").json()["status"] == "ready"

    event = echo_event(1)
    refused = httpx.post(container.url + "/api/v1/events", json=event)
    assert refused.status_code == 401, "the image must not start open"
    hec = httpx.post(container.url + "/services/collector/event", json={"event": event})
    assert hec.json()["text"] == "Token is required"
    stored = httpx.post(
        container.url + "/api/v1/events", json=event, headers={"Authorization": f"Bearer {INGEST}"}
    )
    assert stored.status_code == 200, stored.text
    assert stored.json()["stored"] == 1

    found = httpx.get(
        container.url + "/api/v1/events",
        params={"application": "checkout"},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert found.status_code == 200, found.text
    [record] = found.json()["events"]
    assert record["event_id"] == event["eventId"]
    assert record["user"] == "carol@example.com"
    assert record["description"] == "Resize Server Group: checkout-prod-v001"


def test_runs_as_non_root_on_a_read_only_root(container: Container) -> None:
    assert container.exec("id", "-u").stdout.strip() == "10001"
    denied = container.exec("touch", "/opt/spintrail/written")
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    assert container.exec("touch", "/tmp/written").returncode != 0
    assert container.exec("touch", "/var/lib/spintrail/written").returncode == 0
    assert container.inspect()["HostConfig"]["ReadonlyRootfs"] is True
    # Its data (the database and the signing key) lands on the volume, owned by the image's user.
    assert (container.data / "spintrail.db").stat().st_uid == 10001
    assert (container.data / "spintrail.db.signing-key").stat().st_mode & 0o077 == 0


def test_healthcheck_passes(container: Container) -> None:
    result = podman("healthcheck", "run", container.name, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_stops_cleanly_on_sigterm_and_keeps_its_data(container: Container) -> None:
    headers = {"Authorization": f"Bearer {INGEST}"}
    events = [echo_event(2), echo_event(3)]
    posted = httpx.post(container.url + "/api/v1/events", json=events, headers=headers)
    assert posted.status_code == 200, posted.text
    key = (container.data / "spintrail.db.signing-key").read_text()

    started = time.monotonic()
    podman("stop", "--time", str(int(GRACE) + 10), container.name)  # SIGTERM, SIGKILL only after that
    took = time.monotonic() - started
    state = container.inspect()["State"]
    log = container.logs()
    assert state["ExitCode"] == 0, f"exit {state['ExitCode']}:\n{log}"
    assert took < GRACE + 2, f"took {took:.1f} s to stop (grace {GRACE} s)"
    assert "shutting down (signal 15)" in log

    container.remove()
    again = Container(container.data).start()
    try:
        found = httpx.get(again.url + "/api/v1/events", headers={"Authorization": f"Bearer {ADMIN}"})
        assert {e["event_id"] for e in found.json()["events"]} == {
            echo_event(2)["eventId"],
            echo_event(3)["eventId"],
        }
        assert (again.data / "spintrail.db.signing-key").read_text() == key
    finally:
        again.remove()


def test_uses_a_signing_key_mounted_read_only(data: Path, tmp_path: Path) -> None:
    """The way Kubernetes gives every replica the one key: a read-only file from a Secret, root's, group
    readable."""
    keys = tmp_path / "key"
    keys.mkdir()
    made = subprocess.run(
        [sys.executable, "-m", "spintrail", "keys", "show", "--database", str(tmp_path / "throwaway.db")],
        env={**os.environ, "SPINTRAIL_SIGNING_KEY_FILE": str(keys / "signing.key")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    verifier = made.stdout.strip()
    (keys / "signing.key").chmod(0o440)
    os.chown(keys / "signing.key", 0, 10001)
    c = Container(
        data,
        "--volume", f"{keys}:/etc/spintrail/signing-key:ro",
        "--env", "SPINTRAIL_SIGNING_KEY_FILE=/etc/spintrail/signing-key/signing.key",
    )  # fmt: skip
    try:
        c.start()
        key = httpx.get(c.url + "/api/v1/integrity/key", headers={"Authorization": f"Bearer {ADMIN}"})
        assert key.json()["verifier_key"] == verifier
        assert not (data / "spintrail.db.signing-key").exists()
    finally:
        c.remove()
