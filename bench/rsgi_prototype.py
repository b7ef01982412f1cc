"""A prototype of the next step for R1 (issue #11), kept to repeat its measurement; not the product.

``serve`` hands every request from granian's runtime to a Python thread, which waits for the
interpreter and a turn, and then for its group commit (docs/benchmarks.md, "Where the goals are
missed"). Here the webhook runs on granian's RSGI event loop instead: each request is checked,
parsed and sorted on the loop, then queued for one committer thread a process, which commits every
request queued meanwhile in one transaction and hands each its result back. One hand-over per group,
not per request. 2026-11-27, 2 cores, ``wrk -c8``, 4 pairs alternating with ``serve``: single
events 3,179-4,153 req/s against 2,449-2,603 (1.2-1.7 times); 100-event bodies 611 / 620 against 604 / 527.

What it leaves out, and ``serve`` would need before it could run this way: the access line, metrics,
the size limit, JSON error answers, every other route (Flask, behind a WSGI adapter on threads), and
the slow-client and shutdown behaviour of #8 and #10. It reaches into the store's transaction
(``_write``, ``_accept_in``) as a real version would do through a method of the store's own.

Run, from the project root, with the bench's credentials and a migrated database::

    export BRIDGE_DATABASE_URL=sqlite:////tmp/proto/b.db BRIDGE_WEBHOOK_USERNAME=bench \\
        BRIDGE_WEBHOOK_PASSWORD=bench-pass BRIDGE_ADMIN_PASSWORD=bench-admin-password
    .venv/bin/mailjet-bridge db upgrade
    (cd bench && ../.venv/bin/granian --interface rsgi --workers 2 --port 18777 rsgi_prototype:app) &
    AUTH=$(echo -n bench:bench-pass | base64) EVENTS=1 wrk -t1 -c8 -d6s -s bench/post_events.lua \\
        http://127.0.0.1:18777/webhooks/mailjet
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import threading
import time
from typing import Any

from werkzeug.datastructures import Authorization

from bridge.config import load_settings
from bridge.inbound.intake import Intake, sort_events
from bridge.payloads.body import BodyError, parse_body
from bridge.storage.sql import SqlStore
from bridge.wiring import Bridge, build

JSON = [("content-type", "application/json")]


class App:
    """The Mailjet webhook as an RSGI app: the loop does the Python, one thread the commits."""

    bridge: Bridge
    loop: asyncio.AbstractEventLoop

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.bridge = build(load_settings(dict(os.environ)), announce=lambda _: None)
        self.jobs: queue.SimpleQueue[tuple[Intake, asyncio.Future[Any]]] = queue.SimpleQueue()
        threading.Thread(target=self._commit_forever, daemon=True).start()

    def _commit_forever(self) -> None:
        store = self.bridge.store
        assert isinstance(store, SqlStore)
        while True:
            group = [self.jobs.get()]
            while not self.jobs.empty():
                group.append(self.jobs.get())
            try:
                with store._write() as tx:
                    results = [store._accept_in(tx, i.items, i.quarantined, time.time(), (), ())
                               for i, _ in group]
            except Exception as exc:  # each request of the group gets the error (a 503)
                for _, future in group:
                    self.loop.call_soon_threadsafe(future.set_exception, exc)
                continue
            for (_, future), result in zip(group, results, strict=True):
                self.loop.call_soon_threadsafe(future.set_result, result)

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        auth = Authorization.from_header(scope.headers.get("authorization"))
        if auth is None or not self.bridge.credentials.matches(auth.username, auth.password):
            protocol.response_bytes(401, JSON, b'{"error":"unauthorized"}')
            return
        try:
            events = parse_body(await protocol())
        except BodyError:
            protocol.response_bytes(400, JSON, b'{"error":"bad_request"}')
            return
        future = self.loop.create_future()
        self.jobs.put((sort_events(events, self.bridge.mailjet_validator), future))
        try:
            result = await future
        except Exception:
            protocol.response_bytes(503, JSON, b'{"error":"storage_unavailable"}')
            return
        protocol.response_bytes(200, JSON, json.dumps({
            "accepted": result.accepted, "duplicate": result.duplicate,
            "quarantined": result.quarantined}).encode())


app = App()
