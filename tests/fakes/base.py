"""What every fake upstream shares: a real threaded HTTP server on 127.0.0.1 and polling helpers."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Self

from werkzeug.serving import make_server


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
