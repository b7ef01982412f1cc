"""A fake Segment: the HTTP Tracking API and the settings CDN, one real HTTP server on 127.0.0.1.

Both live on one URL so a test needs one fake; in production they are two hosts
(``api.segment.io`` or ``events.eu1.segmentapis.com`` for tracking, ``cdn.segment.com`` for settings).
Sources: /work/shared/reference/segment.md §1 (Segment's HTTP API docs and the maintainers' answers
cited there).

Tracking, ``POST /v1/batch`` (:meth:`FakeSegment._track`):

- ``Content-Type: application/json``; 500 KB per request and 32 KB per call (400 when over); a batch
  of more than 2,500 calls is answered 200 but dropped (``dropped_over_limit``); JSON that is not
  strict (``NaN``/``Infinity`` literals, invalid UTF-8) or not JSON at all gives 400 [doc].
- The write key comes from Basic auth (user name; the colon is optional, as the docs' "backward
  compatibility" note allows) or from ``writeKey`` in the body [doc].
- **The edge does not validate write keys.** An unknown, non-empty key is answered 200
  ``{"success": true}`` and its calls are dropped (``dropped_unknown_key``): "The tracking API behind
  api.segment.io is stateless and doesn't do any validation" (analytics-ruby#136), "the edge is
  stateless and always returns 200" (analytics-node#59), curl gets 200 for unregistered keys
  (analytics-go#205). Only an empty or missing key is a 400 (analytics-go#205). A 401 or 403 comes
  only from a test's script.
- Optional, off by default: ``endpoint_region = "us" | "eu"`` makes this server act as one regional
  endpoint, and calls from a key of the other region are answered 200 and dropped
  (``dropped_wrong_region``). Reference §1.2: an EU source posting to ``api.segment.io`` "might not
  see any errors, but your events will not appear"; for a US key sent to the EU endpoint the docs
  say only "will get rejected", and answering it the same way is an assumption.

Settings CDN, ``GET /v1/projects/<writeKey>/settings`` (:meth:`FakeSegment._settings`): 404 for an
unknown key (analytics-react-native#873), 200 with the settings document for a known one, whose
``integrations["Segment.io"].apiHost`` names the key's region (``regions[key]``, default ``"us"``).

Tests script tracking answers (500, 429 with Retry-After, 400, 401, slow answers) with
:meth:`FakeSegment.then`, CDN answers (503, hangs) with :meth:`FakeSegment.cdn_then` /
:meth:`FakeSegment.cdn_fail`, and read back every request: ``requests`` (with ``sentAt``),
``accepted``, the ``dropped_*`` lists, ``cdn_requests`` and ``cdn_counts``. A test that sends a
large backlog can keep only the accepted calls' messageIds (``keep_calls=False``: ``accepted_ids``
and ``accepted_count``; requests then keep no calls); the answers are the same.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.fakes.base import FakeServer, strict_json

MAX_REQUEST_BYTES = 500 * 1024
MAX_CALL_BYTES = 32 * 1024
MAX_BATCH_CALLS = 2500

#: ``apiHost`` in the settings document, by region (reference §1.2 and §1.7).
API_HOSTS = {"us": "api.segment.io/v1", "eu": "events.eu1.segmentapis.com/v1"}

#: The body analytics-go#205 reports for a write key the edge refuses outright (HTTP 400). The
#: issue shows it for a very short key; that an empty key gets the same body is an assumption.
INVALID_KEY_BODY = {"success": False, "message": "An invalid write key was provided"}

_SETTINGS_PATH = re.compile(r"/v1/projects/(.*)/settings")  # the key as decoded from the path


@dataclass
class Scripted:
    """One scripted answer: the status, headers and body, after an optional delay."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    delay: float = 0.0
    #: Let the call through as accepted even though the answer says otherwise (a late 200 is a 200).
    accept: bool = False


@dataclass
class Received:
    status: int
    write_key: str | None
    sent_at: str | None
    batch: list[dict[str, Any]]
    at: float
    #: Answered 2xx but not delivered: "unknown_key", "wrong_region", "over_limit"; "" if delivered
    #: (or if the answer was an error).
    dropped: str = ""


@dataclass
class SettingsRequest:
    write_key: str
    status: int
    at: float


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, headers=headers or {}, mimetype="application/json")


def settings_document(write_key: str, region: str = "us") -> dict[str, Any]:
    """The settings CDN's answer for a known key, as analytics.js reads it.

    Shape: ``LegacySettings`` in segmentio/analytics-next, as its test helper ``CDNSettingsBuilder``
    builds a default one. What matters to a server-side client is the ``Segment.io`` entry: the key
    and the tracking host, without scheme and with ``/v1``, which names the source's region
    (reference §1.7). The rest is there so a client meets a realistic document; the bridge must not
    rely on it.
    """
    host = API_HOSTS[region]
    return {
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "unbundledIntegrations": [],
                "addBundledMetadata": True,
                "maybeBundledConfigIds": {},
                "versionSettings": {"version": "4.4.7", "componentTypes": ["browser"]},
                "apiHost": host,
            },
        },
        "plan": {"track": {"__default": {"enabled": True, "integrations": {}}},
                 "identify": {"__default": {"enabled": True}},
                 "group": {"__default": {"enabled": True}}},
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0.1, "host": host},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
    }


def _basic_user(header: str) -> str | None:
    """The user name of a Basic ``Authorization`` header (the write key), or None."""
    if not header.startswith("Basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:], validate=True).decode()
    except (binascii.Error, ValueError):
        return None
    return decoded.partition(":")[0]


class FakeSegment(FakeServer):
    name = "fake Segment"

    def __init__(self, write_keys: set[str] | None = None, *, keep_calls: bool = True) -> None:
        super().__init__()
        #: False: accepted calls are counted and their messageIds kept, not the calls themselves.
        self.keep_calls = keep_calls
        self.accepted_ids: set[str] = set()
        self.accepted_count = 0
        #: The keys of the workspace's sources: the CDN knows them, and their calls are delivered.
        self.write_keys = set(write_keys or {"good-key"})
        #: A source's region, by write key; a key not listed is "us".
        self.regions: dict[str, str] = {}
        #: None: this server takes every region's calls. "us"/"eu": it is that regional endpoint only.
        self.endpoint_region: str | None = None
        self.script: deque[Scripted] = deque()
        self.requests: list[Received] = []
        self.accepted: list[dict[str, Any]] = []
        self.dropped_over_limit: list[dict[str, Any]] = []
        self.dropped_unknown_key: list[dict[str, Any]] = []
        self.dropped_wrong_region: list[dict[str, Any]] = []
        #: A batch holding a call with one of these messageIds is refused with 400.
        self.reject_message_ids: set[str] = set()
        #: An outage: until this time every request gets the next of ``outage_statuses``.
        self.outage_until = 0.0
        self.outage_statuses: list[int] = [500, 503]
        # the settings CDN
        self.cdn_script: deque[Scripted] = deque()
        self.cdn_requests: list[SettingsRequest] = []
        self.cdn_counts: Counter[str] = Counter()
        self.cdn_outage_until = 0.0
        self.cdn_outage_status = 503

    # -- test helpers -----------------------------------------------------------------------------

    def then(self, *answers: Scripted) -> None:
        """Script the next tracking answers, whatever the key (the edge does not look at it)."""
        with self.lock:
            self.script.extend(answers)

    def message_ids(self) -> list[str]:
        with self.lock:
            return [call["messageId"] for call in self.accepted]

    def outage(self, seconds: float, statuses: list[int] | None = None) -> None:
        """Answer every tracking request with 500/503 (or ``statuses``) for ``seconds`` from now."""
        with self.lock:
            self.outage_until = time.time() + seconds
            self.outage_statuses = statuses or [500, 503]

    def cdn_then(self, *answers: Scripted) -> None:
        """Script the next settings answers. A scripted 200 without a body serves the real lookup
        (404 or the document) after its ``delay``: a slow CDN. A long ``delay`` is a hang."""
        with self.lock:
            self.cdn_script.extend(answers)

    def cdn_fail(self, times: int = 1, status: int = 503, delay: float = 0.0) -> None:
        """The next ``times`` settings requests get ``status`` (after ``delay`` seconds)."""
        self.cdn_then(*(Scripted(status, delay=delay) for _ in range(times)))

    def cdn_outage(self, seconds: float, status: int = 503) -> None:
        """Answer every settings request with ``status`` for ``seconds`` from now."""
        with self.lock:
            self.cdn_outage_until = time.time() + seconds
            self.cdn_outage_status = status

    def describe(self) -> str:
        accepted = len(self.accepted) if self.keep_calls else self.accepted_count
        return (f"{len(self.requests)} requests, {accepted} calls accepted, "
                f"{len(self.dropped_unknown_key)} dropped for an unknown key, "
                f"{len(self.dropped_wrong_region)} for the wrong region, "
                f"{len(self.dropped_over_limit)} over the batch limit; "
                f"{len(self.cdn_requests)} settings requests {dict(self.cdn_counts)}")

    # -- routing ----------------------------------------------------------------------------------

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        settings = _SETTINGS_PATH.fullmatch(request.path)
        if request.method == "GET" and settings:
            response = self._settings(settings.group(1))
        elif request.method == "POST" and request.path == "/v1/batch":
            response = self._track(request)
        else:
            response = _json(404, {"code": "not_found", "message": "not found"})
        return response(environ, start_response)

    # -- the settings CDN -------------------------------------------------------------------------

    def _settings(self, key: str) -> Response:
        """``GET /v1/projects/<writeKey>/settings``: 404 for an unknown key, else the document.

        The 404 body is plain text: what the real CDN sends with it is not documented, so a client
        must go by the status alone.
        """
        with self.lock:
            self.cdn_counts[key] += 1
            if time.time() < self.cdn_outage_until:
                scripted: Scripted | None = Scripted(self.cdn_outage_status)
            else:
                scripted = self.cdn_script.popleft() if self.cdn_script else None
        if scripted is not None and scripted.delay:
            time.sleep(scripted.delay)
        if scripted is not None and not (scripted.status == 200 and scripted.body is None):
            self._record_cdn(key, scripted.status)
            body = scripted.body or {"message": f"scripted {scripted.status}"}
            return _json(scripted.status, body, scripted.headers)
        with self.lock:
            known = key in self.write_keys
            region = self.regions.get(key, "us")
        if not known:
            self._record_cdn(key, 404)
            return Response("Not Found", status=404, mimetype="text/plain")
        self._record_cdn(key, 200)
        return _json(200, settings_document(key, region), {"Cache-Control": "public, max-age=120"})

    def _record_cdn(self, key: str, status: int) -> None:
        with self.lock:
            self.cdn_requests.append(SettingsRequest(key, status, time.time()))

    # -- the tracking API -------------------------------------------------------------------------

    def _record(self, status: int, key: str | None, body: Any, dropped: str = "") -> None:
        batch = body.get("batch", []) if isinstance(body, dict) else []
        sent_at = body.get("sentAt") if isinstance(body, dict) else None
        with self.lock:
            kept = batch if self.keep_calls else []
            self.requests.append(Received(status, key, sent_at, kept, time.time(), dropped))

    def _track(self, request: Request) -> Response:
        """``POST /v1/batch``: the checks the edge makes, in order; then scripts, outages, delivery."""
        raw = request.get_data()
        key = _basic_user(request.headers.get("Authorization", ""))
        if request.mimetype != "application/json":
            self._record(400, key, None)
            return _json(400, {"code": "invalid_request", "message": "Content-Type must be JSON"})
        if len(raw) > MAX_REQUEST_BYTES:
            self._record(400, key, None)
            return _json(400, {"code": "payload_too_large", "message": "batch over 500 KB"})
        try:
            body = strict_json(raw)
        except ValueError as exc:
            self._record(400, key, None)
            return _json(400, {"code": "invalid_json", "message": f"invalid JSON: {exc}"})
        if not isinstance(body, dict):
            self._record(400, key, None)
            return _json(400, {"code": "invalid_request", "message": "body must be an object"})
        if not key and isinstance(body.get("writeKey"), str):
            key = body["writeKey"]
        if not key:
            self._record(400, key, body)
            return _json(400, INVALID_KEY_BODY)
        batch = body.get("batch")
        if not isinstance(batch, list):
            self._record(400, key, body)
            return _json(400, {"code": "invalid_request", "message": "batch must be an array"})
        for call in batch:
            if len(json.dumps(call, ensure_ascii=False).encode()) > MAX_CALL_BYTES:
                self._record(400, key, body)
                return _json(400, {"code": "message_too_large", "message": "call over 32 KB"})
        with self.lock:
            if time.time() < self.outage_until:
                status = self.outage_statuses[len(self.requests) % len(self.outage_statuses)]
                self.requests.append(Received(status, key, body.get("sentAt"),
                                              batch if self.keep_calls else [], time.time()))
                return _json(status, {"code": "unavailable", "message": "outage"})
            scripted = self.script.popleft() if self.script else None
        if scripted is not None:
            if scripted.delay:
                time.sleep(scripted.delay)
            self._answer(scripted.status, key, body, batch,
                         deliver=scripted.accept or 200 <= scripted.status < 300)
            return _json(scripted.status, scripted.body or {"success": scripted.status < 300},
                         scripted.headers)
        if any(isinstance(call, dict) and call.get("messageId") in self.reject_message_ids
               for call in batch):
            self._record(400, key, body)
            return _json(400, {"code": "invalid_request", "message": "event rejected"})
        self._answer(200, key, body, batch, deliver=True)
        return _json(200, {"success": True})

    def _answer(self, status: int, key: str, body: dict[str, Any], batch: list[dict[str, Any]],
                deliver: bool) -> None:
        """Record the request and, if the edge took it, file its calls: accepted or dropped (one
        step under the lock, so a test that sees the calls also sees the request)."""
        with self.lock:
            dropped = self._file(key, batch) if deliver else ""
            self._record(status, key, body, dropped)

    def _file(self, key: str, batch: list[dict[str, Any]]) -> str:
        """Where a taken batch goes; returns why it was dropped, or "" if it was accepted."""
        if key not in self.write_keys:
            self.dropped_unknown_key.extend(batch)
            return "unknown_key"
        if self.endpoint_region is not None and self.regions.get(key, "us") != self.endpoint_region:
            self.dropped_wrong_region.extend(batch)
            return "wrong_region"
        if len(batch) > MAX_BATCH_CALLS:
            self.dropped_over_limit.extend(batch)
            return "over_limit"
        if self.keep_calls:
            self.accepted.extend(batch)
        else:
            self.accepted_count += len(batch)
            self.accepted_ids.update(call.get("messageId") for call in batch if isinstance(call, dict))
        return ""
