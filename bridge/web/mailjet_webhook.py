"""``POST /webhooks/mailjet``: Mailjet's Event API callback (docs/behaviour.md, "Webhooks").

Answers 200 only after the events are committed; nothing here waits on the network.
"""

from __future__ import annotations

import time

from flask import Blueprint, Response, jsonify, request

from bridge.errors import StorageUnavailable
from bridge.inbound.intake import sort_events
from bridge.payloads.body import BodyError, parse_body
from bridge.web.body import request_body
from bridge.web.current import current_bridge
from bridge.web.errors import json_error, storage_unavailable

bp = Blueprint("mailjet_webhook", __name__)


@bp.post("/webhooks/mailjet")
def receive() -> tuple[Response, int]:
    bridge = current_bridge()
    auth = request.authorization
    if auth is None or auth.type != "basic" or not bridge.credentials.matches(
        auth.username, auth.password
    ):
        return json_error(
            401, "unauthorized",
            "missing or wrong credentials: use the callback URL with user:password@ "
            "(mailjet-bridge callback-url prints it)",
            **{"WWW-Authenticate": 'Basic realm="mailjet-segment-bridge"'},
        )
    try:
        events = parse_body(request_body(bridge.settings.max_body_bytes))
    except BodyError as exc:
        return json_error(400, "bad_request", str(exc))
    intake = sort_events(events, bridge.mailjet_validator)
    try:
        result = bridge.store.accept(intake.items, intake.quarantined, time.time())
    except StorageUnavailable:
        return storage_unavailable()
    bridge.metrics.intake(
        "mailjet", [i.event_type for i in intake.items] + ["invalid"] * len(intake.quarantined),
        result.accepted_by_type, result.quarantined,
    )
    return jsonify(
        accepted=result.accepted, duplicate=result.duplicate, quarantined=result.quarantined
    ), 200
