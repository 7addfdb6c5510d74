"""Admission control for ingest: a budget of request bytes in flight across all requests.

Every ingest request reserves the bytes of its body (the declared ``Content-Length`` up front, or each
chunk as it is inflated and read) and holds them until it is answered: while the body is read, decoded,
normalized and waiting for its commit. When a reservation would take the total over ``max_inflight_bytes``
the request is refused at once with 503 and ``Retry-After`` instead of buffering without bound, so the
server's memory stays bounded under a flood of large events. A request is always admitted when it is the
only one holding bytes, so a body up to ``max_body_bytes`` can always get through eventually.

Every endpoint that reads its body with ``receive.read_body`` takes part. The reservation is kept in the
request's state and ``ReleaseInflight`` (an ASGI middleware) gives it back when the request ends, whichever
endpoint it was; endpoints may release earlier. Everything runs on the event loop: the counters need no lock.
"""

from __future__ import annotations

from typing import Any

#: Key of the request's ``Reservation`` in the ASGI scope's ``state`` (``request.state``).
INFLIGHT_STATE_KEY = "inflight_reservation"


class InflightBytes:
    """The bytes held by requests being read, decoded or waiting for their commit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self.refused = 0

    def try_take(self, n: int, held: int) -> bool:
        """Reserve ``n`` more bytes for a request already holding ``held``; False when over budget."""
        if self.used - held > 0 and self.used + n > self.limit:
            self.refused += 1
            return False
        self.used += n
        self.peak = max(self.peak, self.used)
        return True

    def give_back(self, n: int) -> None:
        self.used -= n


class OverBudget(Exception):
    """Taking more bytes would exceed ``max_inflight_bytes``."""

    def __init__(self, used: int, limit: int) -> None:
        super().__init__(f"{used} bytes of requests are in flight, the limit is {limit}")


class Reservation:
    """One request's share of the budget; ``release`` gives all of it back (call it in ``finally``)."""

    def __init__(self, budget: InflightBytes | None) -> None:
        self.budget = budget
        self.held = 0

    def take(self, n: int) -> None:
        """Reserve ``n`` bytes or raise ``OverBudget``."""
        if self.budget is None or n <= 0:
            return
        if not self.budget.try_take(n, self.held):
            raise OverBudget(self.budget.used, self.budget.limit)
        self.held += n

    def add(self, n: int) -> None:
        """Count ``n`` more bytes without refusing: for memory a request that was admitted already holds
        (what its decoded events take), so that the requests after it are refused instead."""
        if self.budget is None or n <= 0:
            return
        self.budget.used += n
        self.budget.peak = max(self.budget.peak, self.budget.used)
        self.held += n

    def release(self) -> None:
        if self.budget is not None and self.held:
            self.budget.give_back(self.held)
        self.held = 0


class ReleaseInflight:
    """ASGI middleware: when an HTTP request ends, give back the bytes it reserved (see ``Reservation``)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        try:
            await self.app(scope, receive, send)
        finally:
            reservation = state.get(INFLIGHT_STATE_KEY)
            if reservation is not None:
                reservation.release()
