"""Accept-path throughput over HTTP: the bridge vs a no-op Flask endpoint under the same gunicorn.

Both run as ``gunicorn -w 2`` (sync workers) on 127.0.0.1; wrk (Debian package ``wrk``) posts unique
Mailjet events, one per request and 100 per request. The bridge stores every event durably (SQLite,
WAL, synchronous=FULL) before it answers. Run: make bench-more. Needs: apt-get install wrk.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from common import free_port, wrk  # also what bench/slow_clients.py imports from here

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DURATION = os.environ.get("BENCH_SECONDS", "10")
WORKERS = os.environ.get("BENCH_WORKERS", "2")


def start(app: str, env: dict[str, str], cwd: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "gunicorn"), "-w", WORKERS, "-b", f"127.0.0.1:{port}",
         "--log-level", "warning", app],
        cwd=cwd, env={**os.environ, **env}, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.get(url + "/healthz", timeout=1)
            return proc, url
        except requests.ConnectionError:
            time.sleep(0.1)
    raise SystemExit(f"{app} did not start")


def main() -> None:
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk")
    auth = base64.b64encode(b"bench:bench-pass").decode()
    results: dict[tuple[str, int], dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = {"BRIDGE_DATABASE_URL": f"sqlite:///{tmp}/bench.db", "BRIDGE_WEBHOOK_USERNAME": "bench",
               "BRIDGE_WEBHOOK_PASSWORD": "bench-pass"}
        for name, app, cwd in (("no-op Flask", "noop_app:app", HERE), ("bridge", "wsgi:app", ROOT)):
            proc, url = start(app, env, cwd)
            try:
                for events in (1, 100):
                    results[(name, events)] = wrk(url, events, auth)
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(15)
    print(f"gunicorn -w {WORKERS} sync, wrk -t1 -c8 -d{DURATION}s, unique events, loopback")
    print("| body | no-op req/s | bridge req/s | ratio | bridge events/s | bridge p50 / p99 ms | errors |")
    print("|---|---|---|---|---|---|---|")
    for events in (1, 100):
        noop, bridge = results[("no-op Flask", events)], results[("bridge", events)]
        print(f"| {events} event{'s' if events > 1 else ''} | {noop['rps']:.0f} | {bridge['rps']:.0f} | "
              f"{bridge['rps'] / noop['rps']:.2f}x | {bridge['rps'] * events:.0f} | "
              f"{bridge['p50_ms']:.1f} / {bridge['p99_ms']:.1f} | {bridge['errors']:.0f} |")


if __name__ == "__main__":
    main()
