"""Delivery by range (docs/range-delivery.md): a drain's round is claimed as one range and each of
its delivered batches recorded as one row, the items untouched until the janitor settles the range.
Every reader sees each item in the state the range gives it, on both backends, and no path loses
an item or marks one delivered that was not sent."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from bridge.storage import open_store
from bridge.storage.base import ClaimedItem, NewItem, Outcome, Store

T0 = 1_700_000_000.0
KIND = "segment_track"


@pytest.fixture
def store(store_on_each_backend: Store) -> Store:
    return store_on_each_backend


def queue(store: Store, n: int, start: int = 0, at: float = T0) -> None:
    store.accept([NewItem(KIND, f"k{i}", "open", json.dumps({"k": f"k{i}", "email": f"u{i}@x.io"}))
                  for i in range(start, start + n)], [], at)


def outcomes(items: list[ClaimedItem]) -> list[Outcome]:
    return [Outcome(i.id, sent=json.dumps({"messageId": i.dedupe_key}), status=200,
                    response='{"success":true}', latency_ms=12.5) for i in items]


def counts(store: Store, at: float = T0) -> tuple[int, int, int]:
    stats = store.stats(at)
    return stats["pending"], stats["leased"], stats["delivered"]


def open_ranges(store: Store) -> int:
    return store._rows("SELECT COUNT(*) FROM delivery_ranges")[0][0]  # type: ignore[attr-defined]


def labeller(payload: str, key: str) -> tuple[str | None, str | None]:
    return json.loads(payload)["email"], None


def test_a_range_takes_the_due_rows_past_the_last_claim_and_reads_as_leased(store: Store) -> None:
    queue(store, 10)
    first = store.claim(KIND, 3, "w", 60, T0)
    range_id, items = store.claim_range(KIND, 4, "w", 60, T0, after=first[-1].id)
    assert range_id is not None
    assert [i.id for i in items] == [first[-1].id + n for n in range(1, 5)]
    assert counts(store) == (3, 7, 0)
    assert all(store.item(i.id)["state"] == "leased" for i in items)  # type: ignore[index]
    _, rest = store.claim_range(KIND, 10, "w", 60, T0)
    assert len(rest) == 3
    assert store.claim(KIND, 10, "other", 60, T0) == []  # nothing outside the ranges is due
    assert store.claim_range(KIND, 10, "other", 60, T0) == (None, [])


def test_delivered_batches_read_as_delivered_before_and_after_settling(store: Store) -> None:
    queue(store, 5)
    range_id, items = store.claim_range(KIND, 5, "w", 60, T0)
    assert range_id is not None
    assert store.mark_range_delivered(range_id, outcomes(items[:2]), T0 + 1, "w", KIND)
    assert counts(store) == (0, 3, 2)
    before = store.item(items[0].id)
    assert before is not None
    assert (before["state"], before["last_status"], before["latency_ms"], before["attempts"]) == (
        "delivered", 200, 12.5, 1)
    assert before["sent"] == json.dumps({"messageId": items[0].dedupe_key})
    assert store.settle_ranges(100, T0 + 2, {KIND: labeller}) == 0  # not finished: not settled
    assert store.mark_range_delivered(range_id, outcomes(items[2:]), T0 + 2, "w", KIND)
    assert counts(store) == (0, 0, 5)
    shown = [store.item(i.id) for i in items]
    assert store.settle_ranges(100, T0 + 3, {KIND: labeller}) == 5
    assert open_ranges(store) == 0
    assert counts(store) == (0, 0, 5)
    settled = [store.item(i.id) for i in items]
    for was, now in zip(shown, settled, strict=True):
        assert was is not None and now is not None
        for column in ("state", "sent", "last_status", "last_response", "latency_ms", "attempts",
                       "finished_at"):
            assert was[column] == now[column], column
    assert [row["recipient"] for row in settled] == [f"u{n}@x.io" for n in range(5)]  # type: ignore[index]
    assert store.to_label(10) == []  # labelled as they were settled


def test_an_expired_range_comes_back_without_what_it_delivered(store: Store) -> None:
    queue(store, 5)
    range_id, items = store.claim_range(KIND, 5, "crashed", 30, T0)
    assert range_id is not None
    store.mark_range_delivered(range_id, outcomes(items[:2]), T0 + 1, "crashed", KIND)
    assert store.stats(T0 + 31)["stuck"]["leased_past_lease"] == 3
    assert store.recover_expired(KIND, T0 + 31) == 1
    assert counts(store, T0 + 31) == (3, 0, 2)
    again = store.claim(KIND, 10, "survivor", 30, T0 + 31)
    assert [i.id for i in again] == [i.id for i in items[2:]]
    assert not store.mark_range_delivered(range_id, outcomes(items[2:]), T0 + 32, "crashed", KIND)
    assert counts(store, T0 + 32) == (0, 3, 2)


def test_a_dissolved_range_is_leased_row_by_row(store: Store) -> None:
    queue(store, 5)
    range_id, items = store.claim_range(KIND, 5, "w", 60, T0)
    assert range_id is not None
    store.mark_range_delivered(range_id, outcomes(items[:1]), T0 + 1, "w", KIND)
    store.dissolve_range(range_id, "w", T0 + 60, T0 + 1)
    assert open_ranges(store) == 0
    assert counts(store) == (0, 4, 1)
    store.release([items[1].id], "w", T0 + 100, "Segment unavailable")
    store.mark_dead([Outcome(items[2].id, error="rejected")], "w", T0 + 2)
    store.mark_delivered(outcomes(items[3:]), T0 + 2, owner="w", sent_batch=KIND)
    states = [store.item(i.id)["state"] for i in items]  # type: ignore[index]
    assert states == ["delivered", "pending", "dead", "delivered", "delivered"]


def test_release_owner_lets_its_ranges_go(store: Store) -> None:
    queue(store, 6)
    range_id, items = store.claim_range(KIND, 3, "leaving", 600, T0)
    store.claim_range(KIND, 3, "staying", 600, T0)
    assert range_id is not None
    store.mark_range_delivered(range_id, outcomes(items[:1]), T0 + 1, "leaving", KIND)
    store.release_owner("leaving", T0 + 1)
    assert counts(store) == (2, 3, 1)
    assert [i.id for i in store.claim(KIND, 10, "next", 60, T0 + 1)] == [i.id for i in items[1:]]


def test_a_range_stops_before_a_row_that_is_not_due_yet(store: Store) -> None:
    """A range holds every pending row within its bounds: one not due yet (backing off, or stamped
    a millisecond later by another web process than the row after it) ends the range, and is
    claimed when it is due, not left inside a range until the range is settled."""
    queue(store, 5)
    claimed = store.claim(KIND, 5, "w", 60, T0)
    store.release([claimed[2].id], "w", T0 + 100, None, count_attempt=False)  # not due until T0+100
    store.release([i.id for n, i in enumerate(claimed) if n != 2], "w", T0, None, count_attempt=False)
    range_id, items = store.claim_range(KIND, 10, "w", 60, T0 + 1)
    assert range_id is not None and [i.id for i in items] == [i.id for i in claimed[:2]]
    assert [i.id for i in store.claim(KIND, 10, "other", 600, T0 + 1)] == [i.id for i in claimed[3:]]
    assert counts(store, T0 + 1) == (1, 4, 0)
    assert [i.id for i in store.claim(KIND, 10, "other", 60, T0 + 200)] == [claimed[2].id]


def test_rows_behind_a_drain_are_claimed_between_open_ranges(store: Store) -> None:
    """A round made ahead and given back (delivery held) lies between two ranges: it is claimed
    row by row at once, not only after the ranges are settled."""
    queue(store, 9)
    first, a = store.claim_range(KIND, 3, "w", 60, T0)
    second, b = store.claim_range(KIND, 3, "w", 60, T0)
    third, c = store.claim_range(KIND, 3, "w", 60, T0)
    assert None not in (first, second, third)
    store.mark_range_delivered(first, outcomes(a), T0, "w", KIND)  # type: ignore[arg-type]
    store.dissolve_range(second, "w", T0 + 60, T0)  # type: ignore[arg-type]
    store.release([i.id for i in b], "w", T0, None, count_attempt=False)
    assert [i.id for i in store.claim(KIND, 10, "w", 60, T0)] == [i.id for i in b]
    assert [i.id for i in c] == [b[-1].id + n for n in range(1, 4)]


def test_operator_reads_show_a_range_as_its_rows(store: Store) -> None:
    queue(store, 4)
    range_id, items = store.claim_range(KIND, 4, "w", 60, T0)
    assert range_id is not None
    store.mark_range_delivered(range_id, outcomes(items[:2]), T0 + 1, "w", KIND)
    recent = {row["id"]: row["state"] for row in store.recent(10)}
    assert recent == {items[0].id: "delivered", items[1].id: "delivered",
                      items[2].id: "leased", items[3].id: "leased"}
    found: list[dict[str, Any]] = store.find(text="u1@x.io", kinds=[KIND])
    assert [(row["id"], row["state"]) for row in found] == [(items[1].id, "delivered")]
    assert found[0]["sent"] == json.dumps({"messageId": items[1].dedupe_key})



def test_a_count_that_reached_its_limit_stays_there_with_ranges_open(store: Store) -> None:
    """``/healthz`` counts up to a limit: a capped count of pending rows, less a range's rows, would
    look exact and be wrong, so it stays at the limit."""
    queue(store, 8)
    store.claim_range(KIND, 3, "w", 60, T0)
    capped = store.stats(T0, count_limit=4)
    assert (capped["pending"], capped["leased"], capped["counted_up_to"]) == (4, 3, 4)
    assert counts(store) == (5, 3, 0)

def test_postgres_a_row_committed_after_a_range_past_it_is_claimed_once_the_range_is_settled(
        pg_url: str) -> None:
    """PostgreSQL hands out ids as rows are inserted and commits them in any order: a range can be
    claimed past a row whose transaction is still open. That row is never marked with the range,
    nor lost: it waits for the range to be settled, and is claimed then."""
    import psycopg

    store = open_store(pg_url)
    store.migrate()
    try:
        queue(store, 2)
        with psycopg.connect(pg_url) as late:  # a transaction left open by a slow intake
            (late_id,) = late.execute(
                "INSERT INTO outbox (kind, dedupe_key, event_type, payload, next_attempt_at, created_at) "
                "VALUES (%s, 'late', 'open', '{\"k\":\"late\",\"email\":\"late@x.io\"}', %s, %s) "
                "RETURNING id", (KIND, T0, T0)).fetchone()
            queue(store, 2, start=10)
            range_id, items = store.claim_range(KIND, 10, "w", 60, T0)
            late.commit()
        assert range_id is not None
        ids = [i.id for i in items]
        assert late_id not in ids and min(ids) < late_id < max(ids)
        assert store.claim(KIND, 10, "other", 60, T0) == []
        assert store.mark_range_delivered(range_id, outcomes(items), T0 + 1, "w", KIND)
        assert store.settle_ranges(100, T0 + 2) == 4
        assert store.item(late_id)["state"] == "pending"  # type: ignore[index]
        assert [i.id for i in store.claim(KIND, 10, "other", 60, T0 + 2)] == [late_id]
    finally:
        store.close()


# -- any interleaving ------------------------------------------------------------------------------

EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", "150"))
LEASE = 30.0
OWNERS = st.sampled_from(["a", "b"])


class Interleavings(RuleBasedStateMachine):
    """Intake, claims by row and by range, deliveries, failures, poison rows, settling, expired
    leases and stops, in any order: the readers always agree with each other, an item reads
    delivered only if it was sent and dead only if it was refused, and once everything due is
    delivered, every item is delivered or dead."""

    make_store: Callable[[], Store]
    #: The store outlives the example (emptied for the next): one PostgreSQL pool for the test.
    shared = False

    def __init__(self) -> None:
        super().__init__()
        self.store = type(self).make_store()
        self.now = T0
        self.count = 0
        self.sent: set[int] = set()
        self.refused: set[int] = set()
        #: Rounds in flight: [owner, range id or None, items not settled yet].
        self.rounds: list[list[Any]] = []
        self.claimed_up_to = 0
        #: Per range, the rows within its bounds that were not pending when it was claimed (leased
        #: by event): one given back later waits inside the range until it is settled.
        self.busy: dict[int, set[int]] = {}

    def _took(self, owner: str, range_id: int | None, items: list[ClaimedItem]) -> None:
        if items:
            self.rounds.append([owner, range_id, list(items)])
            self.claimed_up_to = max(self.claimed_up_to, items[-1].id)

    @rule(skews=st.lists(st.sampled_from([-1.0, 0.0, 1.0]), min_size=1, max_size=6))
    def accept(self, skews: list[float]) -> None:
        """Bodies stamped by the web processes' clocks: one can be due a little after the next."""
        for skew in skews:
            queue(self.store, 1, start=self.count, at=self.now + skew)
            self.count += 1

    @rule(owner=OWNERS, limit=st.integers(1, 5))
    def claim_rows(self, owner: str, limit: int) -> None:
        self._took(owner, None, self.store.claim(KIND, limit, owner, LEASE, self.now))

    @rule(owner=OWNERS, limit=st.integers(1, 5), hinted=st.booleans())
    def claim_range(self, owner: str, limit: int, hinted: bool) -> None:
        range_id, items = self.store.claim_range(KIND, limit, owner, LEASE, self.now,
                                                 after=self.claimed_up_to if hinted else 0)
        if range_id is not None:
            self.busy[range_id] = {row[0] for row in self.store._rows(  # type: ignore[attr-defined]
                "SELECT id FROM outbox WHERE state <> 'pending' AND id BETWEEN ? AND ?",
                (items[0].id, items[-1].id))}
        self._took(owner, range_id, items)

    @precondition(lambda self: self.rounds)
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        index, owner, items = self._pick(data)
        range_id = self.rounds[index][1]
        batch = items[: data.draw(st.integers(1, len(items)))]
        if range_id is None:
            self.store.mark_delivered(outcomes(batch), self.now, owner=owner, sent_batch=KIND)
        else:
            self.store.mark_range_delivered(range_id, outcomes(batch), self.now, owner, KIND)
        self.sent.update(i.id for i in batch)
        self._settled(index, batch)

    @precondition(lambda self: self.rounds)
    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        index, owner, items = self._pick(data)
        self._as_rows(index)
        self.store.release([i.id for i in items], owner, self.now, "Segment unavailable (503)")
        self._settled(index, items)

    @precondition(lambda self: self.rounds)
    @rule(data=st.data())
    def refuse_one(self, data: st.DataObject) -> None:
        index, owner, items = self._pick(data)
        bad = data.draw(st.sampled_from(items))
        self._as_rows(index)
        self.store.mark_dead([Outcome(bad.id, status=400, error="rejected")], owner, self.now)
        self.refused.add(bad.id)
        self._settled(index, [bad])

    @rule()
    def settle(self) -> None:
        self.store.settle_ranges(7, self.now, {KIND: labeller})

    @rule(seconds=st.sampled_from([1.0, LEASE + 1]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def recover(self) -> None:
        self.store.recover_expired(KIND, self.now)

    @rule(owner=OWNERS)
    def stop(self, owner: str) -> None:
        self.store.release_owner(owner, self.now)
        self.rounds = [r for r in self.rounds if r[0] != owner]

    def _pick(self, data: st.DataObject) -> tuple[int, str, list[ClaimedItem]]:
        """A round in flight: its index, owner and items."""
        index = data.draw(st.integers(0, len(self.rounds) - 1))
        owner, _, items = self.rounds[index]
        return index, owner, items

    def _as_rows(self, index: int) -> None:
        owner, range_id, _ = self.rounds[index]
        if range_id is not None:
            self.store.dissolve_range(range_id, owner, self.now + LEASE, self.now)
            self.rounds[index][1] = None

    def _settled(self, index: int, done: list[ClaimedItem]) -> None:
        gone = {i.id for i in done}
        self.rounds[index][2] = [i for i in self.rounds[index][2] if i.id not in gone]
        if not self.rounds[index][2]:
            del self.rounds[index]

    @invariant()
    def readers_agree(self) -> None:
        rows = self.store.recent(10_000)
        assert len(rows) == self.count
        states = Counter(row["state"] for row in rows)
        stats = self.store.stats(self.now)
        assert {s: stats[s] for s in ("pending", "leased", "delivered", "dead")} == {
            s: states[s] for s in ("pending", "leased", "delivered", "dead")}
        for row in rows:
            assert row["state"] != "delivered" or row["id"] in self.sent, row
            assert row["state"] != "dead" or row["id"] in self.refused, row

    @invariant()
    def a_range_holds_every_pending_row_within_its_bounds(self) -> None:
        """Every row pending when the range was claimed within its bounds is one of its rows (none
        skipped for being due a moment later); the others were leased by event then. (On PostgreSQL
        also a row committed late, which these steps do not make.)"""
        for range_id, first, last, item_ids in self.store._rows(  # type: ignore[attr-defined]
                "SELECT id, first_id, last_id, item_ids FROM delivery_ranges"):
            inside = {row[0] for row in self.store._rows(  # type: ignore[attr-defined]
                "SELECT id FROM outbox WHERE state = 'pending' AND id BETWEEN ? AND ?", (first, last))}
            assert inside <= set(json.loads(item_ids)) | self.busy[range_id], (first, last, inside)

    def teardown(self) -> None:
        try:
            self.now += 10 * LEASE
            for _ in range(1000):
                self.store.recover_expired(KIND, self.now)
                self.store.settle_ranges(10**6, self.now)
                range_id, items = self.store.claim_range(KIND, 7, "last", LEASE, self.now)
                if range_id is not None:
                    self.store.mark_range_delivered(range_id, outcomes(items), self.now, "last", KIND)
                else:
                    items = self.store.claim(KIND, 7, "last", LEASE, self.now)
                    if not items:
                        break
                    self.store.mark_delivered(outcomes(items), self.now, owner="last", sent_batch=KIND)
                self.sent.update(i.id for i in items)
            self.store.settle_ranges(10**6, self.now)
            stats = self.store.stats(self.now)
            assert (stats["pending"], stats["leased"]) == (0, 0), stats
            assert stats["delivered"] + stats["dead"] == self.count
            self.readers_agree()
            assert self.store._rows("SELECT COUNT(*) FROM delivery_ranges")[0][0] == 0  # type: ignore[attr-defined]
        finally:
            if not self.shared:
                self.store.close()


def run_interleavings(make_store: Callable[[], Store], examples: int, *, shared: bool = False) -> None:
    Interleavings.make_store = staticmethod(make_store)  # type: ignore[assignment]
    Interleavings.shared = shared
    run_state_machine_as_test(Interleavings, settings=settings(
        max_examples=examples, stateful_step_count=30, deadline=None, database=None,
        derandomize=bool(os.environ.get("CI")), print_blob=True))


def test_any_interleaving_keeps_every_item_once_on_sqlite(tmp_path: Path) -> None:
    made = iter(range(10**6))

    def fresh() -> Store:
        store = open_store(f"sqlite:///{tmp_path / f'ranges-{next(made)}.db'}")
        store.migrate()
        return store

    run_interleavings(fresh, EXAMPLES)


def test_any_interleaving_keeps_every_item_once_on_postgres(pg_url: str) -> None:
    """A third of the examples, as the other properties on PostgreSQL, on one pool emptied for each."""
    store = open_store(pg_url)
    store.migrate()

    def emptied() -> Store:
        with store._write() as tx:  # type: ignore[attr-defined]
            for table in ("attempts", "sent_batches", "delivery_ranges", "outbox"):
                tx.execute(f"DELETE FROM {table}")
        return store

    try:
        run_interleavings(emptied, max(1, EXAMPLES // 3), shared=True)
    finally:
        store.close()
