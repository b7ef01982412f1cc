"""One writer per host: the Mailjet webhook's writes, from every web process, committed by one process.

SQLite lets one writer in at a time. With each web process committing its own requests, the
processes took turns at the write lock, each with its own smaller groups and fsyncs, and two web
processes served fewer single-event posts than one (docs/benchmarks.md, #11). Under ``serve`` the
web processes instead send each body's sorted events to this process over a Unix socket. Here a
single thread reads the requests of every web process and commits all that have arrived in one
transaction (``Store.accept_many``), so that the requests waiting on the host share one fsync;
each answer goes back once its transaction has committed. The web process answers its
client only then: nothing is answered 200 before it is durable.

If this process dies, the requests it had not answered get StorageUnavailable (a 503: the sender
retries, and the events committed meanwhile come back as duplicates); ``serve`` starts it again.

Frames, both ways: a header (``FRAME``: the length of the rest and the request's id) and a pickle.
The socket lives in a folder only its owner can enter, made by ``serve`` for the processes it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import selectors
import socket
import struct
import threading
from collections.abc import Sequence
from typing import Any

from bridge.errors import StorageUnavailable
from bridge.storage.base import AcceptResult, NewItem, QuarantineEntry, Store

log = logging.getLogger(__name__)

#: Each frame's header: the length of the pickle that follows, and the request's id.
FRAME = struct.Struct("!IQ")
#: An answer's first element: committed, or which error (StorageUnavailable or another).
OK, UNAVAILABLE, FAILED = "ok", "unavailable", "failed"
READ_BYTES = 256 * 1024
POLL_SECONDS = 0.2
#: Bodies committed in one transaction at most (more in a round: several transactions).
MAX_BODIES = 512


def frame(request_id: int, value: Any) -> bytes:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME.pack(len(data), request_id) + data


class _Peer:
    """One web process's connection: what it has sent so far."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buffer = bytearray()
        self.sending = threading.Lock()  # committer threads answer on the same connection

    def requests(self) -> list[tuple[int, Any]]:
        """The complete requests received so far, taken out of the buffer."""
        found, start, buffer = [], 0, self.buffer
        while len(buffer) - start >= FRAME.size:
            length, request_id = FRAME.unpack_from(buffer, start)
            end = start + FRAME.size + length
            if len(buffer) < end:
                break
            found.append((request_id, pickle.loads(buffer[start + FRAME.size:end])))
            start = end
        del buffer[:start]
        return found

    def answer(self, answers: list[bytes]) -> None:
        try:
            with self.sending:
                self.conn.sendall(b"".join(answers))
        except OSError:  # the web process is gone; its requests are answered by no one anyway
            log.debug("could not answer %s requests: the web process has gone", len(answers))


class _Rounds:
    """Requests read and not yet taken by a committer thread (when the store has several)."""

    def __init__(self) -> None:
        self.ready = threading.Condition()
        self.waiting: list[tuple[_Peer, int, Any]] = []
        self.closed = False

    def add(self, round_: list[tuple[_Peer, int, Any]]) -> None:
        with self.ready:
            self.waiting.extend(round_)
            self.ready.notify()

    def empty(self) -> bool:
        with self.ready:
            return not self.waiting

    def take(self) -> list[tuple[_Peer, int, Any]] | None:
        """Everything waiting (up to MAX_BODIES), once there is some; None once closed and empty."""
        with self.ready:
            while not self.waiting and not self.closed:
                self.ready.wait()
            taken, self.waiting = self.waiting[:MAX_BODIES], self.waiting[MAX_BODIES:]
            return taken or None

    def close(self) -> None:
        with self.ready:
            self.closed = True
            self.ready.notify_all()


class WriterServer:
    """The writer process's loop: read what every web process has sent, commit it all in one
    transaction (``Store.accept_many``), answer each request, and again. Requests that arrive
    during a commit wait for the next round: that is the group commit.

    SQLite takes one writer at a time, so its rounds are committed by the thread that reads them.
    A store that gains from several transactions at once (``Store.concurrent_writes``: PostgreSQL,
    whose own group commit shares WAL flushes among them) has that many committer threads, each
    taking everything read by the time it is free: a commit waiting for its flush no longer holds
    up the next round. A round the store puts in one statement (``Store.in_one_statement``: single
    events), with nothing waiting for the committers, the reading thread commits itself: no
    hand-over between threads (the committers may be busy meanwhile; the store has connections to
    spare)."""

    def __init__(self, store: Store, path: str) -> None:
        self.store = store
        self.path = path

    def serve(self, stop: threading.Event, parent: int | None = None) -> None:
        """Until ``stop`` is set, or the process ``parent`` has gone. What was read is answered."""
        # bound and listening under another name, then renamed into place: a web process that
        # finds the path connects (between bind and listen it was refused: a 503, a failed test)
        staged = f"{self.path}.{os.getpid()}"
        for stale in (self.path, staged):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(staged)
        os.chmod(staged, 0o600)
        listener.listen(64)
        os.replace(staged, self.path)
        listener.setblocking(False)
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ)
        rounds, committers = _Rounds(), []
        if self.store.concurrent_writes > 1:
            committers = [threading.Thread(target=self._commit_taken, args=(rounds,),
                                           name=f"writer-commit-{n}", daemon=True)
                          for n in range(self.store.concurrent_writes)]
            for committer in committers:
                committer.start()
        try:
            while not stop.is_set() and (parent is None or os.getppid() == parent):
                round_: list[tuple[_Peer, int, Any]] = []
                for key, _ in selector.select(POLL_SECONDS):
                    if key.fileobj is listener:
                        conn, _ = listener.accept()
                        selector.register(conn, selectors.EVENT_READ, _Peer(conn))
                    else:
                        round_.extend(self._read(selector, key.data))
                if committers and not (round_ and rounds.empty() and self.store.in_one_statement(
                        [body for _, _, body in round_])):
                    rounds.add(round_)
                    continue
                for start in range(0, len(round_), MAX_BODIES):
                    self._commit(round_[start:start + MAX_BODIES])
        finally:
            rounds.close()
            for committer in committers:  # what was read is committed and answered
                committer.join()
            for key in list(selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            selector.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def _read(self, selector: selectors.BaseSelector, peer: _Peer) -> list[tuple[_Peer, int, Any]]:
        try:
            data = peer.conn.recv(READ_BYTES)
        except OSError:
            data = b""
        if not data:
            selector.unregister(peer.conn)
            peer.conn.close()
            return []
        peer.buffer += data
        return [(peer, request_id, (list(map(NewItem._make, items)), quarantined, now))
                for request_id, (items, quarantined, now) in peer.requests()]

    def _commit_taken(self, rounds: _Rounds) -> None:
        while (taken := rounds.take()) is not None:
            self._commit(taken)

    def _commit(self, round_: list[tuple[_Peer, int, Any]]) -> None:
        outcomes = self.store.accept_many([body for _, _, body in round_])
        answers: dict[_Peer, list[bytes]] = {}
        for (peer, request_id, _), outcome in zip(round_, outcomes, strict=True):
            answers.setdefault(peer, []).append(frame(request_id, _answer(outcome)))
        for peer, frames in answers.items():
            peer.answer(frames)


def _answer(outcome: AcceptResult | BaseException) -> tuple[str, Any]:
    if isinstance(outcome, AcceptResult):
        return OK, outcome
    if isinstance(outcome, StorageUnavailable):
        return UNAVAILABLE, str(outcome)
    log.error("a write failed: %r", outcome)
    return FAILED, type(outcome).__name__


class _Connection:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.pending: dict[int, asyncio.Future[AcceptResult]] = {}
        self.reading: asyncio.Task[None] | None = None  # held: the loop keeps only a weak reference


class WriterClient:
    """``accept`` through the host's writer process, for an event loop: one connection a web
    process, opened at the first request (and again after the writer has restarted), with any
    number of requests in flight on it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._ids = itertools.count(1)
        self._connection: _Connection | None = None
        self._opening: asyncio.Lock | None = None

    async def accept(self, items: Sequence[NewItem], quarantined: Sequence[QuarantineEntry],
                     now: float) -> AcceptResult:
        """Committed by the writer; raises StorageUnavailable when the writer cannot be reached,
        cannot store, or goes away before it answers (the sender must retry)."""
        request_id = next(self._ids)
        # plain tuples: a named tuple pickles by its class, 8 times slower (0.66 against 0.08 µs)
        data = frame(request_id, ([tuple(item) for item in items], quarantined, now))
        try:
            future = await self._send(request_id, data)
        except OSError:  # a connection to a writer since restarted fails at once: once more
            try:
                future = await self._send(request_id, data)
            except OSError as exc:
                raise StorageUnavailable(f"the writer process does not answer: {exc}") from exc
        return await future

    async def _send(self, request_id: int, data: bytes) -> asyncio.Future[AcceptResult]:
        """The request sent; the future its answer will settle. OSError (and the connection dropped)
        if it could not be sent."""
        connection = self._connection or await self._open()
        future: asyncio.Future[AcceptResult] = asyncio.get_running_loop().create_future()
        connection.pending[request_id] = future
        try:
            if connection.writer.is_closing():
                raise ConnectionResetError("the connection to the writer has ended")
            connection.writer.write(data)
            await connection.writer.drain()
        except OSError:
            connection.pending.pop(request_id, None)
            self._drop(connection)
            raise
        return future

    def _drop(self, connection: _Connection) -> None:
        if self._connection is connection:
            self._connection = None
        connection.writer.close()

    async def _open(self) -> _Connection:
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._connection is not None:
                return self._connection
            try:
                reader, writer = await asyncio.open_unix_connection(self.path)
            except OSError as exc:
                raise StorageUnavailable(f"the writer process does not answer: {exc}") from exc
            connection = self._connection = _Connection(writer)
            connection.reading = asyncio.get_running_loop().create_task(
                self._answers(reader, connection))
            return connection

    async def _answers(self, reader: asyncio.StreamReader, connection: _Connection) -> None:
        """Each answer to its request's future, until the connection ends; then every request
        still waiting on it gets StorageUnavailable."""
        try:
            while True:
                length, request_id = FRAME.unpack(await reader.readexactly(FRAME.size))
                kind, value = pickle.loads(await reader.readexactly(length))
                future = connection.pending.pop(request_id, None)
                if future is None or future.done():
                    continue
                if kind == OK:
                    future.set_result(value)
                elif kind == UNAVAILABLE:
                    future.set_exception(StorageUnavailable(value))
                else:
                    future.set_exception(RuntimeError(f"the writer process failed: {value}"))
        except (asyncio.IncompleteReadError, OSError):
            log.warning("the connection to the writer process ended; its unanswered requests get 503")
        except Exception:
            log.exception("an answer from the writer process could not be read")
        finally:
            self._drop(connection)
            for future in connection.pending.values():
                if not future.done():
                    future.set_exception(StorageUnavailable(
                        "the writer process ended before it answered; retry"))
            connection.pending.clear()
