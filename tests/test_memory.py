"""The worker never holds a backlog in memory (#11, R5).

A backlog of 100,000 events is stored through the store, as the webhook stores them, then drained by
a real ``mailjet-bridge worker`` into the fake Segment on 127.0.0.1. While it drains, the worker's
resident memory is read from /proc/<pid>/status: it stays under a bound, and the last third of the
drain needs no more than the first (the worker holds a round or two, never what is left to send).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bridge.inbound.intake import new_item
from bridge.storage import open_store
from tests.fakes.segment import FakeSegment
from tests.processes import BIN, spawn

BACKLOG = 100_000
#: The worker's resident memory must stay under this while it drains...
RSS_LIMIT_KB = 150 * 1024
#: ...and its peak in the last third of the drain may exceed the first third's by this much at most.
GROWTH_KB = 16 * 1024
TEMPLATES = json.loads((Path(__file__).parent / "fixtures" / "mailjet" / "events.json").read_text())


def fill(url: str, count: int) -> None:
    """Queue ``count`` distinct events of every type, in bodies of 5,000."""
    store = open_store(url)
    store.migrate()
    kinds = list(TEMPLATES.values())
    try:
        for first in range(0, count, 5000):
            items = []
            for n in range(first, min(count, first + 5000)):
                event = {**kinds[n % len(kinds)], "MessageID": 10**16 + n,
                         "time": 1_700_000_000 + n // 50, "email": f"user{n % 7919}@example.com"}
                items.append(new_item(event, json.dumps(event)))
            store.accept(items, [], time.time())
    finally:
        store.close()


def rss_kb(pid: int) -> int | None:
    """VmRSS of a live process, in kB; None once it has gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return None
    line = next((line for line in status.splitlines() if line.startswith("VmRSS:")), None)
    return int(line.split()[1]) if line else None


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_the_worker_drains_a_large_backlog_in_bounded_memory(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'backlog.db'}"
    fill(database, BACKLOG)
    fake = FakeSegment(keep_calls=False).start()  # the test keeps messageIds, not 100,000 calls
    worker = spawn([str(BIN / "mailjet-bridge"), "worker"], {
        "BRIDGE_DATABASE_URL": database, "SEGMENT_WRITE_KEY": "good-key",
        "SEGMENT_API_URL": fake.url, "SEGMENT_CDN_URL": fake.url,
        "SEGMENT_WEBHOOK_TOKEN": "memory-token", "BRIDGE_WEBHOOK_USERNAME": "mailjet",
        "BRIDGE_WEBHOOK_PASSWORD": "memory-pass", "BRIDGE_ADMIN_PASSWORD": "memory-admin-pass"})
    samples: list[tuple[int, int]] = []  # (calls Segment had taken, worker's RSS in kB)
    try:
        deadline = time.monotonic() + 120
        while True:
            with fake.lock:
                taken = fake.accepted_count
            rss = rss_kb(worker.proc.pid)
            assert rss is not None and worker.proc.poll() is None, worker.output()
            samples.append((taken, rss))
            if taken >= BACKLOG:
                break
            assert time.monotonic() < deadline, f"{fake.describe()}\n{worker.output()[-3000:]}"
            time.sleep(0.02)
    finally:
        worker.stop()
        fake.stop()
    assert fake.accepted_count == BACKLOG == len(fake.accepted_ids)  # each event once
    first = max(rss for taken, rss in samples if taken < BACKLOG / 3)
    last = max(rss for taken, rss in samples if taken >= 2 * BACKLOG / 3)
    peak = max(rss for _, rss in samples)
    print(f"worker RSS while draining {BACKLOG:,} events ({len(samples)} samples): first third "
          f"{first / 1024:.1f} MB, last third {last / 1024:.1f} MB, peak {peak / 1024:.1f} MB")
    assert peak < RSS_LIMIT_KB, f"peak {peak / 1024:.1f} MB"
    assert last <= first + GROWTH_KB, f"grew from {first / 1024:.1f} to {last / 1024:.1f} MB"
