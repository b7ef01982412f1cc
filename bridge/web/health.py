"""``GET /healthz``: 200 with each delivery state as detail; 503 with the reason when storage is
unavailable or Segment refuses the write key.

Load balancers should use ``/healthz?scope=accept``: 503 only when events cannot be stored, so a wrong
write key never stops the bridge from accepting (and keeping) Mailjet's events.
"""

from __future__ import annotations

import time

from flask import Blueprint, Response, jsonify, request

from bridge.errors import StorageUnavailable
from bridge.ops.overview import delivery_states
from bridge.web.current import current_bridge

bp = Blueprint("health", __name__)

#: Delivery states that mean events are waiting for something to be fixed or to recover.
TROUBLE = frozenset({"auth_failed", "retrying", "no_write_key", "unknown_write_key", "region_mismatch"})
#: Segment states that hold every event until an operator acts: /healthz answers 503 with the reason.
HOLDING = {
    "auth_failed": "Segment refused the write key",
    "unknown_write_key": "Segment does not know the write key",
    "region_mismatch": "the Segment region contradicts the write key's source",
}
#: Where /healthz stops counting: a probe answers in milliseconds with a backlog of millions (the
#: admin page, ``mailjet-bridge stats`` and /metrics count exactly).
COUNT_LIMIT = 10_000


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """The status and its code for everyone; the detail only for callers with the metrics token,
    when one is set (BRIDGE_METRICS_TOKEN)."""
    response, code = _health()
    token = current_bridge().metrics_token
    if token.value is not None and not token.matches(request.headers.get("Authorization")):
        return jsonify(status=response.get_json()["status"]), code
    return response, code


def _health() -> tuple[Response, int]:
    bridge = current_bridge()
    try:
        bridge.store.ping()
        queue = bridge.store.stats(time.time(), count_limit=COUNT_LIMIT)
        states = delivery_states(bridge)
    except StorageUnavailable as exc:
        return jsonify(status="unavailable", storage="unavailable", reason=str(exc)), 503
    segment, mailjet = states["segment"], states["mailjet"]
    body = {"storage": "ok", "segment": segment, "mailjet": mailjet, "queue": queue}
    if segment["state"] in HOLDING and request.args.get("scope") != "accept":
        # Events are still accepted and kept, but nothing reaches Segment until the key is fixed.
        return jsonify(status="unavailable", reason=HOLDING[segment["state"]], **body), 503
    unverified = segment.get("write_key", {}).get("verdict") == "unverified"
    troubled = (segment["state"] in TROUBLE or mailjet["state"] in TROUBLE or unverified
                or any(queue["stuck"].values()))
    return jsonify(status="degraded" if troubled else "ok", **body), 200
