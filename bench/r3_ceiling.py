"""What R3 could reach by design: the lower bound of a Python forwarder on this store, per design.

``make bench`` measures the worker (R3) against a bare loop posting bodies made in advance. This
measures, against the same sink and the same bare loop, simple single-threaded loops that do only
what a design needs, so each design's ceiling is known before building it (docs/benchmarks.md):

- ``range, rendered``: the calls rendered at intake and stored as text; a round reads the next rows
  by id, posts them, and records the delivered id range in one durable row (no per-row write).
- ``range, mapped``: the same, with the stored Mailjet event mapped at send time, as now
  (read, ``track_call``, written).
- ``per row, rendered``: the store's own claim and mark (a lease and a mark written on each row),
  with the calls rendered at intake.
- ``per row, mapped``: the store's claim and mark and the mapping at send time: the worker's own
  work, without its pipeline (the worker itself is R3 in ``make bench``).

Usage: ``.venv/bin/python bench/r3_ceiling.py`` (BENCH_BACKLOG_R3, default 100,000; BENCH_ROUNDS, 3).
Everything stays on 127.0.0.1; the databases live in a temporary folder.
"""

from __future__ import annotations

import base64
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests
from common import Progress
from run import WRITE_KEY, batch_bodies, fill, sink

from bridge.delivery import fastjson
from bridge.delivery.loop import read_stored
from bridge.inbound.batching import MAX_BATCH_BYTES, MAX_BATCH_EVENTS, pack
from bridge.inbound.fields import EVENT_NAME_PRESETS
from bridge.inbound.track import track_call
from bridge.storage import open_store
from bridge.storage.base import Outcome

KIND = "segment_track"
NAMES = EVENT_NAME_PRESETS["mailjet"]
COUNT = int(os.environ.get("BENCH_BACKLOG_R3", "100000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
say = Progress()


def render(text: str, key: str) -> bytes:
    event, by_orjson = read_stored(text)
    return fastjson.dumps(track_call(event, event_names=NAMES, key=key), by_orjson=by_orjson)


class Poster:
    def __init__(self, url: str) -> None:
        self.session = requests.Session()
        self.url = f"{url}/v1/batch"
        key = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
        self.headers = {"Content-Type": "application/json", "Authorization": f"Basic {key}"}

    def post(self, calls: list[bytes]) -> None:
        for batch in pack(calls, len, max_bytes=MAX_BATCH_BYTES, max_events=MAX_BATCH_EVENTS):
            body = b'{"batch":[' + b",".join(batch) + b'],"sentAt":"2026-01-01T00:00:00.000Z"}'
            self.session.post(self.url, data=body, headers=self.headers, timeout=30).raise_for_status()


def range_loop(db: str, poster: Poster, rendered: bool, limit: int = 660) -> None:
    """Read the next rows by id; post; one durable row records the delivered range."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS delivered_ranges (kind TEXT, lo INTEGER, hi INTEGER, at REAL)")
    column = "rendered" if rendered else "payload"
    after = 0
    while True:
        rows = conn.execute(f"SELECT id, dedupe_key, {column} FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                            (after, limit)).fetchall()
        if not rows:
            break
        calls = [r[2] for r in rows] if rendered else [render(r[2], r[1]) for r in rows]
        poster.post(calls)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO delivered_ranges VALUES (?, ?, ?, ?)",
                     (KIND, rows[0][0], rows[-1][0], time.time()))
        conn.execute("COMMIT")
        after = rows[-1][0]
    conn.close()


def row_loop(db: str, poster: Poster, rendered: bool, limit: int = 660) -> None:
    """The store's own claim and mark (per row), the mark keeping the batch's texts once."""
    store = open_store(f"sqlite:///{db}")
    try:
        while True:
            items = store.claim(KIND, limit, "ceiling", 60, time.time())
            if not items:
                break
            calls = [i.payload.encode() for i in items] if rendered else [
                render(i.payload, i.dedupe_key) for i in items]
            poster.post(calls)
            store.mark_delivered([Outcome(i.id, c.decode(), 200, '{"success":true}', 1.0)
                                  for i, c in zip(items, calls, strict=True)],
                                 time.time(), owner="ceiling", sent_batch=KIND)
    finally:
        store.close()


def prepared(tmp: Path) -> str:
    """A backlog of COUNT events through the store, with each call rendered in a column beside it."""
    db = str(tmp / "ceiling.db")
    fill(f"sqlite:///{db}", COUNT, seed=3)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("ALTER TABLE outbox ADD COLUMN rendered BLOB")
    rows = conn.execute("SELECT id, dedupe_key, payload FROM outbox").fetchall()
    conn.execute("BEGIN")
    conn.executemany("UPDATE outbox SET rendered = ? WHERE id = ?", [(render(p, k), i) for i, k, p in rows])
    conn.execute("COMMIT")
    conn.execute("VACUUM")
    conn.close()
    return db


def main() -> None:
    variants: dict[str, Callable[[str, Poster], None]] = {
        "range, rendered": lambda db, p: range_loop(db, p, True),
        "range, mapped": lambda db, p: range_loop(db, p, False),
        "per row, rendered": lambda db, p: row_loop(db, p, True),
        "per row, mapped": lambda db, p: row_loop(db, p, False),
    }
    rates: dict[str, list[float]] = {name: [] for name in ["bare loop", *variants]}
    with tempfile.TemporaryDirectory(prefix="r3-ceiling-") as folder:
        tmp = Path(folder)
        say(f"filling {COUNT:,} events and rendering their calls")
        master = prepared(tmp)
        bodies = batch_bodies(COUNT, seed=3)
        with sink(tmp) as the_sink:
            poster = Poster(the_sink.url)
            for round_no in range(1, ROUNDS + 1):
                the_sink.reset()
                started = time.monotonic()
                for body in bodies:
                    poster.session.post(poster.url, data=body, headers=poster.headers,
                                        timeout=30).raise_for_status()
                rates["bare loop"].append(COUNT / (time.monotonic() - started))
                for name, loop in variants.items():
                    db = str(tmp / "work.db")
                    for suffix in ("", "-wal", "-shm", "-writelock"):
                        Path(db + suffix).unlink(missing_ok=True)
                    with open(master, "rb") as src, open(db, "wb") as dst:
                        dst.write(src.read())
                    the_sink.reset()
                    started = time.monotonic()
                    loop(db, poster)
                    took = time.monotonic() - started
                    got = the_sink.stats()["events"]
                    if got != COUNT:
                        raise RuntimeError(f"{name}: the sink got {got:,} of {COUNT:,} events")
                    rates[name].append(COUNT / took)
                say(f"round {round_no}/{ROUNDS}: " + ", ".join(
                    f"{name} {r[-1]:,.0f}" for name, r in rates.items()) + " events/s")
    bare = statistics.median(rates["bare loop"])
    print(f"\n| design (one thread, {COUNT:,} events, medians of {ROUNDS}) | events/s | / bare loop |")
    print("|---|---|---|")
    for name, r in rates.items():
        print(f"| {name} | {statistics.median(r):,.0f} | {statistics.median(r) / bare:.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
