"""The objects one bridge instance works with, built by ``create_app`` and shared by web and CLI."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .config import Settings
from .credentials import WebhookCredentials
from .forwarder import Forwarder
from .mailjet_events import EVENT_NAME_PRESETS
from .storage.base import Store
from .validation import EventValidator


@dataclass
class Services:
    settings: Settings
    store: Store
    validator: EventValidator
    credentials: WebhookCredentials
    make_forwarder: Callable[[], Forwarder] = field(repr=False)

    def write_key(self) -> str | None:
        """Stored setting first (set by an admin), else the environment; read at each delivery."""
        return self.store.get_setting("segment.write_key") or self.settings.segment_write_key

    def event_names(self) -> Mapping[str, str]:
        """Naming preset, stored setting first; an unknown stored name falls back to the configured one."""
        preset = self.store.get_setting("events.names")
        return EVENT_NAME_PRESETS.get(preset or "", EVENT_NAME_PRESETS[self.settings.event_names])
