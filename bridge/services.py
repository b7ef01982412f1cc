"""The objects one bridge instance works with, built by ``create_app`` and shared by web and CLI."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from .config import SEGMENT_REGIONS, STORED_SETTINGS, Settings
from .credentials import AdminLogin, WebhookCredentials
from .mailjet_events import EVENT_NAME_PRESETS
from .metrics import Metrics
from .storage.base import Store
from .validation import EventValidator


class Loop(Protocol):
    """A delivery loop (the Segment forwarder, the Mailjet contact sync)."""

    def run_once(self) -> int: ...

    def run_forever(self, stop: threading.Event) -> None: ...


@dataclass
class Services:
    settings: Settings
    store: Store
    mailjet_validator: EventValidator
    segment_validator: EventValidator
    credentials: WebhookCredentials
    metrics: Metrics
    admin: AdminLogin
    #: Builders of the delivery loops, each with its own HTTP session, for one thread each.
    loop_factories: list[Callable[[], Loop]] = field(default_factory=list, repr=False)

    def make_loops(self) -> list[Loop]:
        return [factory() for factory in self.loop_factories]

    def _stored(self, key: str) -> str | None:
        return self.store.get_setting(key)

    def write_key(self) -> str | None:
        """Stored setting first (set by an admin), else the environment; read at each delivery."""
        return self._stored("segment.write_key") or self.settings.segment_write_key

    def segment_api_url(self) -> str:
        """Stored URL, else the stored region's URL, else the configured one."""
        url = self._stored("segment.api_url")
        if url:
            return url
        region = self._stored("segment.region")
        return SEGMENT_REGIONS.get(region or "", self.settings.segment_api_url)

    def mailjet_api_url(self) -> str:
        return self._stored("mailjet.api_url") or self.settings.mailjet_api_url

    def effective(self) -> dict[str, tuple[str | None, str]]:
        """Every storable setting: (value, where it comes from: stored, environment or default)."""
        shown: dict[str, tuple[str | None, str]] = {}
        defaults = Settings()
        for key, spec in STORED_SETTINGS.items():
            stored = self._stored(key)
            configured = getattr(self.settings, spec.field)
            if stored is not None:
                shown[key] = (stored, "stored")
            elif configured != getattr(defaults, spec.field):
                shown[key] = (None if configured is None else str(configured), "environment")
            else:
                shown[key] = (None if configured is None else str(configured), "default")
        return shown

    def event_names(self) -> Mapping[str, str]:
        """Naming preset, stored setting first; an unknown stored name falls back to the configured one."""
        preset = self._stored("events.names")
        return EVENT_NAME_PRESETS.get(preset or "", EVENT_NAME_PRESETS[self.settings.event_names])

    def mailjet_credentials(self) -> tuple[str, str] | None:
        """The Mailjet API key pair, stored settings first; None until both halves are known."""
        key = self._stored("mailjet.api_key") or self.settings.mailjet_api_key
        secret = self._stored("mailjet.api_secret") or self.settings.mailjet_api_secret
        return (key, secret) if key and secret else None

    def secret_values(self) -> list[str | None]:
        """Every secret the process knows, so logs can never show one."""
        credentials = self.mailjet_credentials() or (None, None)
        return [self.write_key(), credentials[1], self.credentials.password,
                self.settings.admin_password, self.settings.segment_shared_secret]

    def mailjet_target(self) -> tuple[int, str]:
        """The contact list and list action identifies are applied with."""
        list_id = self._stored("mailjet.list_id")
        action = self._stored("mailjet.action")
        return (int(list_id) if list_id and list_id.isdigit() else self.settings.mailjet_list_id,
                action or self.settings.mailjet_action)


def start_loops(loops: list[Loop], stop: threading.Event) -> list[threading.Thread]:
    """Run each delivery loop in a daemon thread until ``stop`` is set."""
    threads = [
        threading.Thread(target=loop.run_forever, args=(stop,), name=type(loop).__name__, daemon=True)
        for loop in loops
    ]
    for thread in threads:
        thread.start()
    return threads
