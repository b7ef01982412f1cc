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
TROUBLE = frozenset({"auth_failed", "retrying", "no_write_key"})


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    bridge = current_bridge()
    try:
        bridge.store.ping()
        queue = bridge.store.stats(time.time())
        states = delivery_states(bridge)
    except StorageUnavailable as exc:
        return jsonify(status="unavailable", storage="unavailable", reason=str(exc)), 503
    segment, mailjet = states["segment"], states["mailjet"]
    body = {"storage": "ok", "segment": segment, "mailjet": mailjet, "queue": queue}
    if segment["state"] == "auth_failed" and request.args.get("scope") != "accept":
        # Events are still accepted and kept, but nothing reaches Segment until the key is fixed.
        return jsonify(status="unavailable", reason="Segment refused the write key", **body), 503
    troubled = segment["state"] in TROUBLE or mailjet["state"] in TROUBLE
    return jsonify(status="degraded" if troubled else "ok", **body), 200
