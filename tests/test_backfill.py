"""The backfill (#13) in process, against the fake Mailjet history API (real HTTP on loopback).

Every run goes through ``Backfill`` as the CLI builds it; the store is SQLite, and PostgreSQL too where
it says ``store_on_each_backend``. The CLI and a running bridge are in ``test_backfill_cli.py``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.app import create_app
from bridge.backfill.client import BackfillStopped, CallCounts, HistoryClient, RetryPolicy
from bridge.backfill.mapping import MessageRecord, click_event, open_event
from bridge.backfill.progress import bar, status_line
from bridge.backfill.reconcile import reconcile
from bridge.backfill.resources import PAGE_LIMIT
from bridge.backfill.runner import (
    STALE_RUN_SECONDS,
    STATUS_KEY,
    Backfill,
    Plan,
    Progress,
    cutoff,
    other_run,
    stored_status,
)
from bridge.config import DEFAULT_SCHEMA_DIR, load_settings
from bridge.inbound.intake import KIND, new_item
from bridge.inbound.track import dedupe_key, message_id
from bridge.payloads.schemas import EventValidator
from bridge.storage.base import Store
from tests.fakes.mailjet_history import (
    DAY,
    FakeMailjetHistory,
    Message,
    Scripted,
    build_history,
    expected,
)
from tests.processes import free_port
from tests.test_admin import PASSWORD, logged_in

VALIDATOR = EventValidator.mailjet(DEFAULT_SCHEMA_DIR)
#: Ten days ago at midnight: far from "today", so a request without FromTS finds nothing.
SINCE = (int(time.time()) // DAY - 10) * DAY
DAYS = 4
UNTIL = SINCE + DAYS * DAY


@pytest.fixture
def history() -> Iterator[FakeMailjetHistory]:
    server = FakeMailjetHistory().start()
    build_history(server, SINCE, DAYS, 300)
    yield server
    server.stop()


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)  # the backoff is checked, not waited for


def run(store: Store, fake: FakeMailjetHistory, *, secret: str = "mj-secret", dry_run: bool = False,
        max_window_rows: int = 50_000, sleeps: Sleeps | None = None) -> Backfill:
    client = HistoryClient(fake.url, ("mj-key", secret), retry=RetryPolicy(base_seconds=0.5),
                           sleep=sleeps if sleeps is not None else Sleeps())
    backfill = Backfill(store, client, VALIDATOR, Plan(SINCE, UNTIL, UNTIL, "as given"),
                        dry_run=dry_run, max_window_rows=max_window_rows)
    backfill.run()
    return backfill


def queued(store: Store) -> list[dict[str, Any]]:
    return [json.loads(row["payload"]) for row in store.recent(100_000, kind=KIND)]


def keys(store: Store) -> Counter[str]:
    return Counter(dedupe_key(event) for event in queued(store))


def test_every_event_type_is_rebuilt_with_the_live_key(
        store_on_each_backend: Store, history: FakeMailjetHistory) -> None:
    """Completeness per type, and each history event has the key its live form has: the same
    MessageID (exact, above 2^53), email, time and url."""
    backfill = run(store_on_each_backend, history)
    truth = expected(history, SINCE, UNTIL)
    assert Counter(e["event"] for e in queued(store_on_each_backend)) == Counter(e["event"] for e in truth)
    assert set(keys(store_on_each_backend)) == {dedupe_key(e) for e in truth}
    assert max(keys(store_on_each_backend).values()) == 1
    assert set(truth and Counter(e["event"] for e in truth)) == {
        "sent", "open", "click", "bounce", "blocked", "spam", "unsub"}
    assert backfill.progress.mismatches == []
    # the traps: every read bounded in time, the email asked for, never Limit=0
    for path, params in history.requests:
        if path == "/v3/REST/message":
            assert {"FromTS", "ToTS"} <= params.keys() and params["ShowContactAlt"] == "true"
        if path.split("/")[-1] in ("openinformation", "clickstatistics", "bouncestatistics"):
            assert {"FromTS", "ToTS", "EventFromTs", "EventToTs"} <= params.keys()
        assert params.get("Limit") in (None, str(PAGE_LIMIT)), params


def test_backfilled_events_are_marked_and_leave_out_what_history_cannot_give(
        store: Store, history: FakeMailjetHistory) -> None:
    run(store, history)
    events = queued(store)
    assert all(e["backfilled"] is True for e in events)
    for e in events:
        assert not {"Payload", "ip", "geo", "smtp_reply", "comment", "source"} & e.keys()
        assert ("agent" in e) == (e["event"] == "open")  # the open log has the full user agent
        assert type(e.get("MessageID", 0)) is int
    sent = [e for e in events if e["event"] == "sent"]
    assert any(e.get("time_approximate") for e in sent)  # the arrival time stands in
    spam = [e for e in events if e["event"] == "spam"]
    assert spam and not any(e.get("time_approximate") for e in spam)  # /messagehistory's time
    clicks = [e for e in events if e["event"] == "click"]
    assert all(e["email"].endswith("@example.com") and e["url"] for e in clicks)  # joined on MessageID
    assert all(e["customcampaign"] == f"spring-sale-{e['mj_campaign_id']}" for e in events)
    assert all(e["mj_list_id"] == 7 for e in events if e["event"] == "unsub")
    early = [e for e in events if e.get("email") == "early@example.com"]
    assert [e["event"] for e in early] == ["open"]  # sent before --since: found by a lookup
    big = max(e["MessageID"] for e in events)
    assert big > 2**53 and float(big) != big
    assert any(f'"MessageID": {big},' in row["payload"] for row in store.recent(100_000, kind=KIND))


def test_history_and_live_forms_of_an_open_share_one_key() -> None:
    """A live open carries ip, geo, agent, Payload and maybe only ``mj_message_id``; its key is the
    backfilled one's, for a MessageID above 2^53 too."""
    ident = 2**54 + 3
    row = {"ID": -1, "MessageID": ident, "CampaignID": 7, "ContactID": 9, "OpenedAt": "2026-01-05T10:00:00Z"}
    history = open_event(row, MessageRecord(email="Ann@Example.com", guid="g"))
    assert history is not None
    live = {"event": "open", "time": history["time"], "MessageID": ident, "email": "ann@example.com",
            "ip": "1.2.3.4", "geo": "FR", "agent": "x", "Payload": "", "CustomID": ""}
    only_text_id = {k: v for k, v in live.items() if k != "MessageID"} | {"mj_message_id": str(ident)}
    assert dedupe_key(history) == dedupe_key(live) == dedupe_key(only_text_id)
    assert new_item(history, json.dumps(history)).dedupe_key == new_item(live, json.dumps(live)).dedupe_key
    click = click_event({"MessageID": str(ident), "ClickedAt": "2026-01-05T10:00:05Z", "Url": "https://x"},
                        MessageRecord(email="ann@example.com"))
    assert click is not None and click["MessageID"] == ident  # a quoted id is read as the integer
    assert message_id(dedupe_key(click)).startswith("mailjet-")


def test_a_second_run_reads_nothing_and_adds_nothing(store: Store, history: FakeMailjetHistory) -> None:
    run(store, history)
    before = len(queued(store))
    requests = len(history.requests)
    again = run(store, history)
    assert len(queued(store)) == before
    assert sum(again.progress.queued.values()) == 0
    assert len(history.requests) - requests == 0  # every window is done: not even a countOnly


def test_a_run_stopped_part_way_resumes_and_queues_each_event_once(
        store_on_each_backend: Store, history: FakeMailjetHistory) -> None:
    """A run stopped after some pages (here by a 400) resumes at its checkpoints."""
    history.then(Scripted(400, "/clickstatistics", reads_only=True))
    with pytest.raises(BackfillStopped, match="refused a history request"):
        run(store_on_each_backend, history)
    assert stored_status(store_on_each_backend)["state"] == "stopped"
    partial = len(queued(store_on_each_backend))
    assert partial > 0
    seen = len(history.requests)
    run(store_on_each_backend, history)
    truth = expected(history, SINCE, UNTIL)
    assert keys(store_on_each_backend) == Counter(dedupe_key(e) for e in truth)
    again = [path for path, _params in history.requests[seen:]]
    assert "/v3/REST/message" not in again  # finished before the stop: neither counted nor read again
    assert "/v3/REST/clickstatistics" in again
    assert stored_status(store_on_each_backend)["state"] == "finished"


def test_a_second_run_at_once_is_refused_while_the_first_lives(
        store: Store, history: FakeMailjetHistory) -> None:
    """Two runs would double the requests made with one key; a run killed on this machine does not
    hold the next one back (kill -9 and resume), and one elsewhere stops counting when it is stale."""
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        try:
            running = {"state": "running", "pid": other.pid, "host": socket.gethostname(),
                       "updated_at": time.time() - 5}
            store.put_setting(STATUS_KEY, json.dumps(running), time.time())
            with pytest.raises(BackfillStopped, match=f"another backfill is running \\(process {other.pid}"):
                run(store, history)
            assert history.requests == [] and json.loads(store.get_setting(STATUS_KEY)) == running
        finally:
            other.kill()
    run(store, history)  # the other process is gone: this one goes ahead
    assert stored_status(store)["state"] == "finished" and queued(store)


def test_whether_another_run_is_going_on() -> None:
    now, here, status = 1_000_000.0, "host-a", {"state": "running", "pid": 4242, "updated_at": 999_990.0}
    assert other_run({**status, "host": here}, now, host=here, alive=lambda pid: True)
    assert other_run({**status, "host": here}, now, host=here, alive=lambda pid: False) is None
    assert other_run({**status, "host": "host-b"}, now, host=here, alive=lambda pid: False)
    assert other_run({**status, "host": "host-b", "updated_at": now - STALE_RUN_SECONDS}, now,
                     host=here) is None
    assert other_run({**status, "host": here, "state": "finished"}, now, host=here) is None
    assert other_run(None, now) is None and other_run({"state": "running"}, now) is None


def test_429_without_retry_after_is_retried_with_growing_backoff(
        store: Store, history: FakeMailjetHistory) -> None:
    history.then(Scripted(429, "/openinformation", times=3), Scripted(503, "/bouncestatistics"))
    sleeps = Sleeps()
    backfill = run(store, history, sleeps=sleeps)
    assert backfill.client.counts.throttled == 3 and backfill.client.counts.retries == 4
    assert sleeps[0] < sleeps[2] and all(0.25 <= s <= 2.0 for s in sleeps)
    assert keys(store) == Counter(dedupe_key(e) for e in expected(history, SINCE, UNTIL))


def test_401_stops_the_run_with_a_sentence(store: Store, history: FakeMailjetHistory) -> None:
    with pytest.raises(BackfillStopped) as stopped:
        run(store, history, secret="wrong")
    assert "refused the API key pair (401)" in str(stopped.value)
    assert "MAILJET_API_SECRET" in str(stopped.value) and "wrong" not in str(stopped.value)
    assert len(history.requests) == 1 and queued(store) == []


def test_a_large_window_is_split_and_every_event_still_arrives_once(
        store: Store, history: FakeMailjetHistory) -> None:
    backfill = run(store, history, max_window_rows=100)
    assert backfill.progress.windows_total > 4 * DAYS
    split = [c for c in store.checkpoints("message").values() if c.state == "split"]
    assert split and all(c.expected > 100 for c in split)
    assert all(c.state in ("split", "done") for c in store.checkpoints("message").values())
    assert keys(store) == Counter(dedupe_key(e) for e in expected(history, SINCE, UNTIL))


def test_a_window_whose_rows_differ_from_its_count_is_reported(store: Store) -> None:
    fake = FakeMailjetHistory().start()
    try:
        build_history(fake, SINCE, 1, 50)
        fake.lose_rows = 1
        client = HistoryClient(fake.url, ("mj-key", "mj-secret"), sleep=Sleeps())
        backfill = Backfill(store, client, VALIDATOR, Plan(SINCE, SINCE + DAY, SINCE + DAY, "as given"))
        backfill.run()
    finally:
        fake.stop()
    assert any("message" in m and "countOnly said 50" in m for m in backfill.progress.mismatches)


def test_a_dry_run_counts_per_type_and_window_and_queues_nothing(
        store: Store, history: FakeMailjetHistory) -> None:
    backfill = run(store, history, dry_run=True)
    assert queued(store) == [] and store.checkpoints("message") == {}
    assert stored_status(store) is None
    counted: Counter[str] = Counter()
    for (kind, _start, _end), n in backfill.progress.counted.items():
        counted[kind] += n
    truth = Counter(e["event"] for e in expected(history, SINCE, UNTIL))
    for kind in ("sent", "blocked", "open", "click", "bounce"):
        assert counted[kind] == truth[kind], kind
    assert all(path.count("/") == 3 and q.get("countOnly") == "1" for path, q in history.requests)


def test_reconcile_reports_differences_with_statcounters(
        store_on_each_backend: Store, history: FakeMailjetHistory) -> None:
    store = store_on_each_backend
    backfill = run(store, history)
    assert reconcile(store, backfill.client, SINCE, UNTIL).differences == []
    history.add(Message(2**60 + 1, SINCE + 100, 500, 5, "late@example.com", "g", opens=[SINCE + 200]))
    result = reconcile(store, backfill.client, SINCE, UNTIL)
    assert {(d.event_type, d.mailjet - d.bridge) for d in result.differences} == {("sent", 1), ("open", 1)}


def test_until_defaults_to_the_earliest_live_event_plus_an_hour(store_on_each_backend: Store) -> None:
    store = store_on_each_backend
    live = {"event": "open", "time": SINCE + 5 * DAY, "MessageID": 1, "email": "a@example.com"}
    store.accept([new_item(live, json.dumps(live))], [], time.time())
    plan = cutoff(store, SINCE, None, time.time(), dry_run=False)
    assert (plan.until, plan.spine_until) == (live["time"] + 3600, live["time"])
    # a later run finds the same cutoff, whatever the backfill has queued since
    early = {"event": "open", "time": SINCE + 1, "MessageID": 2, "email": "b@example.com"}
    store.accept([new_item(early, json.dumps(early))], [], time.time() + 1)
    assert cutoff(store, SINCE, None, time.time() + 2, dry_run=False).until == plan.until


def test_the_admin_overview_shows_the_backfill(env: dict[str, str], history: FakeMailjetHistory) -> None:
    admin_app = create_app(load_settings({**env, "BRIDGE_ADMIN_PASSWORD": PASSWORD}),
                           announce=lambda _: None)
    store = admin_app.extensions["bridge"].store
    assert 'id="backfill"' not in logged_in(admin_app).get("/admin/").text
    run(store, history)
    page = logged_in(admin_app).get("/admin/").text
    assert 'id="backfill"' in page and "finished" in page
    assert f"{len(expected(history, SINCE, UNTIL))} queued" in page
    store.close()


def test_the_progress_bar_and_lines_say_windows_pages_types_requests_and_429s() -> None:
    progress = Progress(windows_total=8, windows_done=2, pages=5, queued={"open": 40, "sent": 12})
    counts = CallCounts(requests=30, throttled=2)
    line = status_line(progress, counts)
    assert line == "windows 2/8  pages 5  queued 52 (sent=12 open=40)  requests 30  429s 2"
    assert bar(progress, counts).startswith("[######" + "." * 18 + "] windows 2/8")


def test_a_live_feed_older_than_since_leaves_only_the_overlap_hour(store: Store) -> None:
    live = {"event": "sent", "time": SINCE - 7_200, "MessageID": 1, "email": "a@example.com"}
    store.accept([new_item(live, json.dumps(live))], [], time.time())
    plan = cutoff(store, SINCE, None, time.time(), dry_run=False)
    assert plan.until <= SINCE and plan.spine_until < SINCE  # the CLI: "nothing to backfill"


def test_no_answer_is_retried_then_stops_with_a_sentence() -> None:
    sleeps = Sleeps()
    client = HistoryClient(f"http://127.0.0.1:{free_port()}", ("mj-key", "mj-secret"),
                           retry=RetryPolicy(base_seconds=0.5, attempts=4), sleep=sleeps,
                           timeout=(0.5, 0.5))
    with pytest.raises(BackfillStopped, match="kept failing on /v3/REST/message after 4 tries"):
        client.get("/v3/REST/message", {"countOnly": 1})
    assert client.counts.requests == 4 and len(sleeps) == 3
