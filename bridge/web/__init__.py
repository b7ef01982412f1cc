"""HTTP entry points. Views reach their collaborators through ``current_app.extensions['bridge']``."""

from __future__ import annotations

from flask import Flask, current_app

from bridge.wiring import Bridge


def current_bridge() -> Bridge:
    """The bridge's objects, built once per app by ``wiring.build``."""
    return current_app.extensions["bridge"]


def register(app: Flask) -> None:
    from bridge.web import admin, errors, health, mailjet_webhook, observability, segment_webhook

    errors.register(app)
    observability.register(app)
    app.register_blueprint(mailjet_webhook.bp)
    app.register_blueprint(segment_webhook.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(admin.bp)
