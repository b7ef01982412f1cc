"""``mailjet-bridge serve`` as a real process: uvicorn's web processes and one delivery process.

Slow clients hold no web process; SIGTERM answers the request in flight; the delivery process
forwards, and comes back when it dies; ``/metrics`` adds up the counters of every process. All
traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.segment import FakeSegment
from tests.processes import BIN, Process, free_port, poll, spawn

pytestmark = pytest.mark.slow

AUTH = ("mailjet", "serve-test-pass")


class Served:
    """One ``mailjet-bridge serve`` and what it printed."""

    def __init__(self, process: Process, port: int, database: Path, metrics: Path) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        self.database = database
        self.metrics = metrics

    def log(self) -> list[dict[str, Any]]:
        found = []
        for line in list(self.process.lines):
            if line.startswith("{"):
                try:
                    found.append(json.loads(line))
                except ValueError:
                    continue
        return found

    def delivery_pids(self) -> list[int]:
        return self.pids("delivery")

    def pids(self, name: str) -> list[int]:
        """The pids of the ``name`` processes serve has started, first to last."""
        return [entry["pid"] for entry in self.log() if entry.get("msg") == f"{name} process started"]

    def answers(self) -> bool:
        if self.process.proc.poll() is not None:
            raise AssertionError(f"serve exited:\n{self.process.output()}")
        try:
            return requests.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def post(self, event: dict[str, Any], timeout: float = 10) -> requests.Response:
        return requests.post(f"{self.url}/webhooks/mailjet", json=event, auth=AUTH, timeout=timeout)


@pytest.fixture
def serve(tmp_path: Path, fake_segment: FakeSegment) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(**extra: str) -> Served:
        port = free_port()
        database, metrics = tmp_path / "bridge.db", tmp_path / "metrics"
        metrics.mkdir(exist_ok=True)
        process = spawn([str(BIN / "mailjet-bridge"), "serve"], {
            "BRIDGE_PORT": str(port), "BRIDGE_DATABASE_URL": f"sqlite:///{database}",
            "SEGMENT_WRITE_KEY": "good-key", "SEGMENT_API_URL": fake_segment.url,
            "SEGMENT_CDN_URL": fake_segment.url, "BRIDGE_WEBHOOK_USERNAME": AUTH[0],
            "BRIDGE_WEBHOOK_PASSWORD": AUTH[1], "BRIDGE_ADMIN_PASSWORD": "serve-admin-pass",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics), **extra,
        })
        served = Served(process, port, database, metrics)
        started.append(served)
        poll(served.answers, 60, "serve to answer /healthz")
        poll(served.delivery_pids, 30, "the delivery process")
        return served

    yield start
    for served in started:
        served.process.stop(signal.SIGTERM)


def event(n: int) -> dict[str, Any]:
    return {"event": "open", "time": 1_800_000_000 + n, "MessageID": 900_000 + n,
            "email": f"serve{n}@example.com"}


class SlowClients:
    """``count`` connections that send a request line, then one header line every half second, and
    never the blank line that ends the headers. Bounded: they stop after ``seconds`` at most."""

    def __init__(self, port: int, count: int, seconds: float = 30) -> None:
        self.sockets = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(count)]
        self.dropped = 0
        self.stop = threading.Event()
        for s in self.sockets:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            s.setblocking(False)
        self.thread = threading.Thread(target=self._trickle, args=(time.monotonic() + seconds,),
                                       daemon=True)
        self.thread.start()

    def _trickle(self, deadline: float) -> None:
        line = 0
        while not self.stop.wait(0.5) and time.monotonic() < deadline:
            line += 1
            for s in list(self.sockets):
                try:
                    s.send(f"X-Slow-{line}: x\r\n".encode())
                except BlockingIOError:
                    pass
                except OSError:
                    self.dropped += 1
                    self.sockets.remove(s)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for s in self.sockets:
            s.close()


def test_healthz_answers_while_150_clients_trickle_their_headers(serve: Callable[..., Served]) -> None:
    served = serve()
    slow = SlowClients(served.port, 150)
    try:
        answered, times = 0, []
        for _ in range(5):
            started = time.monotonic()
            with contextlib.suppress(requests.RequestException):
                answered += requests.get(f"{served.url}/healthz", timeout=2).status_code == 200
            times.append(round(time.monotonic() - started, 2))
        assert answered >= 4, (answered, times)
        # the slow clients were still there, holding their connections open, all along
        assert slow.dropped == 0 and len(slow.sockets) == 150
        assert served.post(event(1), timeout=5).status_code == 200
    finally:
        slow.close()


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (at most 10 s)."""
    sock.settimeout(10)
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received


def test_a_client_past_the_client_timeout_gets_408_but_a_slow_body_is_not_cut(
        serve: Callable[..., Served]) -> None:
    """BRIDGE_CLIENT_TIMEOUT: a client that never ends its headers, sends nothing at all, or goes
    silent in the middle of its body (the webhook's or a Flask route's) gets a JSON 408 and is
    closed, and nothing of it is stored; one whose body keeps coming may take longer for it."""
    served = serve(BRIDGE_CLIENT_TIMEOUT="1")
    basic = base64.b64encode(":".join(AUTH).encode()).decode()
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        silent, unfinished, webhook_cut, flask_cut = (
            stack.enter_context(socket.create_connection(("127.0.0.1", served.port))) for _ in range(4))
        unfinished.sendall(b"POST /webhooks/mailjet HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for sock, path in ((webhook_cut, "/webhooks/mailjet"), (flask_cut, "/admin/login")):
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {basic}\r\n"
                         "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                         '[{"event": "open", '.encode())
        for answer in (_answer(silent), _answer(unfinished), _answer(webhook_cut), _answer(flask_cut)):
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408 "), answer
            assert json.loads(body)["error"] == "request_timeout"
    assert 1 <= time.monotonic() - started < 8
    text = json.dumps(event(7)).encode()
    with socket.create_connection(("127.0.0.1", served.port)) as slow:
        slow.sendall(f"POST /webhooks/mailjet HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {basic}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(text)}\r\n"
                     "Connection: close\r\n\r\n".encode())
        pace = threading.Event()
        for n in range(0, len(text), len(text) // 4 + 1):  # the body over about 2 s: twice the limit
            pace.wait(0.5)
            slow.sendall(text[n:n + len(text) // 4 + 1])
        answer = _answer(slow)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["accepted"] == 1
    poll(lambda: sum("did not send its headers within 1 s" in str(r.get("msg")) for r in served.log()) == 2
         and sum("sent nothing of its body for 1 s" in str(r.get("msg")) for r in served.log()) == 2,
         10, "the four closed connections to be logged")
    assert "Traceback" not in served.process.output()
    with sqlite3.connect(served.database) as db:  # the slow body's event alone
        assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 1


def _flock_holders(path: Path) -> set[int]:
    """The pids holding a flock on ``path`` (from /proc/locks)."""
    inode = os.stat(path).st_ino
    holders = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "FLOCK" in fields and "->" not in fields and fields[5].endswith(f":{inode}"):
            holders.add(int(fields[4]))
    return holders


def test_sigterm_answers_the_request_in_flight_and_exits_within_10_s(
        serve: Callable[..., Served]) -> None:
    """The request is held inside the app (the database is locked) when SIGTERM comes; it still gets
    its 200, and everything has exited within 10 s of the signal."""
    served = serve()
    assert served.post(event(1)).status_code == 200
    # delivered and marked first: else the delivery process's mark may be the write that waits on
    # the lock below, and the request's write only after it (a race seen once in six runs)
    poll(lambda: requests.get(f"{served.url}/healthz", timeout=2).json()["queue"]["delivered"] == 1,
         20, "the first event to be delivered")
    lock_file = Path(f"{served.database}-writelock")
    blocker = sqlite3.connect(served.database, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the app's write waits for this, holding the write lock file
    answer: dict[str, Any] = {}

    def post() -> None:
        try:
            answer["response"] = served.post(event(2), timeout=20)
        except requests.RequestException as exc:
            answer["error"] = exc

    poster = threading.Thread(target=post)
    poster.start()
    try:
        delivery = set(served.delivery_pids())
        poll(lambda: _flock_holders(lock_file) - delivery, 10, "the request to wait inside the app")
        started = time.monotonic()
        os.kill(served.process.proc.pid, signal.SIGTERM)  # serve itself, as systemd or docker would
        poll(lambda: any("Shutting down" in line for line in served.process.lines), 5,
             "the web server to begin its shutdown")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    poster.join(20)
    assert served.process.wait(15) == 0, served.process.output()
    assert time.monotonic() - started < 10
    response = answer.get("response")
    assert response is not None and response.status_code == 200, (answer, served.process.output())
    assert response.json() == {"accepted": 1, "duplicate": 0, "quarantined": 0}
    assert "Traceback" not in served.process.output()


def test_ctrl_c_right_after_start_stops_every_process_at_once(tmp_path: Path) -> None:
    """Ctrl-C reaches the whole process group while the second web process may still be loading
    the app. Under granian (before #11's uvicorn), its processes lost or re-entered the signal in 8
    of 12 tries until they were taught otherwise: a web process killed after 8 s, or the web
    server after 10 s."""
    noise = ("still running", "Unexpected exit", "Traceback", "race condition")
    for attempt in range(3):
        port = free_port()
        process = spawn([str(BIN / "mailjet-bridge"), "serve"], {
            "BRIDGE_PORT": str(port), "BRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'ctrl-c.db'}",
            "BRIDGE_WEBHOOK_USERNAME": AUTH[0], "BRIDGE_WEBHOOK_PASSWORD": AUTH[1],
            "BRIDGE_ADMIN_PASSWORD": "serve-admin-pass",
        })
        try:
            poll(Served(process, port, tmp_path, tmp_path).answers, 60, "serve to answer /healthz")
            started = time.monotonic()
            os.killpg(process.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
            assert process.wait(20) == 0, process.output()
            took = time.monotonic() - started
        finally:
            process.stop(signal.SIGKILL)
        output = process.output()
        assert took < 5, (attempt, took, output)
        assert not [word for word in noise if word in output], (attempt, output)


def test_a_web_server_that_hangs_is_killed_with_its_web_processes(serve: Callable[..., Served]) -> None:
    """serve kills the web server's main process (uvicorn's supervisor of its web processes) if it
    has not stopped 10 s after SIGTERM (here it is stopped with SIGSTOP); its web processes, which
    would outlive it and keep the port, go too."""
    served = serve(BRIDGE_WORKERS="2")

    def pids(start: str) -> list[int]:  # uvicorn logs "Started parent process [123]"
        return [int(e["msg"].rsplit("[", 1)[-1].rstrip("]")) for e in served.log()
                if e.get("msg", "").startswith(start)]

    (main,) = poll(lambda: pids("Started parent process"), 10, "the web server's main pid")
    workers = poll(lambda: len(pids("Started server process")) == 2 and pids("Started server process"),
                   20, "both web processes")
    os.kill(main, signal.SIGSTOP)
    try:
        os.kill(served.process.proc.pid, signal.SIGTERM)
        assert served.process.wait(30) == 0, served.process.output()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(main, signal.SIGCONT)
    assert "web server still running after 10 s; killed" in served.process.output()

    def gone(pid: int) -> bool:  # ended; a zombie only waits for a parent to reap it
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            return True

    try:
        poll(lambda: all(gone(pid) for pid in workers), 10, "the web processes to end")
    finally:  # leave no process behind, even when this fails
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_web_process_that_dies_is_started_again(serve: Callable[..., Served], workers: str) -> None:
    """uvicorn's main process starts a web process again when one dies (SIGKILL here), with one
    web process as with two; meanwhile serve goes on, and the new one answers."""
    served = serve(BRIDGE_WORKERS=workers)

    def web_pids() -> list[int]:  # uvicorn logs "Started server process [123]" for each
        return [int(e["msg"].rsplit("[", 1)[-1].rstrip("]")) for e in served.log()
                if e.get("msg", "").startswith("Started server process")]

    first = poll(lambda: len(web_pids()) == int(workers) and web_pids(), 20, "the web processes")
    os.kill(first[0], signal.SIGKILL)
    poll(lambda: len(web_pids()) > int(workers), 30, "a new web process")
    poll(served.answers, 30, "serve to answer /healthz again")
    assert served.post(event(1)).status_code == 200
    assert served.process.proc.poll() is None, served.process.output()


def test_the_delivery_process_forwards_and_comes_back_when_it_dies(
        serve: Callable[..., Served], fake_segment: FakeSegment) -> None:
    served = serve()
    assert served.post(event(1)).status_code == 200
    fake_segment.wait_for(lambda f: len(f.accepted) == 1, timeout=20)
    (first,) = served.delivery_pids()
    os.kill(first, signal.SIGKILL)
    poll(lambda: len(served.delivery_pids()) == 2, 20, "a new delivery process")
    assert served.answers()
    assert served.post(event(2)).status_code == 200
    fake_segment.wait_for(lambda f: len(f.accepted) == 2, timeout=20)
    assert sorted(c["properties"]["email_id"] for c in fake_segment.accepted) == ["900001", "900002"]


def test_metrics_add_up_the_counters_of_every_process(
        serve: Callable[..., Served], fake_segment: FakeSegment) -> None:
    """Events accepted by both web processes and delivered by the delivery process: every scrape,
    whichever web process answers it, counts them all."""
    served = serve(BRIDGE_WORKERS="2")
    (delivery,) = served.delivery_pids()

    def web_pids_counting() -> set[int]:
        pids = {int(p.stem.split("_")[-1]) for p in served.metrics.glob("counter_*.db")}
        return pids - {delivery}

    posted = 0
    while len(web_pids_counting()) < 2 and posted < 200:  # fresh connections land on both processes
        posted += 1
        assert served.post(event(posted)).status_code == 200
    assert len(web_pids_counting()) == 2, f"{posted} posts reached only {web_pids_counting()}"
    fake_segment.wait_for(lambda f: len(f.accepted) == posted, timeout=30)

    def counted() -> tuple[float, float] | None:
        families = {f.name: f for f in text_string_to_metric_families(
            requests.get(f"{served.url}/metrics", timeout=5).text)}
        if "bridge_events_delivered" not in families:  # Segment has it; the counter comes just after
            return None
        accepted = sum(s.value for s in families["bridge_events_accepted"].samples
                       if s.name.endswith("_total"))
        delivered = sum(s.value for s in families["bridge_events_delivered"].samples
                        if s.name.endswith("_total") and s.labels["upstream"] == "segment")
        return (accepted, delivered) if delivered == posted else None

    poll(counted, 10, "the delivery process's counters in /metrics")
    for _ in range(6):  # several scrapes, on fresh connections: each web process answers some
        assert counted() == (posted, posted)


def test_chunked_bodies_and_flask_routes_through_serve(serve: Callable[..., Served]) -> None:
    """Through the web server: a chunked post is read whole on the loop and stored, an
    oversized chunked one gets its 413 from the webhook and from Flask alike, and the admin pages
    (Flask, on the front's threads) answer."""
    served = serve(BRIDGE_MAX_BODY_BYTES="4096")
    text = json.dumps([event(1), event(2)]).encode()
    answer = requests.post(f"{served.url}/webhooks/mailjet", auth=AUTH, timeout=10,
                           data=iter([text[:7], text[7:40], text[40:]]),
                           headers={"Content-Type": "application/json"})
    assert answer.request.headers.get("Transfer-Encoding") == "chunked"
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"accepted": 2, "duplicate": 0, "quarantined": 0}
    for path in ("/webhooks/mailjet", "/admin/login"):
        big = requests.post(f"{served.url}{path}", auth=AUTH, timeout=10,
                            data=iter([b"x" * 1000] * 10), headers={"Content-Type": "application/json"})
        assert big.status_code == 413, (path, big.text)
        assert big.json()["error"] == "request_entity_too_large"
    admin = requests.get(f"{served.url}/admin/", timeout=10, allow_redirects=False)
    assert admin.status_code == 302 and admin.headers["Location"].startswith("/admin/login")
    login = requests.get(f"{served.url}/admin/login", timeout=10)
    assert login.status_code == 200 and 'name="csrf_token"' in login.text
    # a client that leaves in the middle of a declared body: logged as a bad body, never an error
    basic = base64.b64encode(":".join(AUTH).encode()).decode()
    for path in ("/webhooks/mailjet", "/admin/login"):
        with socket.create_connection(("127.0.0.1", served.port), timeout=5) as gone:
            gone.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {basic}\r\n"
                         "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"event\":".encode())
    poll(lambda: sum(1 for r in served.log() if r.get("logger") == "bridge.access"
                     and r.get("method") == "POST" and r.get("status") == 400) >= 2, 10,
         "the two requests whose clients left to be logged")
    assert "Traceback" not in served.process.output()
    assert not [r for r in served.log() if r.get("level") == "error"]


def test_a_killed_writer_loses_nothing_answered_200_and_comes_back(
        serve: Callable[..., Served]) -> None:
    """Posts keep coming while the writer process is SIGKILLed: each gets a 200 or a 503, never
    anything else; every event answered 200 is stored; serve starts a new writer, and posts are
    answered 200 again."""
    served = serve()
    (writer,) = served.pids("writer")
    answers: dict[int, int] = {}
    stop = threading.Event()

    def post_until_stopped(first: int) -> None:
        n = first
        while not stop.is_set():
            with contextlib.suppress(requests.RequestException):
                answers[n] = served.post(event(n), timeout=10).status_code
            n += 2

    posters = [threading.Thread(target=post_until_stopped, args=(k,)) for k in (1, 2)]
    for poster in posters:
        poster.start()
    try:
        poll(lambda: len(answers) >= 20, 20, "posts to be answered")
        os.kill(writer, signal.SIGKILL)
        poll(lambda: len(served.pids("writer")) == 2, 20, "a new writer process")
        seen = len(answers)
        # a copy made in one step: the posters add to answers meanwhile
        poll(lambda: sum(1 for n, code in list(answers.items()) if n > seen and code == 200) >= 10, 20,
             "posts answered 200 by the new writer")
    finally:
        stop.set()
        for poster in posters:
            poster.join(20)
    assert set(answers.values()) <= {200, 503}, answers
    stored = sqlite3.connect(served.database)
    try:
        ids = {row[0] for row in stored.execute(
            "SELECT json_extract(payload, '$.MessageID') FROM outbox")}
    finally:
        stored.close()
    assert {900_000 + n for n, code in answers.items() if code == 200} <= ids
