"""A fake Segment HTTP Tracking API: a real HTTP server on 127.0.0.1, modelled on the reference.

What it checks, as Segment documents it (its HTTP Tracking API): ``POST /v1/batch`` with
``Content-Type: application/json``; Basic auth with the write key as user name; 500 KB per request
and 32 KB per call (400 when over); a batch of more than 2,500 calls is answered 200 but dropped
(recorded so tests can prove the bridge never does that); invalid JSON gives 400.

Tests script answers (500, 429 with Retry-After, 400, slow answers, closed connections) and read back
every request, including ``sentAt`` and the calls that were accepted.
"""

from __future__ import annotations

import base64
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.fakes.base import FakeServer

MAX_REQUEST_BYTES = 500 * 1024
MAX_CALL_BYTES = 32 * 1024
MAX_BATCH_CALLS = 2500


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


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, headers=headers or {}, mimetype="application/json")


class FakeSegment(FakeServer):
    name = "fake Segment"

    def __init__(self, write_keys: set[str] | None = None) -> None:
        super().__init__()
        self.write_keys = set(write_keys or {"good-key"})
        self.script: deque[Scripted] = deque()
        self.requests: list[Received] = []
        self.accepted: list[dict[str, Any]] = []
        self.dropped_over_limit: list[dict[str, Any]] = []
        #: A batch holding a call with one of these messageIds is refused with 400.
        self.reject_message_ids: set[str] = set()
        #: An outage: until this time every request gets the next of ``outage_statuses``.
        self.outage_until = 0.0
        self.outage_statuses: list[int] = [500, 503]

    # -- test helpers -----------------------------------------------------------------------------

    def then(self, *answers: Scripted) -> None:
        with self.lock:
            self.script.extend(answers)

    def message_ids(self) -> list[str]:
        with self.lock:
            return [call["messageId"] for call in self.accepted]

    def outage(self, seconds: float, statuses: list[int] | None = None) -> None:
        """Answer every request with 500/503 (or ``statuses``) for ``seconds`` from now."""
        with self.lock:
            self.outage_until = time.time() + seconds
            self.outage_statuses = statuses or [500, 503]

    def describe(self) -> str:
        return f"{len(self.requests)} requests, {len(self.accepted)} calls accepted"

    # -- the API ----------------------------------------------------------------------------------

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        response = self._handle(request)
        return response(environ, start_response)

    def _record(self, status: int, key: str | None, body: Any) -> None:
        batch = body.get("batch", []) if isinstance(body, dict) else []
        sent_at = body.get("sentAt") if isinstance(body, dict) else None
        with self.lock:
            self.requests.append(Received(status, key, sent_at, batch, time.time()))

    def _handle(self, request: Request) -> Response:
        if request.method != "POST" or request.path != "/v1/batch":
            return _json(404, {"code": "not_found", "message": "not found"})
        raw = request.get_data()
        key = None
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            decoded = base64.b64decode(header[6:]).decode()
            key = decoded.split(":", 1)[0] if ":" in decoded else None
        if request.mimetype != "application/json":
            self._record(400, key, None)
            return _json(400, {"code": "invalid_request", "message": "Content-Type must be JSON"})
        if len(raw) > MAX_REQUEST_BYTES:
            self._record(400, key, None)
            return _json(400, {"code": "payload_too_large", "message": "batch over 500 KB"})
        try:
            body = json.loads(raw)
        except ValueError:
            self._record(400, key, None)
            return _json(400, {"code": "invalid_json", "message": "invalid JSON"})
        if key not in self.write_keys:
            self._record(401, key, body)
            return _json(401, {"code": "unauthorized", "message": "invalid write key"})
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
                self.requests.append(Received(status, key, body.get("sentAt"), batch, time.time()))
                return _json(status, {"code": "unavailable", "message": "outage"})
            scripted = self.script.popleft() if self.script else None
        if scripted is not None:
            if scripted.delay:
                time.sleep(scripted.delay)
            self._record(scripted.status, key, body)
            if scripted.accept or 200 <= scripted.status < 300:
                self._accept(batch)
            return _json(scripted.status, scripted.body or {"success": scripted.status < 300},
                         scripted.headers)
        if any(call.get("messageId") in self.reject_message_ids for call in batch):
            self._record(400, key, body)
            return _json(400, {"code": "invalid_request", "message": "event rejected"})
        self._record(200, key, body)
        self._accept(batch)
        return _json(200, {"success": True})

    def _accept(self, batch: list[dict[str, Any]]) -> None:
        with self.lock:
            if len(batch) > MAX_BATCH_CALLS:
                self.dropped_over_limit.extend(batch)
            else:
                self.accepted.extend(batch)
