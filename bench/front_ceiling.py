"""What R1 and R2 reach with each HTTP server in front of the webhook (issue #11).

``serve``'s web processes ran granian's RSGI interface until #11 measured this: granian reads
requests in Rust threads and hands each to the Python event loop and back. ``serve`` now runs
uvicorn. This measures, with R1's and R2's method (``wrk
-t1 -c8``, unique Mailjet events, 1 and 100 a body, servers alternating on fresh databases), how
much of a request that costs, against a server whose HTTP parsing runs on the event loop's own
thread (uvicorn with uvloop and httptools, ASGI):

- ``no-op, gunicorn -w 2``: R1's anchor (``bench/noop_app.py``);
- ``bridge, serve --workers 2``: the bridge as users ran it until #11 made one web process the
  default on 2 cores (uvicorn, the writer, the delivery process);
- ``webhook, uvicorn -w 2 + writer``: the bridge's own steps for the webhook under uvicorn
  (``bench/front_apps.py``: the caller check, parsing and sorting, the writer process's commit,
  the answer, the access line; not a whole front), with the same writer process as ``serve``;
- ``bridge, serve --workers 1`` and ``webhook, uvicorn -w 1 + writer``: the same with one web
  process (with two, uvicorn's share of wrk's 8 connections between its processes varies from run
  to run, and so does its rate);
- ``bridge, serve, PostgreSQL`` and ``webhook, uvicorn -w 1 + writer, PostgreSQL``: the same on a
  PostgreSQL database of its own (its backends' CPU counted with the server);
- ``no-op, granian RSGI -w 2`` and ``no-op, uvicorn -w 2``: what each server costs by itself.

CPU a request is read from /proc for every process of each server (the writer included; wrk's own
CPU is not counted). Usage: ``.venv/bin/python bench/front_ceiling.py`` (BENCH_ROUNDS, default 3;
BENCH_SECONDS, 8). Needs the ``bench`` extra (uvicorn, httptools) and wrk. Everything stays on
127.0.0.1; the databases live in a temporary folder.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from common import BRIDGE_ENV, Progress, Server, free_port, pg_database
from run import BIN, CONNS, HERE, ROUNDS, Running, Target, bridge_target, listening, measured

BODIES = (1, 100)
say = Progress()


def _uvicorn(app: str, port: int, workers: int = 2) -> list[str]:
    return [str(BIN / "uvicorn"), "--workers", str(workers), "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", "--no-access-log", "--no-proxy-headers", "--loop", "uvloop",
            "--http", "httptools", "--app-dir", str(HERE), app]


def _webhook_under_uvicorn(workers: int, database: str = "sqlite",
                           ) -> Callable[[Path, str], contextlib.AbstractContextManager[Running]]:
    """uvicorn serving ``front_apps:webhook``, and the bridge's writer process as its child (so
    that /proc counts it with the server), on a fresh SQLite or PostgreSQL database."""

    @contextlib.contextmanager
    def start(tmp: Path, tag: str) -> Iterator[Running]:
        with contextlib.ExitStack() as stack:
            if database == "sqlite":
                url, name = f"sqlite:///{tmp}/{tag}.db", None
            else:
                url = stack.enter_context(pg_database(tag))
                name = url.rsplit("/", 1)[1]
            yield stack.enter_context(_uvicorn_and_writer(tmp, tag, url, workers, name))

    return start


@contextlib.contextmanager
def _uvicorn_and_writer(tmp: Path, tag: str, url: str, workers: int, database: str | None,
                        ) -> Iterator[Running]:
    port = free_port()
    socket_path = tmp / f"{tag}.sock"
    env = {**BRIDGE_ENV, "BRIDGE_DATABASE_URL": url, "BRIDGE_WRITER_SOCKET": str(socket_path)}
    command = " ".join(_uvicorn("front_apps:webhook", port, workers))
    launcher = ["sh", "-c", f'"{BIN}/python" -m bridge writer & exec {command}']
    server = Server(f"uvicorn-{tag}", launcher, env, HERE, tmp / f"uvicorn-{tag}.log",
                    url=f"http://127.0.0.1:{port}")
    with server.start(f"{server.url}/healthz"):
        yield Running(server.url, server.pid, database)


def targets() -> list[Target]:
    """The servers of one round, in the order they alternate."""
    gunicorn = [str(BIN / "gunicorn"), "-w", "2", "--log-level", "warning"]
    granian = [str(BIN / "granian"), "--interface", "rsgi", "--workers", "2", "--loop", "uvloop",
               "--log-level", "warning", "--host", "127.0.0.1"]
    return [
        Target("noop-gunicorn", "no-op, gunicorn -w 2 (R1's anchor)",
               listening(lambda p: [*gunicorn, "-b", f"127.0.0.1:{p}", "noop_app:app"], "noop-gunicorn")),
        Target("bridge-serve", "bridge, serve --workers 2", bridge_target("sqlite", 2)),
        Target("webhook-uvicorn", "webhook, uvicorn -w 2 + writer", _webhook_under_uvicorn(2)),
        Target("bridge-serve-1", "bridge, serve --workers 1", bridge_target("sqlite", 1)),
        Target("webhook-uvicorn-1", "webhook, uvicorn -w 1 + writer", _webhook_under_uvicorn(1)),
        Target("bridge-serve-pg", "bridge, serve --workers 2, PostgreSQL", bridge_target("pg", 2)),
        Target("webhook-uvicorn-1-pg", "webhook, uvicorn -w 1 + writer, PostgreSQL",
               _webhook_under_uvicorn(1, "pg")),
        Target("noop-granian", "no-op, granian RSGI -w 2",
               listening(lambda p: [*granian, "--port", str(p), "front_apps:noop_rsgi"], "noop-granian")),
        Target("noop-uvicorn", "no-op, uvicorn -w 2",
               listening(lambda p: _uvicorn("front_apps:noop_asgi", p), "noop-uvicorn")),
    ]


def main() -> None:
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    all_targets = targets()
    with tempfile.TemporaryDirectory(prefix="front-ceiling-") as folder:
        tmp = Path(folder)
        for round_no in range(1, ROUNDS + 1):
            for body in BODIES:
                for target in all_targets:
                    with target.start(tmp, f"r{round_no}b{body}{target.name}") as running:
                        result = measured(running, body)
                    runs.setdefault((target.name, body), []).append(result)
                    errors = result["errors"] + result["socket_errors"]
                    say(f"round {round_no}/{ROUNDS}, {body:>3}-event bodies: {target.label:<38} "
                        f"{result['rps']:>8,.0f} req/s, CPU {sum(result['cpu_us'].values()):,.0f} µs a "
                        "request" + (f", {errors:.0f} errors" if errors else ""))

    def median(name: str, body: int, key: str) -> float:
        return statistics.median(r["rps"] if key == "rps" else sum(r["cpu_us"].values())
                                 for r in runs[(name, body)])

    print(f"\n| server (wrk -t1 -c{CONNS}, medians of {ROUNDS}) | 1 event req/s | ÷ anchor | CPU µs "
          "a request | 100 events req/s | ÷ anchor | CPU µs a request |")
    print("|---|---|---|---|---|---|---|")
    for target in all_targets:
        cells = []
        for body in BODIES:
            rps, anchor = median(target.name, body, "rps"), median("noop-gunicorn", body, "rps")
            cells += [f"{rps:,.0f}", f"{rps / anchor:.2f}x", f"{median(target.name, body, 'cpu'):,.0f}"]
        print(f"| {target.label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    os.chdir(HERE)
    main()
