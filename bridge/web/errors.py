"""Every error is a JSON body with a clear message; nothing answers with an HTML page or a traceback."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from bridge.web.body import too_large_message

log = logging.getLogger(__name__)


def json_error(status: int, error: str, message: str, **headers: str) -> tuple[Response, int]:
    response = jsonify({"error": error, "message": message})
    response.headers.update(headers)
    return response, status


#: How long a webhook sender should wait after a 503 (Mailjet retries every 30 s anyway).
STORAGE_RETRY_AFTER = "30"
STORAGE_UNAVAILABLE = "the events could not be stored; nothing was accepted, please retry"


def storage_unavailable() -> tuple[Response, int]:
    """The webhooks' answer when nothing could be stored: the sender must retry."""
    return json_error(503, "storage_unavailable", STORAGE_UNAVAILABLE,
                      **{"Retry-After": STORAGE_RETRY_AFTER})


def register(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        message = exc.description or exc.name
        if status == 413:
            message = too_large_message(app.config.get("MAX_CONTENT_LENGTH") or 0)
        error = (exc.name or "error").lower().replace(" ", "_")
        response, code = json_error(status, error, message)
        for name, value in exc.get_headers():
            if name.lower() not in ("content-type", "content-length"):
                response.headers[name] = value
        return response, code

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        log.exception("unexpected error while handling a request")
        return json_error(500, "internal_error", "the bridge hit an unexpected error; see its log")
