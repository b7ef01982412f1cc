"""Real processes: ``make run`` and ``mailjet-bridge worker`` against the fake Segment server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from bridge import create_app
from bridge.config import load_settings
from bridge.mailjet_events import EVENT_NAME_PRESETS
from bridge.mapping import dedupe_key, message_id
from bridge.storage.base import SEGMENT_TRACK
from tests.fakes.segment import FakeSegment

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class Process:
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def start_reader(self) -> None:
        def read() -> None:
            assert self.proc.stdout is not None
            with self.proc.stdout:
                for line in self.proc.stdout:
                    self.lines.append(line.rstrip("\n"))
        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        if self.reader is not None:
            self.reader.join(5)
        return code

    def output(self) -> str:
        return "\n".join(self.lines)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
        return self.wait(timeout)


def spawn(args: list[str], env: dict[str, str]) -> Process:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SEGMENT_", "MAILJET_", "BRIDGE_"))}
    full_env.update(env)
    full_env["PATH"] = f"{BIN}:{full_env.get('PATH', '')}"
    proc = subprocess.Popen(args, cwd=ROOT, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    process = Process(proc)
    process.start_reader()
    return process


@pytest.fixture
def make_run(tmp_path: Path, fake_segment: FakeSegment) -> Iterator[tuple[str, Process]]:
    """``make run`` as a user starts it, on a free port, with no webhook credentials configured."""
    port = free_port()
    process = spawn(["make", "--no-print-directory", "run"], {
        "BRIDGE_PORT": str(port),
        "BRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'bridge.db'}",
        "SEGMENT_WRITE_KEY": "good-key",
        "SEGMENT_API_URL": fake_segment.url,
    })
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if process.proc.poll() is not None:
            raise AssertionError(f"make run exited:\n{process.output()}")
        try:
            return requests.get(f"{base}/healthz", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    poll(healthy, 60, "make run to answer /healthz")
    yield base, process
    code = process.stop()
    assert code is not None


def test_make_run_delivers_a_grouped_body_of_all_seven_types(
        make_run: tuple[str, Process], fake_segment: FakeSegment,
        mailjet_events: dict[str, Any]) -> None:
    base, process = make_run
    announced = [line for line in process.lines if "/webhooks/mailjet" in line and "@" in line]
    assert len(announced) == 1, process.output()
    callback = urlsplit(announced[0].rsplit(" ", 1)[-1])
    auth = (callback.username or "", callback.password or "")
    assert callback.path == "/webhooks/mailjet"

    invalid = [{**mailjet_events["open"], "time": "yesterday"}, {"event": "typofix", "time": 1}]
    body = [*mailjet_events.values(), *invalid]
    response = requests.post(f"{base}/webhooks/mailjet", json=body, auth=auth, timeout=10)
    assert response.status_code == 200
    assert response.json() == {"accepted": 7, "duplicate": 0, "quarantined": 2}

    fake_segment.wait_for(lambda f: len(f.accepted) == 7, timeout=20)
    calls = {c["properties"]["mailjet_event"]: c for c in fake_segment.accepted}
    names = EVENT_NAME_PRESETS["mailjet"]
    for kind, event in mailjet_events.items():
        call = calls[kind]
        assert call["type"] == "track" and call["event"] == names[kind]
        assert call["anonymousId"] == event["email"]
        assert call["messageId"] == message_id(dedupe_key(event))
        assert call["timestamp"].startswith("2015-")
        assert call["context"]["traits"] == {"email": event["email"]}
        assert call["context"]["library"]["name"] == "mailjet-segment-bridge"
        assert call["integrations"] == {"Mailjet": False}
        assert call["properties"]["email_id"] == str(event["MessageID"])
    assert calls["click"]["properties"]["link_url"] == "https://mailjet.com"
    assert calls["bounce"]["properties"]["hard_bounce"] is True
    assert all(r.sent_at for r in fake_segment.requests)

    # Mailjet redelivers the same group (it timed out on its side): nothing is sent twice
    again = requests.post(f"{base}/webhooks/mailjet", json=body, auth=auth, timeout=10)
    assert again.json() == {"accepted": 0, "duplicate": 7, "quarantined": 2}
    single = requests.post(f"{base}/webhooks/mailjet", json=mailjet_events["spam"], auth=auth, timeout=10)
    assert single.json() == {"accepted": 0, "duplicate": 1, "quarantined": 0}
    health = requests.get(f"{base}/healthz", timeout=2).json()
    assert health["queue"]["pending"] == 0 and health["queue"]["delivered"] == 7
    assert health["queue"]["quarantined"] == 2
    assert len(fake_segment.accepted) == 7
    assert requests.post(f"{base}/webhooks/mailjet", json=body, timeout=10).status_code == 401


def test_ctrl_c_stops_make_run_cleanly(make_run: tuple[str, Process]) -> None:
    _, process = make_run
    started = time.monotonic()
    process.stop(signal.SIGINT)
    assert time.monotonic() - started < 15
    assert "Traceback" not in process.output(), process.output()


def test_worker_resumes_rows_left_pending_or_leased(tmp_path: Path, fake_segment: FakeSegment) -> None:
    """A restart finds rows a crashed process left pending and leased; all of them are delivered."""
    db = f"sqlite:///{tmp_path / 'bridge.db'}"
    settings = load_settings({"BRIDGE_DATABASE_URL": db, "BRIDGE_WEBHOOK_USERNAME": "u",
                              "BRIDGE_WEBHOOK_PASSWORD": "p"})
    app = create_app(settings, announce=lambda _: None)  # no write key: everything stays queued
    events = [{"event": "open", "time": 1_700_000_000 + i, "MessageID": i + 1,
               "email": f"r{i}@example.com"} for i in range(20)]
    client = app.test_client()
    assert client.post("/webhooks/mailjet", json=events, auth=("u", "p")).json["accepted"] == 20
    store = app.extensions["bridge"].store
    leased = store.claim(SEGMENT_TRACK, 8, "process-that-crashed", 2, time.time())
    assert len(leased) == 8
    store.close()

    worker = spawn([str(BIN / "mailjet-bridge"), "worker"], {
        "BRIDGE_DATABASE_URL": db, "BRIDGE_WEBHOOK_USERNAME": "u", "BRIDGE_WEBHOOK_PASSWORD": "p",
        "SEGMENT_WRITE_KEY": "good-key", "SEGMENT_API_URL": fake_segment.url,
    })
    try:
        fake_segment.wait_for(lambda f: len(f.accepted) == 20, timeout=30)
    finally:
        assert worker.stop(signal.SIGTERM) == 0, worker.output()
    assert sorted(fake_segment.message_ids()) == sorted(message_id(dedupe_key(e)) for e in events)


def test_wsgi_app_starts_no_thread(tmp_path: Path, fake_segment: FakeSegment) -> None:
    env = {"BRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}", "SEGMENT_WRITE_KEY": "good-key",
           "SEGMENT_API_URL": fake_segment.url}
    code = ("import threading, wsgi, json; "
            "print(json.dumps([threading.active_count(), type(wsgi.app).__name__]))")
    process = spawn([sys.executable, "-c", code], env)
    assert process.wait(30) == 0, process.output()
    assert json.loads(process.lines[-1]) == [1, "Flask"]
