"""How an upstream call fails: ``classify``, ``UpstreamError``, ``parse_retry_after``, and ``send``
against a real HTTP server on 127.0.0.1 (an answer, a refused connection, a read timeout)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from requests.structures import CaseInsensitiveDict

from bridge.delivery.upstream import UpstreamError, Verdict, classify, parse_retry_after, send

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        pytest.param(None, Verdict.RETRY, id="no-answer"),
        *(pytest.param(s, Verdict.DELIVERED, id=str(s)) for s in (200, 201, 204, 299)),
        pytest.param(300, Verdict.RETRY, id="300"),
        *(pytest.param(s, Verdict.REJECTED, id=str(s)) for s in (400, 413, 422)),
        *(pytest.param(s, Verdict.AUTH, id=str(s)) for s in (401, 403)),
        *(pytest.param(s, Verdict.RETRY, id=str(s)) for s in (404, 408, 429, 500, 502, 503)),
    ],
)
def test_classify(status: int | None, verdict: Verdict) -> None:
    assert classify(status) is verdict


@pytest.mark.parametrize(
    ("status", "message", "described", "verdict"),
    [
        pytest.param(None, "no answer within 15 s", "no answer within 15 s", Verdict.RETRY,
                     id="no-status-with-message"),
        pytest.param(503, "", "HTTP 503", Verdict.RETRY, id="status-only"),
        pytest.param(400, "Invalid email", "HTTP 400: Invalid email", Verdict.REJECTED,
                     id="status-and-message"),
        pytest.param(401, "", "HTTP 401", Verdict.AUTH, id="auth"),
    ],
)
def test_upstream_error(status: int | None, message: str, described: str, verdict: Verdict) -> None:
    error = UpstreamError(status, message, body="{}")
    assert error.describe() == described
    assert str(error) == described
    assert error.verdict is verdict


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        pytest.param({"Retry-After": "120"}, 120.0, id="seconds"),
        pytest.param({"Retry-After": "1.5"}, 1.5, id="fractional-seconds"),
        pytest.param({"Retry-After": "-5"}, 0.0, id="negative-is-zero"),
        pytest.param({"Retry-After": formatdate(NOW + 90, usegmt=True)}, 90.0, id="http-date-future"),
        pytest.param({"Retry-After": formatdate(NOW - 90, usegmt=True)}, 0.0, id="http-date-past"),
        pytest.param({"X-RateLimit-Reset": "30"}, 30.0, id="x-ratelimit-reset"),
        pytest.param({"Retry-After": "7", "X-RateLimit-Reset": "30"}, 7.0, id="retry-after-first"),
        pytest.param({"Retry-After": "soon", "X-RateLimit-Reset": "30"}, 30.0,
                     id="garbage-falls-back-to-reset"),
        pytest.param({"retry-after": "12"}, 12.0, id="header-name-any-case"),
        pytest.param({"Retry-After": "soon"}, None, id="garbage"),
        pytest.param({"Retry-After": ""}, None, id="empty"),
        pytest.param({}, None, id="missing"),
    ],
)
def test_parse_retry_after(headers: dict[str, str], seconds: float | None) -> None:
    # requests hands over a case-insensitive mapping
    assert parse_retry_after(CaseInsensitiveDict(headers), NOW) == seconds


# -- send() against a real server on 127.0.0.1 -------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    released: threading.Event

    def do_GET(self) -> None:
        if self.path == "/slow":
            self.released.wait(5)  # answers nothing; the client gives up first
            return
        status = int(self.path.rsplit("/", 1)[-1]) if self.path.startswith("/status/") else 200
        body = b'{"ok": true}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    released = threading.Event()
    handler = type("Handler", (_Handler,), {"released": released})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    released.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.trust_env = False  # no proxy from the environment: only 127.0.0.1 is contacted
        yield s


@pytest.mark.parametrize("status", [200, 404, 503], ids=["200", "404-returned", "503-returned"])
def test_send_returns_any_answer(server: str, session: requests.Session, status: int) -> None:
    path = "/ok" if status == 200 else f"/status/{status}"
    response, latency_ms = send(session, "GET", server + path, timeout=(2.0, 2.0))
    assert response.status_code == status
    assert response.json() == {"ok": True}
    assert latency_ms >= 0


def test_send_refused_connection(session: requests.Session) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(UpstreamError) as caught:
        send(session, "GET", f"http://127.0.0.1:{port}/", timeout=(2.0, 2.0))
    error = caught.value
    assert error.status is None and error.verdict is Verdict.RETRY
    assert error.message.startswith("connection failed")
    assert error.latency_ms is not None


def test_send_read_timeout(server: str, session: requests.Session) -> None:
    with pytest.raises(UpstreamError) as caught:
        send(session, "GET", server + "/slow", timeout=(2.0, 0.2))
    error = caught.value
    assert error.status is None and error.verdict is Verdict.RETRY
    assert error.describe() == "no answer within 0.2 s"
    assert error.latency_ms is not None and error.latency_ms >= 150
