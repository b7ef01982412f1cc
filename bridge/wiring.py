"""The composition root without Flask: ``build(settings)`` makes the objects one bridge works with.

The web app, the CLI and the server all start here, so they share one store, one set of validators
and one view of the settings in force. Building opens and migrates the store and settles the
webhook credentials and admin password; it starts nothing. Delivery loops are made only on request
(``Bridge.loops()``), each with its own HTTP session, for one thread each.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from bridge import logs
from bridge.config import Effective, Settings
from bridge.credentials import (
    AdminLogin,
    BearerToken,
    WebhookCredentials,
    admin_login,
    callback_url,
    segment_token,
    segment_webhook_url,
    webhook_credentials,
)
from bridge.delivery.janitor import Janitor
from bridge.delivery.loop import Loop
from bridge.delivery.pacing import PacingPolicy
from bridge.inbound.forwarder import Forwarder, ForwarderPolicy
from bridge.inbound.intake import KIND
from bridge.inbound.segment import SegmentClient
from bridge.inbound.source import KeyVerifier, hold_for
from bridge.inbound.track import labels as track_labels
from bridge.metrics import Metrics
from bridge.outbound.contact_sync import ContactSync, ContactSyncPolicy
from bridge.outbound.intake import CONTACT_KIND, PROPERTY_KIND
from bridge.outbound.intake import labels as outbound_labels
from bridge.outbound.mailjet import MailjetClient
from bridge.payloads.schemas import EventValidator
from bridge.storage import open_store
from bridge.storage.base import Store

#: The stored setting where ``serve`` records the address it listens on and its public URL.
SERVING_KEY = "server.serving"


def announce_on_stderr(line: str) -> None:
    """Shown once to whoever starts the bridge; on stderr, so CLI output stays clean for pipes."""
    print(line, file=sys.stderr, flush=True)


@dataclass
class Bridge:
    """The objects one bridge instance works with, shared by the web layer, the CLI and the server."""

    settings: Settings
    store: Store
    #: The settings in force (stored first, then the environment), read at each use.
    current: Effective
    mailjet_validator: EventValidator
    segment_validator: EventValidator
    credentials: WebhookCredentials
    admin: AdminLogin
    metrics: Metrics
    #: What /webhooks/segment requires besides (or instead of) the shared secret's signature.
    segment_token: BearerToken
    #: What /metrics and the detail of /healthz require; open when its value is None.
    metrics_token: BearerToken

    def forwarder(self) -> Forwarder:
        """A new forwarder (Mailjet events to Segment): the worker's, or a drain helper's."""
        settings, current = self.settings, self.current
        verifier = KeyVerifier(self.store, lambda: settings.segment_cdn_url)

        def gate(key: str) -> tuple[str, str] | None:
            return hold_for(verifier.check(key), current.segment_region(),
                            current.explicit_api_url() is not None)

        return Forwarder(
            self.store,
            SegmentClient(current.segment_api_url, timeout=(5.0, settings.http_timeout)),
            write_key=current.write_key,
            event_names=current.event_names,
            gate=gate,
            policy=ForwarderPolicy(lease_seconds=settings.lease_seconds,
                                   pacing=PacingPolicy(backoff_cap=settings.retry_max_seconds)),
            metrics=self.metrics,
        )

    def loops(self) -> list[Loop]:
        """The forwarder, the contact sync and the janitor, each new, to run in a thread each
        (the forwarder first: the worker watches it for a backlog)."""
        settings, current = self.settings, self.current
        pacing = PacingPolicy(backoff_cap=settings.retry_max_seconds)
        forwarder = self.forwarder()
        contact_sync = ContactSync(
            self.store,
            MailjetClient(current.mailjet_api_url, timeout=(5.0, max(settings.http_timeout, 30.0))),
            credentials=current.mailjet_credentials,
            target=current.mailjet_target,
            policy=ContactSyncPolicy(lease_seconds=settings.lease_seconds, pacing=pacing),
            metrics=self.metrics,
        )
        janitor = Janitor(self.store, settings.retention_days, dedupe_days=settings.dedupe_days,
                          labellers={KIND: track_labels, CONTACT_KIND: outbound_labels,
                                     PROPERTY_KIND: outbound_labels},
                          draining=lambda: forwarder.draining)
        return [forwarder, contact_sync, janitor]

    def serving(self) -> dict[str, object] | None:
        """What ``serve`` recorded when it last started listening: address, public URL, pid, since."""
        record = self.store.get_setting(SERVING_KEY)
        return json.loads(record) if record else None

    def public_url(self) -> str:
        """The public URL the running server recorded, else this process's own (BRIDGE_PUBLIC_URL):
        the CLI, run from anywhere with any environment, prints what the server serves."""
        serving = self.serving()
        return str(serving["public_url"]) if serving else self.settings.public_url

    def record_serving(self, host: str, port: int, now: float) -> None:
        """Called by ``serve`` once its port accepts connections."""
        record = {"address": f"{host}:{port}", "public_url": self.settings.public_url, "since": now}
        self.store.put_setting(SERVING_KEY, json.dumps(record), now)

    def callback_url(self) -> str:
        """The URL to paste into Mailjet, with the webhook credentials in it."""
        return callback_url(self.public_url(), self.credentials)

    def secret_values(self) -> list[str | None]:
        """Every secret the process knows, so logs can never show one."""
        credentials = self.current.mailjet_credentials() or (None, None)
        return [self.current.write_key(), credentials[1], self.credentials.password,
                self.settings.admin_password, self.settings.segment_shared_secret,
                self.segment_token.value, self.metrics_token.value]

    def close(self) -> None:
        self.store.close()


def build(settings: Settings, *, announce: Callable[[str], None] = announce_on_stderr,
          create: bool = True) -> Bridge:
    """Open and migrate the store, load the schemas, settle credentials; start nothing.

    ``create=False`` (CLI commands other than serve and worker) reads the credentials the server
    stored and generates none. Raises ConfigError (one line per bad value) or StorageUnavailable.
    """
    store = open_store(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
    store.migrate()
    mailjet_validator = EventValidator.mailjet(settings.schema_dir)
    segment_validator = EventValidator.segment(settings.schema_dir)
    credentials = webhook_credentials(settings, store, time.time(), create=create)
    if credentials.origin == "generated":
        announce(
            "Webhook credentials were generated and stored. Paste this callback URL into Mailjet "
            f"(shown once; `mailjet-bridge callback-url` prints it again): "
            f"{callback_url(settings.public_url, credentials)}"
        )
    login = admin_login(settings, store, time.time(), create=create)
    if login.generated:
        announce(f"Admin password generated (shown once): {login.generated} "
                 f"- log in at {settings.public_url}/admin")
    token = segment_token(settings, store, time.time(), create=create)
    if token.origin == "generated":
        announce(
            "Segment webhook token generated and stored. In Segment's Webhooks (Actions) destination, "
            f"send to {segment_webhook_url(settings.public_url)} with the header "
            f"'Authorization: Bearer {token.value}' (shown once; `mailjet-bridge segment-webhook` "
            "prints it again)"
        )
    bridge = Bridge(settings, store, Effective(settings, store), mailjet_validator, segment_validator,
                    credentials, login, Metrics(), token,
                    BearerToken(settings.metrics_token, "environment" if settings.metrics_token else "none"))
    logs.guard_secrets(bridge.secret_values)
    return bridge
