"""The debugger's storage: finding one event by its labels or, not labelled yet, by its text, and the
bounded record of failed attempts. Each test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.storage import open_store
from bridge.storage.base import ATTEMPTS_KEPT, DeadLetter, NewItem, Outcome, QuarantineEntry, Store
from bridge.storage.sql import SqlStore, migration_files

T0 = 1_700_000_000.0
TRACK, CONTACT = "segment_track", "mailjet_contact"
KINDS = (TRACK, CONTACT)


@pytest.fixture
def store(store_on_each_backend: Store) -> Store:
    return store_on_each_backend


def event(key: str, email: str, message_id: int) -> NewItem:
    text = json.dumps({"event": "open", "time": 1_800_000_000, "MessageID": message_id, "email": email})
    return NewItem(TRACK, key, "open", text, 1_800_000_000)


def ids(rows: list[dict]) -> list[int]:
    return [row["id"] for row in rows]


def test_labelled_rows_are_found_by_recipient_message_id_and_key(store: Store) -> None:
    store.accept([event("k1", "Ada@Example.com", 11), event("k2", "bob@example.com", 22),
                  event("k3", "ada@example.com", 33)], [], T0)
    one, two, three = store.claim(TRACK, 10, "w", 60, T0)
    store.mark_delivered([Outcome(one.id, sent="{}", status=200, response="ok"),
                          Outcome(two.id, sent="{}", status=200, response="ok")], T0 + 1, owner="w")
    store.mark_dead([Outcome(three.id, status=400, error="rejected", recipient="ada@example.com",
                             message_ref="33")], "w", T0 + 2)  # a dead row is labelled as it dies
    assert store.find(recipient="ada@example.com") == [store.find(message_ref="33")[0]]
    assert ids(store.to_label(10)) == [one.id, two.id]  # delivered rows: the janitor labels them
    store.label([(one.id, "ada@example.com", "11"), (two.id, "bob@example.com", "22")])
    assert store.to_label(10) == []

    assert ids(store.find(recipient="ada@example.com")) == [three.id, one.id]  # newest first
    assert ids(store.find(message_ref="22")) == [two.id]
    assert ids(store.find(dedupe_key="k1")) == [one.id]
    assert store.find(recipient="nobody@example.com", message_ref="99", dedupe_key="k9") == []
    found = store.find(recipient="bob@example.com")[0]
    assert (found["state"], found["recipient"], found["message_ref"], found["dedupe_key"]) == (
        "delivered", "bob@example.com", "22", "k2")


def test_rows_not_labelled_yet_are_found_by_their_text(store: Store) -> None:
    """Pending rows (never attempted) and dead letters recorded at intake carry no labels: the
    open and dead rows are scanned, case-insensitively, and the caller checks each candidate."""
    store.accept([event("p1", "Ada@Example.com", 11)], [], T0,
                 dead=[DeadLetter(CONTACT, "c1", "identify", '{"traits":{"email":"ada@example.com"}}',
                                  "no email")])
    found = store.find(recipient="ada@example.com", text="ada@example.com", kinds=KINDS)
    assert sorted(row["state"] for row in found) == ["dead", "pending"]
    assert ids(store.find(text="zzz", dedupe_key="p1", kinds=KINDS)) == [found[-1]["id"]]
    # a pattern's wildcards are taken literally
    assert store.find(text="ada_example", kinds=KINDS) == []
    assert store.find(text="%", kinds=KINDS) == []
    # only the kinds asked for are scanned
    assert [r["kind"] for r in store.find(text="ada@example.com", kinds=(CONTACT,))] == [CONTACT]


def test_delivered_rows_are_scanned_only_until_they_are_labelled(store: Store) -> None:
    """A large outbox is mostly delivered rows: once labelled they are only looked up by label, and
    until then (the janitor labels them after delivery) they are among the few rows scanned."""
    store.accept([event("k1", "ada@example.com", 11)], [], T0)
    (item,) = store.claim(TRACK, 10, "w", 60, T0)
    store.mark_delivered([Outcome(item.id, sent="{}", status=200)], T0)
    assert ids(store.find(text="ada@example.com", kinds=KINDS)) == [item.id]
    store.label([(item.id, "other@example.com", None)])
    assert store.find(text="ada@example.com", kinds=KINDS) == []
    assert ids(store.find(recipient="other@example.com")) == [item.id]


def test_rows_of_a_batch_kept_once_are_found_with_their_own_sent_text(store: Store) -> None:
    """Delivered in one batch whose calls are kept once (#11, R3): each row found, by its text before
    the janitor labels it and by its labels after, shows what it was sent as."""
    store.accept([event("k1", "ada@example.com", 11), event("k2", "bob@example.com", 22)], [], T0)
    one, two = store.claim(TRACK, 10, "w", 60, T0)
    sent = {one.id: '{"messageId":"mailjet-k1"}', two.id: '{"messageId":"mailjet-k2"}'}
    store.mark_delivered([Outcome(i.id, sent=sent[i.id], status=200) for i in (one, two)], T0,
                         owner="w", sent_batch=TRACK)
    (found,) = store.find(text="bob@example.com", kinds=KINDS)
    assert (found["id"], found["sent"]) == (two.id, sent[two.id])
    store.label([(one.id, "ada@example.com", "11"), (two.id, "bob@example.com", "22")])
    assert [(row["id"], row["sent"]) for row in store.find(recipient="ada@example.com",
                                                           message_ref="22")] == [
        (two.id, sent[two.id]), (one.id, sent[one.id])]


def test_a_row_with_nothing_to_label_leaves_the_rows_to_label(store: Store) -> None:
    store.accept([event("k1", "ada@example.com", 11)], [], T0)
    (item,) = store.claim(TRACK, 10, "w", 60, T0)
    store.mark_delivered([Outcome(item.id, sent="{}", status=200)], T0)
    store.label([(item.id, None, None)])
    assert store.to_label(10) == [] and ids(store.find(dedupe_key="k1")) == [item.id]


def test_search_text_with_a_nul_matches_nothing(store: Store) -> None:
    store.accept([event("k1", "ada@example.com", 11)], [], T0)
    assert store.find(recipient="a\x00", message_ref="\x00", text="\x00", kinds=KINDS) == []
    assert store.find_quarantined("\x00") == []


def test_quarantined_entries_are_found_by_their_text(store: Store) -> None:
    body = '{"event": "open", "time": "yesterday", "email": "Ada@Example.com"}'
    store.accept([], [QuarantineEntry("mailjet", "fp1", body, "[]"),
                      QuarantineEntry("mailjet", "fp2", '{"email": "bob@example.com"}', "[]")], T0)
    (entry,) = store.find_quarantined("ada@example.com")
    assert entry["body"] == body and entry["received_at"] == T0
    assert store.find_quarantined("carol@example.com") == []


def test_the_last_failed_attempts_are_kept_oldest_first(store: Store) -> None:
    store.accept([event("k1", "ada@example.com", 11)], [], T0)
    for n in range(ATTEMPTS_KEPT + 3):
        (item,) = store.claim(TRACK, 10, "w", 60, T0 + n * 10)
        store.release([item.id], "w", T0 + n * 10 + 5, f"Segment unavailable: 503 ({n})", status=503,
                      now=T0 + n * 10 + 1)
    (item,) = store.claim(TRACK, 10, "w", 60, T0 + 1000)
    store.release([item.id], "w", T0 + 1000, None, count_attempt=False)  # untried: not an attempt
    kept = store.attempts([item.id])[item.id]
    assert len(kept) == ATTEMPTS_KEPT
    assert [a["error"].split()[-1] for a in kept] == [f"({n})" for n in range(3, ATTEMPTS_KEPT + 3)]
    assert kept[0] == {"at": T0 + 31, "status": 503, "error": "Segment unavailable: 503 (3)"}
    assert store.attempts([item.id + 1]) == {}
    # delivered and pruned: the attempts go with the row
    (item,) = store.claim(TRACK, 10, "w", 60, T0 + 2000)
    store.mark_delivered([Outcome(item.id, status=200)], T0 + 2000)
    assert store.prune_delivered(T0 + 3000) == 1
    assert store.attempts([item.id]) == {}


def test_another_owners_release_records_no_attempt(store: Store) -> None:
    store.accept([event("k1", "ada@example.com", 11)], [], T0)
    (item,) = store.claim(TRACK, 10, "w", 60, T0)
    store.release([item.id], "someone-else", T0 + 5, "late", now=T0)
    assert store.attempts([item.id]) == {}


def test_the_search_uses_the_indexes(store: SqlStore, tmp_path: Path) -> None:
    """The labelled lookup reads the partial indexes of migration 0005; the scan of unlabelled rows
    reads only the open and dead rows through ``outbox_due`` (never every delivered row)."""
    labelled = ("SELECT id FROM outbox WHERE recipient = ? UNION SELECT id FROM outbox WHERE "
                "message_ref = ? UNION SELECT id FROM outbox WHERE dedupe_key = ? AND recipient IS NOT NULL")
    scan = ("SELECT id FROM outbox WHERE kind IN (?, ?) AND state IN (?, ?, ?) AND recipient IS NULL "
            "AND (LOWER(payload) LIKE ? ESCAPE '\\' OR dedupe_key = ?)")
    delivered_scan = ("SELECT id FROM outbox WHERE state = 'delivered' AND recipient IS NULL "
                      "AND (LOWER(payload) LIKE ? ESCAPE '\\' OR dedupe_key = ?)")
    to_label = "SELECT id FROM outbox WHERE state = 'delivered' AND recipient IS NULL ORDER BY id LIMIT 10"
    params = ("a@x.com", "1", "k")
    scan_params = (*KINDS, "pending", "leased", "dead", "%a%", "k")
    if store.dialect == "sqlite":
        plan = " ".join(str(r) for r in store._rows(f"EXPLAIN QUERY PLAN {labelled}", params))
        assert {"outbox_recipient", "outbox_message_ref", "outbox_labelled_key"} <= {
            word for word in plan.replace("(", " ").split() if word.startswith("outbox_")}
        plan = " ".join(str(r) for r in store._rows(f"EXPLAIN QUERY PLAN {scan}", scan_params))
        assert "outbox_due" in plan
        for query, args in ((delivered_scan, ("%a%", "k")), (to_label, ())):
            plan = " ".join(str(r) for r in store._rows(f"EXPLAIN QUERY PLAN {query}", args))
            assert "outbox_to_label" in plan, plan
    else:  # a planner's choice on a tiny table is a sequential scan: ask what it can use
        import psycopg

        with psycopg.connect(store.url) as conn:
            conn.execute("SET enable_seqscan = off")
            plan = " ".join(r[0] for r in conn.execute(
                "EXPLAIN " + labelled.replace("?", "%s"), params))
            for index in ("outbox_recipient", "outbox_message_ref", "outbox_labelled_key"):
                assert index in plan, plan
            plan = " ".join(r[0] for r in conn.execute(
                "EXPLAIN " + scan.replace("?", "%s").replace("%a%", "x"), scan_params))
            assert "outbox_due" in plan or "outbox_open" in plan, plan
            for query, args in ((delivered_scan, ("%a%", "k")), (to_label, ())):
                plan = " ".join(r[0] for r in conn.execute("EXPLAIN " + query.replace("?", "%s"), args))
                assert "outbox_to_label" in plan, plan


def test_a_version_4_database_is_upgraded_and_its_rows_found(tmp_path: Path) -> None:
    """An existing database (schema 4, before the debugger's labels) migrates, keeps its rows, and
    finds its queued events by their text."""
    path = tmp_path / "old.db"
    import sqlite3

    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)")
    for version, script in migration_files("sqlite"):
        if version <= 4:
            conn.executescript(script)
            conn.execute("INSERT INTO schema_version VALUES (?, ?)", (version, T0))
    conn.execute("INSERT INTO outbox (kind, dedupe_key, event_type, payload, next_attempt_at, created_at) "
                 "VALUES ('segment_track', 'old', 'open', '{\"email\": \"ada@example.com\"}', 0, ?)", (T0,))
    conn.commit()
    conn.close()
    store = open_store(f"sqlite:///{path}")
    try:
        store.migrate()
        assert store.schema_version() >= 5
        (row,) = store.find(recipient="ada@example.com", text="ada@example.com", kinds=KINDS)
        assert (row["dedupe_key"], row["recipient"]) == ("old", None)
    finally:
        store.close()


def test_the_janitor_labels_delivered_rows_a_window_at_a_time(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Delivered rows (and rows delivered before labels existed, schema 5) get their labels from the
    janitor, a window per round; a round is busy while more wait, and idle once none do."""
    from bridge.delivery import janitor as janitor_module
    from bridge.delivery.janitor import Janitor
    from bridge.inbound.track import labels as track_labels
    from bridge.outbound.intake import labels as outbound_labels

    monkeypatch.setattr(janitor_module, "LABEL_WINDOW", 2)
    store.accept([event(f"k{n}", f"user{n}@example.com", 100 + n) for n in range(3)], [], T0,
                 dead=[DeadLetter(CONTACT, "c1", "identify", '{"traits": {"email": "Eve@Example.com"}}',
                                  "no list")])
    claimed = store.claim(TRACK, 10, "w", 60, T0)
    store.mark_delivered([Outcome(item.id, status=200) for item in claimed], T0)
    assert store.find(recipient="user0@example.com") == []

    janitor = Janitor(store, 0, labellers={TRACK: track_labels, CONTACT: outbound_labels})
    assert janitor.run_once() == 2  # busy: a full window, more may wait
    assert ids(store.find(recipient="user1@example.com")) == [claimed[1].id]
    assert store.find(recipient="user2@example.com") == []  # the next window
    assert janitor.run_once() == 0  # the last one, not full: the janitor rests
    (row,) = store.find(message_ref="102")
    assert row["recipient"] == "user2@example.com"
    assert store.to_label(10) == []
    # a dead letter recorded at intake is found by the scan of open and dead rows
    assert store.find(text="eve@example.com", kinds=KINDS)[0]["state"] == "dead"
