"""How ``serve``'s web processes run requests (``bridge.server.TakingTurns``), in process.

Bodies are read before the request takes its turn to run app code (the rest of a long one while the
turn is given up), and the app reads exactly the bytes the client sent. Requests run on the server's
own threads, which come and go; the SQLite store's connections stay as many as were used at once,
and a request waiting for its group commit gives its turn up.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
from werkzeug.wrappers import Request

from bridge.server import READ_AHEAD_BYTES, TakingTurns
from bridge.storage.base import NewItem
from bridge.storage.sqlite import SQLiteStore
from bridge.web.body import read_body
from tests.test_group_commit import queue_settled


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


def call(app: TakingTurns, body: ClientBody, *, length: bool = True, method: str = "POST",
         path: str = "/") -> bytes:
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "SERVER_NAME": "t", "SERVER_PORT": "80",
               "wsgi.url_scheme": "http", "wsgi.input": body, "wsgi.input_terminated": True}
    if length:
        environ["CONTENT_LENGTH"] = str(len(body.data))
    status: list[str] = []
    (answer,) = app(environ, lambda s, h, exc_info=None: status.append(s))
    assert status == ["200 OK"]
    return answer


def echo_read_body(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Reads the body as the Mailjet webhook does (``bridge.web.body.read_body``, no werkzeug)."""
    body = read_body(environ, 10 * READ_AHEAD_BYTES)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"%d %s" % (len(body), threading.current_thread().name.encode()), b"|", body]


@pytest.mark.parametrize("size", [0, 1, 40_000, READ_AHEAD_BYTES, READ_AHEAD_BYTES + 12_345])
@pytest.mark.parametrize("length", [True, False], ids=["content-length", "chunked"])
@pytest.mark.parametrize("app", [echo, echo_read_body], ids=["werkzeug", "read_body"])
def test_the_app_reads_exactly_the_body_the_client_sent(size: int, length: bool, app: Any) -> None:
    data = bytes(i % 251 for i in range(size))
    head, body = call(TakingTurns(app, 2), ClientBody(data), length=length).split(b"|", 1)
    assert head.split(b" ")[0] == b"%d" % size and body == data


def test_threads_that_come_and_go_leave_no_connections_open(tmp_path: Path) -> None:
    """Granian ends idle threads and starts new ones: 60 short-lived threads, each reading and
    writing, 3 at a time, leave the store with at most as many connections (and lock files) open
    as were in use at once, not one per thread."""
    store = SQLiteStore(tmp_path / "b.db")
    store.migrate()
    before = open_files()

    def use() -> None:
        store.put_setting("k", threading.current_thread().name, 1.0)
        store.get_setting("k")

    for _ in range(20):
        threads = [threading.Thread(target=use) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    opened = open_files() - before
    store.close()
    assert opened <= 3 * 4  # a connection: db, -wal, -shm, -writelock


def test_a_request_waiting_for_its_commit_gives_its_turn_up(tmp_path: Path) -> None:
    """With one turn, 20 requests that each accept an event all join one group commit or a few:
    while one waits for the commit, the next runs. (Holding the turn would make 20 commits.)"""
    store = SQLiteStore(tmp_path / "b.db")
    store.migrate()
    commits: list[int] = []
    write = store._write

    def counted() -> Any:
        commits.append(1)
        return write()

    store._write = counted  # type: ignore[method-assign]
    gate = threading.Event()
    first = store._group_commit
    first.transaction = lambda: (gate.wait(60), counted())[1]

    def accept(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        item = NewItem("k", environ["PATH_INFO"], "open", "{}", 1)
        store.accept([item], [], 1.0)
        start_response("200 OK", [])
        return [b"ok"]

    app = TakingTurns(accept, 1)
    done: list[bytes] = []
    threads = [threading.Thread(target=lambda n=n: done.append(
        call(app, ClientBody(b""), length=True, path=f"/{n}"))) for n in range(20)]
    for thread in threads:
        thread.start()
    queue_settled(first)
    gate.set()
    for thread in threads:
        thread.join(10)
    store.close()
    assert len(done) == 20 and len(commits) <= 3


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("hold_at", [1_000, READ_AHEAD_BYTES + 1_000], ids=["read-ahead", "rest"])
def test_a_slow_body_holds_no_turn(hold_at: int) -> None:
    """With a single turn, a request whose client stops sending mid-body (before or after the part
    read ahead) does not stop another request from running."""
    app = TakingTurns(echo, 1)
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
