"""HTTP entry points: the two webhooks, health, metrics and the admin page, as blueprints.

Views reach their collaborators through ``bridge.web.current.current_bridge()``, never through
module globals, so one process can hold several apps (the tests do).
"""

from __future__ import annotations

from typing import Any

from flask import Flask


def displayable(value: Any) -> Any:
    """Text as a page can carry it: a lone surrogate (JSON allows ``\\ud800``; UTF-8 does not) is
    shown as its escape. For display only: stored rows keep what was received."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def register(app: Flask) -> None:
    from bridge.web import admin, body, errors, health, mailjet_webhook, observability, segment_webhook

    app.jinja_env.finalize = displayable  # every {{ value }} of every page
    app.session_interface = admin.AdminOnlySessions()
    errors.register(app)
    body.register(app)
    observability.register(app)
    app.register_blueprint(segment_webhook.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(admin.root)
    mailjet_webhook.register(app)  # last: its plain-WSGI front goes around everything above
