"""The backfill (#13) through the real CLI beside a running bridge (``make run``), against the fake
Mailjet history API and the fake Segment: several days of history, a run killed with SIGKILL and
started again, a third run, and the same opens posted live afterwards."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.backfill.runner import stored_status
from bridge.inbound.track import dedupe_key, message_id
from bridge.storage import open_store
from tests.fakes.mailjet_history import DAY, FakeMailjetHistory, Scripted, build_history, expected
from tests.fakes.segment import FakeSegment
from tests.processes import BIN, Process, callback_auth, poll, spawn

SINCE = (int(time.time()) // DAY - 9) * DAY
DAYS = 5


@pytest.fixture
def history() -> Iterator[FakeMailjetHistory]:
    server = FakeMailjetHistory().start()
    build_history(server, SINCE, DAYS, 400)
    yield server
    server.stop()


def backfill(tmp_path: Path, history: FakeMailjetHistory, *args: str, secret: str = "mj-secret") -> Process:
    return spawn([str(BIN / "mailjet-bridge"), "backfill", "--since",
                  time.strftime("%Y-%m-%d", time.gmtime(SINCE)), "--backoff-seconds", "0.2", *args], {
        "BRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'bridge.db'}",
        "MAILJET_API_URL": history.url, "MAILJET_API_KEY": "mj-key", "MAILJET_API_SECRET": secret,
    })


def status(tmp_path: Path) -> dict[str, Any]:
    store = open_store(f"sqlite:///{tmp_path / 'bridge.db'}")
    try:
        return stored_status(store) or {}
    finally:
        store.close()


def test_backfill_killed_resumed_and_run_again_delivers_each_event_once(
        start_make_run: Any, fake_segment: FakeSegment, history: FakeMailjetHistory,
        tmp_path: Path) -> None:
    base, bridge = start_make_run()
    truth = expected(history, SINCE, int(time.time()))
    assert set(Counter(e["event"] for e in truth)) == {"sent", "open", "click", "bounce", "blocked",
                                                       "spam", "unsub"}

    # a first run, killed with SIGKILL part-way through (a slow Mailjet makes "part-way" reachable)
    history.delay = 0.01
    first = backfill(tmp_path, history)
    poll(lambda: status(tmp_path).get("windows_done", 0) >= 3 or first.proc.poll() is not None, 60,
         "the first run to finish a few windows")
    first.stop(signal.SIGKILL)
    killed = status(tmp_path)
    assert killed["state"] == "running" and killed["windows_done"] < killed["windows_total"], killed
    assert 0 < killed["queued"] < len(truth)

    # started again: it resumes, through two 429s without Retry-After
    history.delay = 0.0
    history.then(Scripted(429, "/openinformation", times=2))
    started = time.monotonic()
    second = backfill(tmp_path, history)
    assert second.wait(120) == 0, second.output()
    elapsed = time.monotonic() - started
    assert "429s 2" in second.output() and "windows " in second.output()
    assert "reconcile:" in second.output()
    fake_segment.wait_for(lambda f: len(f.accepted) >= len(truth), timeout=60)
    ids = fake_segment.message_ids()
    assert len(ids) == len(set(ids)) == len(truth)
    assert set(ids) == {message_id(dedupe_key(e)) for e in truth}
    by_type = Counter(call["properties"]["mailjet_event"] for call in fake_segment.accepted)
    assert by_type == Counter(e["event"] for e in truth)
    assert all(call["properties"]["backfilled"] is True for call in fake_segment.accepted)
    assert status(tmp_path)["state"] == "finished"
    print(f"\nsecond run: {elapsed:.1f} s\n{second.output()}")  # figures for the closing note

    # a third run adds nothing
    third = backfill(tmp_path, history)
    assert third.wait(60) == 0, third.output()
    total = [line for line in third.lines if line.startswith("total")]
    assert total and total[0].split()[1] == "0", third.output()
    health = requests.get(f"{base}/healthz", timeout=5).json()
    assert health["queue"]["pending"] == 0 and health["queue"]["delivered"] == len(truth)

    # the same opens, posted live afterwards (with ip, geo, agent; some only with mj_message_id)
    opens = [e for e in truth if e["event"] == "open"]
    for n, event in enumerate(opens[::2]):
        if n % 2:
            text_id = {"mj_message_id": str(event["MessageID"])}
            event = {k: v for k, v in event.items() if k != "MessageID"} | text_id
        opens[2 * n] = event
    answer = requests.post(f"{base}/webhooks/mailjet", json=opens, auth=callback_auth(bridge), timeout=30)
    assert answer.json() == {"accepted": 0, "duplicate": len(opens), "quarantined": 0}
    assert len(fake_segment.accepted) == len(truth)


@pytest.mark.slow  # starts processes
def test_a_wrong_key_pair_stops_the_backfill_with_a_sentence(tmp_path: Path,
                                                             history: FakeMailjetHistory) -> None:
    run = backfill(tmp_path, history, secret="not-the-secret")
    assert run.wait(60) == 1
    assert "backfill stopped: Mailjet refused the API key pair (401)" in run.output()
    assert "not-the-secret" not in run.output() and "Traceback" not in run.output()


@pytest.mark.slow  # starts processes
def test_a_dry_run_prints_counts_per_type_and_window(tmp_path: Path, history: FakeMailjetHistory) -> None:
    run = backfill(tmp_path, history, "--dry-run", "--until",
                   time.strftime("%Y-%m-%d", time.gmtime(SINCE + DAYS * DAY)))
    assert run.wait(60) == 0, run.output()
    truth = Counter(e["event"] for e in expected(history, SINCE, SINCE + DAYS * DAY))
    total = next(line for line in run.lines if line.startswith("total")).split()[1:]
    header = next(line for line in run.lines if line.startswith("window start")).split()[4:]
    counts = dict(zip(header, map(int, total), strict=True))
    assert {k: counts[k] for k in ("sent", "open", "click", "bounce", "blocked")} == {
        k: truth[k] for k in ("sent", "open", "click", "bounce", "blocked")}
    assert "nothing queued" in run.output()
    assert all(q.get("countOnly") == "1" for _path, q in history.requests)
