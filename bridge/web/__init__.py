"""HTTP entry points: the two webhooks, health, metrics and the admin page, as blueprints.

Views reach their collaborators through ``bridge.web.current.current_bridge()``, never through
module globals, so one process can hold several apps (the tests do).
"""

from __future__ import annotations

from flask import Flask


def register(app: Flask) -> None:
    from bridge.web import admin, errors, health, mailjet_webhook, observability, segment_webhook

    errors.register(app)
    observability.register(app)
    app.register_blueprint(mailjet_webhook.bp)
    app.register_blueprint(segment_webhook.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(admin.bp)
