"""mailjet-segment-bridge: Mailjet email events to Segment, Segment identifies to Mailjet.

``create_app()`` is the composition root: the only place where configuration, storage, validators,
clients and the web layer are wired together. Importing the package does nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping

from flask import Flask

from . import logs
from .config import Settings, load_settings
from .contact_sync import ContactSync
from .credentials import admin_login, callback_url, session_secret, webhook_credentials
from .forwarder import Forwarder, ForwarderPolicy
from .mailjet_client import MailjetClient
from .metrics import Metrics
from .pacing import Janitor
from .segment_client import SegmentClient
from .services import Services
from .storage import open_store
from .validation import EventValidator
from .version import __version__

__all__ = ["__version__", "create_app"]

log = logging.getLogger(__name__)


def _announce(line: str) -> None:
    """Shown once to whoever starts the bridge; on stderr, so CLI output stays clean for pipes."""
    print(line, file=sys.stderr, flush=True)


def create_app(
    settings: Settings | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    announce: Callable[[str], None] = _announce,
) -> Flask:
    """Build a bridge app. Settings come from ``environ`` (default: the process environment).

    Raises ConfigError (one line per bad value) or StorageUnavailable before serving anything.
    """
    if settings is None:
        settings = load_settings(os.environ if environ is None else environ)
    store = open_store(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
    store.migrate()
    mailjet_validator = EventValidator.mailjet(settings.schema_dir)
    segment_validator = EventValidator.segment(settings.schema_dir)
    credentials = webhook_credentials(settings, store, time.time())
    if credentials.origin == "generated":
        announce(
            "Webhook credentials were generated and stored. Paste this callback URL into Mailjet "
            f"(shown once; `mailjet-bridge callback-url` prints it again): "
            f"{callback_url(settings.public_url, credentials)}"
        )
    login = admin_login(settings, store, time.time())
    if login.generated:
        announce(f"Admin password generated (shown once): {login.generated} "
                 f"- log in at {settings.public_url}/admin")
    if not settings.segment_shared_secret:
        log.warning("SEGMENT_SHARED_SECRET is not set: /webhooks/segment accepts unsigned requests")
    services = Services(settings, store, mailjet_validator, segment_validator, credentials, Metrics(),
                        login)
    logs.guard_secrets(services.secret_values)

    def make_forwarder() -> Forwarder:
        return Forwarder(
            store,
            SegmentClient(services.segment_api_url, timeout=(5.0, settings.http_timeout)),
            write_key=services.write_key,
            event_names=services.event_names,
            policy=ForwarderPolicy(lease_seconds=settings.lease_seconds),
            metrics=services.metrics,
        )

    def make_contact_sync() -> ContactSync:
        return ContactSync(
            store,
            MailjetClient(services.mailjet_api_url, timeout=(5.0, max(settings.http_timeout, 30.0))),
            credentials=services.mailjet_credentials,
            target=services.mailjet_target,
            metrics=services.metrics,
        )

    def make_janitor() -> Janitor:
        return Janitor(store, settings.retention_days)

    services.loop_factories = [make_forwarder, make_contact_sync, make_janitor]
    app = Flask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        SECRET_KEY=session_secret(store, time.time()),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=settings.public_url.startswith("https://"),
        PERMANENT_SESSION_LIFETIME=12 * 3600,
    )
    app.extensions["bridge"] = services

    if settings.proxy_count:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=settings.proxy_count, x_proto=settings.proxy_count
        )

    from . import web

    web.register(app)
    return app
