"""``GET /healthz``: 200 with each delivery state as detail; 503 with the reason when storage is
unavailable or Segment refuses the write key.

Load balancers should use ``/healthz?scope=accept``: 503 only when events cannot be stored, so a wrong
write key never stops the bridge from accepting (and keeping) Mailjet's events.
"""

from __future__ import annotations

import json
import time
from typing import Any

from flask import Blueprint, Response, jsonify, request

from ..errors import StorageUnavailable
from ..pacing import status_key
from . import services

bp = Blueprint("health", __name__)

#: Delivery states that mean events are waiting for something to be fixed or to recover.
TROUBLE = frozenset({"auth_failed", "retrying", "no_write_key"})


def _state(record: str | None) -> dict[str, Any]:
    return json.loads(record) if record else {"state": "starting", "detail": "no delivery yet"}


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    svc = services()
    try:
        svc.store.ping()
        queue = svc.store.stats(time.time())
        segment = _state(svc.store.get_setting(status_key("segment")))
        mailjet = _state(svc.store.get_setting(status_key("mailjet")))
        if not svc.write_key():
            segment = {"state": "no_write_key", "detail": "no Segment write key is set"}
        if not svc.mailjet_credentials():
            mailjet = {"state": "no_api_keys", "detail": "no Mailjet API key pair is set"}
    except StorageUnavailable as exc:
        return jsonify(status="unavailable", storage="unavailable", reason=str(exc)), 503
    body = {"storage": "ok", "segment": segment, "mailjet": mailjet, "queue": queue}
    if segment["state"] == "auth_failed" and request.args.get("scope") != "accept":
        # Events are still accepted and kept, but nothing reaches Segment until the key is fixed.
        return jsonify(status="unavailable", reason="Segment refused the write key", **body), 503
    troubled = segment["state"] in TROUBLE or mailjet["state"] in TROUBLE
    return jsonify(status="degraded" if troubled else "ok", **body), 200
