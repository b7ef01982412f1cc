"""The apps ``bench/front_ceiling.py`` serves: the Mailjet webhook's path as an ASGI app, and no-ops.

``webhook`` is not the bridge's front. It is a stand-in that runs the bridge's own steps for
``POST /webhooks/mailjet`` as ``serve``'s RSGI front does (``bridge/web/rsgi.py``): the caller check,
the body, parsing and sorting the events, the commit by the host's writer process (its socket in
``BRIDGE_WRITER_SOCKET``), the answer and the access line. It leaves out what a whole front needs
besides (the size limit, clients that leave mid-body, the Flask app on threads, graceful stops),
so that what it measures is what another HTTP server would cost the webhook, not a finished front.
``GET /healthz`` answers once the bridge is built. The no-ops answer every request with the same
small JSON body, after reading the request's body, as ``bench/noop_app.py`` does under Flask.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

BODY = b'{"accepted":1,"duplicate":0,"quarantined":0}'
JSON = (b"content-type", b"application/json")


async def _asgi_body(receive: Any) -> bytes:
    message = await receive()
    body = message.get("body", b"")
    while message.get("more_body"):
        message = await receive()
        body += message.get("body", b"")
    return body


async def _asgi_answer(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [JSON, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def noop_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The no-op under an ASGI server (uvicorn)."""
    if scope["type"] != "http":
        return
    await _asgi_body(receive)
    await _asgi_answer(send, 200, BODY)


class NoopRsgi:
    """The no-op under granian's RSGI interface, the one ``serve`` uses."""

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        await protocol()
        protocol.response_bytes(200, [("content-type", "application/json"),
                                      ("content-length", str(len(BODY)))], BODY)


noop_rsgi = NoopRsgi()


class _Webhook:
    """The bridge and its writer client, built at the ASGI lifespan's start (one a web process)."""

    def __init__(self) -> None:
        self.bridge: Any = None
        self.writer: Any = None

    def build(self) -> None:
        from bridge import logs
        from bridge.app import create_app
        from bridge.storage.writer import WriterClient

        logs.configure(logging.INFO)  # the access line is written, as under serve
        self.bridge = create_app().extensions["bridge"]
        path = os.environ["BRIDGE_WRITER_SOCKET"]
        deadline = time.monotonic() + 30
        while not os.path.exists(path):  # the writer is started beside this server
            if time.monotonic() > deadline:
                raise RuntimeError(f"no writer listens at {path}")
            time.sleep(0.05)
        self.writer = WriterClient(path)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        from bridge.errors import StorageUnavailable
        from bridge.inbound.intake import Intake
        from bridge.web.mailjet_webhook import (
            PATH,
            STORAGE_REFUSED,
            caller_refused,
            encode,
            sorted_or_refused,
            stored,
        )
        from bridge.web.observability import log_request

        if scope["type"] == "lifespan":
            while (await receive())["type"] == "lifespan.startup":
                self.build()
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        started = time.perf_counter()
        raw = await _asgi_body(receive)
        if scope["method"] != "POST":
            await _asgi_answer(send, 200, b"{}")
            return
        authorization = next((value.decode("latin-1") for name, value in scope["headers"]
                              if name == b"authorization"), None)
        answer = caller_refused(self.bridge, authorization)
        if answer is None:
            intake = sorted_or_refused(self.bridge, raw)
            if not isinstance(intake, Intake):
                answer = intake
            else:
                try:
                    result = await self.writer.accept(intake.items, intake.quarantined, time.time())
                    answer = stored(self.bridge, intake, result)
                except StorageUnavailable:
                    answer = STORAGE_REFUSED
        status, payload, _ = answer
        await _asgi_answer(send, status, encode(payload))
        client = scope.get("client")
        log_request("POST", PATH, status, len(raw), started, client[0] if client else None)


webhook = _Webhook()
