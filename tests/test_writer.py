"""The writer process's protocol (bridge/storage/writer.py), in process, on both backends.

Web processes' requests share the writer's transactions and each gets its own answer; a body that
fails fails alone; when the writer is gone, every request waiting on it gets StorageUnavailable
(a 503: the sender retries) and the next request reconnects to the writer started again.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from bridge.errors import StorageUnavailable
from bridge.storage.base import AcceptResult, NewItem, QuarantineEntry, Store
from bridge.storage.writer import WriterClient, WriterServer
from tests.processes import poll


def item(n: int, kind: str = "segment_track") -> NewItem:
    return NewItem(kind, f"key-{n}", "open", f'{{"n":{n}}}', 1_800_000_000 + n)


class Running:
    """A WriterServer on a thread, until stopped."""

    def __init__(self, store: Store, path: Path) -> None:
        self.stop = threading.Event()
        self.server = WriterServer(store, str(path))
        self.thread = threading.Thread(target=self.server.serve, args=(self.stop,), daemon=True)
        self.thread.start()
        poll(path.exists, 10, "the writer to listen")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()


@contextmanager
def writer(store: Store, path: Path) -> Iterator[Running]:
    running = Running(store, path)
    try:
        yield running
    finally:
        running.close()


def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "w.sock"


def test_concurrent_requests_share_commits_and_each_gets_its_own_answer(
        store_on_each_backend: Store, tmp_path: Path) -> None:
    """100 requests in flight from two clients (two web processes): each answer counts its own
    body, every item is stored once, and the writer committed them in fewer transactions than
    requests."""
    store = store_on_each_backend
    commits: list[int] = []
    write = store._write  # type: ignore[attr-defined]

    def counted() -> AbstractContextManager[Any]:
        commits.append(1)
        return write()

    def counted_one() -> AbstractContextManager[Any]:  # PostgreSQL's round of events only
        commits.append(1)
        return write_one()

    write_one = store._write_one_statement  # type: ignore[attr-defined]
    store._write = counted  # type: ignore[attr-defined]
    store._write_one_statement = counted_one  # type: ignore[attr-defined]
    path = socket_path(tmp_path)

    async def post_all() -> list[AcceptResult]:
        clients = [WriterClient(str(path)), WriterClient(str(path))]
        return await asyncio.gather(*[
            clients[n % 2].accept([item(n), item(n + 1000)] if n % 10 else [item(n), item(n)], [],
                                  1.0)
            for n in range(100)])

    with writer(store, path):
        answers = asyncio.run(post_all())
        again = asyncio.run(post_all())
    assert [(a.accepted, a.duplicate) for a in answers] == [
        (2, 0) if n % 10 else (1, 1) for n in range(100)]
    assert all((a.accepted, a.duplicate) == (0, 2) for a in again)
    assert store.stats(2.0)["pending"] == 190
    assert len(commits) < 2 * 100


def test_a_body_that_fails_fails_alone(tmp_path: Path, store: Store) -> None:
    """A body whose rows the database refuses (a NUL in a key) gets an error; the bodies that
    shared its round are committed."""
    path = socket_path(tmp_path)
    poison = NewItem("segment_track", "bad\x00key", "open", "{}", 1_800_000_000)

    async def post() -> list[Any]:
        client = WriterClient(str(path))
        return await asyncio.gather(
            client.accept([item(1)], [], 1.0), client.accept([poison], [], 1.0),
            client.accept([item(2)], [QuarantineEntry("mailjet", "fp", "{}", "[]")], 1.0),
            return_exceptions=True)

    with writer(store, path):
        first, bad, third = asyncio.run(post())
    assert isinstance(first, AcceptResult) and first.accepted == 1
    assert isinstance(third, AcceptResult) and (third.accepted, third.quarantined) == (1, 1)
    if isinstance(bad, AcceptResult):  # SQLite may store the key as it is: then it is stored once
        assert bad.accepted == 1
    else:
        assert isinstance(bad, (StorageUnavailable, RuntimeError))
    assert store.stats(2.0)["pending"] >= 2


def test_no_writer_means_storage_unavailable_and_a_restarted_writer_is_reached_again(
        tmp_path: Path, store: Store) -> None:
    path = socket_path(tmp_path)

    async def scenario() -> None:
        client = WriterClient(str(path))
        with pytest.raises(StorageUnavailable):
            await client.accept([item(1)], [], 1.0)
        with writer(store, path):
            assert (await client.accept([item(1)], [], 1.0)).accepted == 1
        # the writer stopped: the connection ends, and the next request finds no writer
        with pytest.raises(StorageUnavailable):
            for _ in range(100):  # until the client has seen the connection end (at most 1 s)
                await client.accept([item(2)], [], 1.0)
                await asyncio.sleep(0.01)
        with writer(store, path):
            assert (await client.accept([item(3)], [], 1.0)).accepted == 1

    asyncio.run(scenario())


def test_requests_waiting_when_the_writer_goes_get_storage_unavailable(
        tmp_path: Path, store: Store) -> None:
    """The writer is stuck in a commit (the database is locked) and then goes away without
    answering: the waiting requests get StorageUnavailable, not a hang and not a 200."""
    path = socket_path(tmp_path)
    gate = threading.Event()
    write = store._write  # type: ignore[attr-defined]

    @contextmanager
    def held() -> Iterator[Any]:
        assert gate.wait(30)
        with write() as tx:
            yield tx

    store._write = held  # type: ignore[attr-defined]
    running = Running(store, path)

    async def scenario() -> list[Any]:
        client = WriterClient(str(path))
        waiting = [asyncio.ensure_future(client.accept([item(n)], [], 1.0)) for n in range(3)]
        deadline = time.monotonic() + 10
        connection = client._connection
        while connection is None or len(connection.pending) < 3:  # until all three are sent
            assert time.monotonic() < deadline, "the requests were not sent"
            await asyncio.sleep(0.01)
            connection = client._connection
        connection.writer.transport.abort()  # as if the writer process had been killed
        return await asyncio.gather(*waiting, return_exceptions=True)

    try:
        outcomes = asyncio.run(scenario())
    finally:
        gate.set()
        running.close()
    assert all(isinstance(o, StorageUnavailable) for o in outcomes), outcomes


def test_a_small_round_is_committed_on_the_reading_thread_a_large_one_by_a_committer(
        tmp_path: Path, pg_url: str) -> None:
    """PostgreSQL's writer has committer threads, whose commits overlap; a round the store puts in
    one statement, with nothing waiting for them, is committed by the thread that read it (no
    hand-over between threads: a quarter less of the writer's CPU a single-event request)."""
    from bridge.storage import open_store

    store = open_store(pg_url)
    assert store.concurrent_writes > 1 and store.round_rows == 64
    threads: list[str] = []
    accept_many = store.accept_many

    def recorded(bodies: Any) -> Any:
        threads.append(threading.current_thread().name)
        return accept_many(bodies)

    store.accept_many = recorded  # type: ignore[method-assign]
    path = socket_path(tmp_path)

    async def post(items: list[NewItem]) -> AcceptResult:
        return await WriterClient(str(path)).accept(items, [], 1.0)

    try:
        with writer(store, path) as running:
            assert asyncio.run(post([item(1)])).accepted == 1
            assert asyncio.run(post([item(n) for n in range(100, 200)])).accepted == 100
            reader = running.thread.name
    finally:
        store.close()
    assert threads[0] == reader
    assert threads[1].startswith("writer-commit-")
