"""The forwarder draining a backlog, against a bare ``requests`` loop posting to the same local sink.

Issue #11: how close does ``mailjet-bridge worker`` come to what the sink can take? The sink is a
small asyncio HTTP/1.1 server in a process of its own on 127.0.0.1: it answers every
``POST /v1/batch`` with 200 ``{"success":true}`` (counting the calls by their ``messageId``) and
serves the settings CDN document the bridge checks write keys with.

- bare: the same track calls, pre-encoded and packed into full batches (at most 500 KB and 2,500
  calls), posted one after another with one ``requests.Session``; events/s.
- forwarder: ``--events`` Mailjet events queued with ``store.accept`` (SQLite, ``synchronous=FULL``,
  a tenth of the recipients with a known userId), then drained by the forwarder ``bridge.loops()``
  makes (``--mode inproc``, optionally under cProfile) or by a real ``mailjet-bridge worker``
  (``--mode worker``); events/s from the first round to the last row delivered.

Run: ``.venv/bin/python bench/forwarder_drain.py [--events 100000] [--mode inproc|worker|bare]``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import cpu_seconds  # noqa: E402  (bench/, the script's own folder)

from bridge.inbound.batching import pack  # noqa: E402
from bridge.inbound.fields import EVENT_NAME_PRESETS  # noqa: E402
from bridge.inbound.intake import new_item  # noqa: E402
from bridge.inbound.segment import basic_auth, iso_now  # noqa: E402
from bridge.inbound.track import track_call  # noqa: E402
from bridge.storage import open_store  # noqa: E402

TEMPLATES: list[dict[str, Any]] = list(json.loads(
    (ROOT / "tests" / "fixtures" / "mailjet" / "events.json").read_text()).values())
WRITE_KEY = "bench-key"
BATCH_LIMIT_BYTES, BATCH_LIMIT_CALLS = 500 * 1024, 2500


# -- the sink ---------------------------------------------------------------------------------------


async def _serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            counts: dict[str, int], parse: bool) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            body = await reader.readexactly(length) if length else b""
            if method == "POST" and path == "/v1/batch":
                counts["calls"] += (len(json.loads(body)["batch"]) if parse
                                    else body.count(b'"messageId"'))
                counts["requests"] += 1
                answer = b'{"success":true}'
            elif method == "GET" and path.startswith("/v1/projects/"):
                key = path.split("/")[3]
                answer = json.dumps({"integrations": {"Segment.io": {
                    "apiKey": key, "apiHost": "api.segment.io/v1"}}}).encode()
            elif method == "GET" and path == "/count":
                answer = json.dumps(counts).encode()
            else:
                answer = b'{"success":true}'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(answer)).encode() + b"\r\n\r\n" + answer)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def run_fake_sink() -> None:
    """The test suite's fake Segment as the sink (werkzeug, strict JSON, a size check per call), but
    counting the calls it accepts instead of keeping them."""
    from tests.fakes.segment import FakeSegment

    class CountingFake(FakeSegment):
        calls = 0

        def _file(self, key: str, batch: list[dict[str, Any]]) -> str:
            CountingFake.calls += len(batch)
            return ""

        def _record(self, *args: Any, **kwargs: Any) -> None:
            pass

        def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
            if environ.get("PATH_INFO") == "/count":
                start_response("200 OK", [("Content-Type", "application/json")])
                return [json.dumps({"calls": CountingFake.calls}).encode()]
            return super()._app(environ, start_response)

    fake = CountingFake({WRITE_KEY}).start()
    print(fake.url.rsplit(":", 1)[1], flush=True)
    threading.Event().wait()


def run_sink(kind: str) -> None:
    """The sink's process: prints its port, serves until killed. ``count`` only counts the calls'
    ``messageId`` fields; ``parse`` reads each batch as JSON, as Segment's edge must; ``fake`` is
    the test suite's fake Segment."""
    if kind == "fake":
        run_fake_sink()
        return
    parse = kind == "parse"
    counts = {"calls": 0, "requests": 0}

    async def main() -> None:
        server = await asyncio.start_server(
            lambda r, w: _serve_connection(r, w, counts, parse), "127.0.0.1", 0, limit=1 << 20)
        print(server.sockets[0].getsockname()[1], flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


class Sink:
    """The sink, started in a process of its own."""

    def __init__(self, kind: str) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "sink", "--sink", kind],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"

    def calls(self) -> int:
        return requests.get(self.url + "/count", timeout=5).json()["calls"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


# -- the backlog ------------------------------------------------------------------------------------


def events(n: int, seed: int = 11) -> list[dict[str, Any]]:
    """Unique Mailjet events of every type, time advancing, 5,000 recipients."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        event = dict(rng.choice(TEMPLATES))
        event.update(MessageID=10**16 + i, time=1_700_000_000 + i // 50,
                     email=f"user{rng.randrange(5000)}@example.com", mj_contact_id=1 + i % 9000)
        out.append(event)
    return out


def fill(store: Any, n: int) -> None:
    """Queue ``n`` events in bodies of 1,000, and a userId for a tenth of the recipients."""
    store.accept([], [], time.time(), [(f"user-{i}", f"user{i}@example.com") for i in range(0, 5000, 10)])
    all_events = events(n)
    for start in range(0, n, 1000):
        chunk = all_events[start:start + 1000]
        store.accept([new_item(e, json.dumps(e)) for e in chunk], [], time.time())


# -- the bare loop ----------------------------------------------------------------------------------


def bare(url: str, n: int) -> float:
    """Events/s of one ``requests.Session`` posting full batches of the same calls."""
    names = EVENT_NAME_PRESETS["mailjet"]
    calls = [json.dumps(track_call(e, event_names=names), ensure_ascii=False,
                        separators=(",", ":")).encode() for e in events(n)]
    batches = pack(calls, len, max_bytes=BATCH_LIMIT_BYTES - 100, max_events=BATCH_LIMIT_CALLS)
    session = requests.Session()
    headers = {"Content-Type": "application/json", "Authorization": basic_auth(WRITE_KEY)}
    started = time.perf_counter()
    for batch in batches:
        body = (b'{"batch":[' + b",".join(batch) + b'],"sentAt":"' + iso_now(time.time).encode()
                + b'"}')
        response = session.post(url + "/v1/batch", data=body, headers=headers, timeout=30)
        response.raise_for_status()
    elapsed = time.perf_counter() - started
    print(f"bare loop: {n} events in {len(batches)} batches, {elapsed:.2f} s, "
          f"{n / elapsed:,.0f} events/s")
    return n / elapsed


# -- the forwarder ----------------------------------------------------------------------------------


def environment(db: Path, sink: Sink) -> dict[str, str]:
    return {"BRIDGE_DATABASE_URL": f"sqlite:///{db}", "SEGMENT_WRITE_KEY": WRITE_KEY,
            "SEGMENT_API_URL": sink.url, "SEGMENT_CDN_URL": sink.url,
            "BRIDGE_WEBHOOK_USERNAME": "mailjet", "BRIDGE_WEBHOOK_PASSWORD": "bench-password",
            "BRIDGE_ADMIN_PASSWORD": "bench-admin-password", "SEGMENT_WEBHOOK_TOKEN": "bench-token",
            "BRIDGE_LOG_LEVEL": "WARNING"}


def wait_drained(store: Any, sink: Sink, total: int, check: Any = None) -> None:
    """Until every row is delivered: the sink's count first (cheap), then the store's (a full scan)."""
    while sink.calls() < total:
        if check:
            check()
        time.sleep(0.05)
    while True:
        stats = store.stats(time.time())
        if stats["pending"] == 0 and stats["leased"] == 0:
            return
        time.sleep(0.005)


def inproc(env: dict[str, str], sink: Sink, total: int, profile: Path | None) -> float:
    """Drain with the forwarder ``Bridge.loops()`` makes, in this process, as the worker runs it;
    with ``profile``, its rounds run in this thread under cProfile instead."""
    from bridge.config import load_settings
    from bridge.wiring import build

    bridge = build(load_settings(env), announce=lambda line: None)
    forwarder = bridge.loops()[0]
    base = sink.calls()
    started = time.perf_counter()
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        while sink.calls() - base < total:
            forwarder.run_once()
        profiler.disable()
        elapsed = time.perf_counter() - started
        profiler.dump_stats(profile)
        pstats.Stats(str(profile)).sort_stats("tottime").print_stats(30)
        forwarder.release_leases()
    else:
        stop = threading.Event()
        thread = threading.Thread(target=forwarder.run_forever, args=(stop,))
        thread.start()
        wait_drained(bridge.store, sink, base + total)
        elapsed = time.perf_counter() - started
        stop.set()
        thread.join()
    bridge.close()
    return total / elapsed


def worker(env: dict[str, str], sink: Sink, total: int, store: Any) -> tuple[float, float]:
    """Drain with a real ``mailjet-bridge worker`` process (``python -m bridge worker``, so that a
    copy of the tree elsewhere benchmarks its own code). Events/s, and the worker's CPU µs per event
    (start-up included)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SEGMENT_", "MAILJET_", "BRIDGE_"))}
    full.update(env)
    base = sink.calls()
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "bridge", "worker"], env=full, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    spy = None
    if os.environ.get("PYSPY_OUT"):  # samples of the worker's threads: py-spy must be installed
        spy = subprocess.Popen(["py-spy", "record", "--threads", "-r", "250", "-f", "raw",
                                "-o", os.environ["PYSPY_OUT"], "--pid", str(proc.pid)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def alive() -> None:
        if proc.poll() is not None:
            raise SystemExit(f"the worker exited with {proc.returncode}")

    try:
        wait_drained(store, sink, base + total, alive)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(proc.pid) or 0.0
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    return total / elapsed, cpu / total * 1e6


def drain(mode: str, sink: Sink, events: int, profile: Path | None) -> float:
    """Fill a fresh database with ``events`` events and drain it; events/s."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        store = open_store(f"sqlite:///{db}")
        store.migrate()
        fill(store, events)
        env = environment(db, sink)
        if mode == "inproc":
            rate, note = inproc(env, sink, events, profile), ""
        else:
            rate, cpu = worker(env, sink, events, store)
            note = f" ({cpu:.1f} CPU µs per event)"
        print(f"forwarder ({mode}): {rate:,.0f} events/s{note}", flush=True)
        delivered = store.stats(time.time())["delivered"]
        assert delivered == events, delivered
        store.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="?", default="run", choices=["run", "sink"])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--mode", default="worker", choices=["inproc", "worker"])
    parser.add_argument("--sink", default="count", choices=["count", "parse", "fake"],
                        help="count: counts calls only (default); parse: parses each batch; fake: "
                             "the tests' fake Segment")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the best is shown")
    parser.add_argument("--bare-only", action="store_true")
    parser.add_argument("--profile", type=Path, help="write cProfile stats here (inproc)")
    args = parser.parse_args()
    if args.what == "sink":
        run_sink(args.sink)
        return
    sink = Sink(args.sink)
    try:
        bare_rates, rates = [], []
        for _ in range(args.repeat):
            bare_rates.append(bare(sink.url, args.events))
            if not args.bare_only:
                rates.append(drain(args.mode, sink, args.events, args.profile))
        best_bare = max(bare_rates)
        line = f"best of {args.repeat}, sink {args.sink}: bare loop {best_bare:,.0f} events/s"
        if rates:
            line += (f", forwarder ({args.mode}) {max(rates):,.0f} events/s, "
                     f"ratio {max(rates) / best_bare:.2f}")
        print(line)
    finally:
        sink.stop()


if __name__ == "__main__":
    main()
