"""What every fake upstream shares: a real threaded HTTP server on 127.0.0.1, polling helpers, and a
strict JSON reader."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Self

from werkzeug.serving import make_server


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(raw: bytes) -> Any:
    """Parse ``raw`` as strict JSON (RFC 8259), or raise ``ValueError``.

    Python's ``json.loads`` is lenient where the real services are not: it reads ``NaN``,
    ``Infinity`` and ``-Infinity`` (which ``json.dumps`` writes by default), it guesses UTF-16/32
    from the bytes and it lets UTF-8-encoded surrogates through. RFC 8259 has no such literals and
    requires UTF-8 between systems; Segment documents "invalid JSON → 400" and Mailjet answers
    "Invalid json input", so both fakes refuse such a body with 400 rather than guess that the
    real parsers are as lenient as Python's (an assumption on the safe side: a bridge that sends
    strict JSON passes either way). ``UnicodeDecodeError`` is a ``ValueError``, so one
    ``except ValueError`` covers every refusal.
    """
    text = raw.decode("utf-8")  # strict: invalid UTF-8 (and a UTF-16 body) raises
    return json.loads(text, parse_constant=_refuse_constant)


class FakeServer:
    """Subclasses implement ``_app`` (a WSGI callable) and hold ``lock`` while touching their state."""

    name = "fake"

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._server: Any = None

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        raise NotImplementedError

    def start(self, port: int = 0) -> Self:
        """Listen on ``port`` (0: any free one). A fixed port lets a test bring an upstream back."""
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = make_server("127.0.0.1", port, self._app, threaded=True)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def describe(self) -> str:
        """What the server has seen, for failure messages."""
        return ""

    def wait_for(self, predicate: Callable[[Any], bool], timeout: float = 20.0) -> None:
        """Poll until ``predicate(self)`` holds (under the lock); fail with what was seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate(self):
                    return
            time.sleep(0.02)
        raise AssertionError(f"{self.name}: condition not met in {timeout} s; {self.describe()}")
