"""The forwarder as it runs (``run_forever``): the next round is claimed and prepared while the
current one is posted. Whatever it holds ahead stays leased and renewed, and is given back, never
lost nor sent twice, when a batch fails, when delivery is held, and at stop (docs/behaviour.md,
"Delivery").

Real time and a real fake-Segment server; every wait polls with a deadline.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.config import DEFAULT_SCHEMA_DIR
from bridge.delivery.janitor import Janitor
from bridge.delivery.pacing import PacingPolicy
from bridge.errors import StorageUnavailable
from bridge.inbound.batching import MAX_BATCH_BYTES
from bridge.inbound.fields import EVENT_NAME_PRESETS
from bridge.inbound.forwarder import Forwarder, ForwarderPolicy
from bridge.inbound.intake import KIND, sort_events
from bridge.inbound.segment import SegmentClient
from bridge.inbound.track import dedupe_key, message_id
from bridge.inbound.track import labels as track_labels
from bridge.payloads.body import parse_body
from bridge.payloads.schemas import EventValidator
from bridge.storage.base import Store
from tests.fakes.segment import FakeSegment, Scripted
from tests.processes import poll

VALIDATOR = EventValidator.mailjet(DEFAULT_SCHEMA_DIR)


@pytest.fixture
def store(store_on_each_backend: Store) -> Store:
    """Each test on both backends (the PostgreSQL cases are slow: they need the server)."""
    return store_on_each_backend


def queue(store: Store, n: int, **extra: Any) -> None:
    events = [{"event": "open", "time": 1_700_000_000 + i, "MessageID": 10**16 + i,
               "email": f"user{i}@example.com", **extra} for i in range(n)]
    store.accept(sort_events(parse_body(json.dumps(events).encode()), VALIDATOR).items, [], time.time())


class Running:
    """A forwarder in ``run_forever`` on a thread of its own, with a write key tests can change."""

    def __init__(self, store: Store, fake: FakeSegment, policy: ForwarderPolicy) -> None:
        self.store, self.fake = store, fake
        self.key: str | None = "good-key"
        self.forwarder = Forwarder(store, SegmentClient(fake.url, timeout=(1.0, 5.0)),
                                   write_key=lambda: self.key,
                                   event_names=lambda: EVENT_NAME_PRESETS["mailjet"], policy=policy)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.forwarder.run_forever, args=(self.stop,))

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop.set()
        self.thread.join(timeout=20)
        assert not self.thread.is_alive()

    def stats(self) -> dict[str, Any]:
        return self.store.stats(time.time())

    def attempts(self) -> list[int]:
        return sorted(row["attempts"] for row in self.store.recent(1000))


def policy(claim_limit: int, lease_seconds: float = 60.0) -> ForwarderPolicy:
    return ForwarderPolicy(claim_limit=claim_limit, lease_seconds=lease_seconds, idle_seconds=0.05,
                           pacing=PacingPolicy(backoff_base=30.0))


@pytest.fixture
def slow_first(fake_segment: FakeSegment) -> Iterator[FakeSegment]:
    """The first batch is answered 200 after 0.5 s: the round after it is made meanwhile."""
    fake_segment.then(Scripted(200, delay=0.5))
    yield fake_segment


def test_a_backlog_is_drained_in_full_batches(store: Store, fake_segment: FakeSegment) -> None:
    queue(store, 3000, comment="x" * 400)  # ~800 bytes a call: about 590 calls fill a batch
    with Running(store, fake_segment, ForwarderPolicy(idle_seconds=0.05)) as run:
        poll(lambda: run.stats()["delivered"] == 3000, 10, "the backlog to be delivered", step=0.01)
    assert sorted(fake_segment.message_ids()) == sorted(set(fake_segment.message_ids()))
    sizes = [len(json.dumps(r.batch, ensure_ascii=False, separators=(",", ":")))
             for r in fake_segment.requests]
    assert max(sizes) < MAX_BATCH_BYTES
    # 2 rounds of up to 2,000 events; each round's batches are full but its last
    assert sum(size > 0.9 * MAX_BATCH_BYTES for size in sizes) >= len(sizes) - 2
    assert run.stats()["leased"] == 0


def test_stopping_gives_back_the_round_made_ahead(store: Store, slow_first: FakeSegment) -> None:
    queue(store, 30)
    with Running(store, slow_first, policy(claim_limit=10)) as run:
        poll(lambda: run.stats()["leased"] == 20,
             10, "the next round to be claimed during the post", step=0.01)
    stats = run.stats()
    assert (stats["delivered"], stats["pending"], stats["leased"]) == (10, 20, 0)
    assert run.attempts() == [0] * 20 + [1] * 10  # given back untried: no attempt counted
    assert len(slow_first.accepted) == 10


def test_a_failed_batch_gives_back_the_round_made_ahead_too(
        store: Store, fake_segment: FakeSegment) -> None:
    queue(store, 30)
    fake_segment.then(Scripted(503, delay=0.5))
    with Running(store, fake_segment, policy(claim_limit=10)) as run:
        poll(lambda: len(fake_segment.requests) == 1 and run.stats()["leased"] == 0,
             10, "the round to be given back", step=0.01)
        stats = run.stats()
        assert (stats["pending"], stats["delivered"]) == (30, 0)
        assert run.attempts() == [0] * 20 + [1] * 10  # only the tried batch counts an attempt
        time.sleep(0.2)
        assert len(fake_segment.requests) == 1 and run.stats()["leased"] == 0  # backing off


def test_a_held_write_key_gives_back_the_round_made_ahead(store: Store, slow_first: FakeSegment) -> None:
    queue(store, 30)
    with Running(store, slow_first, policy(claim_limit=10)) as run:
        poll(lambda: run.stats()["leased"] == 20,
             10, "the next round to be claimed during the post", step=0.01)
        run.key = None  # removed while the first batch is in flight
        poll(lambda: run.stats()["leased"] == 0, 10, "the round made ahead to be given back", step=0.01)
        stats = run.stats()
        assert (stats["delivered"], stats["pending"]) == (10, 20)
        run.key = "good-key"
        poll(lambda: run.stats()["delivered"] == 30, 10, "delivery to resume", step=0.01)
    ids = slow_first.message_ids()
    assert len(ids) == 30 == len(set(ids))


def test_leases_held_ahead_are_renewed_while_batches_are_slow(
        store: Store, fake_segment: FakeSegment) -> None:
    """With a 1.8 s lease and every batch taking 1 s, a round made ahead is still in flight 2 s
    after its claim: none of this forwarder's leases may ever lapse (another process would take
    the rows over and send them again)."""
    queue(store, 15)
    fake_segment.then(*(Scripted(200, delay=1.0) for _ in range(3)))
    with Running(store, fake_segment, policy(claim_limit=5, lease_seconds=1.8)) as run:
        owner = run.forwarder.owner
        lapsed: list[float] = []

        def checked() -> bool:
            rows = store._rows(  # type: ignore[attr-defined]
                "SELECT MIN(lease_expires_at) FROM outbox WHERE state = 'leased' AND lease_owner = ?",
                (owner,))
            now = time.time()
            if rows[0][0] is not None and rows[0][0] <= now:
                lapsed.append(now - rows[0][0])
            return run.stats()["delivered"] == 15

        poll(checked, 20, "the slow backlog to be delivered", step=0.01)
    assert lapsed == []
    ids = fake_segment.message_ids()
    assert len(ids) == 15 == len(set(ids))


def test_rows_a_failed_write_left_leased_come_back_after_their_lease(
        store: Store, fake_segment: FakeSegment) -> None:
    """Segment took the batch but marking it failed (storage unavailable): the loop lets go of
    those rows, and renews only what it still holds, so their lease runs out and they are sent
    again (with the same messageIds, which Segment drops)."""
    queue(store, 10)
    real = store.mark_delivered
    failures = [StorageUnavailable("disk full")]

    def failing(*args: Any, **kwargs: Any) -> None:
        if failures:
            raise failures.pop()
        real(*args, **kwargs)

    store.mark_delivered = failing  # type: ignore[method-assign]
    with Running(store, fake_segment, policy(claim_limit=10, lease_seconds=1.5)) as run:
        poll(lambda: run.stats()["delivered"] == 10, 10, "the rows to be sent again and marked", step=0.01)
    ids = fake_segment.message_ids()
    assert len(ids) == 20 and len(set(ids)) == 10


def test_stopping_waits_for_delivered_batches_to_be_marked(
        store: Store, fake_segment: FakeSegment) -> None:
    """Marking runs behind the posting: a batch Segment took just before the stop is still marked
    delivered, not given back to be sent again."""
    queue(store, 10)
    real = store.mark_delivered
    marking = threading.Event()

    def slow(*args: Any, **kwargs: Any) -> None:
        marking.set()
        time.sleep(0.3)
        real(*args, **kwargs)

    store.mark_delivered = slow  # type: ignore[method-assign]
    with Running(store, fake_segment, policy(claim_limit=10)) as run:
        poll(marking.is_set, 10, "the batch to be posted and its marking to start", step=0.01)
    stats = run.stats()
    assert (stats["delivered"], stats["pending"], stats["leased"]) == (10, 0, 0)
    assert len(fake_segment.message_ids()) == 10


def open_ranges(store: Store) -> int:
    return store._rows("SELECT COUNT(*) FROM delivery_ranges")[0][0]  # type: ignore[attr-defined]


def range_batches(store: Store) -> int:
    return store._rows(  # type: ignore[attr-defined]
        "SELECT COUNT(*) FROM sent_batches WHERE range_id IS NOT NULL")[0][0]


def test_a_backlog_goes_by_range_and_the_janitor_settles_it(store: Store, fake_segment: FakeSegment) -> None:
    """Rounds made ahead are claimed as ranges (docs/range-delivery.md): the counts see them
    delivered at once, and the janitor writes each row's outcome and labels afterwards."""
    queue(store, 50)
    with Running(store, fake_segment, policy(claim_limit=10)) as run:
        poll(lambda: run.stats()["delivered"] == 50, 10, "the backlog to be delivered", step=0.01)
    ids = fake_segment.message_ids()
    assert len(ids) == 50 == len(set(ids))
    assert range_batches(store) >= 3
    Janitor(store, 0, labellers={KIND: track_labels}).run_once()
    assert open_ranges(store) == 0
    rows = store.recent(100)
    assert {row["state"] for row in rows} == {"delivered"} and len(rows) == 50
    assert all(row["recipient"] and row["sent"] for row in rows)
    assert run.stats()["delivered"] == 50


@pytest.mark.parametrize("failure", ["retried", "rejected"])
def test_a_batch_of_a_range_that_fails_leaves_every_row_delivered_or_dead_once(
        store: Store, fake_segment: FakeSegment, failure: str) -> None:
    """The round made ahead is a range; its batch fails (retried: all of it comes back; rejected:
    split until the one refused event is a dead letter). The range turns into rows for that, and
    every row still ends delivered or dead, and is sent once."""
    queue(store, 30)
    fake_segment.then(Scripted(200, delay=0.5))
    if failure == "retried":
        fake_segment.then(Scripted(503))
    else:  # the 15th event: in the second round, the first claimed as a range
        poison = {"event": "open", "time": 1_700_000_014, "MessageID": 10**16 + 14,
                  "email": "user14@example.com"}
        fake_segment.reject_message_ids.add(message_id(dedupe_key(poison)))
    fast_retry = ForwarderPolicy(claim_limit=10, idle_seconds=0.05, pacing=PacingPolicy(backoff_base=0.1))
    with Running(store, fake_segment, fast_retry) as run:
        poll(lambda: run.stats()["delivered"] + run.stats()["dead"] == 30 and not run.stats()["leased"],
             20, "every row to be delivered or dead", step=0.01)
    delivered = fake_segment.message_ids()
    assert len(delivered) == len(set(delivered)) == run.stats()["delivered"]
    assert run.stats()["dead"] == (1 if failure == "rejected" else 0)
    if failure == "rejected":  # the halves without the poison were delivered as the range's
        assert range_batches(store) >= 1


def test_stopping_marks_a_range_s_delivered_batches_and_lets_the_rest_go(
        store: Store, fake_segment: FakeSegment) -> None:
    queue(store, 30)
    fake_segment.then(Scripted(200, delay=0.5), Scripted(200, delay=0.5))
    with Running(store, fake_segment, policy(claim_limit=10)) as run:
        poll(lambda: len(fake_segment.requests) >= 2, 10, "a batch of a range to be posted", step=0.01)
    stats = run.stats()
    assert stats["leased"] == 0
    assert stats["delivered"] == len(fake_segment.message_ids()) >= 20
    assert stats["pending"] == 30 - stats["delivered"]
