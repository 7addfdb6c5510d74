"""Application scope: which Spinnaker applications the current request may see.

Authentication sets the scope of each request (``None``: every application; a set: only those). Every store
backend honours it in its reads (``Store`` wraps ``search``, ``get``, ``get_by_event_id``, ``raw``,
``execution`` and any method taking ``filters``; see ``store/base.py``), so an endpoint added later inherits
the limit without doing anything. Code outside a request (the CLI, background threads) runs unlimited.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spintrail.query import Filters
    from spintrail.record import AuditRecord

_current: ContextVar[frozenset[str] | None] = ContextVar("spintrail_application_scope", default=None)


def current() -> frozenset[str] | None:
    """The applications the current request may see, or ``None`` for all."""
    return _current.get()


def set_current(applications: frozenset[str] | None) -> None:
    """Set the scope of the current context (the auth middleware does this at the start of each request)."""
    _current.set(applications)


@contextmanager
def limited_to(applications: frozenset[str] | set[str] | None) -> Iterator[None]:
    """Run a block with a scope (tests, background jobs run on behalf of a limited token)."""
    token = _current.set(frozenset(applications) if applications is not None else None)
    try:
        yield
    finally:
        _current.reset(token)


def allows(record: AuditRecord | None) -> bool:
    """Whether the current scope may see ``record`` (one without an application needs an unlimited scope)."""
    apps = _current.get()
    return record is not None and (apps is None or record.application in apps)


def restrict(filters: Filters) -> Filters | None:
    """``filters`` narrowed to the current scope; ``None`` when nothing in scope can match."""
    apps = _current.get()
    if apps is None:
        return filters
    if filters.application:
        wanted = tuple(a for a in filters.application if a in apps)
        if not wanted:
            return None
    else:
        wanted = tuple(sorted(apps))
        if not wanted:
            return None
    return dataclasses.replace(filters, application=wanted)
