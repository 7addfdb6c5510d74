"""Ingest: runs decoded events through redaction and normalize into what the store appends.

The HTTP receiver, the Splunk-compatible receiver, ``spintrail import`` and the demo loader all go through
``Ingestor`` so an event is treated the same whichever way it arrived. Secrets are replaced (``scrub.py``)
before the event is normalized, indexed, kept or forwarded; creating an ``Ingestor`` installs the trust
components (redaction key, tamper-evident log) on the store.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence

from spintrail import fulltext
from spintrail.decode import IncomingEvent
from spintrail.normalize import event_id_of, natural_key, normalize
from spintrail.settings import Settings
from spintrail.store import AppendResult, PreparedEvent, Store


class Ingestor:
    """Turns decoded events into stored audit records."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.ticket_pattern = re.compile(settings.ticket_pattern)
        from spintrail.trust import install

        self.trust = install(store, settings)
        self.scrubber = self.trust.scrubber

    def prepare(
        self, incoming: IncomingEvent, *, received_at: int | None = None, instance: str | None = None
    ) -> PreparedEvent:
        """One decoded event as a prepared record. ``instance`` comes from the request (header, query)."""
        now = received_at if received_at is not None else int(time.time() * 1000)
        scrubbed = self.scrubber.scrub(incoming.event, incoming.raw)
        event = scrubbed.event
        record = normalize(
            event,
            received_at=now,
            instance=instance or incoming.instance or self.settings.default_instance,
            ticket_pattern=self.ticket_pattern,
        )
        # The id derived for events without an eventId must not depend on the redaction key.
        record.event_id = event_id_of(incoming.event)
        record.description = self.scrubber.text(record.description)
        record.reason = self.scrubber.text(record.reason)
        return PreparedEvent(
            record=record,
            raw=scrubbed.raw,
            text=self.scrubber.text(fulltext.index_text(record, event)) or "",
            event=event,
            keep_raw=scrubbed.keep_raw,
            raw_sha256=scrubbed.raw_sha256,
            secret_hashes=scrubbed.secret_hashes,
            natural_key=natural_key(incoming.event),
        )

    def prepare_all(
        self, events: Iterable[IncomingEvent], *, instance: str | None = None
    ) -> list[PreparedEvent]:
        now = int(time.time() * 1000)
        return [self.prepare(e, received_at=now, instance=instance) for e in events]

    def store_all(self, prepared: Sequence[PreparedEvent]) -> list[AppendResult]:
        """Append and wait for the commit (for the CLI; the HTTP server awaits ``store.submit``)."""
        return self.store.append(prepared)
