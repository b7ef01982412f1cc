"""Deadlines for a client's request, on uvicorn's HTTP protocol (httptools).

uvicorn has no such timeouts of its own: a client that connects and never ends its headers (a
Slowloris), or ends them and then stops sending its body, keeps its socket for as long as it likes,
and enough of them exhaust the web process's file descriptors. Here, with ``timeout`` seconds (as
nginx's ``client_header_timeout`` and ``client_body_timeout``):

- a request's headers must end within ``timeout`` of the connection's opening, or of the request's
  first byte;
- a body on its way may not go silent for longer than ``timeout``: a large post on a slow link takes
  what it takes, as long as its bytes keep coming (the webhook reads them on the loop as they come,
  holding no thread).

A client past either gets a JSON 408 and the connection is closed. Nothing waits on the bridge's
side meanwhile: while uvicorn has paused reading (the app has not taken what came), or once the
answer is complete, the body's deadline does not run. Idle keep-alive connections stay uvicorn's
(``timeout_keep_alive``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from bridge.web.asgi import host_port

#: How often a process looks for connections past their deadline (so one is closed up to this
#: much after it).
SWEEP_SECONDS = 0.5


def timeout_answer(message: str) -> bytes:
    """The 408 sent to a client past its deadline (then the connection closes)."""
    body = json.dumps({"error": "request_timeout", "message": message}).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class ReadDeadline(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the deadlines above.

    A request only notes the times that matter: when its headers began (at the connection's
    opening and at each request's first byte) and when its body last sent something; no timer of its
    own. One sweep a process, every SWEEP_SECONDS, closes the connections past a deadline.
    (One web process, 4 rounds of 8 s alternating against uvicorn's protocol as it comes:
    single-event posts 7,788 against 7,865 req/s, 100-event posts 1,009 against 979, within the
    rounds' spread; a timer armed and cancelled on every request measured 3-4 % slower.)"""

    def __init__(self, *args: Any, timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout = timeout
        #: When the headers being read began (the loop's clock), or None once they have ended.
        self.began: float | None = None
        #: When the body being read last sent something (or its headers ended).
        self.body_at = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.began = self.loop.time()
        state = self.server_state
        if not getattr(state, "deadline_sweep", False):  # one sweep for the process's connections
            state.deadline_sweep = True  # type: ignore[attr-defined]
            self.loop.call_later(SWEEP_SECONDS, _sweep, self.loop, self.connections)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.began = self.loop.time()

    def on_headers_complete(self) -> None:
        self.began = None
        self.body_at = self.loop.time()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self.body_at = self.loop.time()
        super().on_body(body)

    def late(self, now: float) -> str | None:
        """Why this connection is past a deadline at ``now`` (the loop's clock), or None."""
        oldest = now - self.timeout
        if self.began is not None:
            return None if self.began > oldest else f"did not send its headers within {self.timeout:g} s"
        cycle = self.cycle
        if (cycle is not None and cycle.more_body and not cycle.response_complete
                and not self.flow.read_paused and self.body_at <= oldest):
            return f"sent nothing of its body for {self.timeout:g} s"
        return None

    def expire(self, why: str) -> None:
        """Past a deadline: a 408 (unless an answer is being sent on this connection), a log line,
        and the connection closed (the app, if it was reading the body, sees the client leave)."""
        self.began = None
        if self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_started or self.cycle.response_complete:
            self.transport.write(timeout_answer(f"the request {why}"))
        self.logger.info("%s %s: closed", host_port(self.client), why)
        self.transport.close()


def _sweep(loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
    """Close the connections past a deadline; then again in SWEEP_SECONDS."""
    now = loop.time()
    for connection, why in [(c, c.late(now)) for c in list(connections) if isinstance(c, ReadDeadline)]:
        if why:
            connection.expire(why)
    loop.call_later(SWEEP_SECONDS, _sweep, loop, connections)
