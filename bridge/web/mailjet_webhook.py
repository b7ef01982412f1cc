"""``POST /webhooks/mailjet``: Mailjet's Event API callback (docs/behaviour.md, "Webhooks").

Answers 200 only after the events are committed; nothing here waits on the network.

This route is served as plain WSGI, in front of Flask: it is the one every Mailjet event takes, and
Flask's per-request machinery (request context, routing, response object, hooks) cost more than
everything else it does (docs/benchmarks.md, "what changed the figures"). Every other method and
path goes on to Flask. What Flask's hooks do for other routes is done here too: the size limit with
a 413 the client can read, JSON errors, one access-log line, and a JSON 500 for the unexpected.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, request
from werkzeug.datastructures import Authorization

from bridge.errors import StorageUnavailable
from bridge.inbound.intake import Intake, sort_events
from bridge.payloads.body import BodyError, parse_body
from bridge.storage.base import AcceptResult
from bridge.web.body import TooLarge, content_length, read_body, too_large_message
from bridge.web.current import current_bridge
from bridge.web.errors import STORAGE_RETRY_AFTER, STORAGE_UNAVAILABLE
from bridge.web.observability import log_request
from bridge.wiring import Bridge

log = logging.getLogger(__name__)

PATH = "/webhooks/mailjet"
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Answer = tuple[int, dict[str, Any], dict[str, str]]
UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Basic realm="mailjet-segment-bridge"'}


def error_answer(status: int, error: str, message: str, **headers: str) -> Answer:
    return status, {"error": error, "message": message}, headers


def caller_refused(bridge: Bridge, authorization: str | None) -> Answer | None:
    """A 401 unless the caller gave the webhook's user and password."""
    auth = Authorization.from_header(authorization)
    if auth is None or auth.type != "basic" or not bridge.credentials.matches(
        auth.username, auth.password
    ):
        return error_answer(401, "unauthorized",
                      "missing or wrong credentials: use the callback URL with user:password@ "
                      "(mailjet-bridge callback-url prints it)", **UNAUTHORIZED_HEADERS)
    return None


def too_large(bridge: Bridge) -> Answer:
    return error_answer(413, "request_entity_too_large",
                        too_large_message(bridge.settings.max_body_bytes))


def sorted_or_refused(bridge: Bridge, raw: bytes) -> Intake | Answer:
    """The body's events sorted into items and quarantine, or a 400 for a body that is not JSON."""
    try:
        return sort_events(parse_body(raw), bridge.mailjet_validator)
    except BodyError as exc:
        return error_answer(400, "bad_request", str(exc))


def stored(bridge: Bridge, intake: Intake, result: AcceptResult) -> Answer:
    """The 200 for a body whose events are committed, counted in the metrics."""
    bridge.metrics.intake(
        "mailjet", [i.event_type for i in intake.items] + ["invalid"] * len(intake.quarantined),
        result.accepted_by_type, result.quarantined,
    )
    return 200, {"accepted": result.accepted, "duplicate": result.duplicate,
                 "quarantined": result.quarantined}, {}


UNEXPECTED: Answer = error_answer(500, "internal_error",
                                  "the bridge hit an unexpected error; see its log")
STORAGE_REFUSED: Answer = error_answer(503, "storage_unavailable", STORAGE_UNAVAILABLE,
                                 **{"Retry-After": STORAGE_RETRY_AFTER})


def answer(bridge: Bridge, authorization: str | None, environ: dict[str, Any]) -> Answer:
    """Check the caller, read and sort the events, store them: the status, JSON body and headers."""
    refused = caller_refused(bridge, authorization)
    if refused is not None:
        return refused
    try:
        raw = read_body(environ, bridge.settings.max_body_bytes)
    except TooLarge:
        return too_large(bridge)
    intake = sorted_or_refused(bridge, raw)
    if not isinstance(intake, Intake):
        return intake
    try:
        result = bridge.store.accept(intake.items, intake.quarantined, time.time())
    except StorageUnavailable:
        return STORAGE_REFUSED
    return stored(bridge, intake, result)


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode() + b"\n"


def _through_flask() -> Response:
    """The same answer as a Flask view. The rule gives Flask the route, so other methods get its
    405 and OPTIONS its answer; a POST reaches this only where MailjetWebhook is not in front."""
    status, payload, headers = answer(current_bridge(), request.headers.get("Authorization"),
                                      request.environ)
    return Response(encode(payload), status, headers, content_type="application/json")


def register(app: Flask) -> None:
    app.add_url_rule(PATH, "mailjet_webhook", _through_flask, methods=["POST"])
    app.wsgi_app = MailjetWebhook(app.wsgi_app, app.extensions["bridge"])  # type: ignore[method-assign]


class MailjetWebhook:
    """WSGI: ``POST /webhooks/mailjet`` answered here, everything else passed on to ``app``."""

    def __init__(self, app: WSGIApp, bridge: Bridge) -> None:
        self.app = app
        self.bridge = bridge

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH or environ.get("REQUEST_METHOD") != "POST":
            return self.app(environ, start_response)
        started = time.perf_counter()
        try:
            status, payload, headers = answer(self.bridge, environ.get("HTTP_AUTHORIZATION"), environ)
        except Exception:
            log.exception("unexpected error while handling a request")
            status, payload, headers = UNEXPECTED
        body = encode(payload)
        start_response(f"{status} {HTTPStatus(status).phrase}", [
            ("Content-Type", "application/json"), ("Content-Length", str(len(body))),
            *headers.items(),
        ])
        log_request("POST", PATH, status, content_length(environ) or 0, started,
                    environ.get("REMOTE_ADDR"))
        return [body]
