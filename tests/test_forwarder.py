"""The forwarder against a real fake-Segment HTTP server: delivery and every retry rule
of docs/behaviour.md, "Delivery".

Time is a controlled clock, so backoff and Retry-After are checked without sleeping.
"""

from __future__ import annotations

import json
import random
import socket
import threading
from typing import Any

import pytest

from bridge.config import DEFAULT_SCHEMA_DIR
from bridge.delivery.pacing import PacingPolicy, status_key
from bridge.inbound.fields import EVENT_NAME_PRESETS
from bridge.inbound.forwarder import Forwarder, ForwarderPolicy
from bridge.inbound.intake import KIND as SEGMENT_TRACK
from bridge.inbound.intake import sort_events
from bridge.inbound.segment import SegmentClient
from bridge.inbound.track import dedupe_key, message_id
from bridge.payloads.body import parse_body
from bridge.payloads.schemas import EventValidator
from bridge.storage.base import Store
from tests.conftest import T0, Clock
from tests.fakes.segment import FakeSegment, Scripted

VALIDATOR = EventValidator.mailjet(DEFAULT_SCHEMA_DIR)


class Rig:
    """A forwarder wired to the fake Segment, with a write key that tests can change."""

    def __init__(self, store: Store, fake: FakeSegment, clock: Clock, url: str | None = None,
                 read_timeout: float = 2.0) -> None:
        self.store, self.fake, self.clock = store, fake, clock
        self.key: str | None = "good-key"
        self.forwarder = Forwarder(
            store,
            SegmentClient(url or fake.url, timeout=(1.0, read_timeout), clock=clock),
            write_key=lambda: self.key,
            event_names=lambda: EVENT_NAME_PRESETS["mailjet"],
            policy=ForwarderPolicy(pacing=PacingPolicy(backoff_base=2.0, backoff_cap=60.0,
                                                       auth_retry_seconds=30.0)),
            clock=clock,
            rng=random.Random(7),
        )

    def accept(self, events: list[dict[str, Any]]) -> None:
        intake = sort_events(parse_body(json.dumps(events).encode()), VALIDATOR)
        assert not intake.quarantined
        self.store.accept(intake.items, [], self.clock())

    def run(self) -> int:
        return self.forwarder.run_once()

    def stats(self) -> dict[str, Any]:
        return self.store.stats(self.clock())

    def status(self) -> dict[str, Any]:
        return json.loads(self.store.get_setting(status_key("segment")) or "{}")


@pytest.fixture
def rig(store: Store, fake_segment: FakeSegment, clock: Clock) -> Rig:
    return Rig(store, fake_segment, clock)


def numbered(n: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"event": "sent", "time": 1_700_000_000 + i, "MessageID": 10**16 + i,
             "email": f"user{i}@example.com", **extra} for i in range(n)]


def test_delivers_all_seven_types_in_one_batch(rig: Rig, mailjet_events: dict[str, Any]) -> None:
    rig.accept(list(mailjet_events.values()))
    assert rig.run() == 7
    (request,) = rig.fake.requests
    assert request.status == 200 and request.write_key == "good-key"
    assert request.sent_at == "2027-01-15T08:00:00.000Z"
    assert {c["event"] for c in rig.fake.accepted} == set(EVENT_NAME_PRESETS["mailjet"].values())
    assert rig.stats()["delivered"] == 7 and rig.stats()["pending"] == 0
    assert rig.status()["state"] == "ok"


def test_user_id_is_looked_up_when_sent(rig: Rig, mailjet_events: dict[str, Any]) -> None:
    rig.accept([mailjet_events["open"]])
    rig.store.accept([], [], T0, [("user-42", "api@mailjet.com")])  # identify arrives after the event
    rig.run()
    (call,) = rig.fake.accepted
    assert call["userId"] == "user-42" and "anonymousId" not in call


def test_5xx_is_retried_with_growing_backoff_and_fresh_sent_at(rig: Rig) -> None:
    rig.accept(numbered(3))
    rig.fake.then(Scripted(500), Scripted(503), Scripted(502))
    waits = []
    for _ in range(3):
        assert rig.run() == 0
        next_at = rig.forwarder.pacer.hold_until
        waits.append(next_at - rig.clock())
        assert rig.run() == 0  # held: no request while waiting
        rig.clock.advance(waits[-1])
    assert rig.run() == 3
    # 2 s base doubling, each wait within [step/2, step]
    for n, wait in enumerate(waits):
        step = 2.0 * 2**n
        assert step / 2 <= wait <= step
    assert [r.status for r in rig.fake.requests] == [500, 503, 502, 200]
    sent_ats = [r.sent_at for r in rig.fake.requests]
    assert len(set(sent_ats)) == 4
    assert rig.stats()["delivered"] == 3


def test_backoff_is_capped(rig: Rig) -> None:
    rig.accept(numbered(1))
    for _ in range(10):
        rig.fake.then(Scripted(500))
        rig.run()
        wait = rig.forwarder.pacer.hold_until - rig.clock()
        rig.clock.advance(wait)
    assert wait <= 60.0
    assert rig.status()["state"] == "retrying"
    assert rig.stats()["pending"] == 1  # never dropped


def test_429_honours_retry_after(rig: Rig) -> None:
    rig.accept(numbered(2))
    rig.fake.then(Scripted(429, headers={"Retry-After": "30"}))
    assert rig.run() == 0
    rig.clock.advance(29)
    assert rig.run() == 0
    assert len(rig.fake.requests) == 1
    rig.clock.advance(1.01)
    assert rig.run() == 2
    assert "HTTP 429" in rig.status()["detail"] or rig.status()["state"] == "ok"


def test_400_splits_the_batch_and_dead_letters_only_the_bad_event(rig: Rig) -> None:
    events = numbered(10)
    bad = message_id(dedupe_key(events[6]))
    rig.fake.reject_message_ids = {bad}
    rig.accept(events)
    assert rig.run() == 10
    assert sorted(rig.fake.message_ids()) == sorted(
        message_id(dedupe_key(e)) for i, e in enumerate(events) if i != 6)
    stats = rig.stats()
    assert (stats["delivered"], stats["dead"]) == (9, 1)
    (dead,) = rig.store.dead_letters()
    assert dead["last_status"] == 400
    assert "Segment rejected the event (400)" in dead["last_error"]
    assert "event rejected" in dead["last_error"]  # Segment's own answer is kept
    assert json.loads(dead["payload"])["MessageID"] == events[6]["MessageID"]
    assert len(rig.fake.requests) <= 1 + 2 * 4  # bisection, not one request per event


@pytest.mark.parametrize("status", [401, 403])
def test_refused_write_key_pauses_and_drops_nothing(rig: Rig, status: int) -> None:
    rig.accept(numbered(4))
    rig.fake.then(Scripted(status))
    assert rig.run() == 0
    assert rig.status()["state"] == "auth_failed"
    assert "write key" in rig.status()["detail"]
    assert rig.stats()["pending"] == 4
    # paused: the same key is not hammered
    rig.clock.advance(10)
    assert rig.run() == 0 and len(rig.fake.requests) == 1
    # the same key is tried again after the pause
    rig.clock.advance(21)
    rig.fake.then(Scripted(status))
    assert rig.run() == 0 and len(rig.fake.requests) == 2
    # a new key is tried at once and delivers everything
    rig.key = "good-key-2"
    rig.fake.write_keys.add("good-key-2")
    assert rig.run() == 4
    assert rig.status()["state"] == "ok"


def test_wrong_key_against_the_fake_is_a_real_401(rig: Rig) -> None:
    rig.key = "not-a-key"
    rig.accept(numbered(1))
    rig.run()
    assert rig.fake.requests[0].status == 401
    assert rig.status()["state"] == "auth_failed"


def test_no_write_key_means_events_wait(rig: Rig) -> None:
    rig.key = None
    rig.accept(numbered(2))
    assert rig.run() == 0
    assert rig.fake.requests == []
    assert rig.status()["state"] == "no_write_key"
    assert rig.stats()["pending"] == 2
    rig.key = "good-key"
    assert rig.run() == 2


def test_timeout_then_late_200_resends_with_the_same_message_id(
        store: Store, fake_segment: FakeSegment, clock: Clock) -> None:
    rig = Rig(store, fake_segment, clock, read_timeout=0.3)
    rig.accept(numbered(1))
    rig.fake.then(Scripted(200, delay=1.0))  # Segment takes it, but answers after our timeout
    assert rig.run() == 0
    assert "no answer within" in rig.status()["detail"]
    rig.fake.wait_for(lambda f: len(f.accepted) == 1, timeout=5)
    rig.clock.advance(rig.forwarder.pacer.hold_until - clock())
    assert rig.run() == 1
    ids = rig.fake.message_ids()
    assert len(ids) == 2 and len(set(ids)) == 1  # a duplicate Segment will drop by messageId


def test_connection_refused_is_retried(store: Store, fake_segment: FakeSegment, clock: Clock) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    rig = Rig(store, fake_segment, clock, url=f"http://127.0.0.1:{closed_port}")
    rig.accept(numbered(1))
    assert rig.run() == 0
    assert rig.status()["state"] == "retrying"
    assert "connection failed" in rig.status()["detail"]
    assert rig.stats()["pending"] == 1


def test_oversized_event_is_dead_lettered_others_delivered(rig: Rig) -> None:
    events = numbered(3)
    events[1]["smtp_reply"] = "x" * 40_000
    rig.accept(events)
    assert rig.run() == 3
    assert len(rig.fake.accepted) == 2
    (dead,) = rig.store.dead_letters()
    assert "over Segment's 32 KB limit" in dead["last_error"]


def test_batches_stay_within_segment_limits(rig: Rig) -> None:
    rig.accept(numbered(2400, comment="y" * 900))  # ~2.5 MB in all
    while rig.stats()["pending"]:
        assert rig.run() > 0
    assert len(rig.fake.accepted) == 2400
    assert rig.fake.dropped_over_limit == []
    assert all(r.status == 200 for r in rig.fake.requests)
    assert len(rig.fake.requests) >= 6
    assert max(len(r.batch) for r in rig.fake.requests) < 2500


def test_rows_leased_by_a_dead_process_are_delivered_after_the_lease(rig: Rig) -> None:
    rig.accept(numbered(5))
    rig.store.claim(SEGMENT_TRACK, 3, "crashed-process", 60, rig.clock())
    assert rig.run() == 2  # the two unleased ones
    rig.clock.advance(61)
    assert rig.run() == 3
    assert rig.stats()["delivered"] == 5


def test_run_forever_stops_when_asked(store: Store, fake_segment: FakeSegment) -> None:
    forwarder = Forwarder(store, SegmentClient(fake_segment.url), write_key=lambda: "good-key",
                          event_names=lambda: EVENT_NAME_PRESETS["mailjet"],
                          policy=ForwarderPolicy(idle_seconds=0.05))
    intake = sort_events(parse_body(json.dumps(numbered(3)).encode()), VALIDATOR)
    store.accept(intake.items, [], 0)
    stop = threading.Event()
    thread = threading.Thread(target=forwarder.run_forever, args=(stop,))
    thread.start()
    fake_segment.wait_for(lambda f: len(f.accepted) == 3)
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_unicode_and_big_ids_arrive_intact(rig: Rig) -> None:
    event = {"event": "click", "time": 1_700_000_000, "MessageID": 2**53 + 1, "email": "Zoë@Exämple.com",
             "url": "https://exämple.com/straße?q=ü&e=🎉", "agent": "Agent/1.0 (日本語)"}
    rig.accept([event])
    rig.run()
    (call,) = rig.fake.accepted
    assert call["properties"]["email_id"] == "9007199254740993"
    assert call["properties"]["link_url"] == "https://exämple.com/straße?q=ü&e=🎉"
    assert call["context"]["userAgent"] == "Agent/1.0 (日本語)"
    assert call["anonymousId"] == "zoë@exämple.com"


def test_write_key_never_reaches_the_log(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    rig.key = "secret-write-key-123"
    rig.accept(numbered(1))
    with caplog.at_level("DEBUG"):
        rig.run()
        rig.key = "good-key"
        rig.run()
    assert caplog.records
    assert "secret-write-key-123" not in caplog.text
    assert "secret-write-key-123" not in json.dumps(rig.status())
