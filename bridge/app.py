"""The Flask app factory: the bridge's objects (``wiring.build``) behind the web layer's blueprints.

With ``bridge/web/``, the only place that imports Flask. Building the app starts no thread: the
delivery loops run under ``mailjet-bridge serve`` (in every worker) or ``mailjet-bridge worker``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping

from flask import Flask

from bridge import web
from bridge.config import Settings, load_settings
from bridge.credentials import session_secret
from bridge.wiring import announce_on_stderr, build

#: Admin sessions last a working day.
SESSION_SECONDS = 12 * 3600


def create_app(
    settings: Settings | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    announce: Callable[[str], None] = announce_on_stderr,
) -> Flask:
    """Build a bridge app. Settings come from ``environ`` (default: the process environment).

    Raises ConfigError (one line per bad value) or StorageUnavailable before serving anything.
    """
    if settings is None:
        settings = load_settings(os.environ if environ is None else environ)
    bridge = build(settings, announce=announce)
    app = Flask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        SECRET_KEY=session_secret(bridge.store, time.time()),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=settings.public_url.startswith("https://"),
        PERMANENT_SESSION_LIFETIME=SESSION_SECONDS,
    )
    app.extensions["bridge"] = bridge
    web.register(app)
    if settings.proxy_count:  # outermost: every route, the plain-WSGI webhook too, sees the client
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=settings.proxy_count, x_proto=settings.proxy_count
        )
    return app
