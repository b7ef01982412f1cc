"""What the benchmarks share: wrk and its parser, servers started and stopped cleanly, Mailjet events
like those of ``post_events.lua``, fresh PostgreSQL databases, and RSS read from /proc.

Everything listens and connects on 127.0.0.1 only. Every process is started in a session of its own
and stopped with SIGTERM to its process group (SIGKILL only if it is still there after a grace).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
LUA = HERE / "post_events.lua"
USERNAME, PASSWORD = "bench", "bench-pass"
AUTH = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
#: The settings every bridge process of the benchmarks gets (no prompts, nothing generated).
BRIDGE_ENV = {"BRIDGE_WEBHOOK_USERNAME": USERNAME, "BRIDGE_WEBHOOK_PASSWORD": PASSWORD,
              "BRIDGE_ADMIN_PASSWORD": "bench-admin-password", "SEGMENT_SHARED_SECRET": "bench-secret"}
#: Where the stock PostgreSQL answers (trust auth); each measurement gets a database of its own.
PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- wrk ------------------------------------------------------------------------------------------

_SCALE_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def parse_wrk(out: str) -> dict[str, float]:
    """req/s, p50/p99 in ms, non-2xx answers and socket errors from ``wrk --latency`` output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise RuntimeError(f"wrk printed no Requests/sec:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result = {"rps": float(rps.group(1)), "errors": float(non2xx.group(1)) if non2xx else 0.0,
              "socket_errors": float(sum(int(n) for n in socket_errors.groups())) if socket_errors else 0.0}
    for pct in ("50", "99"):
        found = re.search(rf"\b{pct}%\s+([\d.]+)(us|ms|s|m)\b", out)
        result[f"p{pct}_ms"] = float(found.group(1)) * _SCALE_MS[found.group(2)] if found else float("nan")
    return result


def wrk(url: str, events: int, auth: str = AUTH, *, conns: int = 8, seconds: float | None = None,
        threads: int = 1) -> dict[str, float]:
    """``wrk -t1 -c<conns> -d<secs>s --latency -s post_events.lua``: unique events, ``events`` a body,
    posted to /webhooks/mailjet (the script's path) of ``url``. Seconds default to BENCH_SECONDS or 10.
    A request is given 30 s (wrk's own default of 2 s would drop a slow server's answers unseen)."""
    duration = seconds if seconds is not None else float(os.environ.get("BENCH_SECONDS", "10"))
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration:g}s", "--timeout", "30s", "--latency", "-s",
         str(LUA), url],
        env={**os.environ, "EVENTS": str(events), "AUTH": auth}, capture_output=True, text=True,
        check=True, timeout=duration + 60,
    ).stdout
    return parse_wrk(out)


# -- processes ------------------------------------------------------------------------------------


@dataclass
class Server:
    """A process (and everything it starts) in a session of its own, its output in ``log``."""

    name: str
    command: list[str]
    env: Mapping[str, str]
    cwd: Path
    log: Path
    #: Its base URL, for servers that listen.
    url: str = ""
    proc: subprocess.Popen[bytes] | None = None

    def start(self, ready_url: str | None = None, timeout: float = 60.0) -> Server:
        """Start; with ``ready_url``, poll it until any HTTP answer comes (or fail with the log)."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.command, cwd=self.cwd, env={**clean_environ(), **self.env},
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        if ready_url is not None:
            wait_http(ready_url, timeout, self)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 20.0) -> int | None:
        """SIGTERM to the process group, wait for the leader; SIGKILL the group after ``grace``."""
        if self.proc is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            print(f"  {self.name} still running {grace:.0f} s after SIGTERM: killed", flush=True)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        # anything of the group that outlived its leader (a web process still finishing)
        deadline = time.monotonic() + 5
        while group_alive(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if group_alive(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.returncode

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def clean_environ() -> dict[str, str]:
    """This process's environment without the bridge's settings or a peer's: a write key set in the
    shell must never send benchmark events to the real Segment."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("SEGMENT_", "MAILJET_", "BRIDGE_", "PROMETHEUS_", "PEER_"))}


def group_alive(pgid: int) -> bool:
    """Whether any process of the group is still there."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_http(url: str, timeout: float, server: Server | None = None) -> None:
    """Poll ``url`` until it answers at all; fail early if the server exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server is not None and not server.alive():
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode if server.proc else '?'}"
                               f" before it answered:\n{server.tail()}")
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.05)
    if server is not None:
        server.stop()
        raise RuntimeError(f"{server.name} did not answer {url} within {timeout:.0f} s:\n{server.tail()}")
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def bridge_serve(name: str, database_url: str, tmp: Path, extra: Mapping[str, str] | None = None,
                 workers: int | None = None) -> Server:
    """``mailjet-bridge serve`` as users run it, on a port of its own; started and answering. With
    ``workers``, that many web processes; else serve's default (one a core beyond the first)."""
    port = free_port()
    metrics = tmp / f"metrics-{port}"  # serve would make one in /tmp and leave it there
    metrics.mkdir()
    env = {**BRIDGE_ENV, "BRIDGE_DATABASE_URL": database_url, "BRIDGE_HOST": "127.0.0.1",
           "BRIDGE_PORT": str(port), "PROMETHEUS_MULTIPROC_DIR": str(metrics),
           **({"BRIDGE_WORKERS": str(workers)} if workers else {}), **(extra or {})}
    server = Server(name, [str(BIN / "mailjet-bridge"), "serve"], env, ROOT, tmp / f"{name}-{port}.log",
                    url=f"http://127.0.0.1:{port}")
    return server.start(f"{server.url}/healthz?scope=accept")


# -- /proc ----------------------------------------------------------------------------------------


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _stat(pid: int) -> dict[str, Any]:
    """state, ppid and pgrp of a process from /proc/<pid>/stat ({} once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return {}
    rest = text[text.rindex(")") + 2:].split()
    return {"state": rest[0], "ppid": int(rest[1]), "pgrp": int(rest[2])}


def children(pid: int) -> list[int]:
    """Every descendant of ``pid``, parents before their children."""
    by_parent: dict[int, list[int]] = {}
    for p in _pids():
        ppid = _stat(p).get("ppid")
        if ppid is not None:
            by_parent.setdefault(ppid, []).append(p)
    found, todo = [], sorted(by_parent.get(pid, []))
    while todo:
        p = todo.pop(0)
        found.append(p)
        todo.extend(sorted(by_parent.get(p, [])))
    return found


def parent(pid: int) -> int | None:
    return _stat(pid).get("ppid")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def cpu_seconds(pid: int) -> float | None:
    """User and system CPU a live process has used, in seconds (None once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2:].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def roles(root: int, database: str | None = None) -> dict[int, str]:
    """The processes one measured server runs on, by role: ``writer`` and ``delivery`` (the bridge's
    processes of those names, drain helpers with the delivery), ``server`` (everything else under
    ``root``: the supervisor, the HTTP server and its web processes) and, for ``database``,
    ``PostgreSQL``'s backends serving it."""
    found: dict[int, str] = {}
    for pid in [root, *children(root)]:
        command = cmdline(pid)
        found[pid] = ("writer" if "bridge writer" in command else
                      "delivery" if "bridge worker" in command or "bridge drain-helper" in command
                      else "server")
    if database:
        for pid in _pids():
            command = cmdline(pid)
            if command.startswith("postgres:") and f" {database} " in command:
                found[pid] = "PostgreSQL"
    return found


def rss_mb(pid: int) -> float | None:
    """VmRSS of a live process in MB (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# -- events ---------------------------------------------------------------------------------------

#: The same event as post_events.lua posts, about 400 bytes.
_TEMPLATE = {
    "event": "open", "time": 0, "MessageID": 0, "Message_GUID": "1ab23cd4-e567-8901-2345-6789f0gh1i2j",
    "email": "", "mj_campaign_id": 7173, "mj_contact_id": 320, "customcampaign": "",
    "CustomID": "helloworld", "Payload": "", "ip": "127.0.0.1", "geo": "US",
    "agent": "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0",
}


def event(n: int, seed: int = 0) -> dict[str, Any]:
    """The n-th unique event of a run (``seed`` keeps runs apart); time advances 1 s per 200 events."""
    return {**_TEMPLATE, "time": 1_700_000_000 + n // 200, "MessageID": seed * 100_000_000 + n,
            "email": f"user{n % 5000}@example.com"}


def event_text(value: Mapping[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))


# -- PostgreSQL -----------------------------------------------------------------------------------


def pg_problem() -> str | None:
    """Why the PostgreSQL server cannot be used (None when it answers)."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (the postgres extra)"
    try:
        with psycopg.connect(PG_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    return None


@contextlib.contextmanager
def pg_database(tag: str) -> Iterator[str]:
    """A fresh database ``bench_<pid>_<tag>`` on the stock server, dropped afterwards; yields its URL."""
    import psycopg

    name = f"bench_{os.getpid()}_{tag}"
    with psycopg.connect(PG_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(PG_URL)
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(PG_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Progress:
    """Progress lines with the time since the run began."""

    started: float = field(default_factory=time.monotonic)

    def __call__(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[{int(elapsed) // 60:2d}:{int(elapsed) % 60:02d}] {message}", flush=True)
