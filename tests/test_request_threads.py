"""How ``serve``'s web processes run requests (``bridge.server.PinnedThreads``), in process.

Every request runs on one of a fixed set of threads, so the SQLite store's connection per thread
stays a fixed set. Bodies are read before the request takes its turn to run app code (the rest of a
long one while the turn is given up), and the app reads exactly the bytes the client sent.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from werkzeug.wrappers import Request

from bridge.server import READ_AHEAD_BYTES, PinnedThreads


class ClientBody:
    """``wsgi.input`` as a server gives it: the body in pieces, optionally held at one offset."""

    def __init__(self, data: bytes, piece: int = 7000, hold_at: int | None = None) -> None:
        self.data, self.pos, self.piece = data, 0, piece
        self.hold_at = hold_at
        self.holding = threading.Event()
        self.release = threading.Event()

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:  # to the end, as a real stream does
            parts = []
            while part := self.read(self.piece):
                parts.append(part)
            return b"".join(parts)
        if self.hold_at is not None and self.pos == self.hold_at and not self.release.is_set():
            self.holding.set()
            assert self.release.wait(10)
        end = self.pos + min(size, self.piece)
        if self.hold_at is not None and self.pos < self.hold_at:
            end = min(end, self.hold_at)
        chunk = self.data[self.pos:end]
        self.pos += len(chunk)
        return chunk

    def readline(self, size: int = -1) -> bytes:
        end = self.data.find(b"\n", self.pos)
        end = len(self.data) if end < 0 else end + 1
        if size is not None and size >= 0:
            end = min(end, self.pos + size)
        line = self.data[self.pos:end]
        self.pos = end
        return line


def echo(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Reads the body as Flask does (werkzeug), answers its length and the thread it ran on."""
    body = Request(environ).get_data()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"%d %s" % (len(body), threading.current_thread().name.encode()), b"|", body]


def call(app: PinnedThreads, body: ClientBody, *, length: bool = True, method: str = "POST") -> bytes:
    environ = {"REQUEST_METHOD": method, "PATH_INFO": "/", "SERVER_NAME": "t", "SERVER_PORT": "80",
               "wsgi.url_scheme": "http", "wsgi.input": body, "wsgi.input_terminated": True}
    if length:
        environ["CONTENT_LENGTH"] = str(len(body.data))
    status: list[str] = []
    (answer,) = app(environ, lambda s, h, exc_info=None: status.append(s))
    assert status == ["200 OK"]
    return answer


@pytest.mark.parametrize("size", [0, 1, 40_000, READ_AHEAD_BYTES, READ_AHEAD_BYTES + 12_345])
@pytest.mark.parametrize("length", [True, False], ids=["content-length", "chunked"])
def test_the_app_reads_exactly_the_body_the_client_sent(size: int, length: bool) -> None:
    data = bytes(i % 251 for i in range(size))
    head, body = call(PinnedThreads(echo, 4, 2), ClientBody(data), length=length).split(b"|", 1)
    assert head.split(b" ")[0] == b"%d" % size and body == data


def test_requests_run_on_a_fixed_set_of_threads() -> None:
    """Each request arrives on a new server thread (granian replaces idle ones); the app always runs
    on one of the pool's 3 threads."""
    app = PinnedThreads(echo, 3, 3)
    names: set[bytes] = set()

    def one() -> None:
        names.add(call(app, ClientBody(b"x")).split(b" ", 1)[1].split(b"|")[0])

    for _ in range(30):
        server_thread = threading.Thread(target=one)
        server_thread.start()
        server_thread.join(10)
    assert len(names) <= 3 and all(n.startswith(b"request") for n in names)


@pytest.mark.parametrize("hold_at", [1_000, READ_AHEAD_BYTES + 1_000], ids=["read-ahead", "rest"])
def test_a_slow_body_holds_no_turn(hold_at: int) -> None:
    """With a single turn, a request whose client stops sending mid-body (before or after the part
    read ahead) does not stop another request from running."""
    app = PinnedThreads(echo, 4, 1)
    slow = ClientBody(b"s" * (READ_AHEAD_BYTES + 5_000), hold_at=hold_at)
    answers: list[bytes] = []
    waiting = threading.Thread(target=lambda: answers.append(call(app, slow)))
    waiting.start()
    assert slow.holding.wait(10)
    quick: list[bytes] = []
    other = threading.Thread(target=lambda: quick.append(call(app, ClientBody(b"quick"))), daemon=True)
    other.start()
    other.join(5)  # it would wait for the turn as long as the slow client waits
    slow.release.set()
    assert quick and quick[0].endswith(b"|quick")
    waiting.join(10)
    assert answers and answers[0].startswith(b"%d " % len(slow.data))
