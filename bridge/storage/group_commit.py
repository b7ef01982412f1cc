"""Group commit: concurrent writes in one process share one transaction, and so one fsync.

A durable commit costs one fsync (``synchronous=FULL``), and SQLite lets one writer in at a time, so
committing each webhook request on its own bounds a host at about one request per fsync
(docs/benchmarks.md). Here each write is a job handed to one committer thread; the committer takes
every job queued meanwhile and runs them in one transaction. Each caller still waits for its own
commit before it returns: nothing is answered before it is durable.

A job that fails does not fail its neighbours: when a shared transaction fails, each of its jobs is
run again in a transaction of its own, so only the job that fails alone gets the error.

While it waits, a caller gives up its app turn, if it holds one (``bridge.server.PinnedThreads``
lends it with ``turn_lent``): a waiting request uses no CPU, and the requests behind it join the
next group instead of queueing for a turn.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Generic, TypeVar

R = TypeVar("R")
Tx = TypeVar("Tx")

#: Jobs in one transaction at most (a burst beyond it waits for the next commit).
MAX_JOBS = 512
#: A committer with nothing to do for this long ends; the next job starts a new one. No thread
#: outlives the use of a store by more than this, and nothing starts before the first write.
IDLE_SECONDS = 2.0

_turns = threading.local()


@contextmanager
def turn_lent(turn: threading.Semaphore) -> Iterator[None]:
    """While this block runs on this thread (which holds ``turn``), a wait for a commit gives
    ``turn`` up and takes it again before it returns."""
    _turns.semaphore = turn
    try:
        yield
    finally:
        _turns.semaphore = None


class _Job(Generic[Tx, R]):
    __slots__ = ("future", "work")

    def __init__(self, work: Callable[[Tx], R]) -> None:
        self.work = work
        self.future: Future[R] = Future()


class GroupCommit(Generic[Tx]):
    """Runs jobs ``work(tx)`` in shared transactions opened by ``transaction()``."""

    def __init__(self, transaction: Callable[[], AbstractContextManager[Tx]], *,
                 max_jobs: int = MAX_JOBS, idle_seconds: float = IDLE_SECONDS) -> None:
        self.transaction = transaction
        self.max_jobs = max_jobs
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._queue: list[_Job[Tx, Any]] = []
        self._wake = threading.Condition(self._lock)
        self._running = False

    def run(self, work: Callable[[Tx], R]) -> R:
        """``work(tx)`` committed (possibly with others' work); its result, or its exception."""
        job: _Job[Tx, R] = _Job(work)
        with self._lock:
            if self._pid != os.getpid():  # forked: the committer thread stayed in the parent
                self._pid, self._queue, self._running = os.getpid(), [], False
            self._queue.append(job)
            if self._running:
                self._wake.notify()
            else:
                self._running = True
                threading.Thread(target=self._commit_loop, name="group-commit", daemon=True).start()
        turn = getattr(_turns, "semaphore", None)
        if turn is None:
            return job.future.result()
        turn.release()
        try:
            return job.future.result()
        finally:
            turn.acquire()

    def _commit_loop(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._wake.wait(self.idle_seconds)
                if not self._queue:
                    self._running = False
                    return
                jobs, self._queue = self._queue[: self.max_jobs], self._queue[self.max_jobs :]
            self._commit(jobs)

    def _commit(self, jobs: list[_Job[Tx, Any]]) -> None:
        results: list[Any] = []
        try:
            with self.transaction() as tx:
                for job in jobs:
                    results.append(job.work(tx))
        except BaseException as exc:
            if len(jobs) == 1:
                jobs[0].future.set_exception(exc)
                return
            for job in jobs:  # alone, so that only the job that fails gets the error
                self._commit([job])
            return
        for job, result in zip(jobs, results, strict=True):
            job.future.set_result(result)
