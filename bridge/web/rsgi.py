"""What ``serve``'s web processes run: the Mailjet webhook on the event loop, the rest on threads.

The front reads its requests through RSGI's scope and protocol (uvicorn hands them over as ASGI,
``bridge.web.asgi``; granian served this front through RSGI until #11 measured it). Under WSGI
every request was handed to a Python thread, and each web process committed its own requests,
taking turns with the others at SQLite's one write lock: two web processes served fewer
single-event posts than one (docs/benchmarks.md, #11). Here
``POST /webhooks/mailjet`` runs on the worker's event loop: its body is read as it arrives (a slow
client holds nothing), its events are checked and sorted on the loop, and the sorted events go to
the host's writer process (``bridge.storage.writer``), which commits the requests of every web
process together. Each request is still answered only after its own commit.

Every other request is read on the loop too, within the size limit, and then handed to the Flask app
(a WSGI callable: ``bridge.server.TakingTurns`` around it) on a pool of threads. Flask knows nothing
of this module, and this module knows nothing of Flask.
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from werkzeug.http import parse_list_header

from bridge.errors import StorageUnavailable
from bridge.inbound.intake import Intake
from bridge.storage.base import AcceptResult
from bridge.storage.writer import WriterClient
from bridge.web.body import TooLarge, parse_length, read_chunks
from bridge.web.mailjet_webhook import (
    PATH,
    STORAGE_REFUSED,
    UNEXPECTED,
    Answer,
    caller_refused,
    encode,
    sorted_or_refused,
    stored,
    too_large,
)
from bridge.web.observability import log_request
from bridge.wiring import Bridge

log = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


Headers = list[tuple[str, str]]


class ProtocolClosed(Exception):
    """The client left before its body ended (what granian's RSGI raised; ``bridge.web.asgi``
    raises it for uvicorn's ``http.disconnect``)."""


def _host(address: str) -> tuple[str, str]:
    """``"127.0.0.1:8080"`` or ``"[::1]:8080"`` as host and port."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), port


def client_address(scope: Any, proxies: int) -> str:
    """The client, as ProxyFix gives it to the WSGI routes: with ``proxies`` trusted proxies in
    front, the address that many entries from the end of X-Forwarded-For (when it has that many)."""
    client = _host(scope.client)[0]
    if proxies:  # every X-Forwarded-For line (a proxy may add its own), as ProxyFix reads them
        forwarded = parse_list_header(",".join(
            value for name, value in scope.headers.items() if name == "x-forwarded-for"))
        if len(forwarded) >= proxies:
            return forwarded[-proxies]
    return client


def wsgi_environ(scope: Any, body: bytes) -> dict[str, Any]:
    """The WSGI environ of an RSGI request whose body has been read (PEP 3333)."""
    server, port = _host(scope.server)
    client, client_port = _host(scope.client)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope.method, "SCRIPT_NAME": "",
        # RSGI gives the path decoded; WSGI wants its UTF-8 bytes as latin-1 text
        "PATH_INFO": scope.path.encode("utf-8", "surrogateescape").decode("latin-1"),
        "QUERY_STRING": scope.query_string, "SERVER_NAME": server, "SERVER_PORT": port,
        "SERVER_PROTOCOL": f"HTTP/{scope.http_version}", "REMOTE_ADDR": client,
        "REMOTE_PORT": client_port, "wsgi.version": (1, 0), "wsgi.url_scheme": scope.scheme,
        "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr, "wsgi.multithread": True,
        "wsgi.multiprocess": True, "wsgi.run_once": False, "wsgi.input_terminated": True,
    }
    for name, value in scope.headers.items():
        # As most servers do: "X_Forwarded_For" must not pass for X-Forwarded-For. And the body is
        # read whole: the app gets it with a length, however it came.
        if "_" in name or name == "transfer-encoding":
            continue
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    environ["CONTENT_LENGTH"] = str(len(body))  # what was read (a chunked body has none of its own)
    return environ


def _call(app: WSGIApp, environ: dict[str, Any]) -> tuple[int, Headers, bytes]:
    """Run a WSGI app to the end of its answer (on a pool thread)."""
    started: list[Any] = []

    def start_response(status: str, headers: Headers, exc_info: Any = None) -> Callable[[bytes], None]:
        started[:] = [status, headers]
        return lambda _data: None  # the legacy write(): none of the bridge's routes uses it

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, headers = started
    return int(status[:3]), list(headers), body


async def read_whole(protocol: Any, length: int | None, limit: int) -> bytes:
    """The request's body. With a declared length within the limit, in one await: the server reads
    exactly that many bytes and wakes the loop once, not once a chunk (single-event posts: 279-289
    against 323-324 µs of the web processes' CPU a request, #11). Else chunk by chunk, within the
    limit (``read_chunks``)."""
    if length is not None and length <= limit:
        try:
            body: bytes = await protocol()
        except ProtocolClosed:  # the client left mid-body: no body, and no one to answer (a 400 is
            return b""  # logged, as for a body cut short; never an error with a traceback)
        if len(body) > limit:  # not with HTTP's framing; refused all the same if it ever were
            raise TooLarge
        return body
    return await read_chunks(protocol, length, limit)


class LoopFront:
    """An RSGI app: the Mailjet webhook on the event loop, everything else to ``app`` on threads."""

    def __init__(self, app: WSGIApp, bridge: Bridge, threads: int,
                 writer: WriterClient | None = None) -> None:
        self.app = app
        self.bridge = bridge
        self.writer = writer
        self.threads = threads
        self.limit = bridge.settings.max_body_bytes
        self.proxies = bridge.settings.proxy_count
        self.pool: ThreadPoolExecutor | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="web")

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if scope.proto != "http":  # no websockets here (the server is started without them)
            return
        started = time.perf_counter()
        if scope.method == "POST" and scope.path == PATH:
            length = parse_length(scope.headers.get("content-length"))
            try:
                status, payload, headers = await self._mailjet(scope, protocol, length)
            except Exception:
                log.exception("unexpected error while handling a request")
                status, payload, headers = UNEXPECTED
            body = encode(payload)
            protocol.response_bytes(status, [
                ("content-type", "application/json"), ("content-length", str(len(body))),
                *headers.items()], body)
            log_request("POST", PATH, status, length or 0, started, client_address(scope, self.proxies))
            return
        await self._wsgi(scope, protocol)

    async def _mailjet(self, scope: Any, protocol: Any, length: int | None) -> Answer:
        """``mailjet_webhook.answer``, with the body read and the commit awaited on the loop."""
        bridge = self.bridge
        refused = caller_refused(bridge, scope.headers.get("authorization"))
        if refused is not None:
            return refused
        try:
            raw = await read_whole(protocol, length, self.limit)
        except TooLarge:
            return too_large(bridge)
        intake = sorted_or_refused(bridge, raw)
        if not isinstance(intake, Intake):
            return intake
        try:
            result = await self._committed(intake)
        except StorageUnavailable:
            return STORAGE_REFUSED
        return stored(bridge, intake, result)

    async def _committed(self, intake: Intake) -> AcceptResult:
        """The intake committed: by the host's writer process under ``serve``; else (the front run
        on its own) by this process's group commit, on a pool thread."""
        now = time.time()
        if self.writer is not None:
            return await self.writer.accept(intake.items, intake.quarantined, now)
        assert self.loop is not None
        return await self.loop.run_in_executor(
            self.pool, self.bridge.store.accept, intake.items, intake.quarantined, now)

    async def _wsgi(self, scope: Any, protocol: Any) -> None:
        """Any other request: its body read here (within the limit), then the WSGI app on a thread.

        A body over the limit reaches the app as an empty body declaring its length, so the app's
        own 413 answers it (``bridge.web.body``)."""
        try:
            body = await read_whole(protocol, parse_length(scope.headers.get("content-length")),
                                    self.limit)
            environ = wsgi_environ(scope, body)
        except TooLarge:
            environ = wsgi_environ(scope, b"")
            environ["CONTENT_LENGTH"] = str(self.limit + 1)
        assert self.loop is not None
        try:
            status, headers, answer = await self.loop.run_in_executor(
                self.pool, _call, self.app, environ)
        except Exception:  # Flask answers its own errors; this is what fails around it
            log.exception("unexpected error while handling a request")
            status, payload, _ = UNEXPECTED
            answer = encode(payload)
            headers = [("content-type", "application/json"), ("content-length", str(len(answer)))]
        protocol.response_bytes(status, headers, answer)

