"""Prometheus metrics: event counters by type, delivery latency, and queue gauges read from the store.

Under gunicorn with several workers each process counts in its own files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode) and a scrape adds them up. Queue
gauges are read from the shared store at scrape time, so they are right whichever worker answers.
"""

from __future__ import annotations

import os
import time
from collections import Counter as Tally
from collections.abc import Iterable, Iterator
from typing import Any

from bridge.storage.base import Store

#: Latency buckets (seconds) for one HTTP call to Segment or Mailjet.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    def __init__(self) -> None:
        # Imported here, not at module level: prometheus-client picks multiprocess mode from
        # PROMETHEUS_MULTIPROC_DIR when first imported, and `serve` sets it only at start-up.
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.multiprocess = bool(os.environ.get(MULTIPROCESS_ENV))
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

        def counter(name: str, text: str, labels: list[str]) -> Any:
            return Counter(name, text, labels, registry=self.registry)

        self.received = counter("bridge_events_received", "Events received on a webhook",
                                ["source", "type"])
        self.accepted = counter("bridge_events_accepted", "Events queued (new)", ["source", "type"])
        self.duplicate = counter("bridge_events_duplicate", "Events already queued before",
                                 ["source", "type"])
        self.quarantined = counter("bridge_events_quarantined", "Events that failed validation",
                                   ["source"])
        self.delivered = counter("bridge_events_delivered", "Events delivered upstream",
                                 ["upstream", "type"])
        self.retried = counter("bridge_events_retried", "Event deliveries to be tried again",
                               ["upstream", "type"])
        self.dead = counter("bridge_events_dead", "Events moved to dead letters", ["upstream", "type"])
        self.loop_errors = counter("bridge_loop_errors", "Delivery rounds released after an unexpected "
                                   "error outside any one item", ["upstream"])
        self.latency = Histogram("bridge_delivery_latency_seconds",
                                 "Time of one delivery: a Segment batch request, a Mailjet job",
                                 ["upstream"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, kept: a webhook request counts on two or three of them, and
        ``labels`` takes a lock and builds its key each time (#11: about a sixth of the web
        processes' CPU a single-event post went to its access line and these counters)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _count(self, metric: Any, labels: tuple[str, ...], types: Iterable[str]) -> None:
        for kind, n in Tally(types).items():
            self._child(metric, *labels, kind or "unknown").inc(n)

    def intake(self, source: str, received: Iterable[str], accepted: dict[str, int],
               quarantined: int) -> None:
        """Count one webhook body: types received, new items per type, quarantined events."""
        for kind, total in Tally(received).items():
            self._child(self.received, source, kind or "unknown").inc(total)
            new = accepted.get(kind, 0)
            if new:
                self._child(self.accepted, source, kind).inc(new)
            if total - new > 0 and kind != "invalid":
                self._child(self.duplicate, source, kind).inc(total - new)
        if quarantined:
            self._child(self.quarantined, source).inc(quarantined)

    def outcome(self, upstream: str, result: str, types: Iterable[str]) -> None:
        """``result`` is delivered, retried or dead."""
        self._count({"delivered": self.delivered, "retried": self.retried, "dead": self.dead}[result],
                    (upstream,), types)

    def loop_error(self, upstream: str) -> None:
        self.loop_errors.labels(upstream).inc()

    def observe_latency(self, upstream: str, milliseconds: float) -> None:
        self.latency.labels(upstream).observe(milliseconds / 1000)

    def render(self, store: Store, states: dict[str, dict[str, Any]] | None = None) -> bytes:
        """The text exposition: counters (all processes in multiprocess mode), queue gauges, and
        each upstream's delivery state as stored (e.g. Segment does not know the write key)."""
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess

        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        else:
            registry = self.registry
        gauges = CollectorRegistry()
        gauges.register(_QueueCollector(store, states or {}))
        return generate_latest(registry) + generate_latest(gauges)


class _QueueCollector:
    """Queue depth and oldest pending age, read from the store at scrape time."""

    def __init__(self, store: Store, states: dict[str, dict[str, Any]]) -> None:
        self.store = store
        self.states = states

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        stats = self.store.stats(time.time())
        depth = GaugeMetricFamily("bridge_queue_depth", "Items waiting, by state", labels=["state"])
        for state in ("pending", "leased", "dead"):
            depth.add_metric([state], stats[state])
        depth.add_metric(["quarantined"], stats["quarantined"])
        yield depth
        stuck = GaugeMetricFamily("bridge_stuck_items", "Items nobody is working on: leased past their "
                                  "lease, or due and not taken for 5 minutes", labels=["reason"])
        for reason, count in stats["stuck"].items():
            stuck.add_metric([reason], count)
        yield stuck
        state = GaugeMetricFamily("bridge_delivery_state", "1 for each upstream's current delivery "
                                  "state (ok, retrying, auth_failed, unknown_write_key, ...)",
                                  labels=["upstream", "state"])
        key = GaugeMetricFamily("bridge_segment_write_key", "1 for what Segment's settings CDN last "
                                "said of the write key: known, unknown or unverified", labels=["verdict"])
        for upstream, record in self.states.items():
            state.add_metric([upstream, str(record.get("state"))], 1)
            if "write_key" in record:
                key.add_metric([str(record["write_key"].get("verdict"))], 1)
        yield state
        yield key
        age = stats["oldest_pending_age_seconds"]
        yield GaugeMetricFamily("bridge_oldest_pending_age_seconds",
                                "Age of the oldest item not yet delivered", value=age or 0.0)


def mark_process_dead(pid: int) -> None:
    """Tell multiprocess mode a worker is gone (gunicorn's child_exit hook)."""
    if os.environ.get(MULTIPROCESS_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
