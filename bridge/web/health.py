"""``GET /healthz``: 200 when the bridge can accept events, with the delivery state as detail."""

from __future__ import annotations

import json
import time

from flask import Blueprint, Response, jsonify

from ..errors import StorageUnavailable
from ..forwarder import STATUS_KEY
from . import services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    svc = services()
    try:
        svc.store.ping()
        queue = svc.store.stats(time.time())
        record = svc.store.get_setting(STATUS_KEY)
    except StorageUnavailable as exc:
        return jsonify(status="unavailable", storage="unavailable", reason=str(exc)), 503
    delivery = json.loads(record) if record else {"state": "starting", "detail": "no delivery yet"}
    if not svc.write_key():
        delivery = {"state": "no_write_key", "detail": "no Segment write key is set"}
    status = "ok" if delivery["state"] in ("ok", "starting") else "degraded"
    return jsonify(status=status, storage="ok", segment=delivery, queue=queue), 200
