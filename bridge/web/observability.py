"""``GET /metrics`` (Prometheus text) and one JSON log line per request."""

from __future__ import annotations

import logging
import time

from flask import Blueprint, Flask, Response, g, request

from bridge.errors import StorageUnavailable
from bridge.logs import log_line
from bridge.ops.overview import delivery_states
from bridge.web.current import current_bridge
from bridge.web.errors import json_error

bp = Blueprint("observability", __name__)
access = logging.getLogger("bridge.access")

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


@bp.get("/metrics")
def metrics() -> Response | tuple[Response, int]:
    bridge = current_bridge()
    token = bridge.metrics_token
    if token.value is not None and not token.matches(request.headers.get("Authorization")):
        return json_error(401, "unauthorized",
                          "/metrics needs 'Authorization: Bearer <BRIDGE_METRICS_TOKEN>'",
                          **{"WWW-Authenticate": 'Bearer realm="mailjet-segment-bridge"'})
    try:
        body = bridge.metrics.render(bridge.store, delivery_states(bridge))
    except StorageUnavailable as exc:
        return json_error(503, "storage_unavailable", str(exc))
    return Response(body, mimetype=None, content_type=PROMETHEUS_TEXT)


def log_request(method: str, path: str, status: int, bytes_in: int, started: float | None,
                client: str | None) -> None:
    """Method, path, status, size and time only: never headers, query strings or bodies."""
    if not access.isEnabledFor(logging.INFO):
        return
    log_line(access, logging.INFO, "request", {
        "method": method, "path": path, "status": status, "bytes_in": bytes_in,
        "ms": round((time.perf_counter() - started) * 1000, 2) if started else None,
        "client": client,
    })


def register(app: Flask) -> None:
    app.register_blueprint(bp)

    @app.before_request
    def _start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _log_request(response: Response) -> Response:
        log_request(request.method, request.path, response.status_code, request.content_length or 0,
                    g.get("started"), request.remote_addr)
        return response
