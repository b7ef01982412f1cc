"""No event lost: faults with real processes, on SQLite and on PostgreSQL.

Each test runs the production shape (``gunicorn wsgi:app`` for the web, ``mailjet-bridge worker`` for
delivery, or ``mailjet-bridge serve`` for both) against the fake Segment, while a Mailjet-like sender
posts grouped bodies and retries anything but a 200, as Mailjet does. Faults are injected, then the
Snowplow-style equality is asserted once the queue drains:

- every event answered 200 is delivered or dead-lettered (0 missing);
- the distinct messageIds Segment received are exactly the ones accepted;
- duplicates Segment received stay bounded, and each carried the same messageId.

Each test prints one row of the fault table (run with ``-s`` to see them).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.delivery.pacing import status_key
from bridge.inbound.track import dedupe_key, message_id
from bridge.storage import open_store
from tests.fakes.segment import FakeSegment, Scripted
from tests.processes import BIN, Process, free_port, poll, spawn

AUTH = ("mailjet", "fault-pass")
BODIES, PER_BODY = 30, 20  # 600 events a run


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return request.getfixturevalue("pg_url")
    return f"sqlite:///{tmp_path / 'faults.db'}"


def bridge_env(database: str, segment_url: str, **extra: str) -> dict[str, str]:
    return {"BRIDGE_DATABASE_URL": database, "SEGMENT_WRITE_KEY": "good-key",
            "SEGMENT_API_URL": segment_url, "SEGMENT_CDN_URL": segment_url,
            "SEGMENT_WEBHOOK_TOKEN": "fault-token",
            "BRIDGE_WEBHOOK_USERNAME": AUTH[0],
            "BRIDGE_WEBHOOK_PASSWORD": AUTH[1], "BRIDGE_ADMIN_PASSWORD": "fault-admin-pass",
            "BRIDGE_LEASE_SECONDS": "5", "BRIDGE_HTTP_TIMEOUT": "2", **extra}


@dataclass
class Bridge:
    """The web (gunicorn) and the worker as separate processes, each killable and restartable."""

    env: dict[str, str]
    port: int = field(default_factory=free_port)
    web: Process | None = None
    worker: Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_web(self, wait: bool = True) -> None:
        self.web = spawn([str(BIN / "gunicorn"), "-w", "2", "-b", f"127.0.0.1:{self.port}",
                          "--log-level", "warning", "wsgi:app"], self.env)
        if wait:
            poll(self._answers, 30, "the web process")

    def start_worker(self, wait: bool = True) -> None:
        worker = self.worker = spawn([str(BIN / "mailjet-bridge"), "worker"], self.env)
        if wait:
            poll(lambda: any("segment loop" in line and "started" in line for line in worker.lines)
                 or worker.proc.poll() is not None, 30, "the worker")
            assert worker.proc.poll() is None, worker.output()

    def _answers(self) -> bool:
        try:
            return requests.get(f"{self.url}/healthz?scope=accept", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def kill(self, which: str) -> None:
        process = getattr(self, which)
        if process is not None and process.proc.poll() is None:
            os.killpg(process.proc.pid, signal.SIGKILL)
            process.wait(10)

    def stop(self) -> None:
        for which in ("web", "worker"):
            process = getattr(self, which)
            if process is not None and process.proc.poll() is None:
                process.stop(signal.SIGTERM, 15)


@pytest.fixture
def bridges() -> Iterator[list[Bridge]]:
    made: list[Bridge] = []
    yield made
    for bridge in made:
        bridge.stop()


@pytest.fixture
def launch(bridges: list[Bridge]) -> Callable[..., Bridge]:
    """Start a bridge (web, and the worker unless ``worker=False``) on a database and a Segment URL."""

    def start(database: str, segment_url: str, *, worker: bool = True, **extra: str) -> Bridge:
        bridge = Bridge(bridge_env(database, segment_url, **extra))
        bridges.append(bridge)
        bridge.start_web()
        if worker:
            bridge.start_worker()
        return bridge

    return start


def make_events(n_bodies: int = BODIES, per_body: int = PER_BODY) -> list[list[dict[str, Any]]]:
    seed = random.randrange(10**9)
    return [[{"event": "open", "time": 1_800_000_000 + b, "MessageID": seed * 10**6 + b * 1000 + i,
              "email": f"r{b}-{i}@example.com", "ip": "127.0.0.1"} for i in range(per_body)]
            for b in range(n_bodies)]


@dataclass
class Sender:
    """Posts like Mailjet: every body until it gets a 200, retrying everything else."""

    urls: Callable[[], list[str]]
    acked: set[str] = field(default_factory=set)
    statuses: dict[str, int] = field(default_factory=dict)
    pause: float = 0.05

    def _count(self, what: str) -> None:
        self.statuses[what] = self.statuses.get(what, 0) + 1

    def send(self, bodies: list[list[dict[str, Any]]], deadline: float = 120.0) -> None:
        stop_at = time.monotonic() + deadline
        for n, body in enumerate(bodies):
            while True:
                urls = self.urls()
                url = urls[n % len(urls)]
                try:
                    response = requests.post(f"{url}/webhooks/mailjet", json=body, auth=AUTH, timeout=5)
                    self._count(str(response.status_code))
                    if response.status_code == 200:
                        self.acked.update(message_id(dedupe_key(e)) for e in body)
                        break
                except requests.RequestException:
                    self._count("no answer")
                if time.monotonic() > stop_at:
                    raise AssertionError(f"the bridge never accepted body {n}: {self.statuses}")
                time.sleep(0.2)
            time.sleep(self.pause)

    def start(self, bodies: list[list[dict[str, Any]]]) -> threading.Thread:
        thread = threading.Thread(target=self.send, args=(bodies,), daemon=True)
        thread.start()
        return thread


def segment_state(database: str) -> dict[str, Any]:
    """The forwarder's stored delivery state, as /healthz reads it."""
    store = open_store(database)
    try:
        return json.loads(store.get_setting(status_key("segment")) or "{}")
    finally:
        store.close()


def dead_message_ids(database: str) -> set[str]:
    store = open_store(database)
    try:
        return {message_id(dedupe_key(json.loads(row["payload"]))) for row in store.dead_letters(100_000)}
    finally:
        store.close()


def settle(name: str, sender: Sender, fake: FakeSegment, database: str, started: float,
           timeout: float = 90) -> dict[str, Any]:
    """Wait until every acknowledged event is delivered or dead, then assert the equality."""
    def missing() -> set[str]:
        return sender.acked - set(fake.message_ids()) - dead_message_ids(database)

    deadline = time.monotonic() + timeout
    while missing() and time.monotonic() < deadline:
        time.sleep(0.25)
    received = fake.message_ids()
    report = {
        "fault": name, "backend": database.split(":", 1)[0], "accepted": len(sender.acked),
        "delivered": len(set(received) & sender.acked), "dead": len(dead_message_ids(database)),
        "duplicates_sent": len(received) - len(set(received)), "missing": len(missing()),
        "drain_seconds": round(time.monotonic() - started, 1), "sender_saw": dict(sender.statuses),
    }
    print("\nFAULT-TABLE " + json.dumps(report))
    assert report["missing"] == 0, report
    assert set(received) <= sender.acked, "Segment got an event the bridge never acknowledged"
    assert report["delivered"] + report["dead"] == report["accepted"]
    assert report["duplicates_sent"] <= report["accepted"], report
    return report


def test_kill_9_of_web_and_worker_during_load(database: str, fake_segment: FakeSegment,
                                              launch: Callable[..., Bridge]) -> None:
    bridge = launch(database, fake_segment.url)
    sender = Sender(lambda: [bridge.url])
    started = time.monotonic()
    load = sender.start(make_events())
    rng = random.Random()
    for which in ("web", "worker", "web", "worker"):
        time.sleep(rng.uniform(0.2, 0.6))
        bridge.kill(which)
        (bridge.start_web if which == "web" else bridge.start_worker)()
    load.join(120)
    report = settle("kill -9 web and worker (2 each)", sender, fake_segment, database, started)
    assert report["accepted"] == BODIES * PER_BODY


def leased_ranges(database: str) -> int:
    store = open_store(database)
    try:
        return store._rows(  # type: ignore[attr-defined]
            "SELECT COUNT(*) FROM delivery_ranges WHERE state = 'leased'")[0][0]
    finally:
        store.close()


def test_kill_9_of_the_worker_in_the_middle_of_a_range(database: str, fake_segment: FakeSegment,
                                                       launch: Callable[..., Bridge]) -> None:
    """A backlog is drained by ranges (the rounds made ahead, docs/range-delivery.md). The worker is
    SIGKILLed while a range is leased, its batches perhaps posted but not recorded: the next worker
    takes the range back once its lease ends, and every event is delivered."""
    bridge = launch(database, fake_segment.url, worker=False)
    sender = Sender(lambda: [bridge.url], pause=0.0)
    started = time.monotonic()
    sender.send(make_events(n_bodies=30, per_body=200))  # 6,000 events waiting for a worker
    fake_segment.then(*[Scripted(200, delay=0.2)] * 10)
    bridge.start_worker()
    poll(lambda: leased_ranges(database) > 0, 30, "a range to be claimed", step=0.02)
    bridge.kill("worker")
    bridge.start_worker()
    report = settle("kill -9 of the worker mid-range", sender, fake_segment, database, started)
    assert report["accepted"] == 6000


def test_segment_down_then_429_then_up(database: str, fake_segment: FakeSegment,
                                       launch: Callable[..., Bridge]) -> None:
    bridge = launch(database, fake_segment.url)
    fake_segment.outage(4.0)
    fake_segment.then(Scripted(429, headers={"Retry-After": "2"}))
    started = time.monotonic()
    sender = Sender(lambda: [bridge.url])
    sender.send(make_events())
    report = settle("Segment 500/503 for 4 s, then 429 Retry-After 2 s, then up", sender, fake_segment,
                    database, started)
    statuses = [r.status for r in fake_segment.requests]
    assert 500 in statuses and 503 in statuses and 429 in statuses
    assert report["dead"] == 0


def test_connection_refused_then_segment_comes_up(database: str, launch: Callable[..., Bridge]) -> None:
    port = free_port()
    bridge = launch(database, f"http://127.0.0.1:{port}")
    started = time.monotonic()
    sender = Sender(lambda: [bridge.url])
    sender.send(make_events(10))
    poll(lambda: "connection failed" in segment_state(database).get("detail", ""), 30,
         "the worker to meet a refused connection")
    fake = FakeSegment().start(port)
    try:
        settle("connection refused for ~2 s, then up", sender, fake, database, started)
    finally:
        fake.stop()


def test_hang_past_the_timeout_and_a_late_200(database: str, fake_segment: FakeSegment,
                                              launch: Callable[..., Bridge]) -> None:
    """A hang (no effect) and a 200 after our 2 s timeout (it did land): a duplicate, same messageId."""
    fake_segment.then(Scripted(500, delay=3.0), Scripted(200, delay=3.0, accept=True))
    bridge = launch(database, fake_segment.url, worker=False)
    started = time.monotonic()
    sender = Sender(lambda: [bridge.url])
    sender.send(make_events(5))
    bridge.start_worker()
    # the late 200 lands after the retry that succeeded: wait for both copies before counting
    fake_segment.wait_for(lambda f: len(f.accepted) >= 2 * len(sender.acked), timeout=60)
    report = settle("hang past the timeout, then a 200 after it", sender, fake_segment, database, started)
    assert report["duplicates_sent"] == report["accepted"]  # the whole batch was sent twice...
    assert len(set(fake_segment.message_ids())) == report["accepted"]  # ...with the same messageIds


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_storage_failure_answers_503_never_a_false_200(backend: str, fake_segment: FakeSegment,
                                                       launch: Callable[..., Bridge],
                                                       bridges: list[Bridge], tmp_path: Path,
                                                       request: pytest.FixtureRequest) -> None:
    """SQLite on a full disk (a tiny tmpfs), PostgreSQL restarted: 503 while it lasts, nothing lost.

    PostgreSQL is a throwaway cluster of the test's own: the machine's server is never stopped.
    """
    mount = tmp_path / "small"
    if backend == "sqlite":
        mount.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)],
                          capture_output=True, check=False).returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        database = f"sqlite:///{mount / 'full.db'}"
    else:
        cluster = request.getfixturevalue("pg_cluster")
        database = cluster.url
    try:
        bridge = launch(database, fake_segment.url)
        sender = Sender(lambda: [bridge.url], pause=0.02)
        started = time.monotonic()
        load = sender.start(make_events(60))
        if backend == "sqlite":
            poll(lambda: sender.statuses.get("503"), 60, "the disk to fill (503)")
            subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
            fault = "SQLite disk full (600 KB tmpfs), then room"
        else:
            poll(lambda: sender.acked, 30, "the load to be under way")
            cluster.stop()
            time.sleep(5.0)  # the outage itself, not a wait for readiness
            cluster.start()
            fault = "PostgreSQL stopped for 5 s mid-load, then started"
        load.join(120)
        report = settle(fault, sender, fake_segment, database, started)
        assert sender.statuses.get("503", 0) + sender.statuses.get("no answer", 0) > 0, sender.statuses
        assert report["accepted"] == 60 * PER_BODY
    finally:
        for bridge in bridges:  # before the tmpfs goes, or the cluster stops under them
            bridge.stop()
        if backend == "sqlite":
            subprocess.run(["umount", "-l", str(mount)], check=False)


def test_two_instances_on_one_postgres_one_killed(pg_url: str, fake_segment: FakeSegment,
                                                  bridges: list[Bridge]) -> None:
    """Each instance runs web + forwarders (serve); one is SIGKILLed; the survivor delivers all."""
    instances = []
    for _ in range(2):
        env = bridge_env(pg_url, fake_segment.url, BRIDGE_PORT=str(free_port()), BRIDGE_WORKERS="2")
        bridge = Bridge(env, port=int(env["BRIDGE_PORT"]))
        bridge.web = spawn([str(BIN / "mailjet-bridge"), "serve"], env)
        bridges.append(bridge)
        instances.append(bridge)
    for bridge in instances:
        poll(bridge._answers, 30, "an instance")
    alive = list(instances)
    sender = Sender(lambda: [b.url for b in alive], pause=0.03)
    fake_segment.then(*[Scripted(200, delay=0.3, accept=True)] * 20)  # slow Segment: leases are held
    started = time.monotonic()
    load = sender.start(make_events())
    poll(lambda: fake_segment.requests, 30, "deliveries under way")  # kill mid-load, not before it
    victim = instances[0]
    alive.remove(victim)
    victim.kill("web")
    killed_at = time.monotonic()
    load.join(120)
    report = settle("two instances on one PostgreSQL, one SIGKILLed mid-load", sender, fake_segment,
                    pg_url, started)
    assert time.monotonic() - killed_at < 60, "the survivor took over a minute"
    assert report["accepted"] == BODIES * PER_BODY


def test_sigterm_releases_leases_and_exits_within_10_s(database: str, fake_segment: FakeSegment,
                                                       launch: Callable[..., Bridge]) -> None:
    bridge = launch(database, fake_segment.url, worker=False, BRIDGE_LEASE_SECONDS="600")
    sender = Sender(lambda: [bridge.url])
    sender.send(make_events(3))
    fake_segment.then(Scripted(200, delay=1.5, accept=True))
    bridge.start_worker()
    assert bridge.worker is not None
    fake_segment.wait_for(lambda f: not f.script, timeout=20)  # the slow request is under way
    started = time.monotonic()
    os.killpg(bridge.worker.proc.pid, signal.SIGTERM)
    assert bridge.worker.wait(12) == 0
    assert time.monotonic() - started < 10
    store = open_store(database)
    try:
        assert store.stats(time.time())["leased"] == 0  # given back, not left to expire (600 s)
    finally:
        store.close()
    bridge.start_worker()
    settle("SIGTERM of the worker mid-delivery, then a restart", sender, fake_segment, database, started)
