"""Group commit (bridge/storage/group_commit.py): shared transactions, each caller its own answer."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bridge.storage.base import NewItem
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
            started: threading.Event | None = None) -> dict[str, object]:
    answers: dict[str, object] = {}

    def one(value: str) -> None:
        try:
            answers[value] = group.run(write(value))
        except ValueError as exc:
            answers[value] = exc

    threads = [threading.Thread(target=one, args=(v,)) for v in values]
    for thread in threads:
        thread.start()
    if started is not None:
        started.set()
    for thread in threads:
        thread.join(30)
    return answers


def settle(group: GroupCommit[list[str]], started: threading.Event) -> None:
    """Until every caller has started and the queue has stopped growing (the committer took the
    first one or more and waits at the gate; everyone else is queued behind)."""
    assert started.wait(10)
    deadline, last, still = time.monotonic() + 20, -1, 0
    while still < 20 and time.monotonic() < deadline:
        size = len(group._queue)
        still = still + 1 if size == last else 0
        last = size
        time.sleep(0.01)


def test_waiting_jobs_share_one_transaction_and_each_gets_its_own_answer() -> None:
    gate = threading.Event()
    journal = Journal(gate)
    group: GroupCommit[list[str]] = GroupCommit(journal.transaction)
    values = [f"v{n}" for n in range(30)]
    answers: dict[str, object] = {}
    started = threading.Event()
    runner = threading.Thread(target=lambda: answers.update(run_all(group, values, started)))
    runner.start()
    settle(group, started)
    gate.set()
    runner.join(30)
    assert answers == {v: v.upper() for v in values}
    assert sorted(v for tx in journal.committed for v in tx) == sorted(values)
    assert len(journal.committed) <= 2


def test_a_failing_job_fails_alone() -> None:
    """The shared transaction is rolled back and each job runs alone: only the poison one fails,
    and nothing is committed twice."""
    gate = threading.Event()
    journal = Journal(gate)
    group: GroupCommit[list[str]] = GroupCommit(journal.transaction)
    values = ["a", "b", "poison", "c"]
    answers: dict[str, object] = {}
    started = threading.Event()
    runner = threading.Thread(target=lambda: answers.update(run_all(group, values, started)))
    runner.start()
    settle(group, started)
    gate.set()
    runner.join(30)
    assert isinstance(answers.pop("poison"), ValueError)
    assert answers == {"a": "A", "b": "B", "c": "C"}
    assert sorted(v for tx in journal.committed for v in tx) == ["a", "b", "c"]


def test_the_committer_ends_when_idle_and_a_new_one_starts() -> None:
    journal = Journal()
    group: GroupCommit[list[str]] = GroupCommit(journal.transaction, idle_seconds=0.05)
    assert group.run(write("x")) == "X"
    deadline = time.monotonic() + 5
    while group._running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not group._running
    assert group.run(write("y")) == "Y"
    assert journal.committed == [["x"], ["y"]]


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
