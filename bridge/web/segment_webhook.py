"""``POST /webhooks/segment``: the target of Segment's Webhooks (Actions) destination
(docs/behaviour.md, "Webhooks").

Answers 200 only after the identifies are committed. Segment drops events answered 400/401/403 and
retries 5xx for four hours, so storage trouble is a 503 and only bad input is a 4xx.
"""

from __future__ import annotations

import time

from flask import Blueprint, Response, jsonify, request

from bridge.errors import StorageUnavailable
from bridge.outbound.intake import signature_matches, sort_segment_events
from bridge.payloads.body import BodyError, parse_body
from bridge.web.body import request_body
from bridge.web.current import current_bridge
from bridge.web.errors import json_error, storage_unavailable

bp = Blueprint("segment_webhook", __name__)


@bp.post("/webhooks/segment")
def receive() -> tuple[Response, int]:
    bridge = current_bridge()
    token = bridge.segment_token
    if token.value is not None and not token.matches(request.headers.get("Authorization")):
        return json_error(
            401, "unauthorized",
            "missing or wrong 'Authorization: Bearer <token>': set it as a header in Segment's "
            "Webhooks (Actions) mapping (SEGMENT_WEBHOOK_TOKEN; `mailjet-bridge segment-webhook` "
            "prints the URL and header)",
            **{"WWW-Authenticate": 'Bearer realm="mailjet-segment-bridge"'},
        )
    raw = request_body(bridge.settings.max_body_bytes)
    try:
        events = parse_body(raw)
    except BodyError as exc:
        return json_error(400, "bad_request", str(exc))
    secret = bridge.settings.segment_shared_secret
    if secret and events:
        # Segment signs the exact body of a single event, and only the first element of a batch.
        signed = events[0][1] if raw.lstrip()[:1] == b"[" else raw.decode("utf-8")
        if not signature_matches(secret, signed, request.headers.get("X-Signature")):
            return json_error(
                401, "unauthorized",
                "missing or wrong X-Signature: it must be the hex HMAC-SHA1 of the body (or of the "
                "first event of a batch) with SEGMENT_SHARED_SECRET",
            )
    intake = sort_segment_events(events, bridge.segment_validator)
    try:
        result = bridge.store.accept(
            intake.items, intake.quarantined, time.time(), identities=intake.identities,
            dead=intake.dead,
        )
    except StorageUnavailable:
        return storage_unavailable()
    bridge.metrics.intake(
        "segment",
        ["identify"] * (len(intake.items) + intake.skipped) + ["other"] * intake.ignored
        + ["invalid"] * (len(intake.quarantined) + len(intake.dead)),
        result.accepted_by_type, result.quarantined,
    )
    return jsonify(
        accepted=result.accepted, duplicate=result.duplicate, quarantined=result.quarantined,
        ignored=intake.ignored, skipped=intake.skipped, dead=result.dead,
    ), 200
