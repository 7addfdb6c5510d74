"""Backfill: the execution history Spinnaker's Gate still holds, stored as the echo events it would have
sent (``gate.py`` the client, ``synthesize.py`` execution to events, ``state.py`` resumable runs,
``run.py`` one run). See docs/backfill.md."""

from __future__ import annotations

from spintrail.backfill.gate import (
    GateAuth,
    GateAuthError,
    GateClient,
    GateError,
    GateNotFound,
    GateRejected,
    GateUnavailable,
)
from spintrail.backfill.run import BackfillProgress, BackfillRequest, BackfillResult, run_backfill
from spintrail.backfill.synthesize import synthesize

__all__ = [
    "BackfillProgress",
    "BackfillRequest",
    "BackfillResult",
    "GateAuth",
    "GateAuthError",
    "GateClient",
    "GateError",
    "GateNotFound",
    "GateRejected",
    "GateUnavailable",
    "run_backfill",
    "synthesize",
]
