"""Prometheus metrics: one registry per application, so several servers can live in one process (tests)."""

from __future__ import annotations

import math
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector


class Metrics:
    """The counters, gauges and histograms spintrail exports at ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "spintrail_events_received", "Events received in accepted requests.", registry=r
        )
        self.stored = Counter("spintrail_events_stored", "Events newly stored.", registry=r)
        self.duplicates = Counter(
            "spintrail_events_duplicate",
            "Events already stored (echo resends), not stored again.",
            registry=r,
        )
        self.rejected = Counter(
            "spintrail_requests_rejected",
            "Ingest requests refused, by reason.",
            ["reason"],
            registry=r,
        )
        self.commit_seconds = Histogram(
            "spintrail_commit_seconds",
            "Time to write and commit one group of events.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.commit_events = Histogram(
            "spintrail_commit_events",
            "Events per group commit.",
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
            registry=r,
        )
        self.queue = Gauge("spintrail_write_queue_events", "Events waiting to be committed.", registry=r)

        self.inflight_bytes = Gauge(
            "spintrail_inflight_bytes",
            "Request bytes being read, decoded or waiting for their commit (bounded by max_inflight_bytes).",
            registry=r,
        )
        self.disk_full = Gauge(
            "spintrail_store_disk_full",
            "1 while the store cannot commit because its disk is full (ingest answers 507).",
            registry=r,
        )

        # The process: process_start_time_seconds, process_resident_memory_bytes, process_cpu_seconds_total,
        # process_open_fds and the like (Linux).
        ProcessCollector(registry=r)
        self.database_up = Gauge(
            "spintrail_database_up",
            "1 when the store's database answered at the last scrape, else 0 (ingest answers 503).",
            registry=r,
        )
        self.store_errors = Counter(
            "spintrail_store_errors",
            "Store operations that failed, by kind: unavailable (the database cannot be reached), "
            "disk_full, overloaded (the write queue is full).",
            ["kind"],
            registry=r,
        )
        for kind in ("unavailable", "disk_full", "overloaded"):
            self.store_errors.labels(kind)
        self.checkpoint_age = Gauge(
            "spintrail_checkpoint_age_seconds",
            "Seconds since the last signed checkpoint of the tamper-evident log (NaN before the first).",
            registry=r,
        )
        self.checkpoint_age.set(math.nan)

    def watch_checkpoints(self, checkpointer: Any) -> None:
        """Read the time of the checkpointer's last signed checkpoint at each scrape."""

        def age() -> float:
            signed = getattr(checkpointer, "last_signed_at", None)
            return max(0.0, time.time() - signed) if signed is not None else math.nan

        self.checkpoint_age.set_function(age)

    def watch(self, store: Any, inflight: Any) -> None:
        """Read the in-flight bytes and the store's disk-full state at each scrape."""
        self.inflight_bytes.set_function(lambda: float(inflight.used))
        self.disk_full.set_function(lambda: float(bool(getattr(store, "disk_full", False))))

    def observe_commit(self, seconds: float, events: int) -> None:
        self.commit_seconds.observe(seconds)
        self.commit_events.observe(events)
