"""The state of a backfill run, kept in a small JSON file so an interrupted run resumes where it stopped.

A run is identified by what it was asked to do (Gate URL, applications, period, executions, instance):
running the same command again after an interruption continues that run (same run id, finished
applications and executions not read again); a different command, or a finished run, starts a new one.
The file is replaced atomically after every application (and every 50 executions), so a kill at any
moment loses at most that much progress, and what was stored before the kill is found again as duplicates.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RunState", "load_or_start", "signature_of"]


@dataclass(slots=True)
class RunState:
    """One backfill run: its id, what it was asked, and how far it got."""

    run_id: str
    signature: str
    started_at: int
    finished_at: int | None = None
    applications_done: list[str] = field(default_factory=list)
    executions_done: list[str] = field(default_factory=list)
    executions: int = 0
    events: int = 0
    stored: int = 0
    duplicates: int = 0
    resumed: int = 0

    def save(self, path: Path) -> None:
        """Write the state atomically (a temporary file renamed over the old one)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fp:
                json.dump(asdict(self), fp, indent=1)
                fp.flush()
                os.fsync(fp.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def signature_of(**request: Any) -> str:
    """A stable digest of what a run was asked to do."""
    text = json.dumps(request, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def load_or_start(path: Path, signature: str, *, now_ms: int | None = None) -> RunState:
    """The unfinished run with this signature from ``path``, or a new run.

    ``ValueError`` naming the file when it exists but is not a backfill state.
    """
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    if path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            state = RunState(**data)
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"{path} is not a backfill state file ({exc}); remove it or pass another --state"
            ) from None
        if state.signature == signature and state.finished_at is None:
            state.resumed += 1
            return state
    return RunState(run_id=str(uuid.uuid4()), signature=signature, started_at=now)
