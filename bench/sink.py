"""A fast local stand-in for Segment, in a process of its own: ``python bench/sink.py PORT``.

It behaves as Segment is published to (tests/fakes/segment.py has the sources), minus the checks:

- ``POST /v1/batch`` parses the body as strict JSON, as Segment does (400 when it is not), answers
  200 ``{"success": true}`` for any write key, and counts the calls in the batch. In recording mode
  it also keeps, for each call, its messageId and the time its batch arrived (for the latency figure).
- ``GET /v1/projects/<key>/settings``, the settings CDN the bridge asks about a write key: the
  settings document of a US source for any key.

For the harness: ``GET /stats`` (events, batches, bytes, first and last arrival), ``GET /ids``
(messageId -> arrival time, in recording mode) and ``POST /reset?record=0|1``. Parsing each batch
is what makes the bare client loop of R3 a fair yardstick: a sink that only counted bytes would be
a yardstick no real endpoint is.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")

_SETTINGS = re.compile(r"/v1/projects/([^/]+)/settings")


class State:
    """What arrived since the last reset."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset(False)

    def reset(self, record: bool) -> None:
        with self.lock:
            self.record = record
            self.events = self.batches = self.bytes = 0
            self.first: float | None = None
            self.last: float | None = None
            self.ids: dict[str, float] = {}

    def add(self, body: bytes, arrived: float) -> bool:
        """Count a batch; False when it is not strict JSON with a ``batch`` array."""
        try:
            calls = json.loads(body, parse_constant=_not_json)["batch"]
        except (ValueError, KeyError, TypeError):
            return False
        count = len(calls)
        ids = [call.get("messageId") for call in calls] if self.record else []
        with self.lock:
            self.events += count
            self.batches += 1
            self.bytes += len(body)
            self.first = arrived if self.first is None else self.first
            self.last = arrived
            for mid in ids:
                self.ids.setdefault(mid, arrived)
        return True

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {"events": self.events, "batches": self.batches, "bytes": self.bytes,
                    "first": self.first, "last": self.last, "record": self.record}


STATE = State()
OK = b'{"success": true}'


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Segment's API has
    #: The headers and the body go out in two writes: with Nagle's algorithm, the second waits for
    #: the client's delayed ACK (40 ms a request).
    disable_nagle_algorithm = True

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        arrived = time.time()
        parts = urlsplit(self.path)
        if parts.path == "/v1/batch":
            if STATE.add(body, arrived):
                self._answer(200, OK)
            else:
                self._answer(400, b'{"success": false, "message": "invalid JSON"}')
        elif parts.path == "/reset":
            STATE.reset(parse_qs(parts.query).get("record", ["0"])[0] == "1")
            self._answer(200, OK)
        else:
            self._answer(404, b'{"message": "not found"}')

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        settings = _SETTINGS.fullmatch(path)
        if settings:
            document = {"integrations": {"Segment.io": {"apiKey": settings.group(1),
                                                        "apiHost": "api.segment.io/v1"}}}
            self._answer(200, json.dumps(document).encode())
        elif path == "/stats":
            self._answer(200, json.dumps(STATE.stats()).encode())
        elif path == "/ids":
            with STATE.lock:
                ids = dict(STATE.ids)
            self._answer(200, json.dumps(ids).encode())
        else:
            self._answer(404, b'{"message": "not found"}')

    def log_message(self, *_args: Any) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


def main() -> None:
    port = int(sys.argv[1])
    with Server(("127.0.0.1", port), Handler) as server:
        server.serve_forever(poll_interval=0.2)


if __name__ == "__main__":
    main()
