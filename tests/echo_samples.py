"""Test helper: echo events as echo sends them, varied enough that their audit records differ."""

from __future__ import annotations

import uuid
from typing import Any

USERS = ("dana@example.com", "erin@example.com", "frank@example.com")
ACCOUNTS = ("aws-prod", "aws-staging", "gke-prod")


def echo_event(n: int, **details: Any) -> dict[str, Any]:
    """Orchestration event ``n`` (key order as echo's Jackson writes it), with a stable ``eventId``."""
    user = USERS[n % len(USERS)]
    account = ACCOUNTS[n % len(ACCOUNTS)]
    return {
        "details": {
            "source": "orca",
            "type": "orca:orchestration:complete" if n % 4 else "orca:orchestration:failed",
            "created": str(1_718_370_000_000 + n),
            "organization": None,
            "project": None,
            "application": "checkout",
            "requestHeaders": {},
            **details,
        },
        "content": {
            "execution": {
                "type": "ORCHESTRATION",
                "id": f"HEC{n}",
                "application": "checkout",
                "description": f"Resize Server Group: checkout-prod-v{n:03d}",
                "authentication": {"user": user},
                "trigger": {"type": "manual", "user": user, "parameters": {"ticket": f"CHG-{1000 + n}"}},
                "stages": [
                    {
                        "type": "resizeServerGroup",
                        "context": {
                            "account": account,
                            "regions": ["us-east-1"],
                            "serverGroupName": f"checkout-prod-v{n:03d}",
                            "reason": f"scale for load test {n}",
                        },
                    }
                ],
                "status": "SUCCEEDED" if n % 4 else "TERMINAL",
            },
            "executionId": f"HEC{n}",
        },
        "eventId": str(uuid.UUID(int=0x4EC0000 + n)),
    }
