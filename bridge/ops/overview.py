"""What the admin overview, ``stats`` and ``/healthz`` report: delivery states, rates and latency."""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

from bridge.backfill.runner import stored_status
from bridge.delivery.pacing import status_key
from bridge.inbound import intake as inbound
from bridge.inbound.source import last_check
from bridge.outbound import intake as outbound
from bridge.wiring import Bridge

#: Kinds drawn in the events-per-minute chart: what arrived, not what was kept aside.
CHARTED_KINDS = (inbound.KIND, outbound.CONTACT_KIND)


def delivery_states(bridge: Bridge) -> dict[str, dict[str, Any]]:
    """Segment's and Mailjet's delivery state as the loops last stored it, with the verdict on the
    write key they last checked: the same answer from every process (a CLI in another shell, with
    none of the server's environment, included)."""
    states = {}
    for upstream in ("segment", "mailjet"):
        record = bridge.store.get_setting(status_key(upstream))
        starting = {"state": "starting", "detail": "no delivery yet"}
        states[upstream] = json.loads(record) if record else starting
    if states["segment"]["state"] != "no_write_key":
        check = last_check(bridge.store)
        states["segment"]["write_key"] = (
            {"verdict": check.verdict, "detail": check.detail, "checked_at": check.checked_at}
            if check else {"verdict": "unchecked", "detail": "not checked yet"})
    return states


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(share * 100) - 1]


def overview(bridge: Bridge, window: float = 3600) -> dict[str, Any]:
    """Events per type per minute, delivery latency p50/p99, queue depth (the admin overview)."""
    now = time.time()
    store = bridge.store
    latencies = store.latencies(now - window)
    return {
        "timeline": store.timeline(now - window, CHARTED_KINDS),
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "stats": store.stats(now),
        "states": delivery_states(bridge),
        "backfill": stored_status(store),
        "now": now,
        "window": window,
    }
