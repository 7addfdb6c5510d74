"""Checkpoint forwarding: send each new signed checkpoint to the sinks configured with ``checkpoints = true``,
so a copy of every tree head lives outside the database.

Best effort, off the request and writer paths: the integrity log's listener only puts the checkpoint on a
bounded queue; one background thread sends it to each chosen sink as a single message, retrying a few times
with a short backoff. A checkpoint that cannot be sent is logged and counted in
``spintrail_checkpoint_forward_failed`` (it is in the database anyway, and the next checkpoint covers it).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from spintrail.integrity import StoredCheckpoint
from spintrail.settings import Settings
from spintrail.sinks import Delivery, Sink, SinkError, build_sink

log = logging.getLogger(__name__)

#: The ``type`` of a forwarded checkpoint message.
CHECKPOINT_TYPE = "spintrail:checkpoint"
#: Attempts per checkpoint and sink, and the wait before the first retry (doubling).
ATTEMPTS = 4
RETRY_INITIAL = 1.0
#: Checkpoints waiting to be sent; more are dropped (and counted) rather than holding memory.
QUEUE_MAX = 100


def checkpoint_record(cp: StoredCheckpoint) -> dict[str, Any]:
    """The message sent for a checkpoint: its origin, size, root, time and the full signed note."""
    api = cp.to_api()
    return {
        "type": CHECKPOINT_TYPE,
        "id": cp.id,
        "origin": cp.note.split("\n", 1)[0],
        "size": cp.size,
        "root": api["root"],
        "time": api["created_at"],
        "note": cp.note,
    }


def checkpoint_delivery(cp: StoredCheckpoint) -> Delivery:
    """A checkpoint as a sink delivery (the same object as record and as event)."""
    record = checkpoint_record(cp)
    return Delivery(
        seq=0,
        event_id=f"checkpoint-{cp.id}",
        record=record,
        event=record,
        time_ms=cp.created_at,
    )


class CheckpointForwarder:
    """Sends signed checkpoints to the chosen sinks from one background thread."""

    def __init__(
        self,
        sinks: list[Sink],
        registry: CollectorRegistry | None = None,
        *,
        attempts: int = ATTEMPTS,
        retry_initial: float = RETRY_INITIAL,
    ) -> None:
        self.sinks = sinks
        self.attempts = attempts
        self.retry_initial = retry_initial
        self.sent = Counter(
            "spintrail_checkpoint_forward_sent",
            "Signed checkpoints sent to the sink.",
            ["sink"],
            registry=registry,
        )
        self.failed = Counter(
            "spintrail_checkpoint_forward_failed",
            "Signed checkpoints that could not be sent to the sink (after retries, or dropped).",
            ["sink"],
            registry=registry,
        )
        self._queue: queue.Queue[StoredCheckpoint | None] = queue.Queue(QUEUE_MAX)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spintrail-checkpoint-forward", daemon=True)

    def offer(self, cp: StoredCheckpoint) -> None:
        """The integrity log listener: queue ``cp`` without waiting."""
        try:
            self._queue.put_nowait(cp)
        except queue.Full:
            log.error("checkpoint %d (size %d) not forwarded: the send queue is full", cp.id, cp.size)
            for sink in self.sinks:
                self.failed.labels(sink.name).inc()

    def start(self) -> CheckpointForwarder:
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            cp = self._queue.get()
            if cp is None:
                return
            delivery = checkpoint_delivery(cp)
            for sink in self.sinks:
                self._send(sink, delivery, cp)

    def _send(self, sink: Sink, delivery: Delivery, cp: StoredCheckpoint) -> None:
        wait = self.retry_initial
        for attempt in range(1, self.attempts + 1):
            try:
                sink.send([delivery])
                self.sent.labels(sink.name).inc()
                return
            except (SinkError, OSError, ValueError) as exc:
                if attempt == self.attempts or self._stop.wait(wait):
                    log.error(
                        "checkpoint %d (size %d) not forwarded to sink %s after %d attempts: %s "
                        "(it stays in the database)",
                        cp.id,
                        cp.size,
                        sink.name,
                        attempt,
                        exc,
                    )
                    self.failed.labels(sink.name).inc()
                    return
                wait *= 2

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is queued (the final checkpoint at shutdown), without retrying, for up to ``timeout``
        seconds; then close the sinks."""
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("checkpoint forwarding still sending at shutdown; giving up")
            return
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                log.exception("checkpoint forwarding: closing sink %s failed", sink.name)


def start_checkpoint_forwarding(
    settings: Settings, registry: CollectorRegistry | None
) -> CheckpointForwarder | None:
    """Start forwarding checkpoints when any sink has ``checkpoints`` on (its own connection to each)."""
    configs = [c for c in settings.sinks if c.checkpoints]
    if not configs:
        return None
    sinks: list[Sink] = []
    for config in configs:
        try:
            sinks.append(build_sink(config))
        except (ValueError, OSError) as exc:
            log.error("sink %s: cannot forward checkpoints: %s", config.name, exc)
    if not sinks:
        return None
    log.info("forwarding signed checkpoints to %s", ", ".join(s.name for s in sinks))
    return CheckpointForwarder(sinks, registry).start()
