"""Drain helpers: forwarder processes the worker starts beside its own while it drains a backlog (#11).

Each test runs a real ``mailjet-bridge worker`` on a backlog stored through the store, against the
fake Segment on 127.0.0.1, whose answers are slowed (``Scripted(delay=…)``) so that the drain lasts
long enough for a helper to join. Nothing may be lost: every event reaches Segment, the helper's
rounds included, whether the helper leaves by itself, is SIGKILLed, or the worker is stopped.
"""

from __future__ import annotations

import itertools
import os
import signal
from datetime import datetime
from pathlib import Path

import pytest

from tests.fakes.segment import FakeSegment, Scripted
from tests.processes import BIN, Process, drain_helpers, fill_backlog, poll, spawn, store_settled

BACKLOG = 20_000
#: Each answer of the fake Segment comes this late, for this many batches: about 30 batches of 650
#: events make the backlog, so that one forwarder alone would take about 6 s.
SLOW_ANSWER_SECONDS, SLOW_ANSWERS = 0.2, 200


def start_worker(database: str, fake: FakeSegment, **extra: str) -> Process:
    fake.then(*[Scripted(delay=SLOW_ANSWER_SECONDS)] * SLOW_ANSWERS)
    return spawn([str(BIN / "mailjet-bridge"), "worker"], {
        "BRIDGE_DATABASE_URL": database, "SEGMENT_WRITE_KEY": "good-key",
        "SEGMENT_API_URL": fake.url, "SEGMENT_CDN_URL": fake.url,
        "SEGMENT_WEBHOOK_TOKEN": "helper-token", "BRIDGE_WEBHOOK_USERNAME": "mailjet",
        "BRIDGE_WEBHOOK_PASSWORD": "helper-pass", "BRIDGE_ADMIN_PASSWORD": "helper-admin-pass",
        "BRIDGE_DRAIN_HELPERS": "1", **extra})


def delivered_ids(fake: FakeSegment) -> int:
    with fake.lock:
        return len(fake.accepted_ids)


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty, migrated database on each backend, filled with the backlog."""
    url = (request.getfixturevalue("pg_url") if request.param == "postgres"
           else f"sqlite:///{tmp_path / 'backlog.db'}")
    fill_backlog(url, BACKLOG)
    return url


def test_a_helper_joins_the_drain_delivers_its_share_once_and_leaves_by_itself(database: str) -> None:
    fake = FakeSegment(keep_calls=False).start()
    worker = start_worker(database, fake)
    try:
        poll(lambda: drain_helpers(worker.proc.pid), 30, "a drain helper to start")
        poll(lambda: delivered_ids(fake) >= BACKLOG, 60, "every event to reach Segment")
        # it leaves by itself once the backlog is gone; the worker goes on
        poll(lambda: not drain_helpers(worker.proc.pid), 30, "the drain helper to exit")
        poll(lambda: "drain helper 1 process ended" in worker.output(), 10, "the worker to log it")
        assert worker.proc.poll() is None, worker.output()[-3000:]
        stats = store_settled(database, 30)
    finally:
        worker.stop()
        fake.stop()
    assert fake.accepted_count == BACKLOG == len(fake.accepted_ids)  # each event once
    assert stats["delivered"] == BACKLOG and stats["dead"] == 0, stats
    assert overlapping(fake) > 0  # two forwarders posted at once: the helper delivered its share


def test_a_helper_killed_mid_drain_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL: its leased rounds come back when their lease ends (2 s here) and are delivered;
    rows behind ranges still open wait for the janitor to settle those (about 30 s). On SQLite
    only: a helper is one more worker, and tests/test_faults.py kills workers on both backends."""
    database = f"sqlite:///{tmp_path / 'backlog.db'}"
    fill_backlog(database, BACKLOG)
    fake = FakeSegment(keep_calls=False).start()
    worker = start_worker(database, fake, BRIDGE_LEASE_SECONDS="2")
    try:
        (helper,) = poll(lambda: drain_helpers(worker.proc.pid), 30, "a drain helper to start")
        poll(lambda: overlapping(fake), 30, "the helper to post beside the worker")
        os.kill(helper, signal.SIGKILL)  # still draining: it leaves only after 5 s with no backlog
        poll(lambda: delivered_ids(fake) >= BACKLOG, 90, "every event to reach Segment")
        stats = store_settled(database, 30)
        assert worker.proc.poll() is None, worker.output()[-3000:]
    finally:
        worker.stop()
        fake.stop()
    assert len(fake.accepted_ids) == BACKLOG  # a batch posted but not marked may go twice, same id
    assert stats["delivered"] == BACKLOG and stats["dead"] == 0, stats


def test_stopping_the_worker_mid_drain_stops_its_helper_and_a_new_worker_finishes(
        tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'backlog.db'}"
    fill_backlog(database, BACKLOG)
    fake = FakeSegment(keep_calls=False).start()
    worker = start_worker(database, fake)
    try:
        (helper,) = poll(lambda: drain_helpers(worker.proc.pid), 30, "a drain helper to start")
        worker.proc.send_signal(signal.SIGTERM)  # as systemd stops it: the worker, not its group
        assert worker.wait(15) == 0, worker.output()[-3000:]
        assert not Path(f"/proc/{helper}").exists() or _zombie(helper), "the helper outlived the worker"
        assert delivered_ids(fake) < BACKLOG  # stopped mid-drain
        again = start_worker(database, fake, BRIDGE_DRAIN_HELPERS="0")
        try:
            poll(lambda: delivered_ids(fake) >= BACKLOG, 90, "every event to reach Segment")
            stats = store_settled(database, 30)
        finally:
            again.stop()
    finally:
        worker.stop()
        fake.stop()
    assert stats["delivered"] == BACKLOG and stats["dead"] == 0, stats


def test_no_helper_with_drain_helpers_0(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'backlog.db'}"
    fill_backlog(database, 5_000)
    fake = FakeSegment(keep_calls=False).start()
    worker = start_worker(database, fake, BRIDGE_DRAIN_HELPERS="0")
    seen: list[int] = []
    try:
        def drained() -> bool:
            seen.extend(drain_helpers(worker.proc.pid))
            return delivered_ids(fake) >= 5_000

        poll(drained, 60, "every event to reach Segment")
    finally:
        worker.stop()
        fake.stop()
    assert seen == []
    assert overlapping(fake) == 0  # one forwarder: each batch posted after the answer to the last


def overlapping(fake: FakeSegment) -> int:
    """Batches posted while the one posted before them was still unanswered (by 50 ms or more):
    one forwarder posts a batch only once the batch before has its answer."""
    with fake.lock:
        spans = sorted((datetime.fromisoformat(r.sent_at).timestamp(), r.at)
                       for r in fake.requests if r.sent_at)
    return sum(1 for (_, answered), (sent, _) in itertools.pairwise(spans) if sent < answered - 0.05)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
