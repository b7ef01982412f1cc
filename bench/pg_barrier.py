"""What the commit-order barrier of docs/range-delivery.md would cost PostgreSQL's intake.

In that design, every intake statement takes ``pg_advisory_xact_lock_shared(K)``. A forwarder that
claims past its high-water mark first takes ``pg_advisory_xact_lock(K)``, which waits for the open
intakes, and then reads ``max(id)``. This measures durable one-statement inserts, as the writer
sends them (``threads`` connections in autocommit, ``rows`` rows a statement), in three ways,
alternated:

- plain;
- with the shared lock in the statement;
- with the shared lock and a forwarder taking the barrier ``claims`` times a second.

    .venv/bin/python bench/pg_barrier.py [--seconds 5] [--threads 8] [--rows 1] [--claims 20] [--rounds 3]

It runs on a database of its own, dropped afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import psycopg
from common import pg_database, pg_problem

KEY = 7_302_001
TABLE = ("CREATE TABLE t (id BIGSERIAL PRIMARY KEY, kind TEXT NOT NULL, key TEXT NOT NULL, "
         "payload TEXT NOT NULL, UNIQUE (kind, key))")


def insert_sql(rows: int, shared: bool) -> str:
    values = ", ".join(["(%s, %s, %s)"] * rows)
    lock = " CROSS JOIN (SELECT pg_advisory_xact_lock_shared(%s)) AS l" if shared else ""
    return (f"INSERT INTO t (kind, key, payload) SELECT v.kind, v.key, v.payload FROM (VALUES {values}) "
            f"AS v(kind, key, payload){lock} ON CONFLICT DO NOTHING")


def run(url: str, mode: str, seconds: float, threads: int, rows: int, claims: float) -> dict[str, float]:
    """Statements a second and the barrier's waits, for one mode."""
    shared = mode != "plain"
    sql = insert_sql(rows, shared)
    stop = threading.Event()
    done = [0] * threads
    payload = "x" * 600
    barrier_waits: list[float] = []

    def intake(n: int) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            serial = 0
            while not stop.is_set():
                params: list[object] = []
                for _ in range(rows):
                    serial += 1
                    params += ["segment_track", f"{n}-{serial}", payload]
                if shared:
                    params.append(KEY)
                conn.execute(sql, params, prepare=True)
                done[n] += 1

    def forwarder() -> None:
        with psycopg.connect(url) as conn:
            while not stop.wait(1 / claims):
                started = time.perf_counter()
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (KEY,))
                    conn.execute("SELECT max(id) FROM t").fetchone()
                barrier_waits.append(time.perf_counter() - started)

    workers = [threading.Thread(target=intake, args=(n,)) for n in range(threads)]
    if mode == "barrier":
        workers.append(threading.Thread(target=forwarder))
    for worker in workers:
        worker.start()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    result = {"statements": sum(done) / seconds}
    if barrier_waits:
        result["barrier_p50_ms"] = statistics.median(barrier_waits) * 1000
        result["barrier_max_ms"] = max(barrier_waits) * 1000
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--claims", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    problem = pg_problem()
    if problem:
        raise SystemExit(f"PostgreSQL is needed: {problem}")
    modes = ["plain", "shared", "barrier"]
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    with pg_database("barrier") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(TABLE)
        run(url, "plain", 2.0, args.threads, args.rows, args.claims)  # warm the server up
        for round_ in range(args.rounds):
            for mode in modes if round_ % 2 == 0 else reversed(modes):
                result = run(url, mode, args.seconds, args.threads, args.rows, args.claims)
                results[mode].append(result)
                print(f"round {round_ + 1}: {mode:8s} {result['statements']:8,.0f} statements/s"
                      + (f", barrier p50 {result['barrier_p50_ms']:.2f} ms, max "
                         f"{result['barrier_max_ms']:.2f} ms" if "barrier_p50_ms" in result else ""),
                      flush=True)
    print(f"\n{args.threads} connections, {args.rows} rows a statement, medians of {args.rounds}:")
    for mode in modes:
        rates = [r["statements"] for r in results[mode]]
        print(f"  {mode:8s} {statistics.median(rates):8,.0f} statements/s "
              f"[{min(rates):,.0f}-{max(rates):,.0f}]")


if __name__ == "__main__":
    main()
