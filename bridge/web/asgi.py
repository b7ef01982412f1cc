"""``serve``'s web processes under uvicorn: each ASGI request handed to ``LoopFront`` as RSGI.

``LoopFront`` (``bridge.web.rsgi``) runs the Mailjet webhook on the event loop and the Flask app on
threads, and reads its request through RSGI's scope and protocol, as granian served it until #11.
Under granian, each request crossed from granian's Rust threads to the Python loop and back, which
cost a single-event post more CPU than the bridge's own work (docs/benchmarks.md, "What another
HTTP server ... could reach"); uvicorn parses HTTP on the event loop's own thread. Here an ASGI
request is given the few parts of RSGI's scope and protocol that ``LoopFront`` reads, so that the
front, and its tests, stay one.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

from bridge.web.rsgi import Headers, LoopFront, ProtocolClosed


def host_port(pair: Any) -> str:
    """An ASGI (host, port) as RSGI writes it: ``host:port``, an IPv6 host in brackets."""
    if not pair:
        return ":0"
    host, port = pair
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Headers:
    """RSGI's request headers: ``get`` and ``items``, lower-case names, text values."""

    __slots__ = ("_raw",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw

    def get(self, name: str, default: str | None = None) -> str | None:
        key = name.encode("latin-1")
        return next((value.decode("latin-1") for found, value in self._raw if found == key), default)

    def items(self) -> list[tuple[str, str]]:
        return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in self._raw]


class _Scope:
    """RSGI's scope, as far as ``LoopFront`` reads it."""

    __slots__ = ("client", "headers", "http_version", "method", "path", "proto", "query_string",
                 "scheme", "server")

    def __init__(self, scope: dict[str, Any]) -> None:
        self.proto = "http"
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.query_string = scope["query_string"].decode("latin-1")
        self.headers = _Headers(scope["headers"])
        self.client = host_port(scope.get("client"))
        self.server = host_port(scope.get("server"))
        self.scheme: str = scope.get("scheme", "http")
        self.http_version: str = scope.get("http_version", "1.1")


class _Protocol:
    """RSGI's protocol: the body at once (``await protocol()``) or chunk by chunk, and the answer,
    kept for the ASGI app to send once ``LoopFront`` is done."""

    def __init__(self, receive: Any) -> None:
        self._receive = receive
        self._more = True
        self.answer: tuple[int, Headers, bytes] | None = None

    async def __call__(self) -> bytes:
        """The whole body; ProtocolClosed if the client leaves before it ends (as granian)."""
        return b"".join([chunk async for chunk in self._read(raise_if_left=True)])

    def __aiter__(self) -> AsyncIterator[bytes]:
        """The body's chunks as they come; a client that leaves ends them (as granian's)."""
        return self._read(raise_if_left=False)

    async def _read(self, raise_if_left: bool) -> AsyncIterator[bytes]:
        """The body's chunks until its end, or until the client leaves (then ProtocolClosed, if
        ``raise_if_left``)."""
        while self._more:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self._more = False
                if raise_if_left:
                    raise ProtocolClosed("the client left")
                return
            self._more = message.get("more_body", False)
            if body := message.get("body", b""):
                yield body

    def response_bytes(self, status: int, headers: Headers, body: bytes) -> None:
        self.answer = (status, headers, body)


class AsgiFront:
    """An ASGI app around ``LoopFront``: its pool and loop set up at the lifespan's start, with
    SIGINT ignored (``serve`` stops its web processes in order, with SIGTERM)."""

    def __init__(self, front: LoopFront) -> None:
        self.front = front

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":  # no websockets here (uvicorn is started without them)
            return
        protocol = _Protocol(receive)
        await self.front.__rsgi__(_Scope(scope), protocol)
        if protocol.answer is None:
            return
        status, headers, body = protocol.answer
        await send({"type": "http.response.start", "status": status,
                    "headers": [(name.lower().encode("latin-1"), value.encode("latin-1"))
                                for name, value in headers]})
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                self.front.__rsgi_init__(asyncio.get_running_loop())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.front.__rsgi_del__(asyncio.get_running_loop())
                await send({"type": "lifespan.shutdown.complete"})
                return
