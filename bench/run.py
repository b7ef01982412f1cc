"""``make bench``: every figure of issue #11, with progress lines, a markdown table and two plots.

What it measures, all on 127.0.0.1 (docs/benchmarks.md explains each figure):

- R1/R2, the accept path over HTTP. wrk posts unique Mailjet events, 1 and 100 a body, to the bridge
  as users serve it (``mailjet-bridge serve``, SQLite, then PostgreSQL) and to the no-op Flask
  endpoint (bench/noop_app.py) under ``gunicorn -w 2``; also the no-op under granian, and the peer
  (bench/peer_app.py). Servers alternate within each round, each started fresh on a fresh database;
  the table shows medians over the rounds. The bridge's cost per body size (1, 10, 100, 500 events)
  is measured in the same rounds, and so is the CPU a request of each server's processes, by role
  (from /proc; PostgreSQL's backends for the bridge's database count as the bridge's own).
- R1 by concurrency: single-event posts with more connections than R1's 8 (16, 32, 64), the bridge
  (SQLite, then PostgreSQL) against the no-op, alternating: the no-op is bound by its CPU at any
  concurrency, while the bridge's writer shares each commit among more requests as more are in flight.
- R3, forwarder throughput: a backlog put straight into SQLite through the store, drained by
  ``mailjet-bridge worker`` into the sink (bench/sink.py, a fast stand-in for Segment), against one
  Python loop posting the same calls, already encoded as full /v1/batch bodies, to the same sink.
- R4, latency from the webhook's 200 to the sink, at a steady 500 events/s, and a sweep of offered
  loads (plot 1).
- R5, RSS of each process of ``serve`` while a large backlog drains, with a light webhook load on
  the web processes (plot 2).

Environment (defaults for the full run; BENCH_QUICK=1 is a smoke run of about 2 minutes):
BENCH_ROUNDS (3), BENCH_SECONDS (wrk seconds, 8), BENCH_CONNS (8), BENCH_BODIES ("1,10,100,500"),
BENCH_BACKLOG_R3 (200000), BENCH_BACKLOG (R5, 1000000), BENCH_R4_SECONDS (20), BENCH_SWEEP
("250,500,1000,2000,4000,8000,16000" events/s), BENCH_SWEEP_SECONDS (10), BENCH_PEER (1; 0 skips the peer),
BENCH_R5_TIMEOUT (600 s), BENCH_CONC (R1 by concurrency, "16,32,64"), BENCH_CONC_ROUNDS (2),
BENCH_PG_URL, BENCH_ONLY (a comma list of http,conns,r3,r4,r5), BENCH_PLOT_DIR
(bench/out; `make bench-docs` sets a temporary folder and copies the plots into docs/img).
Results: bench/out/results.md and results.json (not tracked).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from common import (
    AUTH,
    BIN,
    BRIDGE_ENV,
    HERE,
    PG_URL,
    ROOT,
    Progress,
    Server,
    bridge_serve,
    children,
    cmdline,
    cpu_seconds,
    event,
    event_text,
    free_port,
    parent,
    pg_database,
    pg_problem,
    roles,
    rss_mb,
    wrk,
)
from loadgen import latencies, paced_load, percentile

from bridge.config import default_web_processes
from bridge.inbound.fields import EVENT_NAME_PRESETS
from bridge.inbound.intake import new_item
from bridge.inbound.track import track_call
from bridge.storage import open_store


def _env(name: str, full: str, quick: str) -> str:
    return os.environ.get(name) or (quick if QUICK else full)


QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
ROUNDS = int(_env("BENCH_ROUNDS", "3", "1"))
SECONDS = float(_env("BENCH_SECONDS", "8", "2"))
CONNS = int(_env("BENCH_CONNS", "8", "8"))
CONC = [int(n) for n in _env("BENCH_CONC", "16,32,64", "32").split(",") if n]
CONC_ROUNDS = int(_env("BENCH_CONC_ROUNDS", "2", "1"))
BODIES = [int(n) for n in _env("BENCH_BODIES", "1,10,100,500", "1,10,100,500").split(",") if n]
BACKLOG_R3 = int(_env("BENCH_BACKLOG_R3", "200000", "20000"))
BACKLOG = int(_env("BENCH_BACKLOG", "1000000", "50000"))
R4_RATE = 500.0
R4_SECONDS = float(_env("BENCH_R4_SECONDS", "20", "5"))
SWEEP_TEXT = _env("BENCH_SWEEP", "250,500,1000,2000,4000,8000,16000", "250,500,2000")
SWEEP = sorted({float(n) for n in SWEEP_TEXT.split(",") if n} | {R4_RATE})
SWEEP_SECONDS = float(_env("BENCH_SWEEP_SECONDS", "10", "3"))
PEER = os.environ.get("BENCH_PEER", "1") != "0"
ONLY = {p for p in os.environ.get("BENCH_ONLY", "http,conns,r3,r4,r5").split(",") if p}
OUT = HERE / "out"
PLOT_DIR = Path(os.environ.get("BENCH_PLOT_DIR") or OUT)
PEER_VENV = HERE / ".peer-venv"
PEER_PACKAGES = ["flask", "gunicorn", "jsonschema", "segment-analytics-python"]
WRITE_KEY = "bench-write-key"
#: Segment's limits for one /v1/batch request (docs; tests/fakes/segment.py).
BATCH_BYTES, BATCH_CALLS = 500_000, 2_500
#: R5: the light webhook load on the web processes while the backlog drains.
R5_LOAD_RATE, R5_LOAD_BODY = 100.0, 10
GOAL_RSS_MB = 150.0

say = Progress()


def fmt(value: float, digits: int = 0) -> str:
    return "n/a" if value != value else f"{value:,.{digits}f}"


# -- the sink -------------------------------------------------------------------------------------


@dataclass
class Sink:
    """bench/sink.py in its own process, and the harness's view of it."""

    server: Server

    @property
    def url(self) -> str:
        return self.server.url

    def reset(self, record: bool = False) -> None:
        requests.post(f"{self.url}/reset?record={int(record)}", timeout=10).raise_for_status()

    def stats(self) -> dict[str, Any]:
        return requests.get(f"{self.url}/stats", timeout=10).json()  # type: ignore[no-any-return]

    def ids(self) -> dict[str, float]:
        return requests.get(f"{self.url}/ids", timeout=60).json()  # type: ignore[no-any-return]

    def wait_for(self, events: int, timeout: float, poll: float = 0.1,
                 watch: Server | None = None) -> dict[str, Any]:
        """Poll until ``events`` have arrived (or ``timeout``); the last stats. Fails at once if the
        ``watch``ed server that should send them exits."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if stats["events"] >= events or time.monotonic() >= deadline:
                return stats
            if watch is not None:
                check_alive(watch)
            time.sleep(poll)


def check_alive(server: Server) -> None:
    """Raise if ``server`` exited (another process on this machine may stop it by name)."""
    if not server.alive():
        code = server.proc.returncode if server.proc else None
        raise RuntimeError(f"{server.name} exited with code {code} before the measurement ended "
                           f"(stopped from outside?); its last lines:\n{server.tail(8)}")


@contextlib.contextmanager
def sink(tmp: Path) -> Iterator[Sink]:
    port = free_port()
    server = Server("sink", [sys.executable, str(HERE / "sink.py"), str(port)], {}, HERE,
                    tmp / "sink.log", url=f"http://127.0.0.1:{port}")
    with server.start(f"http://127.0.0.1:{port}/stats"):
        yield Sink(server)


def bridge_to_sink(the_sink: Sink) -> dict[str, str]:
    """Settings that send the bridge's events to the sink (write key checked at the sink's CDN)."""
    return {"SEGMENT_WRITE_KEY": WRITE_KEY, "SEGMENT_API_URL": the_sink.url,
            "SEGMENT_CDN_URL": the_sink.url}


# -- R1/R2: the accept path over HTTP ---------------------------------------------------------------


def peer_venv() -> tuple[Path | None, str]:
    """The peer's virtual environment, made (once) if missing: (its bin/, '') or (None, why not)."""
    stamp = PEER_VENV / ".installed"
    if stamp.exists():
        return PEER_VENV / "bin", ""
    say(f"making the peer's virtual environment ({PEER_VENV.relative_to(ROOT)}): "
        f"pip install {' '.join(PEER_PACKAGES)}")
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEER_VENV)], check=True,
                       capture_output=True, text=True, timeout=120)
        subprocess.run([str(PEER_VENV / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                        *PEER_PACKAGES], check=True, capture_output=True, text=True, timeout=600)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        lines = [line for line in str(detail).splitlines() if line.strip()
                 and not line.startswith("WARNING: Location")]
        return None, "; ".join(lines[-3:])[:400] or type(exc).__name__
    stamp.touch()
    return PEER_VENV / "bin", ""


@dataclass
class Running:
    """A server started for one measurement: where it answers, the process it runs under, and the
    PostgreSQL database it uses, if any (whose backends' CPU counts as its own)."""

    url: str
    pid: int
    database: str | None = None


@dataclass
class Target:
    """One server that wrk measures: how to start it, fresh, for one measurement."""

    name: str
    label: str
    start: Callable[[Path, str], contextlib.AbstractContextManager[Running]]
    bodies: tuple[int, ...] = (1, 100)


def listening(command: Callable[[int], list[str]], name: str, env: dict[str, str] | None = None
              ) -> Callable[[Path, str], contextlib.AbstractContextManager[Running]]:
    """Starting ``command(port)`` on a free port, ready once ``/healthz`` answers."""
    @contextlib.contextmanager
    def start(tmp: Path, tag: str) -> Iterator[Running]:
        port = free_port()
        server = Server(name, command(port), env or {}, HERE, tmp / f"{name}-{tag}.log",
                        url=f"http://127.0.0.1:{port}")
        with server.start(f"{server.url}/healthz"):
            yield Running(server.url, server.pid)
    return start


def bridge_target(database: str, workers: int | None = None,
                  ) -> Callable[[Path, str], contextlib.AbstractContextManager[Running]]:
    """Starting ``mailjet-bridge serve`` (``workers`` web processes, else its default) on a fresh
    SQLite or PostgreSQL database."""
    @contextlib.contextmanager
    def start(tmp: Path, tag: str) -> Iterator[Running]:
        if database == "sqlite":
            url = f"sqlite:///{tmp}/{tag}.db"
            with bridge_serve(f"bridge-sqlite-{tag}", url, tmp, workers=workers) as server:
                yield Running(server.url, server.pid)
        else:
            with (pg_database(tag) as url,
                  bridge_serve(f"bridge-pg-{tag}", url, tmp, workers=workers) as server):
                yield Running(server.url, server.pid, url.rsplit("/", 1)[1])
    return start


def measured(running: Running, body: int, conns: int = CONNS) -> dict[str, Any]:
    """wrk against a running server, with the CPU µs a request that each role of its processes used
    meanwhile (``common.roles``; wrk's own CPU is not counted) under ``cpu_us``."""
    before = {pid: cpu_seconds(pid) or 0.0 for pid in roles(running.pid, running.database)}
    result: dict[str, Any] = wrk(running.url, body, conns=conns, seconds=SECONDS)
    requests_done = result["rps"] * SECONDS
    used: dict[str, float] = {}
    for pid, role in roles(running.pid, running.database).items():
        now = cpu_seconds(pid)
        if now is not None:
            used[role] = used.get(role, 0.0) + now - before.get(pid, 0.0)
    result["cpu_us"] = {role: cpu / requests_done * 1e6 for role, cpu in used.items()} \
        if requests_done else {}
    return result


def targets(the_sink: Sink, pg: bool, peer_bin: Path | None) -> list[Target]:
    """The servers of one round, in the order they alternate: no-op, bridge, no-op, bridge, peer."""
    gunicorn = [str(BIN / "gunicorn"), "-w", "2", "--log-level", "warning"]
    found = [
        Target("noop-gunicorn", "no-op Flask, gunicorn -w 2",
               listening(lambda p: [*gunicorn, "-b", f"127.0.0.1:{p}", "noop_app:app"], "noop-gunicorn")),
        Target("bridge-sqlite", "bridge (serve, SQLite)", bridge_target("sqlite"), tuple(BODIES)),
        Target("noop-granian", "no-op Flask, granian --workers 2",
               listening(lambda p: [str(BIN / "granian"), "--interface", "wsgi", "--workers", "2",
                                    "--host", "127.0.0.1", "--port", str(p), "--log-level", "warning",
                                    "noop_app:app"], "noop-granian")),
    ]
    if pg:
        found.append(Target("bridge-pg", "bridge (serve, PostgreSQL)", bridge_target("pg")))
    if peer_bin is not None:
        env = {"PEER_SEGMENT_URL": the_sink.url, "PEER_AUTH": f"Basic {AUTH}",
               "PEER_SCHEMA_DIR": str(ROOT / "schemas")}
        found.append(Target("peer", "peer: Flask + jsonschema + analytics-python, gunicorn -w 2",
                            listening(lambda p: [str(peer_bin / "gunicorn"), "-w", "2", "--log-level",
                                                 "warning", "-b", f"127.0.0.1:{p}", "peer_app:app"],
                                      "peer", env)))
    return found


def accept_path(tmp: Path, the_sink: Sink, results: dict[str, Any]) -> None:
    """R1/R2 and the body-size sweep: wrk against each target, alternating, ROUNDS times."""
    problem = pg_problem()
    if problem:
        say(f"PostgreSQL at {PG_URL} does not answer ({problem}): its rows are skipped")
        results["skipped"].append(f"PostgreSQL rows: {problem}")
    peer_bin, why = peer_venv() if PEER else (None, "BENCH_PEER=0")
    if peer_bin is None:
        say(f"the peer is skipped: {why}")
        results["skipped"].append(f"peer: {why}")
    runs: dict[str, dict[str, list[dict[str, Any]]]] = results["http"]
    all_targets = targets(the_sink, problem is None, peer_bin)
    results["targets"] = {t.name: t.label for t in all_targets}
    for round_no in range(1, ROUNDS + 1):
        bodies = sorted({b for t in all_targets for b in t.bodies})
        for body in bodies:
            for target in all_targets:
                if body not in target.bodies:
                    continue
                tag = f"r{round_no}b{body}"
                if target.name == "peer":
                    the_sink.reset()
                with target.start(tmp, tag) as running:
                    result = measured(running, body)
                runs.setdefault(target.name, {}).setdefault(str(body), []).append(result)
                errors = result["errors"] + result["socket_errors"]
                extra = ""
                if target.name == "peer":
                    extra = f", sink got {the_sink.stats()['events']:,} of its events"
                cpu = result["cpu_us"]
                say(f"round {round_no}/{ROUNDS}, {body:>3}-event bodies: {target.label:<58} "
                    f"{fmt(result['rps']):>7} req/s {fmt(result['rps'] * body):>8} events/s, "
                    f"p99 {fmt(result['p99_ms'], 1)} ms"
                    + (f", CPU {fmt(sum(cpu.values()))} µs a request" if cpu else "")
                    + (f", {errors:.0f} errors" if errors else "") + extra)


def concurrency(tmp: Path, the_sink: Sink, results: dict[str, Any]) -> None:
    """R1 with more connections in flight: the no-op and the bridge (SQLite, and PostgreSQL if it
    answers), alternating, on fresh servers and databases, CONC_ROUNDS times for each level of CONC."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = results["conns"]
    chosen = [t for t in targets(the_sink, pg_problem() is None, None)
              if t.name in ("noop-gunicorn", "bridge-sqlite", "bridge-pg")]
    for round_no in range(1, CONC_ROUNDS + 1):
        for conns in CONC:
            for target in chosen:
                with target.start(tmp, f"c{conns}r{round_no}") as running:
                    result = measured(running, 1, conns)
                runs.setdefault(target.name, {}).setdefault(str(conns), []).append(result)
                errors = result["errors"] + result["socket_errors"]
                say(f"R1 by concurrency, round {round_no}/{CONC_ROUNDS}, {conns:>3} connections: "
                    f"{target.label:<34} {fmt(result['rps']):>7} req/s, p99 "
                    f"{fmt(result['p99_ms'], 1)} ms, CPU {fmt(sum(result['cpu_us'].values()))} µs a "
                    f"request" + (f", {errors:.0f} errors" if errors else ""))


def median_rps(results: dict[str, Any], target: str, body: int) -> float:
    runs = results["http"].get(target, {}).get(str(body), [])
    return statistics.median(r["rps"] for r in runs) if runs else float("nan")


def by_concurrency(results: dict[str, Any], target: str = "bridge-sqlite") -> list[tuple[int, float, float]]:
    """(connections, the bridge's median req/s, the no-op's) for each level measured by both."""
    runs = results.get("conns", {})
    bridge, noop = runs.get(target, {}), runs.get("noop-gunicorn", {})
    return [(int(conns), statistics.median(r["rps"] for r in bridge[conns]),
             statistics.median(r["rps"] for r in noop[conns]))
            for conns in sorted(bridge.keys() & noop.keys(), key=int)]


# -- backlogs -------------------------------------------------------------------------------------


def fill(url: str, count: int, seed: int, chunk: int = 5_000) -> float:
    """Put ``count`` events straight into the store, as the webhook would; returns seconds taken."""
    store = open_store(url)
    store.migrate()
    started = time.monotonic()
    shown = 0
    try:
        for first in range(0, count, chunk):
            items = []
            for n in range(first, min(count, first + chunk)):
                value = event(n, seed)
                items.append(new_item(value, event_text(value)))
            store.accept(items, [], time.time())
            if first + chunk - shown >= max(count // 5, chunk) or first + chunk >= count:
                shown = min(count, first + chunk)
                say(f"  backlog: {shown:,} of {count:,} events stored")
    finally:
        store.close()
    return time.monotonic() - started


def batch_bodies(count: int, seed: int) -> list[bytes]:
    """The calls the bridge would send for the backlog, as full /v1/batch bodies within Segment's
    limits (500 KB, 2,500 calls), made before the clock starts."""
    names = EVENT_NAME_PRESETS["mailjet"]
    bodies: list[bytes] = []
    current: list[bytes] = []
    size = 64
    sent_at = b'],"sentAt":"2026-01-01T00:00:00.000Z"}'
    for n in range(count):
        value = event(n, seed)
        call = json.dumps(track_call(value, event_names=names), ensure_ascii=False,
                          separators=(",", ":"), allow_nan=False).encode()
        if current and (size + len(call) + 1 > BATCH_BYTES or len(current) >= BATCH_CALLS):
            bodies.append(b'{"batch":[' + b",".join(current) + sent_at)
            current, size = [], 64
        current.append(call)
        size += len(call) + 1
    if current:
        bodies.append(b'{"batch":[' + b",".join(current) + sent_at)
    return bodies


def backlog(tmp: Path, figure: str, count: int, the_sink: Sink) -> str:
    """A fresh SQLite database holding ``count`` queued events, and a sink with nothing counted yet."""
    url = f"sqlite:///{tmp}/{figure.lower()}.db"
    say(f"{figure}: filling a backlog of {count:,} events through the store")
    fill(url, count, seed=int(figure[1:]))
    the_sink.reset()
    return url


def forwarder(tmp: Path, the_sink: Sink, results: dict[str, Any]) -> None:
    """R3: ``mailjet-bridge worker`` draining a backlog vs a bare requests loop, into the same sink."""
    url = backlog(tmp, "R3", BACKLOG_R3, the_sink)
    env = {**BRIDGE_ENV, "BRIDGE_DATABASE_URL": url, **bridge_to_sink(the_sink)}
    say("R3: mailjet-bridge worker drains it into the sink")
    timeout = max(120.0, BACKLOG_R3 / 500)
    command = [str(BIN / "mailjet-bridge"), "worker"]
    with Server("worker", command, env, ROOT, tmp / "r3-worker.log") as worker:
        started_wall, started = time.time(), time.monotonic()
        worker.start()
        stats = the_sink.wait_for(BACKLOG_R3, timeout, 0.05, watch=worker)
        took = time.monotonic() - started
    if stats["events"] < BACKLOG_R3:
        raise RuntimeError(f"R3: the sink got {stats['events']:,} of {BACKLOG_R3:,} events in "
                           f"{timeout:.0f} s:\n{worker.tail()}")
    worker_rate = BACKLOG_R3 / took
    first_batch = (stats["first"] or started_wall) - started_wall
    say(f"R3: worker delivered {BACKLOG_R3:,} events in {took:.1f} s = {worker_rate:,.0f} events/s "
        f"(first batch after {first_batch:.1f} s; {stats['batches']:,} batches)")
    say("R3: encoding the same events as /v1/batch bodies for the bare loop")
    bodies = batch_bodies(BACKLOG_R3, seed=3)
    the_sink.reset()
    key = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    headers = {"Content-Type": "application/json", "Authorization": f"Basic {key}"}
    with requests.Session() as session:
        started = time.monotonic()
        for body in bodies:
            answer = session.post(f"{the_sink.url}/v1/batch", data=body, headers=headers, timeout=30)
            answer.raise_for_status()
        bare = time.monotonic() - started
    got = the_sink.stats()["events"]
    bare_rate = got / bare
    say(f"R3: bare requests loop posted {got:,} events in {len(bodies):,} bodies in {bare:.2f} s "
        f"= {bare_rate:,.0f} events/s")
    results["r3"] = {"events": BACKLOG_R3, "worker_seconds": took, "worker_rate": worker_rate,
                     "first_batch_seconds": first_batch, "worker_batches": stats["batches"],
                     "bare_seconds": bare, "bare_rate": bare_rate, "bare_bodies": len(bodies),
                     "ratio": worker_rate / bare_rate}


# -- R4: latency under a steady load ----------------------------------------------------------------


def latency(tmp: Path, the_sink: Sink, results: dict[str, Any]) -> None:
    """R4 and plot 1: for each offered load, a fresh ``serve`` sending to the sink; 200 -> sink."""
    points = []
    for index, rate in enumerate(SWEEP):
        seconds = R4_SECONDS if rate == R4_RATE else SWEEP_SECONDS
        the_sink.reset(record=True)
        with bridge_serve(f"serve-r4-{rate:.0f}", f"sqlite:///{tmp}/r4-{rate:.0f}.db", tmp,
                          bridge_to_sink(the_sink)) as server:
            load = paced_load(server.url, rate, seconds, seed=40 + index)
            check_alive(server)
            stats = the_sink.wait_for(load.accepted, 30.0, 0.2, watch=server)
            arrived = the_sink.ids()
        waits = latencies(load, arrived)
        delivered = sum(1 for w in waits if w != float("inf"))
        times = [arrived[m] for m in load.answered if m in arrived]
        # from the first arrival to the last (a steady lag shifts both ends alike), but never less
        # than the load lasted: arrivals come in batches, so their span alone is off by a batch
        span = max(times) - min(times) if len(times) > 1 else 0.0
        span = max(span, load.ended - load.started)
        point = {"offered": rate, "seconds": seconds, "per_body": load.per_body,
                 "achieved": load.achieved, "accepted": load.accepted, "failed": load.failed,
                 "delivered": delivered, "delivered_rate": delivered / max(span, 1e-9),
                 "p50": percentile(waits, 50), "p99": percentile(waits, 99), "max": max(waits, default=0.0),
                 "sink_events": stats["events"]}
        points.append(point)
        say(f"R4: offered {rate:,.0f} events/s ({load.per_body} a body) for {seconds:.0f} s: accepted "
            f"{point['achieved']:,.0f}/s ({load.failed:,} failed), delivered {delivered:,} of "
            f"{load.accepted:,}; "
            f"200 -> sink p50 {point['p50']:.3f} s, p99 {point['p99']:.3f} s, max {point['max']:.3f} s")
    results["r4"] = points


# -- R5: memory while a backlog drains --------------------------------------------------------------


@dataclass
class Tree:
    """The processes of one ``serve``, each with a stable label."""

    root: int
    labels: dict[int, str] = field(default_factory=dict)
    webs: int = 0

    def sample(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for pid in [self.root, *children(self.root)]:
            label = self.labels.get(pid) or self._label(pid)
            rss = rss_mb(pid)
            if rss is not None:
                found[label] = rss
        return found

    def _label(self, pid: int) -> str:
        if pid == self.root:
            label = "serve (supervisor)"
        elif "bridge worker" in cmdline(pid):
            label = "delivery" if "delivery" not in self.labels.values() else f"delivery (pid {pid})"
        elif "bridge drain-helper" in cmdline(pid):
            label = f"drain helper (pid {pid})"
        elif "bridge writer" in cmdline(pid):
            label = "writer" if "writer" not in self.labels.values() else f"writer (pid {pid})"
        elif "resource_tracker" in cmdline(pid):
            label = "resource tracker"  # multiprocessing's, beside uvicorn's spawned web processes
        elif parent(pid) == self.root:
            label = "uvicorn main"
        else:
            self.webs += 1
            label = f"web {self.webs}"
        self.labels[pid] = label
        return label


def memory(tmp: Path, the_sink: Sink, results: dict[str, Any]) -> None:
    """R5 and plot 2: RSS of each process every second while BACKLOG events drain through serve."""
    url = backlog(tmp, "R5", BACKLOG, the_sink)
    timeout = float(os.environ.get("BENCH_R5_TIMEOUT", "600"))
    samples: list[dict[str, Any]] = []
    say(f"R5: mailjet-bridge serve drains it, with {R5_LOAD_RATE:.0f} events/s posted meanwhile; "
        "RSS sampled every second")
    with bridge_serve("serve-r5", url, tmp, bridge_to_sink(the_sink)) as server:
        tree = Tree(server.pid)
        stop = threading.Event()
        holder: dict[str, Any] = {}
        loader = threading.Thread(target=lambda: holder.update(load=paced_load(
            server.url, R5_LOAD_RATE, timeout, seed=50, per_body=R5_LOAD_BODY, threads=2, stop=stop)),
            daemon=True)
        started = time.monotonic()
        loader.start()
        shown = started
        drained_backlog = False
        while True:
            if not server.alive():
                stop.set()
                check_alive(server)
            now = time.monotonic()
            stats = the_sink.stats()
            rss = tree.sample()
            samples.append({"t": now - started, "rss": rss, "delivered": stats["events"]})
            if now - shown >= 15:
                shown = now
                biggest = ", ".join(f"{k} {v:.0f}" for k, v in sorted(rss.items()))
                say(f"R5: {now - started:5.0f} s, {stats['events']:,} of {BACKLOG:,} delivered; "
                    f"RSS MB: {biggest}")
            if not drained_backlog and stats["events"] >= BACKLOG:
                drained_backlog = True
                stop.set()
                loader.join(60)
            if drained_backlog:
                load = holder.get("load")
                if load is None or stats["events"] >= BACKLOG + load.accepted:
                    break
            if now - started > timeout:
                stop.set()
                loader.join(60)
                say(f"R5: stopped after {timeout:.0f} s (BENCH_R5_TIMEOUT) with {stats['events']:,} "
                    "delivered")
                break
            time.sleep(max(0.0, started + len(samples) - time.monotonic()))
        took = time.monotonic() - started
    load = holder.get("load")
    posted = load.accepted if load else 0
    for sample in samples:  # what is left: the backlog and the load's accepted events, less delivered
        sample["remaining"] = max(0, BACKLOG + posted - sample["delivered"])
    labels = sorted({label for s in samples for label in s["rss"]})
    summary = {}
    for label in labels:
        series = [s["rss"][label] for s in samples if label in s["rss"]]
        half = len(series) // 2
        early, late = max(series[2:half] or series[:1]), max(series[half:] or series[-1:])
        summary[label] = {"max": max(series), "early": early, "late": late, "growth": late - early}
    delivered = samples[-1]["delivered"] if samples else 0
    results["r5"] = {"backlog": BACKLOG, "posted": posted, "seconds": took, "delivered": delivered,
                     "rate": delivered / took, "processes": summary, "samples": samples}
    say(f"R5: {delivered:,} events delivered in {took:.0f} s ({delivered / took:,.0f}/s); max RSS MB: "
        + ", ".join(f"{k} {v['max']:.0f}" for k, v in summary.items()))


def flat(proc: dict[str, float]) -> bool:
    """No growth from the first half of the drain to the second beyond 10 MB or 10 %."""
    return proc["growth"] <= max(10.0, 0.1 * proc["early"])


# -- the table and the plots ----------------------------------------------------------------------


def met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")


def table(results: dict[str, Any]) -> list[str]:
    """figure | now | goal | met?"""
    rows: list[tuple[str, str, str, bool | None]] = []
    http = results["http"]

    def rps(target: str, body: int) -> float:
        return median_rps(results, target, body)

    if "bridge-sqlite" in http:
        # the goals: R1 ≥ 1.0x on SQLite, ≥ 0.5x on PostgreSQL; R2 ≥ 0.3x on both
        for store, target, r1_goal in (("SQLite", "bridge-sqlite", 1.0), ("PostgreSQL", "bridge-pg", 0.5)):
            if target not in http:
                continue
            b1, n1 = rps(target, 1), rps("noop-gunicorn", 1)
            b100, n100 = rps(target, 100), rps("noop-gunicorn", 100)
            rows.append((f"R1 single-event posts, bridge ({store}) ÷ no-op (gunicorn -w 2), req/s",
                         f"{b1 / n1:.2f}x ({fmt(b1)} / {fmt(n1)})", f"≥ {r1_goal:.1f}x",
                         b1 / n1 >= r1_goal))
            rows.append((f"R2 100-event posts, bridge ({store}) events/s ÷ (no-op req/s x 100)",
                         f"{b100 / n100:.2f}x ({fmt(b100 * 100)} / {fmt(n100 * 100)})", "≥ 0.3x",
                         b100 / n100 >= 0.3))
    for target, store in (("bridge-sqlite", "SQLite"), ("bridge-pg", "PostgreSQL")):
        for conns, bridge, noop in by_concurrency(results, target):
            rows.append((f"reference: R1 at {conns} connections (R1 itself: {CONNS}), bridge ({store}) "
                         "÷ no-op, req/s", f"{bridge / noop:.2f}x ({fmt(bridge)} / {fmt(noop)})", "—", None))
    if "r3" in results:
        r3 = results["r3"]
        rows.append((f"R3 forwarder, worker ÷ bare requests loop, events/s ({r3['events']:,} backlog)",
                     f"{r3['ratio']:.2f}x ({fmt(r3['worker_rate'])} / {fmt(r3['bare_rate'])})", "≥ 0.7x",
                     r3["ratio"] >= 0.7))
    if "r4" in results:
        point = next((p for p in results["r4"] if p["offered"] == R4_RATE), None)
        if point:
            rows.append((f"R4 p99 webhook 200 → sink at {R4_RATE:.0f} events/s",
                         f"{point['p99']:.3f} s (p50 {point['p50']:.3f} s)", "< 1 s", point["p99"] < 1.0))
    if "r5" in results:
        r5 = results["r5"]
        procs = r5["processes"]
        webs = {k: v for k, v in procs.items() if k.startswith("web ")}
        delivery = {k: v for k, v in procs.items() if k.startswith("delivery")}
        writer = {k: v for k, v in procs.items() if k.startswith("writer")}
        helpers = {k: v for k, v in procs.items() if k.startswith("drain helper")}
        for name, group in (("web process", webs), ("delivery process", delivery),
                            ("drain helper", helpers), ("writer process", writer)):
            if not group:
                continue
            top = max(group.values(), key=lambda p: p["max"])
            ok = all(p["max"] < GOAL_RSS_MB and flat(p) for p in group.values())
            growth = max(p["growth"] for p in group.values())
            rows.append((f"R5 max RSS, {name} ({len(group)}), draining {r5['backlog']:,} events",
                         f"{top['max']:.0f} MB (growth {growth:+.0f} MB)", f"< {GOAL_RSS_MB:.0f} MB, flat",
                         ok))
    if "peer" in http and "bridge-sqlite" in http:
        for body, goal in ((1, 4.0), (100, 50.0)):
            b, p = rps("bridge-sqlite", body), rps("peer", body)
            rows.append((f"bridge (SQLite) ÷ peer, {body}-event posts, req/s",
                         f"{b / p:.1f}x ({fmt(b)} / {fmt(p, 1)})", f"≥ {goal:g}x", b / p >= goal))
    if "noop-granian" in http and "bridge-sqlite" in http:
        for body in (1, 100):
            b, n = rps("bridge-sqlite", body), rps("noop-granian", body)
            rows.append((f"reference: bridge (SQLite) ÷ no-op under granian --workers 2, {body}-event posts",
                         f"{b / n:.2f}x ({fmt(b)} / {fmt(n)})", "—", None))
    lines = ["| figure | now | goal | met? |", "|---|---|---|---|"]
    lines += [f"| {name} | {now} | {goal} | {met(ok)} |" for name, now, goal, ok in rows]
    return lines


CPU_ROLES = ("server", "writer", "delivery", "PostgreSQL")


def cpu_table(results: dict[str, Any]) -> list[str]:
    """CPU a request by process role, medians over the rounds: where R1's and R2's time goes."""
    lines = ["", "CPU a request, by process (µs; medians of the rounds, from /proc; wrk's own not "
             "counted; \"server\" is everything but the bridge's writer and delivery processes):", "",
             "| server | body | " + " | ".join(CPU_ROLES) + " | all | all, per event |",
             "|---|---|" + "---|" * (len(CPU_ROLES) + 2)]
    for target, label in results.get("targets", {}).items():
        for body, runs in sorted(results["http"].get(target, {}).items(), key=lambda kv: int(kv[0])):
            cpus = [r["cpu_us"] for r in runs if r.get("cpu_us")]
            if not cpus:
                continue
            cells = [fmt(statistics.median(c.get(role, 0.0) for c in cpus), 1)
                     if any(role in c for c in cpus) else "—" for role in CPU_ROLES]
            total = statistics.median(sum(c.values()) for c in cpus)
            lines.append(f"| {label} | {body} | {' | '.join(cells)} | {fmt(total, 1)} | "
                         f"{fmt(total / int(body), 1)} |")
    return lines


def detail_tables(results: dict[str, Any]) -> list[str]:
    """Medians per server and body, the bridge's cost per body size, and the latency sweep."""
    lines: list[str] = []
    http = results["http"]
    if http:
        lines += ["", f"wrk -t1 -c{CONNS} -d{SECONDS:g}s, medians of {ROUNDS} round(s) (range in brackets):",
                  "",
                  "| server | body | req/s | events/s | p99 ms | errors |", "|---|---|---|---|---|---|"]
        for target, label in results.get("targets", {}).items():
            for body, runs in sorted(http.get(target, {}).items(), key=lambda kv: int(kv[0])):
                values = [r["rps"] for r in runs]
                spread = f" [{fmt(min(values))}-{fmt(max(values))}]" if len(values) > 1 else ""
                errors = sum(r["errors"] + r["socket_errors"] for r in runs)
                lines.append(f"| {label} | {body} | {fmt(statistics.median(values))}{spread} | "
                             f"{fmt(statistics.median(values) * int(body))} | "
                             f"{fmt(statistics.median(r['p99_ms'] for r in runs), 1)} | {errors:.0f} |")
        lines += cpu_table(results)
        sizes = sorted(int(b) for b in http.get("bridge-sqlite", {}))
        if sizes:
            one = median_rps(results, "bridge-sqlite", sizes[0]) * sizes[0]
            lines += ["", "The bridge's cost per body size (serve, SQLite):", "",
                      "| events a body | req/s | events/s | µs per event | events/s vs 1-event bodies |",
                      "|---|---|---|---|---|"]
            for size in sizes:
                r = median_rps(results, "bridge-sqlite", size)
                lines.append(f"| {size} | {fmt(r)} | {fmt(r * size)} | {fmt(1e6 / (r * size), 1)} | "
                             f"{r * size / one:.1f}x |")
    if results.get("conns"):
        lines += ["", f"R1 by concurrency: single-event posts, wrk -t1 -c<connections> -d{SECONDS:g}s, "
                  f"medians of {CONC_ROUNDS} round(s):", "",
                  "| connections | server | req/s | p99 ms | CPU µs a request | bridge ÷ no-op |",
                  "|---|---|---|---|---|---|"]
        ratios = {(target, conns): bridge / noop for target in ("bridge-sqlite", "bridge-pg")
                  for conns, bridge, noop in by_concurrency(results, target)}
        for conns in sorted({int(c) for runs in results["conns"].values() for c in runs}):
            for target, label in (("noop-gunicorn", "no-op, gunicorn -w 2"),
                                  ("bridge-sqlite", "bridge (serve, SQLite)"),
                                  ("bridge-pg", "bridge (serve, PostgreSQL)")):
                runs = results["conns"].get(target, {}).get(str(conns), [])
                if not runs:
                    continue
                ratio = f"{ratios[target, conns]:.2f}x" if (target, conns) in ratios else ""
                lines.append(f"| {conns} | {label} | {fmt(statistics.median(r['rps'] for r in runs))} | "
                             f"{fmt(statistics.median(r['p99_ms'] for r in runs), 1)} | "
                             f"{fmt(statistics.median(sum(r['cpu_us'].values()) for r in runs))} | {ratio} |")
    if "r4" in results:
        lines += ["", "Offered load against serve, forwarding to the sink (plot 1):", "",
                  "| offered events/s | events a body | accepted events/s | delivered events/s | "
                  "p50 s | p99 s | max s |", "|---|---|---|---|---|---|---|"]
        for p in results["r4"]:
            lines.append(f"| {fmt(p['offered'])} | {p['per_body']} | {fmt(p['achieved'])} | "
                         f"{fmt(p['delivered_rate'])} | {p['p50']:.3f} | {p['p99']:.3f} | {p['max']:.3f} |")
    if "r5" in results:
        r5 = results["r5"]
        lines += ["", f"RSS while {r5['backlog']:,} events drain ({fmt(r5['rate'])} events/s, "
                  f"{r5['seconds']:.0f} s, {r5['posted']:,} posted meanwhile) (plot 2):", "",
                  "| process | max MB | first half max | second half max |", "|---|---|---|---|"]
        for label, p in r5["processes"].items():
            lines.append(f"| {label} | {p['max']:.0f} | {p['early']:.0f} | {p['late']:.0f} |")
    return lines


def plots(results: dict[str, Any]) -> list[Path]:
    """bench-throughput.png and bench-rss.png in PLOT_DIR (bench/out; make bench-docs: its own folder)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import ticker
    except ImportError:
        say("matplotlib is not installed (pip install -e '.[bench]'): no plots")
        return []
    PLOT_DIR.mkdir(parents=True, exist_ok=True)
    written = []
    if results.get("r4"):
        points = results["r4"]
        offered = [p["offered"] for p in points]
        fig, left = plt.subplots(figsize=(8, 4.5))
        left.plot(offered, offered, ":", color="grey", label="offered")
        left.plot(offered, [p["achieved"] for p in points], "o-", label="accepted (200)")
        left.plot(offered, [p["delivered_rate"] for p in points], "s-", label="delivered to the sink")
        left.set_xscale("log")
        left.set_yscale("log")
        left.set_xticks(offered, [f"{x:,.0f}" for x in offered])
        left.xaxis.set_minor_formatter(ticker.NullFormatter())
        left.set_yticks(offered, [f"{y:,.0f}" for y in offered])
        left.yaxis.set_minor_formatter(ticker.NullFormatter())
        left.grid(True, which="major", alpha=0.3)
        left.set_xlabel("offered load, events/s")
        left.set_ylabel("events/s")
        right = left.twinx()
        right.plot(offered, [min(p["p99"], 60.0) for p in points], "^--", color="tab:red",
                   label="p99 200 → sink (s)")
        right.axhline(1.0, color="tab:red", linewidth=0.8, alpha=0.5)
        right.set_ylabel("p99 latency, s (goal < 1 s)")
        right.set_ylim(bottom=0)
        handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
        left.legend(handles, [str(h.get_label()) for h in handles], loc="upper left", fontsize="small")
        web = default_web_processes()  # what serve starts here (bridge_serve sets no BRIDGE_WORKERS)
        left.set_title(f"mailjet-bridge serve (SQLite, {web} web process{'es' if web > 1 else ''}) "
                       "forwarding to a local sink")
        fig.tight_layout()
        path = PLOT_DIR / "bench-throughput.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    if results.get("r5"):
        r5 = results["r5"]
        samples = r5["samples"]
        fig, left = plt.subplots(figsize=(8, 4.5))
        for label in r5["processes"]:
            series = [(s["t"], s["rss"][label]) for s in samples if label in s["rss"]]
            left.plot([t for t, _ in series], [v for _, v in series], label=label)
        left.axhline(GOAL_RSS_MB, color="tab:red", linewidth=0.8, alpha=0.5)
        left.set_xlabel("seconds since serve started")
        left.set_ylabel(f"RSS, MB (goal < {GOAL_RSS_MB:.0f})")
        left.set_ylim(bottom=0)
        right = left.twinx()
        right.plot([s["t"] for s in samples], [s["remaining"] for s in samples], "k--",
                   label="events remaining")
        right.set_ylabel("events remaining")
        right.set_ylim(bottom=0)
        right.yaxis.set_major_formatter(ticker.FuncFormatter(lambda y, _: f"{y:,.0f}"))
        handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
        left.legend(handles, [str(h.get_label()) for h in handles], loc="upper right", fontsize="small")
        left.set_title(f"RSS while {r5['backlog']:,} events drain to a local sink")
        fig.tight_layout()
        path = PLOT_DIR / "bench-rss.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main() -> None:
    if "http" in ONLY and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk (make bench installs it)")

    def on_term(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt  # the with-blocks stop every server on the way out

    signal.signal(signal.SIGTERM, on_term)
    say(f"make bench{' (BENCH_QUICK)' if QUICK else ''}: {ROUNDS} round(s) of {SECONDS:g} s wrk runs, "
        f"R3 backlog {BACKLOG_R3:,}, R5 backlog {BACKLOG:,}, "
        f"sweep {', '.join(f'{r:g}' for r in SWEEP)} events/s")
    results: dict[str, Any] = {"http": {}, "conns": {}, "skipped": [], "quick": QUICK,
                               "date": time.strftime("%Y-%m-%d %H:%M"), "cores": os.cpu_count()}
    phases = {"http": accept_path, "conns": concurrency, "r3": forwarder, "r4": latency, "r5": memory}
    timings: dict[str, float] = {}
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as name:
        tmp = Path(name)
        with sink(tmp) as the_sink:
            for phase, run in phases.items():
                if phase not in ONLY:
                    continue
                started = time.monotonic()
                try:
                    run(tmp, the_sink, results)
                except (RuntimeError, OSError, subprocess.SubprocessError, requests.RequestException) as exc:
                    say(f"{phase} FAILED: {exc}")
                    failed.append(f"{phase}: {str(exc).splitlines()[0]}")
                timings[phase] = time.monotonic() - started
    lines = [f"make bench, {results['date']}, {results['cores']} cores"
             f"{' (BENCH_QUICK=1: a smoke run, not figures)' if QUICK else ''}", "", *table(results),
             *detail_tables(results)]
    if results["skipped"]:
        lines += ["", *(f"Skipped: {s}" for s in results["skipped"])]
    if failed:
        lines += ["", *(f"FAILED: {f}" for f in failed)]
    OUT.mkdir(exist_ok=True)
    (OUT / "results.md").write_text("\n".join(lines) + "\n")
    (OUT / "results.json").write_text(json.dumps({**results, "timings": timings}, indent=1, default=str))
    written = plots(results)
    print()
    print("\n".join(lines))
    print()
    total = time.monotonic() - say.started
    say(f"done in {total / 60:.1f} min (" + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
        + f"); {(OUT / 'results.md').relative_to(ROOT)}"
        + "".join(f", {p.relative_to(ROOT) if p.is_relative_to(ROOT) else p}" for p in written))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted: every process the benchmark started has been stopped", file=sys.stderr)
        sys.exit(130)
