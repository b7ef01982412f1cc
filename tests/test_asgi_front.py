"""``serve``'s ASGI adapter (``bridge.web.asgi``), driven in process with ASGI messages.

The messages are what uvicorn sends and takes (ASGI 3: the lifespan's startup and shutdown, a body
in ``http.request`` messages with ``more_body``, ``http.disconnect`` when the client leaves). The
front behind the adapter is the real one on a temporary SQLite file (``tests/test_rsgi_front.py``'s
``Front``), so what reaches the store and the answers are the bridge's own.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from bridge.web.asgi import AsgiFront, _Scope
from tests.test_rsgi_front import AUTH, URL, Front

Message = dict[str, Any]


def http_scope(method: str, path: str, headers: Iterable[tuple[str, str]] = (), *, query: bytes = b"",
               client: tuple[str, int] | None = ("127.0.0.1", 40000)) -> Message:
    """An HTTP scope as uvicorn builds it (header names lower-case bytes, the path decoded)."""
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": query, "root_path": "", "client": client, "server": ("127.0.0.1", 8080),
            "headers": [(b"host", b"127.0.0.1:8080"),
                        *((name.lower().encode("latin-1"), value.encode("latin-1"))
                          for name, value in headers)]}


def pieces(body: bytes, size: int) -> list[Message]:
    """A body as uvicorn hands it over: ``http.request`` messages, the last with ``more_body`` off."""
    cuts = [body[i:i + size] for i in range(0, len(body), size)] or [b""]
    return [{"type": "http.request", "body": cut, "more_body": n < len(cuts) - 1}
            for n, cut in enumerate(cuts)]


def webhook_scope(body: bytes, *, chunked: bool = False) -> Message:
    framing = ("transfer-encoding", "chunked") if chunked else ("content-length", str(len(body)))
    return http_scope("POST", URL, [("content-type", "application/json"), ("authorization", AUTH),
                                    framing])


class Served:
    """What the app sent for one request: the start message's status and headers, and the body."""

    def __init__(self, sent: list[Message]) -> None:
        self.sent = sent

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    def header(self, name: bytes) -> bytes | None:
        return next((value for key, value in self.sent[0]["headers"] if key == name), None)

    def json(self) -> Any:
        assert self.sent[1]["type"] == "http.response.body"
        return json.loads(self.sent[1]["body"])


async def _request(app: AsgiFront, scope: Message, messages: list[Message]) -> list[Message]:
    """One request through the app: ``receive`` gives ``messages`` in turn (then waits, as for a
    client that sends nothing more); ``send`` keeps what the app answers."""
    incoming = iter(messages)
    sent: list[Message] = []

    async def receive() -> Message:
        await asyncio.sleep(0)  # the next message comes later: other requests run meanwhile
        message = next(incoming, None)
        if message is None:
            await asyncio.Event().wait()
        return message  # type: ignore[return-value]

    async def send(message: Message) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), 30)
    return sent


def serve(front: Front, *requests: tuple[Message, list[Message]]) -> list[list[Message]]:
    """The requests at once on a fresh event loop, between the lifespan's startup and shutdown, as
    uvicorn runs a web process; SIGINT's handler is put back after (the startup ignores it)."""
    app = AsgiFront(front.front)
    before = signal.getsignal(signal.SIGINT)
    lifespan: list[Message] = []

    async def main() -> list[list[Message]]:
        to_app: asyncio.Queue[Message] = asyncio.Queue()
        started = asyncio.Event()

        async def send(message: Message) -> None:
            lifespan.append(message)
            started.set()

        running = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}},
                                            to_app.get, send))
        await to_app.put({"type": "lifespan.startup"})
        await asyncio.wait_for(started.wait(), 30)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        try:
            return list(await asyncio.gather(*(_request(app, scope, messages)
                                               for scope, messages in requests)))
        finally:
            await to_app.put({"type": "lifespan.shutdown"})
            await asyncio.wait_for(running, 30)

    try:
        answers = asyncio.run(main())
    finally:
        signal.signal(signal.SIGINT, before)
    assert [m["type"] for m in lifespan] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    return answers


@pytest.fixture
def front(env: dict[str, str]) -> Iterator[Front]:
    served = Front(env)
    yield served
    served.bridge.store.close()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_webhook_in_pieces_is_stored_and_answered(front: Front, chunked: bool,
                                                   mailjet_events: dict[str, Any]) -> None:
    body = json.dumps([mailjet_events["open"], mailjet_events["click"]]).encode()
    (sent,) = serve(front, (webhook_scope(body, chunked=chunked), pieces(body, 37)))
    answer = Served(sent)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert answer.status == 200
    assert answer.json() == {"accepted": 2, "duplicate": 0, "quarantined": 0}
    assert answer.header(b"content-type") == b"application/json"
    assert answer.header(b"content-length") == str(len(sent[1]["body"])).encode()
    assert all(name == name.lower() for name, _ in sent[0]["headers"])
    assert front.pending() == 2


def test_posts_at_once_each_get_their_own_answer(front: Front) -> None:
    bodies = [json.dumps({"event": "open", "time": 1_800_000_000 + n, "MessageID": n,
                          "email": f"r{n}@example.com"}).encode() for n in range(12)]
    answers = serve(front, *((webhook_scope(b, chunked=n % 2 == 1), pieces(b, 25))
                             for n, b in enumerate(bodies)))
    assert [Served(a).json() for a in answers] == [{"accepted": 1, "duplicate": 0, "quarantined": 0}] * 12
    assert front.pending() == 12


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_client_that_leaves_mid_body_stores_nothing(front: Front, chunked: bool,
                                                      mailjet_events: dict[str, Any]) -> None:
    """uvicorn says ``http.disconnect``: the cut body is a 400 that no one reads (uvicorn drops an
    answer to a closed connection), never a traceback, and nothing of it is stored."""
    body = json.dumps([mailjet_events["open"], mailjet_events["sent"]]).encode()
    cut = pieces(body, 40)[:2]
    (sent,) = serve(front, (webhook_scope(body, chunked=chunked), [*cut, {"type": "http.disconnect"}]))
    assert Served(sent).status == 400
    assert front.pending() == 0


def test_other_routes_reach_flask(front: Front) -> None:
    health, nowhere = serve(front, (http_scope("GET", "/healthz"), pieces(b"", 1)),
                            (http_scope("GET", "/nowhere", query=b"x=1"), pieces(b"", 1)))
    assert Served(health).status == 200 and "queue" in Served(health).json()
    assert Served(nowhere).status == 404 and Served(nowhere).json()["error"] == "not_found"


def test_a_websocket_scope_gets_nothing(front: Front) -> None:
    """uvicorn runs with websockets off; a scope of another type is left alone."""
    (sent,) = serve(front, ({"type": "websocket", "path": "/"}, []))
    assert sent == []


def test_the_scope_is_rsgis() -> None:
    """What ``LoopFront`` reads: the query string as text, ``host:port`` addresses (IPv6 host in
    brackets, ``:0`` when uvicorn knows none, as on a Unix socket), the first of repeated headers."""
    scope = _Scope(http_scope("GET", "/a path", [("X-Forwarded-For", "10.0.0.1"),
                                                 ("x-forwarded-for", "10.0.0.2")],
                              query=b"q=%C3%A9&x=1", client=("::1", 5000)))
    assert (scope.method, scope.path, scope.query_string) == ("GET", "/a path", "q=%C3%A9&x=1")
    assert (scope.client, scope.server, scope.proto) == ("[::1]:5000", "127.0.0.1:8080", "http")
    assert scope.headers.get("x-forwarded-for") == "10.0.0.1"
    assert scope.headers.get("authorization") is None
    assert [v for k, v in scope.headers.items() if k == "x-forwarded-for"] == ["10.0.0.1", "10.0.0.2"]
    assert _Scope(http_scope("GET", "/", client=None)).client == ":0"
