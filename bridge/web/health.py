"""``GET /healthz``: 200 when the bridge can accept events, with each delivery state as detail."""

from __future__ import annotations

import json
import time
from typing import Any

from flask import Blueprint, Response, jsonify

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
    troubled = segment["state"] in TROUBLE or mailjet["state"] in TROUBLE
    return jsonify(status="degraded" if troubled else "ok", storage="ok", segment=segment,
                   mailjet=mailjet, queue=queue), 200
