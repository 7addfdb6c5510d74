"""Files spintrail creates are its owner's only (0600, directories 0700), whatever the umask: the database
holds every event and the redaction key."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from spintrail import private
from spintrail.store.sqlite import SqliteStore
from test_auth import event


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture()
def loose_umask() -> Iterator[None]:
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A command run as a user whose umask lets everyone read new files."""
    return subprocess.run(
        [sys.executable, "-m", "spintrail", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        preexec_fn=lambda: os.umask(0o022),
        timeout=120,
    )


def test_commands_create_private_files_under_a_loose_umask(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    checkpoints = tmp_path / "evidence" / "checkpoints"
    events = tmp_path / "events.ndjson"
    events.write_text(json.dumps(event(1)) + "\n")
    env = {"SPINTRAIL_CHECKPOINT_DIR": str(checkpoints)}
    for args in (
        ("import", str(events), "--database", str(db)),
        ("tokens", "create", "reader", "--role", "viewer", "--database", str(db)),
        ("checkpoint", "--database", str(db)),
        ("backup", str(tmp_path / "backup.db"), "--database", str(db)),
        ("export", "--output", str(tmp_path / "export.csv"), "--database", str(db)),
        ("proof", "1", "--output", str(tmp_path / "proof.json"), "--database", str(db)),
    ):
        r = cli(*args, env=env)
        assert r.returncode == 0, (args, r.stderr)
    created = [
        db,
        Path(str(db) + ".signing-key"),
        tmp_path / "backup.db",
        tmp_path / "export.csv",
        tmp_path / "proof.json",
        checkpoints / "latest.txt",
        *checkpoints.glob("checkpoint-*.txt"),
    ]
    assert list(checkpoints.glob("checkpoint-*.txt")), "no checkpoint file was written"
    for path in created:
        assert mode(path) == 0o600, f"{path.name} is {oct(mode(path))}"
    for directory in (checkpoints, checkpoints.parent):
        assert mode(directory) == 0o700, f"{directory} is {oct(mode(directory))}"


def test_the_store_and_its_wal_are_private_in_library_use(tmp_path: Path, loose_umask: None) -> None:
    path = tmp_path / "lib.db"
    store = SqliteStore(path)
    try:
        from conftest import make_record
        from spintrail.store import PreparedEvent

        store.submit([PreparedEvent(make_record(1), b"{}")]).result(30)
        wal, shm = Path(str(path) + "-wal"), Path(str(path) + "-shm")
        assert wal.exists() and shm.exists()
        for p in (path, wal, shm):
            assert mode(p) == 0o600, f"{p.name} is {oct(mode(p))}"
    finally:
        store.close()


def test_private_helpers_ignore_the_umask(tmp_path: Path, loose_umask: None) -> None:
    nested = tmp_path / "a" / "b"
    private.make_dirs(nested)
    assert mode(tmp_path / "a") == 0o700 and mode(nested) == 0o700
    with private.open_file(nested / "out.bin", "wb") as fp:
        fp.write(b"x")
    assert mode(nested / "out.bin") == 0o600
    private.write_text(nested / "out.txt", "x")
    assert mode(nested / "out.txt") == 0o600
    assert private.create_file(nested / "new") and not private.create_file(nested / "new")
    assert mode(nested / "new") == 0o600
