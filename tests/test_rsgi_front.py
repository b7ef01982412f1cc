"""``serve``'s RSGI front (``bridge.web.rsgi``) and the loop's body reader (``read_chunks``), in process.

The scope and protocol below are small stand-ins for granian's (checked against granian 2.8 serving
a probe app): the path comes decoded, header names lowercase, ``headers.get`` gives the first of
repeated headers and ``items`` each of them, and the body comes in chunks ending with an empty one.
The app behind the front is the real one, on a temporary SQLite file, wrapped as ``serve`` wraps it.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import json
import logging
import os
import re
import shutil
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wrappers import Request

from bridge.app import create_app
from bridge.server import APP_TURNS, TakingTurns
from bridge.storage.sqlite import SQLiteStore
from bridge.web.body import DRAIN_LIMIT, TooLarge, read_chunks
from bridge.web.rsgi import LoopFront, ProtocolClosed, client_address, read_whole, wsgi_environ
from tests.conftest import basic

#: Hypothesis keeps caches in ``.hypothesis/`` of the working directory (the checkout): they go to a
#: temporary folder instead, removed at exit, as in tests/test_properties.py.
HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="bridge-rsgi-hypothesis-")
set_hypothesis_home_dir(HYPOTHESIS_HOME)
atexit.register(shutil.rmtree, HYPOTHESIS_HOME, ignore_errors=True)
EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", "300"))

URL = "/webhooks/mailjet"
LIMIT = 2048
AUTH = basic("mailjet", "s3cret-pass")["Authorization"]


# -- granian's RSGI objects, as far as the front uses them -------------------------------------


class Headers:
    """RSGI's headers: lowercase names; ``get`` gives the first value of a repeated header."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self.pairs = [(name.lower(), value) for name, value in pairs]

    def get(self, name: str, default: str | None = None) -> str | None:
        return next((v for k, v in self.pairs if k == name.lower()), default)

    def get_all(self, name: str) -> list[str]:
        return [v for k, v in self.pairs if k == name.lower()]

    def items(self) -> list[tuple[str, str]]:
        return list(self.pairs)

    def keys(self) -> list[str]:
        return [k for k, _ in self.pairs]

    def values(self) -> list[str]:
        return [v for _, v in self.pairs]


@dataclass
class Scope:
    method: str
    path: str
    headers: Headers
    query_string: str = ""
    client: str = "127.0.0.1:40000"
    server: str = "127.0.0.1:8080"
    scheme: str = "http"
    http_version: str = "1.1"
    proto: str = "http"


class Chunks:
    """A body as its chunks, counting how many were taken (to tell a drained body from one left)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = chunks
        self.taken = 0

    async def _each(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.taken += 1
            await asyncio.sleep(0)  # the client's next chunk comes later: others run meanwhile
            yield chunk

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._each()


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def json(self) -> Any:
        assert self.header("content-type") == "application/json", self.headers
        return json.loads(self.body)


class Protocol(Chunks):
    """RSGI's HTTP protocol: the body's chunks, and the one answer given with ``response_bytes``."""

    def __init__(self, chunks: list[bytes]) -> None:
        super().__init__(chunks)
        self.count = len(chunks)
        self.answer: Answer | None = None

    async def __call__(self) -> bytes:
        """The whole body at once (``await protocol()``), as granian reads a declared length."""
        return b"".join([chunk async for chunk in self])

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        assert self.answer is None, "answered twice"
        self.answer = Answer(status, list(headers), body)


@dataclass
class Call:
    scope: Scope
    chunks: list[bytes] = field(default_factory=lambda: [b""])


def call(method: str, path: str, body: bytes = b"", *, headers: Iterable[tuple[str, str]] = (),
         chunked: bool = False, piece: int = 1000, query: str = "",
         client: str = "127.0.0.1:40000") -> Call:
    """A request as granian hands it over: the body in pieces and an empty last chunk, with its
    length declared, or sent chunked (no length, ``transfer-encoding: chunked``)."""
    pairs = [("host", "127.0.0.1:8080"), *headers]
    pairs.append(("transfer-encoding", "chunked") if chunked else ("content-length", str(len(body))))
    pieces = [body[i:i + piece] for i in range(0, len(body), piece)]
    return Call(Scope(method, path, Headers(pairs), query, client), [*pieces, b""])


def webhook(body: Any, *, auth: str = AUTH, raw: bytes | None = None, chunked: bool = False,
            headers: Iterable[tuple[str, str]] = ()) -> Call:
    data = raw if raw is not None else json.dumps(body).encode()
    return call("POST", URL, data, chunked=chunked, headers=[
        ("content-type", "application/json"), ("authorization", auth), *headers])


class Front:
    """The real app on its own SQLite file behind ``LoopFront``, as ``bridge.server.web_app`` builds
    it; each ``serve`` runs the calls at once on a fresh event loop and gives their answers."""

    def __init__(self, env: dict[str, str], **extra: str) -> None:
        self.app = create_app(environ={**env, "BRIDGE_MAX_BODY_BYTES": str(LIMIT), **extra},
                              announce=lambda _: None)
        self.bridge = self.app.extensions["bridge"]
        self.front = LoopFront(TakingTurns(self.app, APP_TURNS), self.bridge, 4)

    def serve(self, *calls: Call) -> list[Answer]:
        protocols = [Protocol(c.chunks) for c in calls]

        async def main() -> None:
            loop = asyncio.get_running_loop()
            self.front.__rsgi_init__(loop)
            try:
                await asyncio.wait_for(asyncio.gather(*(
                    self.front.__rsgi__(c.scope, p) for c, p in zip(calls, protocols, strict=True))),
                    30)
            finally:
                self.front.__rsgi_del__(loop)

        asyncio.run(main())
        self.protocols = protocols
        answers = [p.answer for p in protocols]
        assert all(a is not None for a in answers), "a request got no answer"
        return answers  # type: ignore[return-value]

    def one(self, request: Call) -> Answer:
        (answer,) = self.serve(request)
        return answer

    def pending(self) -> int:
        return int(self.bridge.store.stats(0)["pending"])


@pytest.fixture
def front(env: dict[str, str]) -> Iterator[Front]:
    served = Front(env)
    yield served
    served.bridge.store.close()


# -- read_chunks -------------------------------------------------------------------------------


async def _gen(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def read(chunks: Iterable[bytes], length: int | None, limit: int) -> bytes:
    return asyncio.run(read_chunks(_gen(chunks), length, limit))


@pytest.mark.parametrize("chunks", [
    [], [b""], [b"abc", b""], [b"a", b"", b"bc", b""], [bytes([n]) for n in range(200)],
    [b"x" * LIMIT, b""], [b"y" * 1000, b"z" * 1048, b""],
], ids=["none", "empty", "one", "with-empty", "bytewise", "at-the-limit", "two-to-the-limit"])
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_read_chunks_gives_the_exact_body(chunks: list[bytes], declared: bool) -> None:
    body = b"".join(chunks)
    assert read(chunks, len(body) if declared else None, LIMIT) == body


@settings(max_examples=EXAMPLES, deadline=None, database=None)
@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=12), st.booleans(),
       st.integers(0, 3000))
def test_read_chunks_is_the_joined_chunks_or_too_large(body: bytes, cuts: list[int], declared: bool,
                                                       limit: int) -> None:
    """For any body cut anywhere (empty chunks too) and any limit: the body whole when it is within
    the limit, TooLarge when it is over, with its length declared or not."""
    bounds = sorted({0, len(body), *(min(c, len(body)) for c in cuts)})
    chunks = [body[a:b] for a, b in itertools.pairwise(bounds)] + [b""]
    length = len(body) if declared else None
    if len(body) <= limit:
        assert read(chunks, length, limit) == body
    else:
        with pytest.raises(TooLarge):
            read(chunks, length, limit)


def _taken(chunks: Chunks, length: int | None, limit: int) -> None:
    asyncio.run(read_chunks(chunks, length, limit))


def test_a_declared_length_over_the_limit_is_drained_then_too_large() -> None:
    """Read to the end and thrown away, so the client has sent it all when the 413 goes out."""
    chunks = Chunks([b"x" * 1000] * 5 + [b""])
    with pytest.raises(TooLarge):
        _taken(chunks, 5000, LIMIT)
    assert chunks.taken == 6


def test_a_declared_length_too_large_to_drain_is_not_read() -> None:
    """Over both the limit and DRAIN_LIMIT: TooLarge before a byte is read (granian then closes)."""
    chunks = Chunks([b"x" * 1000] * 5 + [b""])
    with pytest.raises(TooLarge):
        _taken(chunks, DRAIN_LIMIT + 1, LIMIT)
    assert chunks.taken == 0


def test_a_chunked_body_over_the_limit_is_drained_then_too_large() -> None:
    chunks = Chunks([b"x" * 1000] * 5 + [b""])
    with pytest.raises(TooLarge):
        _taken(chunks, None, LIMIT)
    assert chunks.taken == 6


def test_a_chunked_body_is_drained_no_further_than_drain_limit() -> None:
    """An endless chunked upload: reading stops once DRAIN_LIMIT is passed."""
    piece = b"x" * (1024 * 1024)
    chunks = Chunks(piece for _ in range(10_000))
    with pytest.raises(TooLarge):
        _taken(chunks, None, LIMIT)
    assert chunks.taken == DRAIN_LIMIT // len(piece) + 1


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_body_within_a_limit_above_drain_limit_is_read_whole(declared: bool) -> None:
    piece = b"x" * (4 * 1024 * 1024)
    count = DRAIN_LIMIT // len(piece) + 1
    got = len(asyncio.run(read_chunks(_gen([piece] * count),
                                      count * len(piece) if declared else None, 2 * DRAIN_LIMIT)))
    assert got == count * len(piece)


class Whole(Protocol):
    """A protocol whose ``await protocol()`` is counted: how ``read_whole`` took the body."""

    def __init__(self, chunks: list[bytes]) -> None:
        super().__init__(chunks)
        self.whole = 0

    async def __call__(self) -> bytes:
        self.whole += 1
        return await super().__call__()


@pytest.mark.parametrize(("length", "whole"), [(5, 1), (None, 0), (LIMIT + 1, 0)],
                         ids=["declared-within", "chunked", "declared-over"])
def test_read_whole_takes_a_declared_body_within_the_limit_in_one_await(length: int | None,
                                                                         whole: int) -> None:
    """One await (one wake-up of the loop) for a declared length within the limit; chunk by chunk,
    within the limit and its drain rules, otherwise."""
    protocol = Whole([b"he", b"llo", b""])
    if length is not None and length > LIMIT:
        with pytest.raises(TooLarge):
            asyncio.run(read_whole(protocol, length, LIMIT))
    else:
        assert asyncio.run(read_whole(protocol, length, LIMIT)) == b"hello"
    assert protocol.whole == whole


def test_read_whole_reads_nothing_from_a_client_that_left() -> None:
    """granian raises ProtocolClosed when the client leaves mid-body: an empty body (a 400, logged
    as a bad body, to no one), never an unexpected error."""
    class Left(Whole):
        async def __call__(self) -> bytes:
            raise ProtocolClosed("RSGI transport is closed")

    assert asyncio.run(read_whole(Left([b"{"]), 1000, LIMIT)) == b""


def test_read_whole_refuses_more_than_the_limit_even_if_the_server_gave_it() -> None:
    """HTTP's framing stops at the declared length; were more ever given, it is still refused."""
    with pytest.raises(TooLarge):
        asyncio.run(read_whole(Whole([b"x" * (LIMIT + 1)]), 10, LIMIT))


# -- wsgi_environ ------------------------------------------------------------------------------


def scope(path: str = "/", headers: Iterable[tuple[str, str]] = (), **fields: Any) -> Scope:
    return Scope(fields.pop("method", "GET"), path, Headers(headers), **fields)


@pytest.mark.parametrize("path", ["/", "/admin/", "/café/日本/𝄞", "/a b/%41", "/x;y/\ufffd"])
def test_the_path_reaches_werkzeug_as_the_client_sent_it(path: str) -> None:
    """RSGI gives the path decoded; WSGI carries it as latin-1 text of its UTF-8 bytes."""
    request = Request(wsgi_environ(scope(path, query_string="a=1&b=%20&c=%C3%A9"), b""))
    assert request.path == path
    assert request.args.to_dict() == {"a": "1", "b": " ", "c": "é"}
    assert request.environ["QUERY_STRING"] == "a=1&b=%20&c=%C3%A9"


def test_headers_become_cgi_variables() -> None:
    """HTTP_* for each header, repeated ones joined by commas, names with an underscore dropped
    (they would pass for their dashed twin), and the body's length as read, however it came."""
    environ = wsgi_environ(scope("/p", [
        ("host", "example.test"), ("content-type", "application/json"), ("x-forwarded-for", "1.1.1.1"),
        ("x-forwarded-for", "2.2.2.2"), ("x_forwarded_for", "6.6.6.6"), ("x-custom", "v"),
        ("transfer-encoding", "chunked"), ("accept", "a/b"), ("accept", "c/d"),
    ], method="POST"), b"hello")
    assert environ["CONTENT_TYPE"] == "application/json"
    assert environ["HTTP_X_FORWARDED_FOR"] == "1.1.1.1,2.2.2.2"
    assert environ["HTTP_ACCEPT"] == "a/b,c/d"
    assert environ["HTTP_X_CUSTOM"] == "v" and environ["HTTP_HOST"] == "example.test"
    assert "6.6.6.6" not in environ.values()
    assert not any("TRANSFER" in key for key in environ)
    assert environ["CONTENT_LENGTH"] == "5" and "HTTP_CONTENT_LENGTH" not in environ
    request = Request(environ)
    assert request.method == "POST" and request.get_data() == b"hello"
    assert request.headers["X-Custom"] == "v"


def test_a_declared_length_is_replaced_by_what_was_read() -> None:
    environ = wsgi_environ(scope("/p", [("content-length", "3")], method="POST"), b"abc")
    assert environ["CONTENT_LENGTH"] == "3" and "HTTP_CONTENT_LENGTH" not in environ
    assert environ["wsgi.input"].read() == b"abc"


def test_addresses_ipv4_and_ipv6() -> None:
    environ = wsgi_environ(scope(client="[::1]:5555", server="[::1]:8080", scheme="https",
                                 http_version="2"), b"")
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("::1", "5555")
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("::1", "8080")
    assert environ["wsgi.url_scheme"] == "https" and environ["SERVER_PROTOCOL"] == "HTTP/2"
    environ = wsgi_environ(scope(client="203.0.113.9:41000"), b"")
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("203.0.113.9", "41000")
    assert Request(environ).remote_addr == "203.0.113.9"


# -- client_address ----------------------------------------------------------------------------


def proxyfix_client(s: Scope, proxies: int) -> str:
    """The client ProxyFix gives the WSGI routes for the same request."""
    seen: list[str] = []

    def inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ["REMOTE_ADDR"])
        start_response("200 OK", [])
        return [b""]

    ProxyFix(inner, x_for=proxies)(wsgi_environ(s, b""), lambda *_: None)
    return seen[0]


FORWARDED = [[], ["203.0.113.7"], ["203.0.113.7, 10.0.0.2"], ["198.51.100.1,203.0.113.7 , 10.0.0.2"],
             ["  203.0.113.7  "], ["::1, 2001:db8::7"]]


@pytest.mark.parametrize("proxies", [0, 1, 2])
@pytest.mark.parametrize("forwarded", FORWARDED, ids=lambda v: "|".join(v) or "none")
def test_client_address_is_what_proxyfix_gives(forwarded: list[str], proxies: int) -> None:
    s = scope(headers=[("x-forwarded-for", line) for line in forwarded], client="10.0.0.1:5000")
    assert client_address(s, proxies) == proxyfix_client(s, proxies)


@pytest.mark.parametrize("proxies", [1, 2])
def test_client_address_reads_every_forwarded_line(proxies: int) -> None:
    s = scope(headers=[("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "203.0.113.7")],
              client="10.0.0.1:5000")
    assert client_address(s, proxies) == proxyfix_client(s, proxies)


@pytest.mark.parametrize("proxies", [1, 2])
def test_client_address_skips_empty_forwarded_entries(proxies: int) -> None:
    s = scope(headers=[("x-forwarded-for", "203.0.113.7, 10.0.0.2,")], client="10.0.0.1:5000")
    assert client_address(s, proxies) == proxyfix_client(s, proxies)


def test_client_address_counts_trusted_proxies_from_the_end() -> None:
    s = scope(headers=[("x-forwarded-for", "203.0.113.7")], client="[2001:db8::1]:5000")
    assert client_address(s, 0) == "2001:db8::1"
    assert client_address(s, 1) == "203.0.113.7"
    assert client_address(s, 2) == "2001:db8::1"  # fewer entries than proxies: the peer


# -- LoopFront: the webhook on the loop --------------------------------------------------------


def test_a_valid_event_is_stored_and_answered_200(front: Front,
                                                 mailjet_events: dict[str, Any]) -> None:
    answer = front.one(webhook([mailjet_events["open"]]))
    assert answer.status == 200
    assert answer.json() == {"accepted": 1, "duplicate": 0, "quarantined": 0}
    assert answer.header("content-length") == str(len(answer.body))
    assert front.pending() == 1
    again = front.one(webhook([mailjet_events["open"]], chunked=True))
    assert again.json() == {"accepted": 0, "duplicate": 1, "quarantined": 0}
    assert front.pending() == 1


def test_posts_at_once_are_each_answered_after_their_commit(front: Front) -> None:
    """Thirty posts on one loop: each gets its own counts; every event is stored."""
    calls = [webhook([{"event": "open", "time": 1_800_000_000 + n, "MessageID": n,
                       "email": f"r{n}@example.com"}], chunked=n % 2 == 1) for n in range(30)]
    answers = front.serve(*calls)
    assert [a.status for a in answers] == [200] * 30
    assert all(a.json() == {"accepted": 1, "duplicate": 0, "quarantined": 0} for a in answers)
    assert front.pending() == 30


@pytest.mark.parametrize("auth", [basic("mailjet", "wrong")["Authorization"], "", "Bearer s3cret-pass"])
def test_wrong_credentials_get_401_json(front: Front, auth: str, mailjet_events: dict[str, Any]) -> None:
    answer = front.one(webhook([mailjet_events["open"]], auth=auth))
    assert answer.status == 401 and answer.json()["error"] == "unauthorized"
    assert (answer.header("www-authenticate") or "").startswith("Basic")
    assert front.pending() == 0


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_that_is_not_json_gets_400_json(front: Front, chunked: bool) -> None:
    answer = front.one(webhook(None, raw=b"{not json", chunked=chunked))
    assert answer.status == 400 and answer.json()["error"] == "bad_request"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("path", [URL, "/admin/login"], ids=["webhook", "flask"])
def test_a_body_over_the_limit_gets_413_json_after_it_is_read(front: Front, path: str,
                                                              chunked: bool) -> None:
    """The same 413 from the webhook (on the loop) and from Flask (on a thread), the body drained
    first so that the client reads it."""
    big = json.dumps([{"event": "sent", "time": 1, "smtp_reply": "x" * 4096}]).encode()
    answer = front.one(call("POST", path, big, chunked=chunked, headers=[
        ("content-type", "application/json"), ("authorization", AUTH)]))
    assert answer.status == 413, answer.body
    assert answer.json()["error"] == "request_entity_too_large"
    assert "2,048-byte limit" in answer.json()["message"]
    protocol = front.protocols[0]
    assert protocol.taken == protocol.count
    assert front.pending() == 0


def test_an_unexpected_error_is_a_json_500_and_logged(env: dict[str, str], mailjet_events: dict[str, Any],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Both ways a commit can go wrong unexpectedly: ``accept`` raising at once, and the work
    failing inside the group commit's transaction."""

    class RaisesAtOnce(SQLiteStore):
        def accept(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("accept broke")

    class FailsInItsCommit(SQLiteStore):
        def _accept_in(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("the commit broke")

    for broken, message in ((RaisesAtOnce, "accept broke"), (FailsInItsCommit, "the commit broke")):
        served = Front(env)
        served.bridge.store.close()
        served.bridge.store = broken(env["BRIDGE_DATABASE_URL"].removeprefix("sqlite:///"))
        caplog.clear()
        try:
            with caplog.at_level(logging.ERROR, logger="bridge.web.rsgi"):
                answer = served.one(webhook([mailjet_events["open"]]))
            assert answer.status == 500
            assert answer.json() == {"error": "internal_error",
                                     "message": "the bridge hit an unexpected error; see its log"}
            (record,) = [r for r in caplog.records if r.name == "bridge.web.rsgi"]
            assert record.exc_info is not None and message in str(record.exc_info[1])
            assert served.pending() == 0
        finally:
            served.bridge.store.close()


def test_a_locked_database_gets_503_with_retry_after(front: Front,
                                                     mailjet_events: dict[str, Any]) -> None:
    store = front.bridge.store
    path = store.path
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    store.close()  # its connections are opened again, failing fast instead of waiting 10 s
    store.busy_timeout_ms = 50
    try:
        answer = front.one(webhook([mailjet_events["open"]]))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert answer.status == 503 and answer.json()["error"] == "storage_unavailable"
    assert answer.header("retry-after") == "30"
    assert front.one(webhook([mailjet_events["open"]])).json()["accepted"] == 1


def test_other_protocols_get_no_answer(front: Front) -> None:
    """Granian runs without websockets; a scope of another protocol is left alone."""
    request = call("GET", "/healthz")
    request.scope.proto = "websocket"
    protocol = Protocol(request.chunks)

    async def main() -> None:
        front.front.__rsgi_init__(asyncio.get_running_loop())
        try:
            await front.front.__rsgi__(request.scope, protocol)
        finally:
            front.front.__rsgi_del__(asyncio.get_running_loop())

    asyncio.run(main())
    assert protocol.answer is None


# -- LoopFront: everything else to Flask, on threads -------------------------------------------


def test_healthz_and_other_routes_are_flasks(front: Front) -> None:
    health, wrong_method, nowhere = front.serve(
        call("GET", "/healthz"), call("GET", URL), call("GET", "/nowhere", query="x=1"))
    assert health.status == 200 and "queue" in health.json()
    assert wrong_method.status == 405 and wrong_method.json()["error"] == "method_not_allowed"
    assert nowhere.status == 404 and nowhere.json()["error"] == "not_found"


def test_a_failure_around_flask_is_a_json_500_and_logged(front: Front,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Flask answers its own errors; a WSGI layer around it that fails (here the app's callable
    itself) still gets a JSON 500, never a bare error page or a request left unanswered."""

    def broken(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise RuntimeError("the layer around Flask broke")

    front.front.app = broken
    with caplog.at_level(logging.ERROR, logger="bridge.web.rsgi"):
        answer = front.one(call("GET", "/healthz"))
    assert answer.status == 500 and answer.json()["error"] == "internal_error"
    assert any("broke" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_form_reaches_flask_whole(front: Front, chunked: bool) -> None:
    """The admin login, read on the loop and run on a thread: its cookie and form arrive intact (a
    wrong CSRF token or password would not get the 302)."""
    page = front.one(call("GET", "/admin/login"))
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.body.decode())
    cookie = (page.header("set-cookie") or "").split(";")[0]
    assert page.status == 200 and token and cookie
    form = f"csrf_token={token.group(1)}&password=test-admin-password".encode()
    answer = front.one(call("POST", "/admin/login", form, chunked=chunked, piece=7, headers=[
        ("content-type", "application/x-www-form-urlencoded"), ("cookie", cookie)]))
    assert answer.status == 302, answer.body
    assert (answer.header("location") or "").startswith("/admin")


# -- the access log ----------------------------------------------------------------------------


def access_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, int, str]]:
    return [(r.method, r.path, r.status, r.client)  # type: ignore[attr-defined]
            for r in caplog.records if r.name == "bridge.access"]


def test_each_request_is_logged_once(front: Front, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="bridge.access"):
        front.serve(webhook([]))
        front.serve(webhook([], auth=""))
        front.serve(call("GET", "/healthz", client="[::1]:5555"))
    assert access_lines(caplog) == [("POST", URL, 200, "127.0.0.1"), ("POST", URL, 401, "127.0.0.1"),
                                    ("GET", "/healthz", 200, "::1")]
    (record, *_) = [r for r in caplog.records if r.name == "bridge.access"]
    assert record.bytes_in == 2 and record.ms >= 0  # type: ignore[attr-defined]


def test_behind_a_proxy_the_real_client_is_logged(env: dict[str, str],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """BRIDGE_PROXY_COUNT=1: the last X-Forwarded-For entry, on the loop as in Flask (ProxyFix)."""
    served = Front(env, BRIDGE_PROXY_COUNT="1")
    forwarded = [("x-forwarded-for", "6.6.6.6, 203.0.113.7")]
    try:
        with caplog.at_level(logging.INFO, logger="bridge.access"):
            served.serve(webhook([], headers=forwarded))
            served.serve(call("GET", "/healthz", headers=forwarded))
    finally:
        served.bridge.store.close()
    assert access_lines(caplog) == [("POST", URL, 200, "203.0.113.7"),
                                    ("GET", "/healthz", 200, "203.0.113.7")]
