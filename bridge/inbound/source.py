"""What Segment knows of a write key, asked of its settings CDN before anything is sent with it.

Segment's tracking API answers 200 to a write key it does not know and drops the events, so a 2xx
proves nothing. The settings CDN that analytics.js reads does know: ``GET
{cdn}/v1/projects/{key}/settings`` answers 404 for an unknown key, and for a known one the source's
settings, whose ``integrations["Segment.io"].apiHost`` names the region its data must go to.

The verdict is stored (under a hash of the key, never the key), so every process, ``/healthz``,
``check`` and the admin page see the same one, and so an unreachable CDN falls back to the last.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import requests

from bridge import USER_AGENT
from bridge.delivery.upstream import UpstreamError, send
from bridge.inbound.segment import SEGMENT_REGIONS
from bridge.storage.base import Store

#: Where a write key's source settings are read (analytics.js reads the same document).
SETTINGS_PATH = "/v1/projects/{key}/settings"
#: How long a verdict stands before the key is asked about again.
RECHECK_SECONDS = 600.0
#: The stored record of the last verdict.
RECORD_KEY = "segment.key_check"
#: Verdicts: Segment knows the key, does not know it, or could not be asked and never answered.
KNOWN, UNKNOWN, UNVERIFIED = "known", "unknown", "unverified"


def key_hash(write_key: str) -> str:
    """Which key a verdict is about, without storing the key."""
    return hashlib.sha256(write_key.encode("utf-8", "backslashreplace")).hexdigest()[:16]


def base_url_of(api_host: str) -> str:
    """``events.eu1.segmentapis.com/v1`` (the settings' form) as the client's base URL."""
    host = api_host.strip().removeprefix("https://").removeprefix("http://").rstrip("/")
    return "https://" + host.removesuffix("/v1")


def region_of(base_url: str) -> str | None:
    return next((name for name, url in SEGMENT_REGIONS.items() if url == base_url), None)


@dataclass(frozen=True)
class KeyCheck:
    """A verdict on one write key: known (with its source's API host), unknown, or unverified."""

    key: str  # key_hash(), never the key
    verdict: str
    checked_at: float
    detail: str
    #: Base URL of the source's region, from ``apiHost`` (known keys only).
    api_url: str | None = None
    #: ``us``/``eu`` when the API host is one of Segment's regions.
    region: str | None = None
    #: True when this verdict is the last one stored, because the CDN did not answer now.
    stale: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> KeyCheck | None:
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError):
            return None


def ask_cdn(session: requests.Session, cdn_url: str, write_key: str, *, now: float,
            timeout: tuple[float, float] = (5.0, 10.0)) -> KeyCheck:
    """One question to the CDN. Raises UpstreamError when it gives no verdict (no answer, 5xx...)."""
    url = cdn_url.rstrip("/") + SETTINGS_PATH.format(key=requests.utils.quote(write_key, safe=""))
    response, _ = send(session, "GET", url, timeout=timeout, headers={"User-Agent": USER_AGENT})
    if response.status_code == 404:
        return KeyCheck(key_hash(write_key), UNKNOWN, now,
                        "Segment does not know this write key (its settings CDN answered 404)")
    if response.status_code != 200:
        raise UpstreamError(response.status_code, "the settings CDN gave no verdict",
                            body=response.text[:300])
    try:
        settings = response.json()
        api_host = str(settings["integrations"]["Segment.io"].get("apiHost") or "")
    except (ValueError, KeyError, TypeError, AttributeError):
        api_host = ""
    api_url = base_url_of(api_host) if api_host else None
    region = region_of(api_url) if api_url else None
    where = f"its source sends to {api_host}" if api_host else "its settings name no API host"
    return KeyCheck(key_hash(write_key), KNOWN, now, f"Segment knows this write key; {where}",
                    api_url, region)


def hold_for(check: KeyCheck, region: str, explicit_api_url: bool) -> tuple[str, str] | None:
    """Why nothing may be sent with a key, as (state, sentence), or None. An unknown key holds
    delivery; so does an explicit region that contradicts the key's, unless an explicit API URL
    makes the region moot. Unverified keys do not hold: an unreachable CDN never stops delivery."""
    if check.verdict == UNKNOWN:
        return ("unknown_write_key", f"{check.detail}; nothing is sent with it, and events wait in "
                "the queue until a write key Segment knows is set")
    if (check.verdict == KNOWN and not explicit_api_url and region in SEGMENT_REGIONS
            and check.region and check.region != region):
        return ("region_mismatch", f"SEGMENT_REGION is {region} but this write key's source is in "
                f"{check.region}, and Segment rejects data sent to the wrong region; events wait in "
                f"the queue until the region is {check.region} or auto")
    return None


def last_check(store: Store) -> KeyCheck | None:
    """The last verdict stored, whichever key it is about: what the running loops saw."""
    record = store.get_setting(RECORD_KEY)
    return KeyCheck.from_json(record) if record else None


def stored_check(store: Store, write_key: str) -> KeyCheck | None:
    """The last verdict stored for this key, if the stored one is about it."""
    record = store.get_setting(RECORD_KEY)
    check = KeyCheck.from_json(record) if record else None
    return check if check and check.key == key_hash(write_key) else None


class KeyVerifier:
    """Asks the CDN about a key at start, when the key changes, and every ten minutes. An unreachable
    CDN keeps the last verdict, or makes the key "unverified" (delivery goes on), and is asked again
    a minute later. An unreachable CDN never stops a working bridge."""

    #: How soon to ask again when the CDN did not answer.
    RETRY_SECONDS = 60.0

    def __init__(self, store: Store, cdn_url: Callable[[], str], *, session: requests.Session | None = None,
                 clock: Callable[[], float] = time.time, recheck_seconds: float = RECHECK_SECONDS) -> None:
        self.store = store
        self.cdn_url = cdn_url
        self.session = session or requests.Session()
        self.clock = clock
        self.recheck_seconds = recheck_seconds
        self._last: KeyCheck | None = None
        self._next_ask = 0.0

    def check(self, write_key: str) -> KeyCheck:
        now = self.clock()
        if self._last and self._last.key == key_hash(write_key) and now < self._next_ask:
            return self._last
        self._last = self.ask(write_key, now)
        answered = self._last.verdict != UNVERIFIED and not self._last.stale
        self._next_ask = now + (self.recheck_seconds if answered else self.RETRY_SECONDS)
        return self._last

    def ask(self, write_key: str, now: float) -> KeyCheck:
        """Ask now and store the verdict; when the CDN does not answer, the last verdict stands."""
        try:
            check = ask_cdn(self.session, self.cdn_url(), write_key, now=now)
        except UpstreamError as exc:
            previous = stored_check(self.store, write_key)
            if previous and previous.verdict != UNVERIFIED:
                return KeyCheck(**{**asdict(previous), "stale": True})
            check = KeyCheck(key_hash(write_key), UNVERIFIED, now,
                             "write key not verified: Segment's settings CDN did not answer "
                             f"({exc.describe()}); events are sent meanwhile")
        self.store.put_setting(RECORD_KEY, check.to_json(), now)
        return check

    def close(self) -> None:
        self.session.close()
