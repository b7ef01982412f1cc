"""The storage contract. Written once against ``Store``; each backend runs the same tests."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from bridge.errors import StorageUnavailable
from bridge.storage.base import (
    AcceptResult,
    ClaimedItem,
    DeadLetter,
    DueSummary,
    NewItem,
    Outcome,
    QuarantineEntry,
    Store,
)
from bridge.storage.sql import SqlStore, migration_files

T0 = 1_700_000_000.0
#: Kinds are opaque to the store; these are the directions' own names.
SEGMENT_TRACK, MAILJET_CONTACT, MAILJET_PROPERTY = "segment_track", "mailjet_contact", "mailjet_property"


@pytest.fixture
def store(store_on_each_backend: Store) -> Store:
    """The same suite for every backend; PostgreSQL is skipped (and says so) only with no server."""
    return store_on_each_backend


def json_key(item: ClaimedItem) -> str:
    """The key an ``items()`` payload carries."""
    return json.loads(item.payload)["k"]


def items(*keys: str) -> list[NewItem]:
    return [NewItem(SEGMENT_TRACK, key, "sent", f'{{"k":"{key}"}}') for key in keys]


def test_migrate_is_idempotent(store: Store) -> None:
    store.migrate()
    store.migrate()
    assert store.stats(T0)["pending"] == 0


def test_accept_dedupes_and_counts(store: Store) -> None:
    first = store.accept(items("a", "b"), [], T0)
    assert (first.accepted, first.duplicate) == (2, 0)
    again = store.accept(items("b", "c", "c"), [], T0)
    assert (again.accepted, again.duplicate) == (1, 2)
    assert store.stats(T0)["pending"] == 3


@pytest.mark.parametrize("size", [3, 9, 300])
def test_a_large_body_dedupes_and_counts_as_a_small_one(store: Store, size: int) -> None:
    """Bodies with more events of one type than a multi-row INSERT takes on PostgreSQL (``values_rows``,
    then ``executemany``) count accepted and duplicate rows the same way, within a body too."""
    keys = [f"k{n}" for n in range(size)]
    store.accept(items(*keys[: size // 3]), [], T0)
    result = store.accept_many([(items(*keys, keys[0], keys[-1]), [], T0)])[0]
    assert isinstance(result, AcceptResult)
    assert (result.accepted, result.duplicate) == (size - size // 3, size // 3 + 2)
    assert result.accepted_by_type == {"sent": size - size // 3}
    assert store.stats(T0)["pending"] == size


def test_a_large_body_is_stored_exactly_as_given(store: Store) -> None:
    """More rows than one VALUES statement takes on PostgreSQL go there as one JSON parameter
    (``PostgresStore._insert_new``): every text, time and number comes back exactly as given, and
    a row JSON cannot carry (an event time beyond 64 bits) sends its body the old way, where it
    fails alone as it always did."""
    texts = ['{"k":"q\\"uote"}', '{"k":"back\\\\slash"}', '{"k":"line\\nbreak"}',
             '{"k":"\U0001f600 \u2028 \u00e9"}', '{"k":"tab\tand \\u0001"}', "{}",
             '{"k":"%s ?::json $1"}', '{"k":"[1,2]"}']
    new = [NewItem(SEGMENT_TRACK, f"key-{n}", "sent", text, 1_700_000_000 + n)
           for n, text in enumerate(texts)]
    now = T0 + 0.123456789
    (result,) = store.accept_many([(new, [], now)])
    assert isinstance(result, AcceptResult) and result.accepted == len(texts)
    claimed = store.claim(SEGMENT_TRACK, 100, "w", 60, now + 1)
    assert [(c.dedupe_key, c.payload) for c in claimed] == [(i.dedupe_key, i.payload) for i in new]
    assert {row["created_at"] for row in store.recent(limit=100)} == {now}
    huge = [NewItem(SEGMENT_TRACK, f"h{n}", "sent", "{}", 2**64 + n) for n in range(6)]
    fine, bad = store.accept_many([(items("a", "b", "c", "d", "e", "f"), [], T0), (huge, [], T0)])
    assert isinstance(fine, AcceptResult) and fine.accepted == 6
    assert isinstance(bad, BaseException) or bad.accepted == 6  # SQLite: an integer beyond 64 bits fails too


@pytest.mark.parametrize("round_rows", [0, 64], ids=["each-body", "one-statement"])
def test_a_round_of_bodies_is_counted_as_if_each_came_alone(store: Store, round_rows: int) -> None:
    """``accept_many``, whether it puts the round in one statement or not: a key is accepted by the
    first body that has it and is a duplicate in every other, a stored key is a duplicate, and each
    body counts its own quarantine and types (a type with nothing new counts 0)."""
    store.round_rows = round_rows  # type: ignore[attr-defined]
    store.accept(items("old"), [], T0)
    transactions: list[int] = []
    write = store._write  # type: ignore[attr-defined]
    store._write = lambda: (transactions.append(1), write())[1]  # type: ignore[attr-defined]
    entry = QuarantineEntry("mailjet", "fp", '{"event":"x"}', "[]")
    click = NewItem(SEGMENT_TRACK, "c", "click", "{}")
    results = store.accept_many([
        (items("a", "old"), [], T0),
        ([*items("b", "a", "b"), click], [entry], T0 + 1),
        ([], [entry], T0 + 2),
        (items("old"), [], T0 + 3),
    ])
    assert [(r.accepted, r.duplicate, r.quarantined, r.accepted_by_type)  # type: ignore[union-attr]
            for r in results] == [
        (1, 1, 0, {"sent": 1}), (2, 2, 1, {"sent": 1, "click": 1}), (0, 0, 1, {}), (0, 1, 0, {"sent": 0})]
    assert store.stats(T0 + 4)["pending"] == 4
    assert len(store.quarantine_entries()) == 1
    assert len(transactions) == 1  # one statement, or four bodies sharing one transaction


def test_a_round_without_quarantine_is_one_statement(store: Store) -> None:
    """A round of events only is one statement (on PostgreSQL in autocommit: one round trip), and
    each body is still counted as if it came alone."""
    store.round_rows = 64  # type: ignore[attr-defined]
    store.accept(items("old"), [], T0)
    calls: dict[str, int] = {"write": 0, "one": 0}
    write, one = store._write, store._write_one_statement  # type: ignore[attr-defined]
    store._write = lambda: (calls.__setitem__("write", calls["write"] + 1), write())[1]  # type: ignore[attr-defined]
    store._write_one_statement = lambda: (calls.__setitem__("one", calls["one"] + 1), one())[1]  # type: ignore[attr-defined]
    results = store.accept_many([(items("a", "old"), [], T0), (items("a", "b"), [], T0 + 1)])
    assert [(r.accepted, r.duplicate) for r in results] == [(1, 1), (1, 1)]  # type: ignore[union-attr]
    assert calls["one"] == 1 and calls["write"] <= 1  # no second try body by body
    assert store.stats(T0 + 2)["pending"] == 3
    # a lone body (most rounds of single events) goes the same way, duplicates within it counted
    writes = calls["write"]
    (alone,) = store.accept_many([(items("c", "c", "old"), [], T0 + 2)])
    assert (alone.accepted, alone.duplicate, alone.accepted_by_type) == (1, 2, {"sent": 1})  # type: ignore[union-attr]
    assert calls["one"] == 2 and calls["write"] <= writes + 1


def test_a_body_that_fails_in_a_round_fails_alone(store: Store) -> None:
    """A body whose row the database refuses (PostgreSQL stores no NUL) fails on its own; the round's
    other bodies are stored, whether the round went in one statement first or not."""
    store.round_rows = 64  # type: ignore[attr-defined]
    poison = NewItem(SEGMENT_TRACK, "bad\x00key", "sent", "{}")
    first, bad, third = store.accept_many([(items("a"), [], T0), ([poison], [], T0), (items("b"), [], T0)])
    assert isinstance(first, AcceptResult) and first.accepted == 1
    assert isinstance(third, AcceptResult) and third.accepted == 1
    assert isinstance(bad, BaseException) or bad.accepted == 1  # SQLite stores the NUL as it is


def test_quarantine_is_stored_with_errors_once(store: Store) -> None:
    entry = QuarantineEntry("mailjet", "fp1", '{"event":"x"}', '[{"path":"$.event"}]')
    result = store.accept(items("a"), [entry, entry], T0)
    assert (result.accepted, result.quarantined) == (1, 2)
    store.accept([], [entry], T0)
    entries = store.quarantine_entries()
    assert len(entries) == 1 and entries[0]["body"] == '{"event":"x"}'
    assert entries[0]["errors"] == '[{"path":"$.event"}]'


def test_claim_leases_oldest_first_and_not_twice(store: Store) -> None:
    store.accept(items("a", "b", "c"), [], T0)
    first = store.claim(SEGMENT_TRACK, 2, "w1", 60, T0)
    assert [i.dedupe_key for i in first] == ["a", "b"]
    second = store.claim(SEGMENT_TRACK, 10, "w2", 60, T0)
    assert [i.dedupe_key for i in second] == ["c"]
    assert store.claim(SEGMENT_TRACK, 10, "w3", 60, T0 + 59) == []
    assert store.stats(T0)["leased"] == 3


def test_expired_lease_is_taken_over(store: Store) -> None:
    """A process that dies holding a lease loses nothing: the rows come back after the lease."""
    store.accept(items("a"), [], T0)
    (claimed,) = store.claim(SEGMENT_TRACK, 10, "crashed", 30, T0)
    retaken = store.claim(SEGMENT_TRACK, 10, "survivor", 30, T0 + 31)
    assert [i.id for i in retaken] == [claimed.id]
    # the old owner can no longer release or kill it
    store.release([claimed.id], "crashed", T0, "late")
    store.mark_dead([Outcome(claimed.id, error="late")], "crashed", T0)
    assert store.stats(T0)["leased"] == 1


def test_release_makes_rows_due_later_and_counts_attempts(store: Store) -> None:
    store.accept(items("a"), [], T0)
    (item,) = store.claim(SEGMENT_TRACK, 10, "w", 60, T0)
    store.release([item.id], "w", T0 + 10, "HTTP 500", status=500)
    assert store.claim(SEGMENT_TRACK, 10, "w", 60, T0 + 5) == []
    (again,) = store.claim(SEGMENT_TRACK, 10, "w", 60, T0 + 10)
    assert again.attempts == 1
    store.release([again.id], "w", T0 + 20, None, count_attempt=False)
    (third,) = store.claim(SEGMENT_TRACK, 10, "w", 60, T0 + 20)
    assert third.attempts == 1


def test_delivered_and_dead_are_terminal(store: Store) -> None:
    store.accept(items("a", "b"), [], T0)
    a, b = store.claim(SEGMENT_TRACK, 10, "w", 60, T0)
    store.mark_delivered([Outcome(a.id, sent="{}", status=200, response="ok", latency_ms=3.0)], T0)
    store.mark_dead([Outcome(b.id, sent="{}", status=400, error="rejected")], "w", T0)
    assert store.claim(SEGMENT_TRACK, 10, "w", 60, T0 + 1000) == []
    stats = store.stats(T0)
    assert (stats["delivered"], stats["dead"], stats["pending"]) == (1, 1, 0)
    (dead,) = store.dead_letters()
    assert dead["last_error"] == "rejected" and dead["last_status"] == 400
    assert dead["payload"] == '{"k":"b"}'


def test_stats_report_oldest_pending_age(store: Store) -> None:
    assert store.stats(T0)["oldest_pending_age_seconds"] is None
    store.accept(items("a"), [], T0)
    store.accept(items("b"), [], T0 + 5)
    assert store.stats(T0 + 10)["oldest_pending_age_seconds"] == 10


def test_identities_and_settings(store: Store) -> None:
    store.accept([], [], T0, [("u1", "a@x.com")])
    store.accept([], [], T0 + 1, [("u2", "a@x.com")])
    store.accept([], [], T0, [("u3", "b@x.com")])
    assert store.user_ids_for(["a@x.com", "b@x.com", "c@x.com"]) == {"a@x.com": "u2", "b@x.com": "u3"}
    assert store.get_setting("k") is None
    assert store.put_setting("k", "v1", T0, only_if_absent=True) is True
    assert store.put_setting("k", "v2", T0, only_if_absent=True) is False
    assert store.get_setting("k") == "v1"
    assert store.put_setting("k", "v3", T0) is True
    assert store.get_setting("k") == "v3"


def test_concurrent_claimers_never_share_a_row(store: Store) -> None:
    store.accept(items(*[f"k{i}" for i in range(300)]), [], T0)
    got: dict[str, list[int]] = {}

    def claimer(name: str) -> None:
        ids: list[int] = []
        while batch := store.claim(SEGMENT_TRACK, 7, name, 60, T0):
            ids.extend(i.id for i in batch)
        got[name] = ids

    threads = [threading.Thread(target=claimer, args=(f"w{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    all_ids = [i for ids in got.values() for i in ids]
    assert len(all_ids) == 300 == len(set(all_ids))


def test_locked_database_raises_storage_unavailable(tmp_path: Path) -> None:
    """A writer that cannot get the lock fails cleanly (the webhook turns this into 503)."""
    import sqlite3

    from bridge.storage.sqlite import SQLiteStore

    path = tmp_path / "locked.db"
    s = SQLiteStore(path)
    s.migrate()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    impatient = SQLiteStore(path, busy_timeout_ms=50)
    with pytest.raises(StorageUnavailable):
        impatient.accept(items("a"), [], T0)
    blocker.execute("ROLLBACK")
    blocker.close()
    assert impatient.accept(items("a"), [], T0).accepted == 1
    impatient.close()
    s.close()



def test_migration_waits_for_a_writer_instead_of_failing(tmp_path: Path) -> None:
    """Workers booting together: one is mid-migration when the next starts; the next must wait."""
    from bridge.storage.sqlite import SQLiteStore

    path = tmp_path / "fresh.db"
    first, second = SQLiteStore(path), SQLiteStore(path)
    outcome: list[str] = []

    def migrate_second() -> None:
        try:
            second.migrate()
            outcome.append("ok")
        except StorageUnavailable as exc:
            outcome.append(str(exc))

    with first._write() as conn:  # the first worker, inside its migration transaction
        conn.execute("CREATE TABLE early (x)")
        thread = threading.Thread(target=migrate_second)
        thread.start()
        thread.join(0.3)
        assert thread.is_alive()  # waiting, not failed
    thread.join(10)
    assert outcome == ["ok"]
    first.close()
    second.close()


def test_identities_given_with_accept_keep_their_order(store: Store) -> None:
    store.accept([], [], T0, identities=[("u1", "a@x.com"), ("u1", "b@x.com"), ("u2", "c@x.com")])
    assert store.emails_for(["u1", "u2", "u3"]) == {"u1": "b@x.com", "u2": "c@x.com"}
    store.accept([], [], T0 + 1, identities=[("u1", "a@x.com")])
    assert store.emails_for(["u1"]) == {"u1": "a@x.com"}
    assert store.user_ids_for(["a@x.com", "b@x.com"]) == {"a@x.com": "u1", "b@x.com": "u1"}


def test_due_summary_counts_due_items_of_a_kind(store: Store) -> None:
    assert store.due_summary(SEGMENT_TRACK, T0) == DueSummary(0, None, None)
    store.accept(items("a"), [], T0)
    store.accept(items("b", "c"), [], T0 + 5)
    store.accept([NewItem(MAILJET_CONTACT, "x", "identify", "{}")], [], T0)
    assert store.due_summary(SEGMENT_TRACK, T0 + 5) == DueSummary(3, T0, T0 + 5)
    assert store.due_summary(SEGMENT_TRACK, T0 + 5, up_to=2).count == 2  # a full batch: enough
    assert store.due_summary(SEGMENT_TRACK, T0 + 5, up_to=4) == DueSummary(3, T0, T0 + 5)
    store.claim(SEGMENT_TRACK, 1, "w", 60, T0 + 5)
    assert store.due_summary(SEGMENT_TRACK, T0 + 5).count == 2


def test_direct_dead_letters_are_recorded_once(store: Store) -> None:
    entry = DeadLetter(MAILJET_PROPERTY, "7:a@x.com:age", "property", '{"property":"age"}', "type conflict")
    store.add_dead_letters([entry, entry], T0)
    store.add_dead_letters([entry], T0 + 1)
    (dead,) = store.dead_letters()
    assert (dead["kind"], dead["last_error"]) == (MAILJET_PROPERTY, "type conflict")
    assert store.stats(T0)["dead"] == 1


def test_dedupe_holds_under_concurrent_inserts_of_the_same_keys(store: Store) -> None:
    keys = [f"k{i}" for i in range(200)]
    results: list[int] = []

    def insert() -> None:
        results.append(store.accept(items(*keys), [], T0).accepted)

    threads = [threading.Thread(target=insert) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 200
    assert store.stats(T0)["pending"] == 200


def test_retention_prunes_only_old_delivered_rows(store: Store) -> None:
    store.accept(items(*[f"k{i}" for i in range(25)]), [], T0)
    claimed = store.claim(SEGMENT_TRACK, 25, "w", 60, T0)
    old, recent, dead = claimed[:20], claimed[20:23], claimed[23:]
    store.mark_delivered([Outcome(i.id) for i in old], T0)
    store.mark_delivered([Outcome(i.id) for i in recent], T0 + 100)
    store.mark_dead([Outcome(i.id, error="x") for i in dead], "w", T0)
    assert store.prune_delivered(T0 + 50, batch=7) == 20
    stats = store.stats(T0)
    assert (stats["delivered"], stats["dead"]) == (3, 2)


def test_release_owner_gives_back_every_lease(store: Store) -> None:
    store.accept(items("a", "b", "c"), [], T0)
    store.claim(SEGMENT_TRACK, 2, "leaving", 600, T0)
    store.claim(SEGMENT_TRACK, 1, "staying", 600, T0)
    assert store.release_owner("leaving", T0 + 1) == 2
    assert len(store.claim(SEGMENT_TRACK, 10, "next", 60, T0 + 1)) == 2


def test_schema_version_is_recorded(store: SqlStore) -> None:
    assert store.schema_version() == max(version for version, _ in migration_files(store.dialect))


def test_operator_queries(store: Store) -> None:
    """What the debugger, the overview, replay and the login limit read and write."""
    store.accept(items("a", "b", "c"), [QuarantineEntry("mailjet", "fp", "{}", "[]")], T0)
    a, b, c = store.claim(SEGMENT_TRACK, 3, "w", 60, T0 + 1)
    store.mark_delivered([Outcome(a.id, sent='{"s":1}', status=200, response="ok", latency_ms=12.0)],
                         T0 + 2)
    store.mark_delivered([Outcome(b.id, latency_ms=30.0)], T0 + 3)
    store.mark_dead([Outcome(c.id, error="bad")], "w", T0 + 4)
    assert [r["id"] for r in store.recent(10)] == [c.id, b.id, a.id]
    assert [r["id"] for r in store.recent(10, state="delivered")] == [b.id, a.id]
    assert store.item(a.id)["sent"] == '{"s":1}' and store.item(999) is None
    assert sorted(store.latencies(T0)) == [12.0, 30.0]
    assert store.timeline(T0 - 60, [SEGMENT_TRACK]) == [(float(int(T0 // 60) * 60), "sent", 3)]
    assert store.dead_ids() == [c.id]
    assert store.requeue([c.id, a.id], T0 + 5, {c.id: (SEGMENT_TRACK, '{"k":"c2"}')}) == 1
    again = store.claim(SEGMENT_TRACK, 10, "w2", 60, T0 + 5)
    assert [(i.id, i.payload, i.attempts) for i in again] == [(c.id, '{"k":"c2"}', 0)]
    (entry,) = store.quarantine_entries()
    assert store.quarantine_entry(entry["id"])["source"] == "mailjet"
    store.remove_quarantine([entry["id"]])
    assert store.quarantine_entries() == []
    assert store.login_failures("1.2.3.4", T0, T0, record=True) == 1
    assert store.login_failures("1.2.3.4", T0, T0 + 1, record=True) == 2
    store.clear_login_failures("1.2.3.4")
    assert store.login_failures("1.2.3.4", T0, T0 + 2) == 0


def test_recover_expired_gives_back_only_expired_leases_of_the_kind(store: Store) -> None:
    store.accept(items("a", "b"), [], T0)
    store.accept([NewItem(MAILJET_CONTACT, "c", "identify", "{}")], [], T0)
    store.claim(SEGMENT_TRACK, 1, "dead-process", 10, T0)
    store.claim(MAILJET_CONTACT, 1, "dead-process", 10, T0)
    assert store.recover_expired(SEGMENT_TRACK, T0 + 5) == 0  # not expired yet
    assert store.recover_expired(SEGMENT_TRACK, T0 + 11) == 1
    assert store.stats(T0 + 11)["leased"] == 1  # the contact's lease is another loop's to recover
    assert store.recover_expired(MAILJET_CONTACT, T0 + 11) == 1
    assert store.stats(T0 + 11)["leased"] == 0


def test_make_due_brings_held_items_forward_oldest_first(store: Store) -> None:
    store.accept(items("a"), [], T0)
    store.accept(items("b"), [], T0 + 1)
    claimed = store.claim(SEGMENT_TRACK, 10, "w", 60, T0 + 2)
    store.release([i.id for i in claimed], "w", T0 + 300, "Segment unavailable")
    store.accept(items("c"), [], T0 + 3)
    assert store.make_due(SEGMENT_TRACK, T0 + 4) == 2
    order = [json_key(i) for i in store.claim(SEGMENT_TRACK, 10, "w", 60, T0 + 4)]
    assert order == ["a", "b", "c"]


def test_stats_count_stuck_items(store: Store) -> None:
    store.accept(items("a", "b", "c"), [], T0)
    store.claim(SEGMENT_TRACK, 1, "dead-process", 10, T0)
    stuck = store.stats(T0 + 400, stuck_after=300)["stuck"]
    assert stuck == {"leased_past_lease": 1, "due_unclaimed": 2}
    assert store.stats(T0 + 5, stuck_after=300)["stuck"] == {"leased_past_lease": 0, "due_unclaimed": 0}


def test_stats_count_every_kind_exactly_and_stop_at_a_count_limit(store: Store) -> None:
    """Counts go a kind and a state at a time through the index; a health probe's count_limit caps
    each one (and says so), an exact count does not."""
    store.accept(items(*"abcdef"), [], T0)
    store.accept([NewItem(MAILJET_CONTACT, f"c{n}", "identify", "{}") for n in range(3)], [], T0 + 1)
    a, b = store.claim(SEGMENT_TRACK, 2, "w", 10, T0 + 2)
    store.mark_delivered([Outcome(a.id, sent="{}", status=200)], T0 + 2)
    store.mark_dead([Outcome(b.id, sent="{}", status=400, error="rejected")], "w", T0 + 2)
    store.claim(MAILJET_CONTACT, 1, "w", 10, T0 + 2)
    exact = store.stats(T0 + 500, stuck_after=300)
    assert (exact["pending"], exact["leased"], exact["delivered"], exact["dead"]) == (6, 1, 1, 1)
    assert exact["stuck"] == {"leased_past_lease": 1, "due_unclaimed": 6}
    assert exact["oldest_pending_age_seconds"] == 500 and "counted_up_to" not in exact
    capped = store.stats(T0 + 500, stuck_after=300, count_limit=2)
    assert (capped["pending"], capped["leased"], capped["delivered"], capped["dead"]) == (2, 1, 1, 1)
    assert capped["stuck"] == {"leased_past_lease": 1, "due_unclaimed": 2}
    assert capped["counted_up_to"] == 2 and capped["oldest_pending_age_seconds"] is not None


@pytest.mark.parametrize("finished", [0, 5])
def test_stats_find_the_oldest_waiting_item_either_way(store: Store, finished: int) -> None:
    """With few rows waiting, the waiting rows are read through the index; with most rows waiting,
    the oldest rows first. Both give the exact age."""
    store.accept(items(*(f"old{n}" for n in range(finished))), [], T0)
    done = store.claim(SEGMENT_TRACK, finished, "w", 10, T0) if finished else []
    store.mark_delivered([Outcome(c.id, sent="{}", status=200) for c in done], T0)
    store.accept(items("x", "y"), [], T0 + 7)
    store.accept(items("z"), [], T0 + 9)
    store.claim(SEGMENT_TRACK, 1, "w", 10, T0 + 10)  # a leased row waits too
    assert store.stats(T0 + 20)["oldest_pending_age_seconds"] == 13
    assert store.stats(T0 + 20, count_limit=10)["oldest_pending_age_seconds"] == 13


def test_an_item_whose_legacy_key_is_stored_is_a_duplicate(store: Store) -> None:
    store.accept([NewItem(SEGMENT_TRACK, "old-key", "sent", "{}", 7)], [], T0)
    again = NewItem(SEGMENT_TRACK, "new-key", "sent", "{}", 7, legacy_keys=("old-key",))
    other = NewItem(SEGMENT_TRACK, "other-key", "sent", "{}", 7, legacy_keys=("never-stored",))
    result = store.accept([again, other], [], T0 + 1)
    assert (result.accepted, result.duplicate) == (1, 1)


def test_accept_records_intake_dead_letters_in_the_same_transaction(store: Store) -> None:
    dead = DeadLetter(MAILJET_CONTACT, "k1", "identify", '{"type":"identify"}', "a lone surrogate")
    result = store.accept(items("a"), [], T0, dead=[dead])
    assert (result.accepted, result.dead) == (1, 1)
    (row,) = store.dead_letters()
    assert row["last_error"] == "a lone surrogate"


def test_sessions_end_by_logout_age_idleness_or_another_password(store: Store) -> None:
    store.open_session("s1", "pw-a", T0, older_than=T0 - 43_200)
    alive = {"created_after": T0 - 43_200, "seen_after": T0 - 1_800}
    assert store.session_alive("s1", "pw-a", T0 + 1, **alive)
    assert not store.session_alive("s1", "pw-b", T0 + 1, **alive)  # the admin password changed
    assert not store.session_alive("s1", "pw-a", T0 + 1, created_after=T0 + 1, seen_after=0)  # too old
    assert not store.session_alive("s1", "pw-a", T0 + 1, created_after=0, seen_after=T0 + 1)  # idle
    assert store.session_alive("s1", "pw-a", T0 + 100, created_after=0, seen_after=T0 - 1)  # seen now...
    assert store.session_alive("s1", "pw-a", T0 + 600, created_after=0, seen_after=T0 + 50)  # ...so not idle
    store.end_session("s1")
    assert not store.session_alive("s1", "pw-a", T0 + 601, created_after=0, seen_after=0)


def test_compaction_drops_payloads_but_keeps_keys_until_pruned(store: Store) -> None:
    """Dedupe keys outlive the payloads: a redelivery after the retention is still a duplicate."""
    store.accept(items("a", "b"), [], T0)
    claimed = store.claim(SEGMENT_TRACK, 10, "w", 60, T0)
    store.mark_delivered([Outcome(i.id, sent="{}", response="ok") for i in claimed], T0 + 1)
    assert store.compact_delivered(T0 + 2) == 2
    row = store.item(claimed[0].id)
    assert row is not None and (row["payload"], row["sent"]) == ("", None)
    assert store.accept(items("a"), [], T0 + 3).duplicate == 1  # the key is still known
    assert store.prune_delivered(T0 + 2) == 2
    assert store.accept(items("a"), [], T0 + 4).accepted == 1


def test_a_newer_applied_identify_is_never_replaced_by_an_older(store: Store) -> None:
    store.record_applied({"a@x.com": 200.0, "b@x.com": 100.0}, T0)
    store.record_applied({"a@x.com": 150.0, "b@x.com": 300.0}, T0 + 1)
    assert store.newest_applied(["a@x.com", "b@x.com", "c@x.com"]) == {"a@x.com": 200.0, "b@x.com": 300.0}


def test_text_with_a_nul_is_stored_on_every_backend(store: Store) -> None:
    """PostgreSQL text holds no NUL: keys, reasons and applied versions with one must not fail."""
    store.add_dead_letters([DeadLetter(MAILJET_PROPERTY, "1:a\x00@x.com:plan", "property", '{"a":1}',
                                       "Mailjet said: bad \x00 value")], T0)
    store.record_applied({"a\x00@x.com": 1.0, "ok@x.com": 2.0}, T0)
    assert store.newest_applied(["a\x00@x.com", "ok@x.com"]) == {"ok@x.com": 2.0}
    (row,) = store.dead_letters()
    assert "\x00" not in row["last_error"]


def test_a_batch_is_marked_delivered_with_each_row_as_it_was_sent(store: Store) -> None:
    """One statement per chunk of rows sharing Segment's answer; each row keeps its own text."""
    keys = [f"k{i}" for i in range(2600)]  # more rows than one statement settles
    store.accept(items(*keys), [], T0)
    claimed = store.claim(SEGMENT_TRACK, 3000, "w", 60, T0)
    half = len(claimed) // 2
    store.mark_delivered([Outcome(i.id, sent=f'{{"s":"{json_key(i)}"}}', status=200, response="ok",
                                  latency_ms=5.0) for i in claimed[:half]], T0 + 1, owner="w")
    store.mark_delivered([Outcome(i.id, sent=f'{{"s":"{json_key(i)}"}}', status=201, response="\x00",
                                  latency_ms=None) for i in claimed[half:]], T0 + 2, owner="w")
    assert store.stats(T0)["delivered"] == 2600
    for item in (claimed[0], claimed[half - 1], claimed[half], claimed[-1]):
        row = store.item(item.id)
        assert row is not None and json.loads(row["sent"]) == {"s": json_key(item)}
        assert row["attempts"] == 1 and row["state"] == "delivered"
    first, last = store.item(claimed[0].id), store.item(claimed[-1].id)
    assert first is not None and last is not None
    assert (first["last_status"], first["last_response"], first["latency_ms"]) == (200, "ok", 5.0)
    assert (last["last_status"], last["last_response"], last["latency_ms"]) == (201, "\\u0000", None)
    assert (first["finished_at"], last["finished_at"]) == (T0 + 1, T0 + 2)


def test_only_the_lease_owner_marks_its_rows_delivered(store: Store) -> None:
    """A process whose lease was taken over never settles the row too: it is marked once."""
    store.accept(items("a", "b"), [], T0)
    (a,) = store.claim(SEGMENT_TRACK, 1, "slow", 30, T0)
    (b,) = store.claim(SEGMENT_TRACK, 1, "slow", 100, T0)
    (retaken,) = store.claim(SEGMENT_TRACK, 1, "rival", 30, T0 + 31)  # a's lease ran out
    assert retaken.id == a.id
    store.mark_delivered([Outcome(i.id, sent='"slow"', status=200) for i in (a, b)], T0 + 32,
                         owner="slow")
    assert store.stats(T0)["leased"] == 1  # a: still the rival's to settle
    store.mark_delivered([Outcome(a.id, sent='"rival"', status=200)], T0 + 33, owner="rival")
    row_a, row_b = store.item(a.id), store.item(b.id)
    assert row_a is not None and row_b is not None
    assert (row_a["state"], row_a["sent"], row_a["attempts"]) == ("delivered", '"rival"', 1)
    assert (row_b["state"], row_b["sent"], row_b["attempts"]) == ("delivered", '"slow"', 1)


def test_release_and_renew_take_any_number_of_ids(store: Store) -> None:
    store.accept(items(*[f"k{i}" for i in range(2100)]), [], T0)
    ids = [i.id for i in store.claim(SEGMENT_TRACK, 3000, "w", 30, T0)]
    assert store.renew([*ids, 10**9], "w", T0 + 100) == 2100
    store.release(ids, "w", T0 + 5, "HTTP 500", status=500)
    stats = store.stats(T0)
    assert (stats["pending"], stats["leased"]) == (2100, 0)
    assert store.claim(SEGMENT_TRACK, 3000, "w", 30, T0 + 5)[0].attempts == 1


def test_delete_setting_removes_only_that_setting(store_on_each_backend: Store) -> None:
    """``config unset``: the stored value goes, the others stay; deleting again finds nothing."""
    store = store_on_each_backend
    store.put_setting("mailjet.list_id", "42", 1.0)
    store.put_setting("segment.region", "eu", 1.0)
    assert store.delete_setting("mailjet.list_id") is True
    assert store.get_setting("mailjet.list_id") is None and store.get_setting("segment.region") == "eu"
    assert store.delete_setting("mailjet.list_id") is False


# -- a delivered batch's texts, kept once for the batch (performance issue #11, R3) ----------------

def batch_sent(store: Store) -> int:
    """How many sent batches the store keeps."""
    assert isinstance(store, SqlStore)
    return store._rows("SELECT COUNT(*) FROM sent_batches")[0][0]


def call_of(item: ClaimedItem) -> str:
    return json.dumps({"messageId": f"m-{json_key(item)}", "event": "Email Sent"})


def test_a_batch_kept_once_shows_each_row_as_it_was_sent(store: Store) -> None:
    """Every reader gets each row's own text back, exactly, as if the row held it itself; the texts
    are written once, whatever the number of rows and statements."""
    keys = [f"k{i}" for i in range(1100)]  # more rows than one statement settles
    store.accept(items(*keys), [], T0)
    claimed = store.claim(SEGMENT_TRACK, 2000, "w", 60, T0)
    odd = {claimed[1].id: 'x\x00y', claimed[2].id: '"\ud800"', claimed[3].id: "Grüße, 東京"}
    store.mark_delivered([Outcome(i.id, sent=odd.get(i.id, call_of(i)), status=200, response="ok",
                                  latency_ms=4.0) for i in claimed], T0 + 1, owner="w",
                         sent_batch=SEGMENT_TRACK)
    assert batch_sent(store) == 1 and store.stats(T0)["delivered"] == 1100
    first = store.item(claimed[0].id)
    assert first is not None and first["sent"] == call_of(claimed[0]) and "sent_batch" not in first
    assert (first["state"], first["last_status"], first["latency_ms"], first["attempts"]) == (
        "delivered", 200, 4.0, 1)
    # the odd texts read back as the per-row path stores them (NUL, lone surrogate escaped)
    assert [store.item(i)["sent"] for i in odd] == ["x\\u0000y", '"\\ud800"', "Grüße, 東京"]  # type: ignore[index]
    shown = {i.id: odd.get(i.id, call_of(i)) for i in claimed}
    shown.update({i: store.item(i)["sent"] for i in odd})  # type: ignore[index]
    assert {row["id"]: row["sent"] for row in store.recent(1200)} == shown
    (found,) = store.find(dedupe_key="k1099", text="k1099", kinds=(SEGMENT_TRACK,))
    assert found["sent"] == call_of(claimed[-1])


def test_a_row_retaken_by_another_owner_keeps_its_own_sent_text(store: Store) -> None:
    """The batch's body holds every row it was sent with; a row whose lease ran out is the rival's
    to settle, delivered (with its own batch) or dead (with its own text)."""
    store.accept(items("a", "b", "c"), [], T0)
    a, b = store.claim(SEGMENT_TRACK, 2, "slow", 30, T0)
    (c,) = store.claim(SEGMENT_TRACK, 1, "slow", 100, T0)  # only c stays the slow one's
    rival_a, rival_b = store.claim(SEGMENT_TRACK, 2, "rival", 30, T0 + 31)
    assert (rival_a.id, rival_b.id) == (a.id, b.id)
    store.mark_delivered([Outcome(i.id, sent=f'"slow {json_key(i)}"', status=200) for i in (a, b, c)],
                         T0 + 32, owner="slow", sent_batch=SEGMENT_TRACK)
    store.mark_delivered([Outcome(a.id, sent='"rival a"', status=200)], T0 + 33, owner="rival",
                         sent_batch=SEGMENT_TRACK)
    store.mark_dead([Outcome(b.id, sent='"rival b"', error="rejected")], "rival", T0 + 34)
    assert [store.item(i.id)["sent"] for i in (a, b, c)] == [  # type: ignore[index]
        '"rival a"', '"rival b"', '"slow c"']
    (dead,) = store.dead_letters()
    assert (dead["id"], dead["sent"]) == (b.id, '"rival b"') and "sent_batch" not in dead


def test_a_dead_row_keeps_its_own_sent_text(store: Store) -> None:
    store.accept(items("a", "b"), [], T0)
    a, b = store.claim(SEGMENT_TRACK, 2, "w", 60, T0)
    store.mark_delivered([Outcome(a.id, sent='"a"', status=200)], T0 + 1, owner="w",
                         sent_batch=SEGMENT_TRACK)
    store.mark_dead([Outcome(b.id, sent='{"b":1}', status=400, error="rejected")], "w", T0 + 1)
    (dead,) = store.dead_letters()
    assert dead["sent"] == '{"b":1}' and store.item(b.id)["sent"] == '{"b":1}'  # type: ignore[index]
    assert store.requeue([b.id], T0 + 2) == 1  # a replay reads the payload, not what was sent
    assert store.item(b.id)["sent"] == '{"b":1}'  # type: ignore[index]


def test_compaction_drops_sent_batches_with_their_rows_texts(store: Store) -> None:
    """The sent batches go with the delivered payloads, after the retention: none kept for ever."""
    store.accept(items(*[f"k{i}" for i in range(30)]), [], T0)
    claimed = store.claim(SEGMENT_TRACK, 30, "w", 60, T0)
    for n, start in enumerate(range(0, 25, 5)):  # five old batches...
        store.mark_delivered([Outcome(i.id, sent=call_of(i), status=200)
                              for i in claimed[start:start + 5]], T0 + n, sent_batch=SEGMENT_TRACK)
    store.mark_delivered([Outcome(i.id, sent=call_of(i), status=200) for i in claimed[25:]],
                         T0 + 100, sent_batch=SEGMENT_TRACK)  # ...and a recent one
    assert batch_sent(store) == 6
    assert store.compact_delivered(T0 + 50, batch=3) == 25
    assert batch_sent(store) == 1
    old, recent = store.item(claimed[0].id), store.item(claimed[-1].id)
    assert old is not None and (old["payload"], old["sent"]) == ("", None)
    assert recent is not None and recent["sent"] == call_of(claimed[-1])
    assert store.prune_delivered(T0 + 50) == 25 and store.item(claimed[-1].id) is not None


@pytest.mark.parametrize("texts", [
    ['{"a":1}', '{"b":"\\u00e9 \\n","c":[1,2]}', '{"d":"é"}'],  # calls: kept one a line
    ['{"a":1}', '{\n"raw":"line break"}'],  # a raw line break: kept as a JSON array
    ['{"a":1}', "not a call"],
    ['{"a":1}', None],
])
def test_a_batch_s_texts_come_back_exactly_in_either_form(store: Store, texts: list[str | None]) -> None:
    store.accept(items(*[f"t{n}" for n in range(len(texts))]), [], T0)
    claimed = store.claim(SEGMENT_TRACK, 10, "w", 60, T0)
    sent = [Outcome(i.id, sent=text, status=200) for i, text in zip(claimed, texts, strict=True)]
    store.mark_delivered(sent, T0, owner="w", sent_batch=SEGMENT_TRACK)
    assert [store.item(i.id)["sent"] for i in claimed] == texts  # type: ignore[index]
