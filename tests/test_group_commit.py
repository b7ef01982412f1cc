"""Group commit (bridge/storage/group_commit.py): shared transactions, each caller its own answer."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bridge.errors import StorageUnavailable
from bridge.payloads.schemas import quarantine_entry
from bridge.storage.base import NewItem, QuarantineEntry
from bridge.storage.group_commit import GroupCommit
from bridge.storage.sqlite import SQLiteStore


class Journal:
    """A transaction that keeps what was written in it only when it commits."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.committed: list[list[str]] = []
        self.gate = gate

    @contextmanager
    def transaction(self) -> Iterator[list[str]]:
        if self.gate is not None:
            assert self.gate.wait(60)
        written: list[str] = []
        yield written
        self.committed.append(written)


def write(value: str) -> Callable[[list[str]], str]:
    def job(tx: list[str]) -> str:
        if value == "poison":
            raise ValueError("poison")
        tx.append(value)
        return value.upper()
    return job


def run_all(group: GroupCommit[list[str]], values: list[str],
            started: threading.Event) -> dict[str, object]:
    answers: dict[str, object] = {}

    def one(value: str) -> None:
        try:
            answers[value] = group.run(write(value))
        except ValueError as exc:
            answers[value] = exc

    threads = [threading.Thread(target=one, args=(v,)) for v in values]
    for thread in threads:
        thread.start()
    started.set()
    for thread in threads:
        thread.join(30)
    return answers


def queue_settled(group: GroupCommit[Any]) -> None:
    """Until the queue has stopped growing for 0.2 s: the leader took the first job or more and
    waits in its transaction; every caller started by then is queued behind it."""
    deadline, last, still = time.monotonic() + 20, -1, 0
    while still < 20 and time.monotonic() < deadline:
        size = len(group._queue)
        still, last = (still + 1 if size == last else 0), size
        time.sleep(0.01)


def run_gated(values: list[str]) -> tuple[dict[str, object], Journal]:
    """Every value written by a caller of its own while the first transaction is held at a gate:
    the gate opens once all of them have queued."""
    gate = threading.Event()
    journal = Journal(gate)
    group: GroupCommit[list[str]] = GroupCommit(journal.transaction)
    answers: dict[str, object] = {}
    started = threading.Event()
    runner = threading.Thread(target=lambda: answers.update(run_all(group, values, started)))
    runner.start()
    assert started.wait(10)
    queue_settled(group)
    gate.set()
    runner.join(30)
    return answers, journal


def test_waiting_jobs_share_one_transaction_and_each_gets_its_own_answer() -> None:
    values = [f"v{n}" for n in range(30)]
    answers, journal = run_gated(values)
    assert answers == {v: v.upper() for v in values}
    assert sorted(v for tx in journal.committed for v in tx) == sorted(values)
    assert len(journal.committed) <= 2


def test_a_failing_job_fails_alone() -> None:
    """The shared transaction is rolled back and each job runs alone: only the poison one fails,
    and nothing is committed twice."""
    answers, journal = run_gated(["a", "b", "poison", "c"])
    assert isinstance(answers.pop("poison"), ValueError)
    assert answers == {"a": "A", "b": "B", "c": "C"}
    assert sorted(v for tx in journal.committed for v in tx) == ["a", "b", "c"]


def test_an_uncontended_write_commits_on_the_callers_thread() -> None:
    """No thread of its own: a lone write is committed by its caller, and nothing is left leading."""
    journal = Journal()
    group: GroupCommit[list[str]] = GroupCommit(journal.transaction)
    before = threading.active_count()
    assert group.run(write("x")) == "X"
    assert group.run(write("y")) == "Y"
    assert journal.committed == [["x"], ["y"]]
    assert threading.active_count() == before and not group._leading


@pytest.mark.parametrize("threads", [1, 16])
def test_concurrent_accepts_of_the_same_event_store_it_once(tmp_path: Path, threads: int) -> None:
    """Redeliveries racing each other in one group: one is accepted, the rest are duplicates."""
    store = SQLiteStore(tmp_path / "b.db")
    store.migrate()
    results = []
    lock = threading.Lock()

    def accept() -> None:
        result = store.accept([NewItem("k", "same", "open", "{}", 1)], [], 1.0)
        with lock:
            results.append((result.accepted, result.duplicate))

    workers = [threading.Thread(target=accept) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(10)
    store.close()
    assert sorted(results) == [(0, 1)] * (threads - 1) + [(1, 0)]


def test_many_writers_each_get_their_answer_and_every_write_commits_once() -> None:
    """Leadership passes from caller to caller under contention: no write is lost, doubled or left
    waiting (each thread runs 50 writes back to back)."""
    journal = Journal()
    group: GroupCommit[list[str]] = GroupCommit(journal.transaction, max_jobs=7)
    wrong: list[str] = []

    def writer(n: int) -> None:
        for k in range(50):
            value = f"w{n}-{k}"
            if group.run(write(value)) != value.upper():
                wrong.append(value)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads) and not wrong
    committed = [v for tx in journal.committed for v in tx]
    assert sorted(committed) == sorted(f"w{n}-{k}" for n in range(32) for k in range(50))
    assert not group._leading


# -- accept_many: the writer process's rounds (bridge/storage/writer.py) --------------------------


def test_accept_many_answers_what_accept_would(tmp_path: Path) -> None:
    """The same bodies, one store through ``accept`` one at a time and one through ``accept_many``
    in one round: the same counts, redeliveries and quarantine included."""
    one, many = SQLiteStore(tmp_path / "one.db"), SQLiteStore(tmp_path / "many.db")
    for store in (one, many):
        store.migrate()
    bad = quarantine_entry("mailjet", '{"event": "typo"}', [{"message": "unknown"}])
    bodies: list[tuple[list[NewItem], list[QuarantineEntry]]] = [
        ([NewItem("k", "a", "open", "{}", 1), NewItem("k", "b", "click", "{}", 1)], []),
        ([NewItem("k", "a", "open", "{}", 1), NewItem("k", "c", "open", "{}", 2)], [bad]),
        ([], [bad]),
        ([NewItem("k", "a", "open", "{}", 1), NewItem("k", "a", "open", "{}", 1)], []),
        ([], []),
    ]
    try:
        expected = [one.accept(items, quarantined, 1.0) for items, quarantined in bodies]
        assert many.accept_many([(items, quarantined, 1.0) for items, quarantined in bodies]) == expected
        assert many.stats(0)["pending"] == one.stats(0)["pending"] == 3
    finally:
        one.close()
        many.close()


def test_accept_many_gives_each_body_storage_unavailable_when_nothing_can_be_stored(
        tmp_path: Path) -> None:
    """A database locked past the busy timeout: every body of the round gets StorageUnavailable
    (each web request a 503), and once the lock is gone the same store commits again."""
    store = SQLiteStore(tmp_path / "b.db", busy_timeout_ms=50)
    store.migrate()
    blocker = sqlite3.connect(tmp_path / "b.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    bodies = [([NewItem("k", key, "open", "{}", 1)], [], 1.0) for key in "ab"]
    try:
        outcomes = store.accept_many(bodies)
        assert len(outcomes) == 2 and all(isinstance(o, StorageUnavailable) for o in outcomes)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    try:
        assert [o.accepted for o in store.accept_many(bodies)] == [1, 1]  # type: ignore[union-attr]
    finally:
        store.close()
