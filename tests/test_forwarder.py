"""The forwarder against a real fake-Segment HTTP server: delivery and every retry rule
of docs/behaviour.md, "Delivery".

Time is a controlled clock, so backoff and Retry-After are checked without sleeping.
"""

from __future__ import annotations

import hashlib
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
from bridge.inbound.source import KeyVerifier, hold_for, stored_check
from bridge.inbound.track import dedupe_key, message_id
from bridge.payloads.body import parse_body
from bridge.payloads.schemas import EventValidator
from bridge.storage.base import NewItem, Store
from tests.conftest import T0, Clock
from tests.fakes.segment import FakeSegment, Scripted

VALIDATOR = EventValidator.mailjet(DEFAULT_SCHEMA_DIR)


class Rig:
    """A forwarder wired to the fake Segment, with a write key that tests can change."""

    def __init__(self, store: Store, fake: FakeSegment, clock: Clock, url: str | None = None,
                 read_timeout: float = 2.0) -> None:
        self.store, self.fake, self.clock = store, fake, clock
        self.key: str | None = "good-key"
        #: As configured: a region, and whether an explicit API URL makes it moot.
        self.region, self.explicit_url = "auto", url is not None
        self.verifier = KeyVerifier(store, lambda: fake.url, clock=clock)
        self.forwarder = Forwarder(
            store,
            SegmentClient(url or fake.url, timeout=(1.0, read_timeout), clock=clock),
            write_key=lambda: self.key,
            event_names=lambda: EVENT_NAME_PRESETS["mailjet"],
            gate=lambda key: hold_for(self.verifier.check(key), self.region, self.explicit_url),
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


def test_a_key_segment_does_not_know_sends_nothing_and_events_wait(rig: Rig) -> None:
    """Segment's tracking API would answer 200 to a typo'd key and drop every event: the settings
    CDN's 404 holds delivery instead, and a known key delivers everything at once."""
    rig.key = "good-kye"
    rig.accept(numbered(3))
    assert rig.run() == 0
    assert rig.fake.requests == []  # nothing sent with that key
    assert rig.status()["state"] == "unknown_write_key"
    assert "Segment does not know this write key" in rig.status()["detail"]
    assert rig.stats()["pending"] == 3
    rig.key = "good-key"  # corrected (environment, CLI or admin): checked at once
    assert rig.run() == 3
    assert rig.status()["state"] == "ok" and len(rig.fake.accepted) == 3


def test_the_key_is_checked_at_start_on_change_and_every_ten_minutes(rig: Rig) -> None:
    rig.accept(numbered(1))
    rig.run()
    rig.clock.advance(599)
    rig.run()
    assert rig.fake.cdn_counts["good-key"] == 1
    rig.clock.advance(2)
    rig.run()
    assert rig.fake.cdn_counts["good-key"] == 2
    rig.key = "good-key-2"
    rig.fake.write_keys.add("good-key-2")
    rig.run()
    assert rig.fake.cdn_counts["good-key-2"] == 1


def test_an_unreachable_cdn_never_stops_delivery(rig: Rig) -> None:
    rig.fake.cdn_fail(times=1, status=503)
    rig.accept(numbered(2))
    assert rig.run() == 2  # never verified: delivered, with a visible warning
    check = stored_check(rig.store, "good-key")
    assert check is not None and check.verdict == "unverified"
    assert "not verified" in check.detail


def test_an_unreachable_cdn_keeps_the_last_verdict(rig: Rig) -> None:
    rig.key = "good-kye"
    rig.accept(numbered(1))
    rig.run()
    rig.clock.advance(601)
    rig.fake.cdn_fail(times=5, status=503)
    assert rig.run() == 0  # still unknown: the CDN being down proves nothing
    assert rig.status()["state"] == "unknown_write_key"


def test_an_explicit_region_that_contradicts_the_key_holds_delivery(rig: Rig) -> None:
    rig.fake.regions["good-key"] = "eu"
    rig.region, rig.explicit_url = "us", False
    rig.accept(numbered(1))
    assert rig.run() == 0
    assert rig.status()["state"] == "region_mismatch"
    assert "SEGMENT_REGION is us but this write key's source is in eu" in rig.status()["detail"]
    rig.region = "auto"
    assert rig.run() == 1


def test_a_400_naming_the_write_key_pauses_instead_of_bisecting(rig: Rig) -> None:
    rig.accept(numbered(8))
    rig.fake.then(Scripted(400, body={"code": "invalid_request", "message": "Invalid write key"}))
    assert rig.run() == 0
    assert len(rig.fake.requests) == 1  # not split into 15 requests and 8 dead letters
    assert rig.status()["state"] == "auth_failed"
    assert rig.stats()["dead"] == 0 and rig.stats()["pending"] == 8


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
    ours = [r for r in caplog.records if r.name.startswith("bridge")]
    assert ours
    leaked = [r for r in ours if "secret-write-key-123" in json.dumps(vars(r), default=str)]
    assert not leaked
    assert "secret-write-key-123" not in json.dumps(rig.status())
    assert "secret-write-key-123" not in (rig.store.get_setting("segment.key_check") or "")


def test_the_cdn_url_with_the_key_stays_out_of_production_logs() -> None:
    """urllib3 logs request URLs at DEBUG; the settings CDN's URL holds the write key. The bridge's
    log configuration keeps urllib3 at WARNING (and the redaction filter would scrub it anyway)."""
    import logging

    from bridge import logs

    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("urllib3").level)
    try:
        logs.configure(logging.DEBUG)
        assert logging.getLogger("urllib3.connectionpool").getEffectiveLevel() == logging.WARNING
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        logging.getLogger("urllib3").setLevel(saved[2])


# -- poison values, stranded rounds, recovery (issue #9) --------------------------------------------


def store_raw(rig: Rig, *texts: str) -> None:
    """Queue events as stored text, bypassing intake (rows accepted before intake refused such
    values, or anything intake may miss): the forwarder must isolate them by itself."""
    rig.store.accept([NewItem(SEGMENT_TRACK, hashlib.sha256(t.encode()).hexdigest(), "sent", t, 1)
                      for t in texts], [], rig.clock())


POISON_EVENTS = {
    "lone surrogate": '{"event":"sent","time":1700000000,"MessageID":1,"CustomID":"\\ud800"}',
    "non-finite": '{"event":"sent","time":1700000000,"MessageID":2,"extra":1e400}',
    "not an object": '[1, 2]',
}


def test_a_poison_event_is_a_dead_letter_and_its_batch_goes_on(rig: Rig) -> None:
    store_raw(rig, *POISON_EVENTS.values(), *(json.dumps(e) for e in numbered(3)))
    assert rig.run() == 6
    assert len(rig.fake.accepted) == 3
    reasons = sorted(d["last_error"] for d in rig.store.dead_letters())
    assert [r.split(":")[1].strip() for r in reasons] == ["TypeError", "UnicodeEncodeError", "ValueError"]
    assert rig.stats()["leased"] == rig.stats()["pending"] == 0


def test_values_orjson_reads_differently_arrive_as_json_reads_them(rig: Rig) -> None:
    """The forwarder reads and writes with orjson where it agrees with ``json``
    (bridge/delivery/fastjson.py): an integer beyond 64 bits (a float to orjson), one just within
    them, and floats reach Segment as ``json`` reads them; the integers as text, as any beyond what
    JavaScript reads exactly."""
    text = ('{"event":"sent","time":1700000000,"MessageID":5,"huge":123456789012345678901234567890,'
            '"u64":18446744073709551615,"ratio":0.1,"big":1e16,"neg":-0.0,"nested":[{"f":2.5e-7}]}')
    store_raw(rig, text)
    assert rig.run() == 1
    (call,) = rig.fake.accepted
    props = call["properties"]
    assert props["huge"] == "123456789012345678901234567890" and props["u64"] == "18446744073709551615"
    assert (props["ratio"], props["big"], props["nested"]) == (0.1, 1e16, [{"f": 2.5e-7}])
    assert str(props["neg"]) == "-0.0"


def test_a_deep_payload_is_no_poison(rig: Rig) -> None:
    deep = {"event": "sent", "time": 1_700_000_000, "MessageID": 3, "Payload": "[" * 5000}
    store_raw(rig, json.dumps(deep), json.dumps(numbered(1)[0]))
    assert rig.run() == 2
    assert rig.stats()["leased"] == rig.stats()["pending"] == 0


def test_an_error_outside_any_event_releases_the_round_at_once(rig: Rig) -> None:
    rig.accept(numbered(2))

    def broken() -> dict[str, str]:
        raise RuntimeError("a bug in the naming preset")

    rig.forwarder.event_names = broken
    assert rig.run() == 0
    assert (rig.stats()["leased"], rig.stats()["pending"]) == (0, 2)
    assert rig.status()["state"] == "retrying" and "RuntimeError" in rig.status()["detail"]
    rig.forwarder.event_names = lambda: EVENT_NAME_PRESETS["mailjet"]
    rig.clock.advance(rig.forwarder.pacer.hold_until - rig.clock())
    assert rig.run() == 2


def test_rows_held_by_an_earlier_process_are_due_once_segment_answers(rig: Rig) -> None:
    """A process killed during an outage left rows due minutes later; the next delivery that
    succeeds makes them due at once, oldest first."""
    rig.accept(numbered(3))
    held = rig.store.claim(SEGMENT_TRACK, 10, "killed-during-outage", 60, rig.clock())
    rig.store.release([i.id for i in held], "killed-during-outage", rig.clock() + 300, "HTTP 500")
    rig.accept([{**e, "MessageID": e["MessageID"] + 100} for e in numbered(2)])
    assert rig.run() == 2  # the new ones; success ends the hold of the others...
    assert rig.run() == 3  # ...so they go in the next round, not in 5 minutes
    assert rig.stats()["delivered"] == 5


def test_retry_after_sets_the_wait_even_when_shorter_than_the_backoff(rig: Rig) -> None:
    rig.accept(numbered(1))
    rig.fake.then(Scripted(500), Scripted(500), Scripted(500), Scripted(429, headers={"Retry-After": "1"}))
    for _ in range(3):
        rig.run()
        rig.clock.advance(rig.forwarder.pacer.hold_until - rig.clock())
    assert rig.run() == 0  # the 429
    assert rig.forwarder.pacer.hold_until - rig.clock() == 1.0  # not the 16 s backoff step
    rig.clock.advance(1.0)
    assert rig.run() == 1
