"""``mailjet-bridge demo``: the whole bridge on this machine, with no Segment or Mailjet account.

It starts local Segment and Mailjet sinks (``bridge.ops.demo_sinks``, real HTTP on loopback), then
``mailjet-bridge serve`` as a child process pointed at them, with a database in a temporary folder
(never the user's own). It posts Mailjet's sample events (one by one, then the grouped sample) and
one Segment identify, prints the admin URL and password, and reports what reaches the sinks until
Ctrl-C, which stops the server, the sinks and removes the folder.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import requests

from bridge.ops.demo_sinks import MailjetSink, SegmentSink
from bridge.signals import stopped_by_first

SAMPLES = Path(__file__).with_name("demo_samples.json")
#: Fixed, so the README's curl lines work as they are; the server listens on loopback only.
WEBHOOK_USER, WEBHOOK_PASSWORD = "demo", "demo-password"
SEGMENT_TOKEN = "demo-segment-token"
WRITE_KEY = "demo-write-key"
MAILJET_KEY, MAILJET_SECRET = "demo-api-key", "demo-api-secret"
DEFAULT_PORT = 8000
START_SECONDS = 60.0
STOP_SECONDS = 15.0


def _free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_port(environ: Mapping[str, str]) -> int:
    """BRIDGE_PORT when set; else 8000, or any free port when 8000 is taken (by `make run`...)."""
    if environ.get("BRIDGE_PORT", "").strip():
        return int(environ["BRIDGE_PORT"])
    if _free(DEFAULT_PORT):
        return DEFAULT_PORT
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def curl_lines(base: str) -> list[str]:
    """Copy-paste posts of a single event and of a grouped one, as Mailjet sends them."""
    single = json.dumps({"event": "open", "time": int(time.time()), "MessageID": 19421777396190491,
                         "email": "ada@example.com", "ip": "127.0.0.1", "geo": "GB"})
    grouped = json.dumps([
        {"event": "sent", "time": int(time.time()), "MessageID": 19421777396190492,
         "email": "ada@example.com"},
        {"event": "click", "time": int(time.time()), "MessageID": 19421777396190492,
         "email": "ada@example.com", "url": "https://example.com/"}])
    target = f"{base.replace('://', f'://{WEBHOOK_USER}:{WEBHOOK_PASSWORD}@')}/webhooks/mailjet"
    return [f"curl -s -H 'Content-Type: application/json' -d '{single}' {target}",
            f"curl -s -H 'Content-Type: application/json' -d '{grouped}' {target}"]


class Demo:
    """One demo run: sinks, the server as a child process, its folder; ``stop`` undoes them all."""

    def __init__(self, environ: Mapping[str, str], echo: Callable[[str], None]) -> None:
        self.environ = environ
        self.echo = echo
        self.folder = Path(tempfile.mkdtemp(prefix="mailjet-bridge-demo-"))
        self.database_url = f"sqlite:///{self.folder / 'demo.db'}"
        self.port = pick_port(environ)
        self.base = f"http://127.0.0.1:{self.port}"
        self.admin_password = secrets.token_urlsafe(12)
        self.segment = SegmentSink(WRITE_KEY, echo)
        self.mailjet = MailjetSink(MAILJET_KEY, MAILJET_SECRET, echo)
        self.server: subprocess.Popen[bytes] | None = None
        self.log = self.folder / "bridge.log"

    def server_environment(self) -> dict[str, str]:
        """The user's environment without any bridge setting, and the demo's instead."""
        env = {k: v for k, v in self.environ.items() if not k.startswith(("SEGMENT_", "MAILJET_", "BRIDGE_"))}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.update({
            "BRIDGE_DATABASE_URL": self.database_url, "BRIDGE_HOST": "127.0.0.1",
            "BRIDGE_PORT": str(self.port), "BRIDGE_WORKERS": "1",
            "BRIDGE_ADMIN_PASSWORD": self.admin_password,
            "BRIDGE_WEBHOOK_USERNAME": WEBHOOK_USER, "BRIDGE_WEBHOOK_PASSWORD": WEBHOOK_PASSWORD,
            "SEGMENT_WEBHOOK_TOKEN": SEGMENT_TOKEN, "SEGMENT_WRITE_KEY": WRITE_KEY,
            "SEGMENT_API_URL": self.segment.url, "SEGMENT_CDN_URL": self.segment.url,
            "MAILJET_API_KEY": MAILJET_KEY, "MAILJET_API_SECRET": MAILJET_SECRET,
            "MAILJET_API_URL": self.mailjet.url,
        })
        return env

    def start(self, stop: threading.Event) -> None:
        """Sinks, then the server; returns once it answers /healthz (or ``stop`` is set). Raises
        RuntimeError if it cannot start."""
        self.segment.start()
        self.mailjet.start()
        with self.log.open("wb") as log:
            # A session of its own: Ctrl-C reaches the demo, which stops the server in order.
            self.server = subprocess.Popen([sys.executable, "-m", "bridge", "serve"],
                                           env=self.server_environment(), stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline and not stop.is_set():
            if self.server.poll() is not None:
                raise RuntimeError(f"the bridge did not start:\n{self._log_tail()}")
            try:
                if requests.get(f"{self.base}/healthz?scope=accept", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            stop.wait(0.2)
        if stop.is_set():
            return
        raise RuntimeError(f"the bridge did not answer within {START_SECONDS:.0f} s:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])

    def post_samples(self) -> None:
        """Mailjet's seven samples one by one, the grouped sample as one post, and one identify."""
        samples = json.loads(SAMPLES.read_text())
        auth = (WEBHOOK_USER, WEBHOOK_PASSWORD)
        with requests.Session() as session:
            for event in samples["single"]:
                answer = session.post(f"{self.base}/webhooks/mailjet", json=event, auth=auth, timeout=10)
                self.echo(f"posted Mailjet's sample '{event['event']}' event: {answer.status_code}")
            answer = session.post(f"{self.base}/webhooks/mailjet", json=samples["grouped"], auth=auth,
                                  timeout=10)
            self.echo(f"posted Mailjet's grouped sample ({len(samples['grouped'])} events): "
                      f"{answer.status_code}")
            answer = session.post(f"{self.base}/webhooks/segment", json=samples["identify"], timeout=10,
                                  headers={"Authorization": f"Bearer {SEGMENT_TOKEN}"})
            self.echo(f"posted a Segment identify for {samples['identify']['traits']['email']}: "
                      f"{answer.status_code}")

    def welcome(self) -> None:
        for line in [
            "",
            f"The bridge runs at {self.base} with local Segment and Mailjet sinks; no account needed.",
            f"  admin:     {self.base}/admin   password: {self.admin_password}",
            f"  debugger:  {self.base}/admin/debugger",
            f"  database:  {self.database_url} (removed when the demo stops; the CLI reads it with "
            f"BRIDGE_DATABASE_URL={self.database_url})",
            f"  server log: {self.log}",
            "Post more events as Mailjet does:",
            *(f"  {line}" for line in curl_lines(self.base)),
            "Ctrl-C stops the demo.",
        ]:
            self.echo(line)

    def stop(self) -> int:
        """Stop the server (SIGTERM: it finishes what it holds), the sinks, and remove the folder."""
        code = 0
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
                code = 1
        for sink in (self.segment, self.mailjet):
            if sink.thread.is_alive():
                sink.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
        return code


def run(environ: Mapping[str, str], echo: Callable[[str], None]) -> int:
    """The demo until SIGINT or SIGTERM; 0 when everything stopped cleanly."""
    stop = threading.Event()

    previous = stopped_by_first(lambda _signum: stop.set())
    demo = Demo(environ, echo)
    try:  # the handlers stay until everything is stopped: a second Ctrl-C is no traceback either
        try:
            echo(f"starting the bridge on {demo.base} (database in {demo.folder})...")
            demo.start(stop)
            if not stop.is_set():
                demo.post_samples()
                demo.welcome()
            while not stop.wait(1.0):  # a timeout: a signal that another thread took runs its
                pass  # handler only once this thread is back in Python
            echo("stopping the demo...")
        except (RuntimeError, requests.RequestException) as exc:
            echo(f"demo failed: {exc}")
            demo.stop()
            return 1
        code = demo.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    echo("demo stopped" if code == 0 else "demo stopped, but the bridge had to be killed")
    return code
