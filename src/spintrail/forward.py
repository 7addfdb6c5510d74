"""Forward: deliver every stored event to each configured sink, at least once and in order, from the outbox.

One worker thread per sink reads the positions after the sink's committed cursor (``outbox.py``), loads
each event's record and raw bytes from the store, sends them as one batch and commits the cursor only after
the sink accepted them. Ingest never waits for a sink: it only commits events, and wakes the workers.

What happens when a sink fails (the ``SinkError`` tree of ``sinks.py``):

- ``SinkUnavailable`` (network, timeout, busy, 5xx): the accepted prefix is committed, the rest is retried
  after an exponential backoff (``forward_retry_initial`` doubling up to ``forward_retry_max``, with
  jitter), forever, in order.
- ``SinkRejected`` (the sink refused the data: Splunk 5/6/12/13/15, other 4xx): the refused event goes to
  the dead letters with the reason and delivery continues after it. When the sink did not say which event
  it refused, the rest of the batch is re-sent one event at a time to find it.
- ``SinkAuthError`` (token, index, certificate, wrong URL): the sink is paused with the reason for
  ``forward_auth_pause`` seconds (or until ``spintrail sinks resume NAME`` when 0); nothing is skipped.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge

from spintrail import dbutil
from spintrail.decode import DecodeError, decode_body
from spintrail.outbox import (
    PAUSED_UNTIL_RESUMED,
    Outbox,
    Pending,
    SinkState,
    new_owner,
    now_ms,
    open_outbox,
)
from spintrail.record import AuditRecord, format_time
from spintrail.settings import Settings
from spintrail.sinks import (
    Delivery,
    HecSinkConfig,
    Sink,
    SinkAuthError,
    SinkConfig,
    SinkError,
    SinkRejected,
    build_sink,
)
from spintrail.store import Store

log = logging.getLogger(__name__)

#: How often (seconds) a worker forgets outbox positions every sink is past (PostgreSQL only).
_PRUNE_EVERY = 60.0


class ForwardingError(Exception):
    """Forwarding cannot start: a sink's configuration cannot be used (the message says which and why)."""


class SinkMetrics:
    """The forwarding metrics, registered on the application's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.backlog = Gauge(
            "spintrail_sink_backlog",
            "Events stored but not yet delivered to the sink.",
            ["sink"],
            registry=registry,
        )
        self.delivered = Counter(
            "spintrail_sink_delivered",
            "Events this process delivered to the sink.",
            ["sink"],
            registry=registry,
        )
        self.failed = Counter(
            "spintrail_sink_failed",
            "Failed deliveries by kind: unavailable (retried), rejected (dead-lettered), auth (sink paused), "
            "internal.",
            ["sink", "kind"],
            registry=registry,
        )
        self.paused = Gauge(
            "spintrail_sink_paused",
            "1 while the sink is paused after an auth error.",
            ["sink"],
            registry=registry,
        )


def forwarded_event(raw: bytes | None, event_id: str) -> dict[str, Any]:
    """The echo event behind stored raw bytes (whatever envelope it arrived in), carrying its event id.

    An event that arrived without ``eventId`` gets the id spintrail derived for it, so every receiver sees
    the same id (and a spintrail receiving it derives nothing).
    """
    if raw is None:
        return {"eventId": event_id}
    try:
        event = decode_body(raw)[0].event
    except (DecodeError, IndexError):
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw.decode("utf-8", "replace")
        event = parsed if isinstance(parsed, dict) else {"raw": parsed}
    if not isinstance(event.get("eventId"), str) or not event.get("eventId"):
        event = {**event, "eventId": event_id}
    return event


def delivery_of(position: int, record: AuditRecord, raw: bytes | None) -> Delivery:
    return Delivery(
        seq=position,
        event_id=record.event_id,
        record=record.to_api(),
        event=forwarded_event(raw, record.event_id),
        time_ms=record.time,
    )


def load_deliveries(store: Store, pending: Sequence[Pending]) -> tuple[list[Delivery], dict[int, int]]:
    """The deliveries of ``pending`` positions (events no longer in the store are left out), and a map
    from position to store id."""
    out: list[Delivery] = []
    rows: dict[int, int] = {}
    for p in pending:
        record = store.get(p.event_row)
        if record is None:
            continue
        out.append(delivery_of(p.position, record, store.raw(p.event_row)))
        rows[p.position] = p.event_row
    return out, rows


def lease_ms(settings: Settings, config: SinkConfig) -> int:
    """How long a worker's lease lasts: longer than one round can take (acknowledgement waits included)."""
    seconds = settings.forward_lease_seconds
    if isinstance(config, HecSinkConfig) and config.ack:
        seconds = max(seconds, config.ack_timeout + 2 * config.timeout)
    return int(seconds * 1000)


@dataclass
class _Round:
    """What one delivery round found."""

    cursor: int
    last_position: int
    batch: list[Delivery] = field(default_factory=list)
    rows: dict[int, int] = field(default_factory=dict)


class SinkWorker(threading.Thread):
    """Delivers one sink's backlog, round after round, until stopped."""

    def __init__(
        self,
        sink: Sink,
        config: SinkConfig,
        *,
        store: Store,
        open_outbox_: Callable[[], Outbox],
        settings: Settings,
        metrics: SinkMetrics | None,
        owner: str,
        all_sinks: Sequence[str],
    ) -> None:
        super().__init__(name=f"spintrail-sink-{config.name}", daemon=True)
        self.sink = sink
        self.config = config
        self.name_ = config.name
        self.store = store
        self._open_outbox = open_outbox_
        self.settings = settings
        self.metrics = metrics
        self.owner = owner
        self.all_sinks = list(all_sinks)
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.lease_ms = lease_ms(settings, config)
        self._attempt = 0
        self._solo_until = 0
        self._was_paused = False
        self._last_prune = 0.0
        self.outbox: Outbox | None = None
        self._database = dbutil.Throttled(log, f"sink {self.name_}: reading the outbox")

    # -- lifecycle -------------------------------------------------------------------------------------

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                if self.outbox is None:
                    self.outbox = self._open_outbox()
                    self.outbox.ensure(self.name_, self.config.start)
                self._round()
                self._database.succeeded()
            except Exception as exc:  # a bug or the database being away must not stop delivery for good
                if dbutil.is_unreachable(exc):  # logged once per interval while the outage lasts
                    self._database.failed(exc)
                    self._note_error("internal", f"the database cannot be reached: {exc}")
                else:
                    log.exception("sink %s: delivery round failed", self.name_)
                    self._note_error("internal", f"internal error: {exc}")
                self._count_failure("internal")
                self._reconnect()
                self._backoff()
        try:
            if self.outbox is not None:
                self.outbox.release(self.name_, self.owner)
        except Exception as exc:
            log.warning("sink %s: could not release the lease: %s", self.name_, exc)
        finally:
            if self.outbox is not None:
                self.outbox.close()
            self.sink.close()

    def _reconnect(self) -> None:
        """Drop the outbox connection after an error; the next round opens a new one."""
        if self.outbox is not None:
            self.outbox.close()
            self.outbox = None

    # -- one round -------------------------------------------------------------------------------------

    def _round(self) -> None:
        outbox = self.outbox
        assert outbox is not None
        self._prune()
        state = outbox.state(self.name_) or outbox.ensure(self.name_, self.config.start)
        at = now_ms()
        if state.owner != self.owner or (state.lease_until or 0) - at < self.lease_ms // 2:
            claimed = outbox.claim(self.name_, self.owner, self.lease_ms)
            if claimed is None:  # another replica delivers this sink
                self._gauges(state)
                self._idle()
                return
            state = claimed
        if state.paused(at):
            if not self._was_paused:
                self._was_paused = True
                self._gauges(state)
            self.stopping.wait(min(self.settings.forward_poll_interval, (state.paused_until - at) / 1000))
            return
        if self._was_paused:
            log.info("sink %s: resuming delivery", self.name_)
            self._was_paused = False
            self._attempt = 0
        self.wake.clear()
        pending = outbox.pending(state.delivered_up_to, self.settings.forward_batch_max)
        self._gauges(state)
        if not pending:
            self._idle()
            return
        if self._solo_until and pending[0].position <= self._solo_until:
            pending = pending[:1]
        else:
            self._solo_until = 0
        dead = outbox.dead_positions(self.name_, state.delivered_up_to, pending[-1].position)
        batch, rows = load_deliveries(self.store, [p for p in pending if p.position not in dead])
        work = _Round(state.delivered_up_to, pending[-1].position, batch, rows)
        if not batch:
            self._advance(work.last_position, 0)
            return
        self._send(work)

    def _send(self, work: _Round) -> None:
        batch = work.batch
        try:
            self.sink.send(batch)
        except SinkRejected as exc:
            self._rejected(work, exc)
        except SinkAuthError as exc:
            self._advance_to(work, exc.delivered)
            self._pause(str(exc))
        except SinkError as exc:  # SinkUnavailable and anything unclassified: retry later
            self._advance_to(work, exc.delivered)
            self._count_failure("unavailable")
            self._note_error("unavailable", str(exc))
            log.warning("sink %s: %s (retrying)", self.name_, exc)
            self._backoff()
        else:
            self._attempt = 0
            self._advance(work.last_position, len(batch))

    def _rejected(self, work: _Round, exc: SinkRejected) -> None:
        batch = work.batch
        done = max(0, min(exc.delivered, len(batch)))
        remaining = batch[done:]
        culprit = next((d for d in remaining if d.seq == exc.seq), None) if exc.seq is not None else None
        if culprit is None and len(remaining) == 1:
            culprit = remaining[0]
        self._advance_to(work, done)
        self._count_failure("rejected")
        if culprit is None:
            # The sink refused the request without naming the event: send the rest one at a time.
            log.warning("sink %s: %s; re-sending the batch one event at a time", self.name_, exc.reason)
            self._note_error("rejected", exc.reason)
            self._solo_until = batch[-1].seq
            return
        assert self.outbox is not None
        log.error("sink %s: event %s dead-lettered: %s", self.name_, culprit.event_id, exc.reason)
        self.outbox.dead_letter(
            self.name_, self.owner, [(culprit.seq, work.rows[culprit.seq], culprit.event_id)], exc.reason
        )

    # -- state changes ---------------------------------------------------------------------------------

    def _advance_to(self, work: _Round, delivered: int) -> None:
        """Commit the cursor after the first ``delivered`` deliveries of the round."""
        delivered = max(0, min(delivered, len(work.batch)))
        if delivered == 0:
            return
        position = work.last_position if delivered == len(work.batch) else work.batch[delivered].seq - 1
        self._advance(position, delivered)

    def _advance(self, position: int, delivered: int) -> None:
        assert self.outbox is not None
        if not self.outbox.advance(self.name_, self.owner, position, delivered, self.lease_ms):
            log.warning("sink %s: lost the delivery lease to another replica", self.name_)
            return
        if delivered and self.metrics is not None:
            self.metrics.delivered.labels(self.name_).inc(delivered)

    def _pause(self, reason: str) -> None:
        assert self.outbox is not None
        pause = self.settings.forward_auth_pause
        until = PAUSED_UNTIL_RESUMED if pause == 0 else now_ms() + int(pause * 1000)
        how = "until `spintrail sinks resume`" if pause == 0 else f"for {pause:g} s"
        log.error("sink %s: paused %s: %s", self.name_, how, reason)
        self._count_failure("auth")
        self.outbox.pause(self.name_, self.owner, until, reason)
        self._attempt = 0

    def _note_error(self, kind: str, message: str) -> None:
        if self.outbox is not None:
            try:
                self.outbox.record_error(self.name_, self.owner, kind, message)
            except Exception as exc:
                log.warning("sink %s: could not record the error: %s", self.name_, exc)

    def _count_failure(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.failed.labels(self.name_, kind).inc()

    def _gauges(self, state: SinkState) -> None:
        if self.metrics is None or self.outbox is None:
            return
        self.metrics.backlog.labels(self.name_).set(self.outbox.backlog(state))
        self.metrics.paused.labels(self.name_).set(1 if state.paused(now_ms()) else 0)

    # -- waiting ---------------------------------------------------------------------------------------

    def _idle(self) -> None:
        self.wake.wait(self.settings.forward_poll_interval)

    def _backoff(self) -> None:
        cap = self.settings.forward_retry_max
        delay = min(cap, self.settings.forward_retry_initial * (2 ** min(self._attempt, 30)))
        self._attempt += 1
        self.stopping.wait(random.uniform(delay / 2, delay))

    def _prune(self) -> None:
        if time.monotonic() - self._last_prune < _PRUNE_EVERY:
            return
        self._last_prune = time.monotonic()
        assert self.outbox is not None
        try:
            self.outbox.prune(self.all_sinks)
        except Exception as exc:
            log.warning("sink %s: outbox pruning failed: %s", self.name_, exc)


def _outbox_opener(settings: Settings, store: Store) -> Callable[[], Outbox]:
    path = getattr(store, "path", None)
    if store.backend == "sqlite" and isinstance(path, str):
        from spintrail.outbox import SqliteOutbox

        return lambda: SqliteOutbox(path)
    return lambda: open_outbox(settings.database)


class Forwarder:
    """Runs one :class:`SinkWorker` per configured sink."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        metrics: SinkMetrics | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.owner = new_owner()
        self._open_outbox = _outbox_opener(settings, store)
        self.outbox = self._open_outbox()  # for status queries (API) and the write hook
        self.outbox.attach(store)
        names = [c.name for c in settings.sinks]
        self.workers: list[SinkWorker] = []
        try:
            for config in settings.sinks:
                # Before any request is taken: a new sink starting "now" starts before the first event.
                self.outbox.ensure(config.name, config.start)
                try:
                    sink = build_sink(config, transport=transport)
                except (ValueError, OSError) as exc:
                    raise ForwardingError(f"sink {config.name!r} cannot be used: {exc}") from exc
                self.workers.append(
                    SinkWorker(
                        sink,
                        config,
                        store=store,
                        open_outbox_=self._open_outbox,
                        settings=settings,
                        metrics=metrics,
                        owner=self.owner,
                        all_sinks=names,
                    )
                )
        except ForwardingError:
            for w in self.workers:
                w.sink.close()
            self.outbox.close()
            raise

    def start(self) -> Forwarder:
        for w in self.workers:
            w.start()
        return self

    def notify(self) -> None:
        """New events were committed: wake the idle workers."""
        for w in self.workers:
            w.wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        for w in self.workers:
            w.stop()
        deadline = time.monotonic() + timeout
        for w in self.workers:
            if w.is_alive():
                w.join(max(0.0, deadline - time.monotonic()))
            if w.is_alive():
                log.warning("sink %s: still sending at shutdown; its lease will expire", w.name_)
        self.outbox.close()

    def status(self) -> list[dict[str, Any]]:
        return sink_rows(self.settings.sinks, self.outbox)


def attach_outbox(settings: Settings, store: Store) -> None:
    """Make a store opened outside the server (``spintrail import``) record outbox positions too.

    Only PostgreSQL needs it (SQLite positions are the event ids), and only when sinks are configured.
    """
    if not settings.sinks or store.backend == "sqlite":
        return
    outbox = open_outbox(settings.database)
    try:
        outbox.attach(store)
    finally:
        outbox.close()


def start_forwarding(settings: Settings, store: Store, registry: CollectorRegistry) -> Forwarder | None:
    """Start forwarding when sinks are configured: workers run, and every commit wakes them."""
    if not settings.sinks:
        return None
    forwarder = Forwarder(settings, store, SinkMetrics(registry)).start()
    previous = getattr(store, "commit_observer", None)

    def observe(seconds: float, events: int) -> None:
        if previous is not None:
            previous(seconds, events)
        forwarder.notify()

    store.commit_observer = observe  # type: ignore[attr-defined]
    log.info("forwarding to %s", ", ".join(c.name for c in settings.sinks))
    return forwarder


# ------------------------------------------------------------------------------------------------ status

SINK_COLUMNS: tuple[str, ...] = (
    "name",
    "kind",
    "payload",
    "state",
    "backlog",
    "delivered",
    "dead_letters",
    "delivered_up_to",
    "head",
    "last_error",
    "last_error_at",
    "last_delivered_at",
    "paused_until",
    "pause_reason",
    "owner",
)


def sink_state_name(state: SinkState | None, backlog: int, at: int) -> str:
    """``paused``, ``retrying`` (the last attempt failed and nothing was delivered since), ``delivering``
    (a backlog is being sent), ``idle``, or ``new`` (no worker has run yet)."""
    if state is None:
        return "new"
    if state.paused(at):
        return "paused"
    if (
        state.last_error_kind in ("unavailable", "internal")
        and state.last_error_at is not None
        and (state.last_delivered_at is None or state.last_error_at > state.last_delivered_at)
        and backlog > 0
    ):
        return "retrying"
    return "delivering" if backlog > 0 else "idle"


def sink_rows(configs: Iterable[SinkConfig], outbox: Outbox) -> list[dict[str, Any]]:
    """One row per configured sink: its state, backlog, counters and last error."""
    states = outbox.states()
    head = outbox.head()
    at = now_ms()
    rows = []
    for config in configs:
        state = states.get(config.name)
        backlog = max(0, head - state.delivered_up_to) if state else None
        paused_until = None
        if state is not None and state.paused(at):
            paused_until = "resume by hand" if state.paused_until == PAUSED_UNTIL_RESUMED else None
            paused_until = paused_until or format_time(state.paused_until)
        rows.append(
            {
                "name": config.name,
                "kind": config.kind,
                "payload": config.payload,
                "state": sink_state_name(state, backlog or 0, at),
                "backlog": backlog,
                "delivered": state.delivered if state else 0,
                "dead_letters": state.dead_letters if state else 0,
                "delivered_up_to": state.delivered_up_to if state else None,
                "head": head,
                "last_error": state.last_error if state else None,
                "last_error_at": format_time(state.last_error_at) if state else None,
                "last_delivered_at": format_time(state.last_delivered_at) if state else None,
                "paused_until": paused_until,
                "pause_reason": state.pause_reason if state and state.paused(at) else None,
                "owner": state.owner if state else None,
            }
        )
    return rows


def dead_letter_rows(store: Store, outbox: Outbox, sink: str, limit: int = 1000) -> list[dict[str, Any]]:
    rows = []
    for letter in outbox.dead_letters(sink, limit):
        record = store.get(letter.event_row)
        rows.append(
            {
                "position": letter.position,
                "id": letter.event_row,
                "event_id": letter.event_id,
                "time": format_time(record.time) if record else None,
                "type": record.type if record else None,
                "failed_at": format_time(letter.failed_at),
                "reason": letter.reason,
            }
        )
    return rows


DEAD_LETTER_COLUMNS: tuple[str, ...] = ("position", "id", "event_id", "time", "type", "failed_at", "reason")


def find_sink(settings: Settings, name: str) -> SinkConfig:
    """The configured sink called ``name``; ``KeyError`` with a message listing the configured ones."""
    for config in settings.sinks:
        if config.name == name:
            return config
    known = ", ".join(c.name for c in settings.sinks) or "none configured"
    raise KeyError(
        f"no sink named {name!r} (configured: {known}); sinks are set in the config file or SPINTRAIL_SINKS"
    )


# ------------------------------------------------------------------------------------------ replay, retry


@dataclass
class ReplayResult:
    """What a replay sent."""

    events: int = 0
    sent: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (event_id, reason)
    error: str | None = None


def _send_all(
    sink: Sink,
    deliveries: list[Delivery],
    result: ReplayResult,
    *,
    retries: int,
    retry_wait: float,
    on_delivered: Callable[[Delivery], None] | None = None,
) -> bool:
    """Send ``deliveries`` in order; refused events are skipped and noted. False when the sink stays down
    or refuses its configuration (``result.error`` says why)."""
    queue = list(deliveries)
    attempt = 0
    while queue:
        try:
            sink.send(queue)
        except SinkRejected as exc:
            done = max(0, min(exc.delivered, len(queue)))
            for d in queue[:done]:
                result.sent += 1
                if on_delivered:
                    on_delivered(d)
            queue = queue[done:]
            culprit = next((d for d in queue if d.seq == exc.seq), None) if exc.seq is not None else None
            if culprit is None and len(queue) == 1:
                culprit = queue[0]
            if culprit is None:  # unnamed: one at a time finds it
                for d in queue:
                    if not _send_all(
                        sink, [d], result, retries=retries, retry_wait=retry_wait, on_delivered=on_delivered
                    ):
                        return False
                return True
            result.rejected.append((culprit.event_id, exc.reason))
            queue = [d for d in queue if d is not culprit]
        except SinkAuthError as exc:
            result.error = f"{exc}; fix the sink's configuration and run the replay again"
            return False
        except SinkError as exc:
            done = max(0, min(exc.delivered, len(queue)))
            for d in queue[:done]:
                result.sent += 1
                if on_delivered:
                    on_delivered(d)
            queue = queue[done:]
            attempt += 1
            if attempt > retries:
                result.error = f"{exc}; the sink is still down: run the replay again once it is back"
                return False
            time.sleep(min(30.0, retry_wait * 2 ** (attempt - 1)))
        else:
            result.sent += len(queue)
            if on_delivered:
                for d in queue:
                    on_delivered(d)
            queue = []
    return True


def replay(
    store: Store,
    config: SinkConfig,
    ids: Sequence[int],
    *,
    batch: int = 200,
    retries: int = 5,
    retry_wait: float = 1.0,
    progress: Callable[[int], None] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> ReplayResult:
    """Send the events with store ids ``ids`` (in that order) to the sink now, whatever its cursor says.

    Receivers see each event's id and deduplicate; the sink's cursor and dead letters are not changed.
    """
    result = ReplayResult(events=len(ids))
    with build_sink(config, transport=transport) as sink:
        for start in range(0, len(ids), batch):
            chunk = [Pending(i, i) for i in ids[start : start + batch]]
            deliveries, _ = load_deliveries(store, chunk)
            if not _send_all(sink, deliveries, result, retries=retries, retry_wait=retry_wait):
                return result
            if progress:
                progress(len(chunk))
    return result


def retry_dead_letters(
    store: Store,
    outbox: Outbox,
    config: SinkConfig,
    *,
    transport: httpx.BaseTransport | None = None,
) -> ReplayResult:
    """Send a sink's dead letters again; those it now accepts leave the dead letters."""
    letters = outbox.dead_letters(config.name, limit=1_000_000)
    result = ReplayResult(events=len(letters))
    by_position = {letter.position: letter for letter in letters}
    with build_sink(config, transport=transport) as sink:
        for start in range(0, len(letters), 200):
            chunk = [Pending(lt.position, lt.event_row) for lt in letters[start : start + 200]]
            deliveries, _ = load_deliveries(store, chunk)
            ok = _send_all(
                sink,
                deliveries,
                result,
                retries=2,
                retry_wait=1.0,
                on_delivered=lambda d: outbox.forget_dead_letter(config.name, by_position[d.seq].position),
            )
            if not ok:
                break
    return result
