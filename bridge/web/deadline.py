"""A deadline for each request's headers, on uvicorn's HTTP protocol (httptools).

uvicorn has no such timeout of its own: a client that connects and never ends its headers (a
Slowloris) keeps its socket for as long as it likes, and enough of them exhaust the web process's
file descriptors. Here a connection must finish each request's headers within ``header_timeout``
seconds of opening, or of that request's first byte; then it gets a JSON 408 and is closed. A body
still on its way is not cut: a large post on a slow link takes what it takes (the webhook reads it
on the loop as it comes, holding no thread). Idle keep-alive connections stay uvicorn's
(``timeout_keep_alive``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from bridge.web.asgi import host_port


def timeout_answer(seconds: float) -> bytes:
    """The 408 sent to a client whose headers did not end in time (then the connection closes)."""
    body = json.dumps({"error": "request_timeout",
                       "message": f"the request's headers did not arrive within {seconds:g} s"}).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class HeaderDeadline(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a timer from a connection's opening (and each request's
    first byte) to the end of the request's headers."""

    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:  # never into an answer being sent
            self.transport.write(timeout_answer(self.header_timeout))
        self.logger.info("%s did not send its headers within %g s: closed", host_port(self.client),
                         self.header_timeout)
        self.transport.close()
