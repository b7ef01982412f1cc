"""Configuration: the environment, stored settings, defaults, and which one wins.

``load_settings`` reads an environment mapping once, validates it, and freezes it. Nothing here reads
``os.environ`` by itself: the CLI and the app factory pass the environment in, so tests and embedders
decide what the bridge sees. ``Effective`` answers "what is in force now": a setting an admin stored
wins over the environment, which wins over the default; it is read at each delivery, so a change
applies without a restart.
"""

from __future__ import annotations

import os
import pwd
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from bridge.errors import ConfigError
from bridge.inbound.fields import EVENT_NAME_PRESETS
from bridge.inbound.segment import SEGMENT_REGIONS
from bridge.inbound.source import stored_check
from bridge.outbound.mailjet import MAILJET_ACTIONS
from bridge.storage.base import Store

__all__ = ["MAILJET_ACTIONS", "SEGMENT_REGIONS", "Effective", "Settings", "load_settings"]
#: Under the XDG data folder, so ``make run`` and the CLI share one database from any folder.
DATA_SUBDIR = "mailjet-bridge"
#: The checkout's schemas/, or where a non-editable install put them (setup.cfg data_files).
DEFAULT_SCHEMA_DIR = next(
    (folder for folder in (Path(__file__).resolve().parent.parent / "schemas",
                           Path(sys.prefix) / "share" / "mailjet-segment-bridge" / "schemas")
     if folder.is_dir()),
    Path(__file__).resolve().parent.parent / "schemas",
)
DEFAULT_MAX_BODY_BYTES = 5 * 1024 * 1024


def default_database_url(environ: Mapping[str, str]) -> str:
    """``$XDG_DATA_HOME/mailjet-bridge/bridge.db`` (``~/.local/share/...`` when unset): one place per
    user, whatever folder a command runs in."""
    data_home = environ.get("XDG_DATA_HOME", "").strip()
    if not data_home or not Path(data_home).is_absolute():  # the XDG spec ignores relative paths
        home = environ.get("HOME", "").strip() or pwd.getpwuid(os.getuid()).pw_dir
        data_home = str(Path(home) / ".local" / "share")
    return f"sqlite:///{Path(data_home) / DATA_SUBDIR / 'bridge.db'}"


@dataclass(frozen=True)
class Settings:
    """Everything the bridge is configured with. Secrets are kept out of ``repr``."""

    segment_write_key: str | None = field(default=None, repr=False)
    #: ``auto``: the region of the write key's source, read from Segment's settings CDN.
    segment_region: str = "auto"
    #: An explicit API base URL; it beats any region (and makes the region check moot).
    segment_api_url: str | None = None
    #: Where write keys are verified (``GET {url}/v1/projects/{key}/settings``).
    segment_cdn_url: str = "https://cdn.segment.com"
    mailjet_api_key: str | None = None
    mailjet_api_secret: str | None = field(default=None, repr=False)
    mailjet_api_url: str = "https://api.mailjet.com"
    mailjet_list_id: int = 1
    mailjet_action: str = "addnoforce"
    webhook_username: str | None = None
    webhook_password: str | None = field(default=None, repr=False)
    segment_shared_secret: str | None = field(default=None, repr=False)
    #: ``Authorization: Bearer …`` that /webhooks/segment requires (generated when neither it nor the
    #: shared secret is set: the endpoint is never open).
    segment_webhook_token: str | None = field(default=None, repr=False)
    #: When set, /metrics and the detail of /healthz need ``Authorization: Bearer`` this token.
    metrics_token: str | None = field(default=None, repr=False)
    #: From ``default_database_url`` when BRIDGE_DATABASE_URL is not set; this one only for
    #: Settings built by hand.
    database_url: str = "sqlite:///:memory:"
    admin_password: str | None = field(default=None, repr=False)
    event_names: str = "mailjet"
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str = "http://127.0.0.1:8000"
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    lease_seconds: float = 60.0
    #: Delivered rows lose their payload after this many days (0 keeps them)...
    retention_days: int = 7
    #: ...and are deleted, dedupe key and all, after this many (at least the retention).
    dedupe_days: int = 30
    #: Seconds to wait for Segment's or Mailjet's answer before the attempt counts as failed.
    http_timeout: float = 15.0
    #: Longest wait between tries after an upstream-wide failure with no ``Retry-After``.
    retry_max_seconds: float = 60.0
    #: ``full``: a 200 survives power loss. ``normal``: survives a crash of the bridge, and is faster.
    sqlite_synchronous: str = "full"
    #: Web processes of ``serve`` (``BRIDGE_WORKERS``; by default one a core beyond the first).
    workers: int = 1
    #: Seconds a client of ``serve`` has to send a request's headers, and may go silent in a body.
    client_timeout: float = 30.0
    #: Processes ``mailjet-bridge worker`` adds to its forwarder while it drains a backlog
    #: (``BRIDGE_DRAIN_HELPERS``; by default one a core beyond the first, three at most).
    drain_helpers: int = 0
    #: Reverse proxies in front that set X-Forwarded-For/-Proto (client addresses for logs and the
    #: login limit); 0 trusts no such header.
    proxy_count: int = 0
    schema_dir: Path = DEFAULT_SCHEMA_DIR


def _url_problem(name: str, value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{name}={value!r} is not a valid URL: use http(s)://host[:port]"
    return None


class _Reader:
    """Collects every problem instead of stopping at the first, so one start shows them all."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self.environ.get(name, "").strip()
        return value or default

    def choice(self, name: str, choices: tuple[str, ...] | list[str], default: str) -> str:
        value = (self.text(name) or default).lower()
        if value not in choices:
            self.problems.append(f"{name}={value!r} is not valid: use one of {', '.join(choices)}")
            return default
        return value

    def url(self, name: str, default: str | None) -> str | None:
        value = self.text(name, default)
        if value is None:
            return None
        problem = _url_problem(name, value)
        if problem:
            self.problems.append(problem)
            return default
        return value.rstrip("/")

    def integer(self, name: str, default: int, minimum: int, maximum: int | None = None) -> int:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            value = minimum - 1
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and {maximum}" if maximum is not None else ""
            self.problems.append(
                f"{name}={raw!r} is not valid: use a whole number "
                + (f"between {minimum}{upper}" if maximum is not None else f"of at least {minimum}")
            )
            return default
        return value


def default_web_processes() -> int:
    """A web process for each core this process may run on beyond the first (which the writer, the
    delivery process and the sender share), one at least, eight at most. On 2 cores one web
    process served 1.33x the anchor's single-event posts against 1.20x for two, whose event loops
    each batch fewer requests a wake-up (docs/benchmarks.md, #11)."""
    return max(1, min(len(os.sched_getaffinity(0)) - 1, 8))


def default_drain_helpers() -> int:
    """A drain helper for each core this process may run on beyond the first, three at most: one
    interpreter maps and posts at most a core's worth of events (docs/benchmarks.md, R3)."""
    return max(0, min(len(os.sched_getaffinity(0)) - 1, 3))


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Build validated settings from environment variables; raise ConfigError listing every problem."""
    r = _Reader(environ)
    region = r.choice("SEGMENT_REGION", ("auto", *SEGMENT_REGIONS), "auto")
    username = r.text("BRIDGE_WEBHOOK_USERNAME")
    password = r.text("BRIDGE_WEBHOOK_PASSWORD")
    if (username is None) != (password is None):
        r.problems.append(
            "BRIDGE_WEBHOOK_USERNAME and BRIDGE_WEBHOOK_PASSWORD must be set together "
            "(or both left unset to have them generated)"
        )
        username = password = None
    if username and ":" in username:
        r.problems.append("BRIDGE_WEBHOOK_USERNAME must not contain ':' (Basic auth splits on it)")
    database_url = r.text("BRIDGE_DATABASE_URL") or default_database_url(environ)
    if not database_url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        r.problems.append(
            f"BRIDGE_DATABASE_URL={database_url!r} is not valid: use sqlite:///path "
            "or postgresql://user@host/db"
        )
    host = r.text("BRIDGE_HOST", "127.0.0.1") or "127.0.0.1"
    port = r.integer("BRIDGE_PORT", 8000, 1, 65535)
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    settings = Settings(
        segment_write_key=r.text("SEGMENT_WRITE_KEY"),
        segment_region=region,
        segment_api_url=r.url("SEGMENT_API_URL", None),
        segment_cdn_url=r.url("SEGMENT_CDN_URL", "https://cdn.segment.com") or "https://cdn.segment.com",
        mailjet_api_key=r.text("MAILJET_API_KEY"),
        mailjet_api_secret=r.text("MAILJET_API_SECRET"),
        mailjet_api_url=r.url("MAILJET_API_URL", "https://api.mailjet.com") or "",
        mailjet_list_id=r.integer("MAILJET_LIST_ID", 1, 1),
        mailjet_action=r.choice("MAILJET_ACTION", MAILJET_ACTIONS, "addnoforce"),
        webhook_username=username,
        webhook_password=password,
        segment_shared_secret=r.text("SEGMENT_SHARED_SECRET"),
        segment_webhook_token=r.text("SEGMENT_WEBHOOK_TOKEN"),
        metrics_token=r.text("BRIDGE_METRICS_TOKEN"),
        database_url=database_url,
        admin_password=r.text("BRIDGE_ADMIN_PASSWORD"),
        event_names=r.choice("BRIDGE_EVENT_NAMES", tuple(EVENT_NAME_PRESETS), "mailjet"),
        host=host,
        port=port,
        public_url=r.url("BRIDGE_PUBLIC_URL", f"http://{shown_host}:{port}") or "",
        max_body_bytes=r.integer("BRIDGE_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, 1024),
        lease_seconds=r.integer("BRIDGE_LEASE_SECONDS", 60, 1, 3600),
        retention_days=r.integer("BRIDGE_RETENTION_DAYS", 7, 0, 3650),
        dedupe_days=r.integer("BRIDGE_DEDUPE_DAYS", 30, 1, 3650),
        http_timeout=r.integer("BRIDGE_HTTP_TIMEOUT", 15, 1, 300),
        retry_max_seconds=r.integer("BRIDGE_RETRY_MAX_SECONDS", 60, 1, 3600),
        sqlite_synchronous=r.choice("BRIDGE_SQLITE_SYNCHRONOUS", ("full", "normal"), "full"),
        workers=r.integer("BRIDGE_WORKERS", default_web_processes(), 1, 64),
        client_timeout=r.integer("BRIDGE_CLIENT_TIMEOUT", 30, 1, 600),
        drain_helpers=r.integer("BRIDGE_DRAIN_HELPERS", default_drain_helpers(), 0, 16),
        proxy_count=r.integer("BRIDGE_PROXY_COUNT", 0, 0, 5),
        schema_dir=Path(r.text("BRIDGE_SCHEMA_DIR") or DEFAULT_SCHEMA_DIR),
    )
    if r.problems:
        raise ConfigError(r.problems)
    return settings


@dataclass(frozen=True)
class StoredSetting:
    """A setting an admin can store (``config set``, the admin page). Stored values win over the
    environment from the next delivery on."""

    env: str
    field: str
    secret: bool = False


STORED_SETTINGS: dict[str, StoredSetting] = {
    "segment.write_key": StoredSetting("SEGMENT_WRITE_KEY", "segment_write_key", secret=True),
    "segment.region": StoredSetting("SEGMENT_REGION", "segment_region"),
    "segment.api_url": StoredSetting("SEGMENT_API_URL", "segment_api_url"),
    "mailjet.api_key": StoredSetting("MAILJET_API_KEY", "mailjet_api_key", secret=True),
    "mailjet.api_secret": StoredSetting("MAILJET_API_SECRET", "mailjet_api_secret", secret=True),
    "mailjet.api_url": StoredSetting("MAILJET_API_URL", "mailjet_api_url"),
    "mailjet.list_id": StoredSetting("MAILJET_LIST_ID", "mailjet_list_id"),
    "mailjet.action": StoredSetting("MAILJET_ACTION", "mailjet_action"),
    "events.names": StoredSetting("BRIDGE_EVENT_NAMES", "event_names"),
}


def check_stored_setting(key: str, value: str, name: str | None = None) -> str:
    """Validate a value for ``key`` with the environment's rules; returns it normalised.

    Raises ConfigError with one line naming the setting (``name``: as a page labels it; else the
    key) and what it accepts.
    """
    spec = STORED_SETTINGS.get(key)
    if spec is None:
        raise ConfigError([f"unknown setting {key!r}: use one of {', '.join(STORED_SETTINGS)}"])
    value = value.strip()
    if not value:
        raise ConfigError([f"{name or key}: a value is required"])
    try:
        parsed = load_settings({spec.env: value, "HOME": "/"})
    except ConfigError as exc:
        if name:
            problems = [f"{name}: {p.split('=', 1)[1]}" for p in exc.problems]
        else:
            problems = [p.replace(spec.env, key, 1) for p in exc.problems]
        raise ConfigError(problems) from None
    return str(getattr(parsed, spec.field))


def mask(value: str | None) -> str:
    """A secret as admins may see it: only its last four characters, and only if it is long."""
    if not value:
        return ""
    return "••••" + (value[-4:] if len(value) >= 12 else "")


class Effective:
    """The settings in force: stored (set by an admin) first, then the environment, then defaults.

    Read at each use, so every process sees a change on its next delivery.
    """

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store

    def _stored(self, key: str) -> str | None:
        return self.store.get_setting(key)

    def write_key(self) -> str | None:
        return self._stored("segment.write_key") or self.settings.segment_write_key

    def explicit_api_url(self) -> str | None:
        """An API URL someone set (stored, else the environment); it beats any region."""
        return self._stored("segment.api_url") or self.settings.segment_api_url

    def segment_region(self) -> str:
        """``auto``, ``us`` or ``eu``: stored first, then the environment."""
        region = self._stored("segment.region")
        return region if region in ("auto", *SEGMENT_REGIONS) else self.settings.segment_region

    def segment_api_url(self) -> str:
        """Where events go: an explicit URL, else the region's; with ``auto``, the region of the
        write key's source as Segment's settings CDN last said (US until it has said)."""
        explicit = self.explicit_api_url()
        if explicit:
            return explicit
        region = self.segment_region()
        if region != "auto":
            return SEGMENT_REGIONS[region]
        key = self.write_key()
        check = stored_check(self.store, key) if key else None
        return (check.api_url if check and check.api_url else None) or SEGMENT_REGIONS["us"]

    def mailjet_api_url(self) -> str:
        return self._stored("mailjet.api_url") or self.settings.mailjet_api_url

    def event_names(self) -> Mapping[str, str]:
        """Naming preset, stored setting first; an unknown stored name falls back to the configured one."""
        preset = self._stored("events.names")
        return EVENT_NAME_PRESETS.get(preset or "", EVENT_NAME_PRESETS[self.settings.event_names])

    def mailjet_credentials(self) -> tuple[str, str] | None:
        """The Mailjet API key pair; None until both halves are known."""
        key = self._stored("mailjet.api_key") or self.settings.mailjet_api_key
        secret = self._stored("mailjet.api_secret") or self.settings.mailjet_api_secret
        return (key, secret) if key and secret else None

    def mailjet_target(self) -> tuple[int, str]:
        """The contact list and list action identifies are applied with."""
        list_id = self._stored("mailjet.list_id")
        action = self._stored("mailjet.action")
        return (int(list_id) if list_id and list_id.isdigit() else self.settings.mailjet_list_id,
                action or self.settings.mailjet_action)

    def shown(self) -> dict[str, tuple[str | None, str]]:
        """Every setting in force: (value, where it comes from: stored, environment or default).

        The API URLs are shown as they are used: an unset Segment URL is the region's, and a region
        that an explicit URL makes moot says so.
        """
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
        if self.explicit_api_url() is None:
            region = self.segment_region()
            how = "the write key's source" if region == "auto" else "the region"
            shown["segment.api_url"] = (self.segment_api_url(), f"{shown['segment.region'][1]}: from {how}")
        else:
            value, origin = shown["segment.region"]
            shown["segment.region"] = (value, f"{origin}; moot: segment.api_url wins")
        cdn = self.settings.segment_cdn_url
        shown["segment.cdn_url"] = (cdn, "default" if cdn == defaults.segment_cdn_url else "environment")
        return shown
