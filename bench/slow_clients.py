"""Which server keeps answering while clients trickle their headers, and how fast each one serves.

Each candidate server runs the bridge (``wsgi:app``) and the no-op Flask endpoint (``noop_app:app``)
on 127.0.0.1 with 2 workers (or threads, for single-process servers). For each one:

- wrk (Debian package ``wrk``) posts unique Mailjet events, as ``bench/accept.py`` does, 1 and 100
  per request, and reports req/s;
- N slow clients each open a connection and send a request line, then one header line every half
  second and never the blank line that ends the headers. Meanwhile ``GET /healthz`` is probed 5 times
  on fresh connections, each with a 2 s timeout; the table shows how many probes were answered.
- The same with N clients that send whole headers, then their body one byte every half second.

Everything stays on 127.0.0.1, and every loop is bounded: at most 300 slow connections, at most 60 s
each, closed at the end of their phase. Run: make bench-more (or python bench/slow_clients.py).
Environment: BENCH_SECONDS (wrk duration, default 10), BENCH_WORKERS (default 2), BENCH_SLOW
(slow-header client counts, default "2,150,200"), BENCH_SLOW_BODIES (default "150"), BENCH_SERVERS
(a comma list of names below to run only those), BENCH_APPS ("bridge,no-op" by default).
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests
from accept import free_port, wrk  # bench/accept.py: the same wrk run and Lua script

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
WORKERS = os.environ.get("BENCH_WORKERS", "2")
SLOW_COUNTS = [int(n) for n in os.environ.get("BENCH_SLOW", "2,150,200").split(",") if n]
SLOW_BODIES = [int(n) for n in os.environ.get("BENCH_SLOW_BODIES", "150").split(",") if n]
PROBES, PROBE_TIMEOUT = 5, 2.0
AUTH = base64.b64encode(b"bench:bench-pass").decode()
MAX_SLOW, MAX_SLOW_SECONDS, TRICKLE_SECONDS = 300, 60.0, 0.5


def gunicorn(*extra: str) -> Callable[[str, int], list[str]]:
    return lambda app, port: [str(BIN / "gunicorn"), "-w", WORKERS, *extra, "-b", f"127.0.0.1:{port}",
                              "--log-level", "warning", app]


def granian(*extra: str) -> Callable[[str, int], list[str]]:
    return lambda app, port: [str(BIN / "granian"), "--interface", "wsgi", "--workers", WORKERS, *extra,
                              "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", app]


def waitress(*extra: str) -> Callable[[str, int], list[str]]:
    return lambda app, port: [str(BIN / "waitress-serve"), f"--listen=127.0.0.1:{port}", *extra, app]


#: name -> command line for (app, port). gunicorn comes with the bridge, granian with the bench
#: extra; waitress is measured when present (pip install waitress).
SERVERS: dict[str, Callable[[str, int], list[str]]] = {
    "gunicorn sync": gunicorn(),
    "gunicorn gthread 8 threads": gunicorn("-k", "gthread", "--threads", "8"),
    "waitress 4 threads": waitress(),
    "waitress 8 threads 1000 connections": waitress("--threads=8", "--connection-limit=1000"),
    "granian wsgi": granian(),
    "granian wsgi 1 blocking thread": granian("--blocking-threads", "1"),
    "granian wsgi 4 blocking threads": granian("--blocking-threads", "4"),
    "granian wsgi 8 blocking threads": granian("--blocking-threads", "8"),
    # what `make run` runs: uvicorn web processes, the writer and one delivery process
    "mailjet-bridge serve": lambda app, port: [str(BIN / "mailjet-bridge"), "serve"],
}
#: Servers that serve the bridge only.
BRIDGE_ONLY = {"mailjet-bridge serve"}
APPS = {"bridge": ("wsgi:app", ROOT), "no-op": ("noop_app:app", HERE)}


@dataclass
class SlowClients:
    """``count`` connections that send a request line, then a header line every TRICKLE_SECONDS.

    With ``body``, they send whole headers (the webhook's credentials, a 100,000-byte body announced),
    then one byte of the body every TRICKLE_SECONDS.
    """

    url_port: int
    count: int
    body: bool = False
    sockets: list[socket.socket] = field(default_factory=list)
    refused: int = 0
    closed_by_server: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def __enter__(self) -> SlowClients:
        for _ in range(min(self.count, MAX_SLOW)):
            try:
                s = socket.create_connection(("127.0.0.1", self.url_port), timeout=2)
                s.sendall(b"POST /webhooks/mailjet HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
                          b"Content-Type: application/json\r\nAuthorization: Basic " + AUTH.encode()
                          + b"\r\n\r\n[" if self.body
                          else b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                s.setblocking(False)
                self.sockets.append(s)
            except OSError:
                self.refused += 1
        self.thread = threading.Thread(target=self._trickle, daemon=True)
        self.thread.start()
        return self

    def _trickle(self) -> None:
        deadline = time.monotonic() + MAX_SLOW_SECONDS
        line = 0
        while not self.stop.wait(TRICKLE_SECONDS) and time.monotonic() < deadline:
            line += 1
            for s in list(self.sockets):
                try:
                    s.send(b" " if self.body else f"X-Trickle-{line}: {'x' * 8}\r\n".encode())
                except BlockingIOError:
                    pass  # the server reads nothing from it yet: its buffer is full
                except OSError:
                    self.closed_by_server += 1
                    self.sockets.remove(s)
                    s.close()

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(5)
        for s in self.sockets:
            s.close()


def probe(url: str) -> tuple[int, float]:
    """PROBES fresh-connection GETs of /healthz: how many answered within PROBE_TIMEOUT, worst time."""
    answered, worst = 0, 0.0
    for _ in range(PROBES):
        started = time.monotonic()
        try:
            if requests.get(f"{url}/healthz", timeout=PROBE_TIMEOUT).status_code < 500:
                answered += 1
        except requests.RequestException:
            pass
        worst = max(worst, time.monotonic() - started)
        time.sleep(0.2)
    return answered, worst


def start(command: list[str], env: dict[str, str], cwd: Path, port: int) -> subprocess.Popen[bytes]:
    """The server, its output in a file beside the database (shown if it fails to start)."""
    log = Path(env["BENCH_LOG"])
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=cwd, env={**os.environ, **env}, start_new_session=True,
                                stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{' '.join(command)} exited with {proc.returncode}:\n{log.read_text()}")
        try:
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except requests.RequestException:
            time.sleep(0.1)
    stop(proc)
    raise SystemExit(f"{' '.join(command)} did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def measure(name: str, app_name: str, env: dict[str, str], auth: str) -> dict[str, str]:
    app, cwd = APPS[app_name]
    port = free_port()
    proc = start(SERVERS[name](app, port), {**env, "BRIDGE_PORT": str(port)}, cwd, port)
    url = f"http://127.0.0.1:{port}"
    row = {"server": name, "app": app_name}
    try:
        for events in (1, 100):
            result = wrk(url, events, auth)
            row[f"rps{events}"] = f"{result['rps']:.0f}" + (f" ({result['errors']:.0f} errors)"
                                                             if result["errors"] else "")
        phases = [(f"slow{n}", n, False) for n in SLOW_COUNTS]
        phases += [(f"body{n}", n, True) for n in SLOW_BODIES]
        for key, count, body in phases:
            # a server whose workers were stuck on the last phase's clients gets a moment to recover
            recover = time.monotonic() + 40
            while time.monotonic() < recover and probe_once(url) is False:
                time.sleep(0.5)
            with SlowClients(port, count, body) as slow:
                time.sleep(1.0)  # let the server accept them
                answered, worst = probe(url)
            row[key] = f"{answered}/{PROBES}" + (f" ({worst:.1f} s)" if answered == PROBES else "")
            if slow.refused:
                row[key] += f", {slow.refused} refused"
        alive = proc.poll() is None
        row["note"] = "" if alive else f"exited with {proc.returncode}"
    finally:
        stop(proc)
    print(f"  {row}", file=sys.stderr, flush=True)
    return row


def probe_once(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=PROBE_TIMEOUT).status_code < 500
    except requests.RequestException:
        return False


def main() -> None:
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk")
    wanted = [n for n in os.environ.get("BENCH_SERVERS", "").split(",") if n] or list(SERVERS)
    apps = [a for a in os.environ.get("BENCH_APPS", "bridge,no-op").split(",") if a]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in wanted:
            if not (BIN / SERVERS[name]("app", 0)[0].rsplit("/", 1)[-1]).exists():
                print(f"skipped {name}: not installed", file=sys.stderr)
                continue
            for app_name in apps:
                if name in BRIDGE_ONLY and app_name != "bridge":
                    continue
                env = {"BRIDGE_DATABASE_URL": f"sqlite:///{tmp}/{len(rows)}.db",
                       "BENCH_LOG": f"{tmp}/{len(rows)}.log", "SEGMENT_SHARED_SECRET": "bench-secret",
                       "BRIDGE_WEBHOOK_USERNAME": "bench", "BRIDGE_WEBHOOK_PASSWORD": "bench-pass",
                       "BRIDGE_ADMIN_PASSWORD": "bench-admin-pass"}
                rows.append(measure(name, app_name, env, AUTH))
    duration = os.environ.get("BENCH_SECONDS", "10")
    print(f"{WORKERS} workers, wrk -t1 -c8 -d{duration}s, unique events, loopback; {PROBES} probes of "
          f"/healthz ({PROBE_TIMEOUT:.0f} s timeout each) while N clients trickle their headers")
    keys = [f"slow{n}" for n in SLOW_COUNTS] + [f"body{n}" for n in SLOW_BODIES]
    heads = [f"/healthz, {n} slow headers" for n in SLOW_COUNTS]
    heads += [f"/healthz, {n} slow bodies" for n in SLOW_BODIES]
    print(f"| server | app | 1 event req/s | 100 events req/s | {' | '.join(heads)} |")
    print("|---|---|---|---|" + "---|" * len(keys))
    for row in rows:
        slow = " | ".join(row.get(key, "") for key in keys)
        note = f" {row['note']}" if row.get("note") else ""
        print(f"| {row['server']} | {row['app']} | {row['rps1']} | {row['rps100']} | {slow} |{note}")


if __name__ == "__main__":
    main()
