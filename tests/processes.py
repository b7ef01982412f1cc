"""Real processes for end-to-end tests: ``make run``, the CLI and workers, with polling helpers."""

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
from typing import Any, NoReturn
from urllib.parse import urlsplit

import pytest
import requests

from bridge.inbound.intake import new_item
from bridge.server import descendants
from bridge.storage import open_store
from tests.fakes.segment import FakeSegment

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TEMPLATES = json.loads((ROOT / "tests" / "fixtures" / "mailjet" / "events.json").read_text())


def missing(reason: str) -> NoReturn:
    """A visible skip; under CI=true a failure, so CI cannot pass by skipping what it must run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: required here)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(check: Any, timeout: float, what: str, *, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(step)
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


def fill_backlog(url: str, count: int) -> None:
    """Queue ``count`` distinct events of every type through the store, in bodies of 5,000."""
    store = open_store(url)
    store.migrate()
    kinds = list(TEMPLATES.values())
    try:
        for first in range(0, count, 5000):
            items = []
            for n in range(first, min(count, first + 5000)):
                event = {**kinds[n % len(kinds)], "MessageID": 10**16 + n,
                         "time": 1_700_000_000 + n // 50, "email": f"user{n % 7919}@example.com"}
                items.append(new_item(event, json.dumps(event)))
            store.accept(items, [], time.time())
    finally:
        store.close()


def store_settled(database: str, timeout: float = 15) -> dict[str, Any]:
    """The store's counts once nothing is pending or leased (an upstream sees a call before the
    bridge has read the answer and marked it delivered, so this is polled too)."""
    def settled() -> dict[str, Any] | None:
        store = open_store(database)
        try:
            stats = store.stats(time.time())
        finally:
            store.close()
        return stats if stats["pending"] == 0 and stats["leased"] == 0 else None

    return poll(settled, timeout, "the store to settle (nothing pending or leased)")


def drain_helpers(pid: int) -> list[int]:
    """The ``mailjet-bridge drain-helper`` processes below ``pid`` (a worker) now."""
    found = []
    for child in descendants(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:  # ended meanwhile
            continue
        if b"bridge drain-helper" in command:
            found.append(child)
    return found


@pytest.fixture
def start_make_run(tmp_path: Path, fake_segment: FakeSegment) -> Iterator[Any]:
    """Starts ``make run`` as a user would, on a free port, with no webhook credentials configured."""
    started: list[Process] = []

    def start(extra_env: dict[str, str] | None = None, *, probe: str = "/healthz") -> tuple[str, Process]:
        """``probe``: the path that must answer 200 (``/healthz?scope=accept`` while a held write key
        makes ``/healthz`` 503 on purpose)."""
        port = free_port()
        process = spawn(["make", "--no-print-directory", "run"], {
            "BRIDGE_PORT": str(port),
            "BRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'bridge.db'}",
            "SEGMENT_WRITE_KEY": "good-key",
            "SEGMENT_API_URL": fake_segment.url,
            "SEGMENT_CDN_URL": fake_segment.url,
            **(extra_env or {}),
        })
        started.append(process)
        base = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            if process.proc.poll() is not None:
                raise AssertionError(f"make run exited:\n{process.output()}")
            try:
                return requests.get(f"{base}{probe}", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        poll(healthy, 60, f"make run to answer {probe}")
        return base, process

    yield start
    for process in started:
        assert process.stop() is not None


@pytest.fixture
def make_run(start_make_run: Any) -> tuple[str, Process]:
    return start_make_run()


def callback_auth(process: Process) -> tuple[str, str]:
    """The credentials in the callback URL that ``make run`` printed on first start."""
    announced = [line for line in process.lines if "/webhooks/mailjet" in line and "@" in line]
    assert len(announced) == 1, process.output()
    callback = urlsplit(announced[0].rsplit(" ", 1)[-1])
    assert callback.path == "/webhooks/mailjet"
    return callback.username or "", callback.password or ""


