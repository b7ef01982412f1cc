"""The worker never holds a backlog in memory (#11, R5).

A backlog of 100,000 events is stored through the store, as the webhook stores them, then drained by
a real ``mailjet-bridge worker`` into the fake Segment on 127.0.0.1, with a drain helper beside it.
While it drains, the resident memory of the worker and of its helper is read from
/proc/<pid>/status: each stays under a bound, and the worker's last third of the drain needs no more
than its first (the worker holds a round or two, never what is left to send).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.fakes.segment import FakeSegment
from tests.processes import BIN, drain_helpers, fill_backlog, spawn

BACKLOG = 100_000
#: The worker's resident memory must stay under this while it drains...
RSS_LIMIT_KB = 150 * 1024
#: ...and its peak in the last third of the drain may exceed the first third's by this much at most.
GROWTH_KB = 16 * 1024


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
    fill_backlog(database, BACKLOG)
    fake = FakeSegment(keep_calls=False).start()  # the test keeps messageIds, not 100,000 calls
    worker = spawn([str(BIN / "mailjet-bridge"), "worker"], {
        "BRIDGE_DATABASE_URL": database, "SEGMENT_WRITE_KEY": "good-key",
        "SEGMENT_API_URL": fake.url, "SEGMENT_CDN_URL": fake.url,
        "SEGMENT_WEBHOOK_TOKEN": "memory-token", "BRIDGE_WEBHOOK_USERNAME": "mailjet",
        "BRIDGE_WEBHOOK_PASSWORD": "memory-pass", "BRIDGE_ADMIN_PASSWORD": "memory-admin-pass",
        "BRIDGE_DRAIN_HELPERS": "1"})
    samples: list[tuple[int, int]] = []  # (calls Segment had taken, worker's RSS in kB)
    helper_peaks: dict[int, int] = {}  # each drain helper's largest RSS seen, in kB
    try:
        deadline = time.monotonic() + 120
        while True:
            with fake.lock:
                taken = fake.accepted_count
            rss = rss_kb(worker.proc.pid)
            assert rss is not None and worker.proc.poll() is None, worker.output()
            samples.append((taken, rss))
            for helper in drain_helpers(worker.proc.pid):
                helper_peaks[helper] = max(helper_peaks.get(helper, 0), rss_kb(helper) or 0)
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
          f"{first / 1024:.1f} MB, last third {last / 1024:.1f} MB, peak {peak / 1024:.1f} MB; "
          f"drain helpers' peaks {[round(kb / 1024, 1) for kb in helper_peaks.values()]} MB")
    assert peak < RSS_LIMIT_KB, f"peak {peak / 1024:.1f} MB"
    assert helper_peaks, "no drain helper joined the drain"
    assert max(helper_peaks.values()) < RSS_LIMIT_KB, helper_peaks
    assert last <= first + GROWTH_KB, f"grew from {first / 1024:.1f} to {last / 1024:.1f} MB"
