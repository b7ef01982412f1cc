"""Group commit: concurrent writes in one process share one transaction, and so one fsync.

A durable commit costs one fsync (``synchronous=FULL``), and SQLite lets one writer in at a time, so
committing each webhook request on its own bounds a host at about one request per fsync
(docs/benchmarks.md). Here each write is a job; the caller that finds no commit under way runs every
job queued by then in one transaction, on its own thread, while later callers queue for the next.
Each caller still waits for its own commit before it returns: nothing is answered before it is
durable.

A job that fails does not fail its neighbours: when a shared transaction fails, each of its jobs is
run again in a transaction of its own, so only the job that fails alone gets the error.

While it waits or commits, a caller gives up its app turn, if it holds one
(``bridge.server.TakingTurns`` lends it with ``turn_lent``): a request waiting for the disk uses no
CPU, and the requests behind it join the next group instead of queueing for a turn.

Under ``serve`` the Mailjet webhook's writes go to the writer process instead
(``bridge.storage.writer``), which commits a round of requests from every web process at a time
with ``commit_together``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Generic, TypeVar

R = TypeVar("R")
Tx = TypeVar("Tx")

#: Jobs in one transaction at most (a burst beyond it waits for the next commit).
MAX_JOBS = 512

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


@contextmanager
def _turn_given_up() -> Iterator[None]:
    turn = getattr(_turns, "semaphore", None)
    if turn is None:
        yield
        return
    turn.release()
    try:
        yield
    finally:
        turn.acquire()


class _Job(Generic[Tx, R]):
    __slots__ = ("error", "finished", "result", "wake", "work")

    def __init__(self, work: Callable[[Tx], R]) -> None:
        self.work = work
        #: Set when the job is committed (or failed), or when its caller is to lead the next commit.
        self.wake = threading.Event()
        self.finished = False
        self.result: R | None = None
        self.error: BaseException | None = None

    def settle(self, result: R | None, error: BaseException | None) -> None:
        self.result, self.error, self.finished = result, error, True
        self.wake.set()


class GroupCommit(Generic[Tx]):
    """Runs jobs ``work(tx)`` in shared transactions opened by ``transaction()``.

    No thread of its own: the caller that finds no commit under way leads one, for every job queued
    by then, on its own thread; callers arriving meanwhile wait, and when the commit is done the
    first of them leads the next. An uncontended write costs no hand-over between threads (a second
    thread cost about 15 % of a single-event request's interpreter time).
    """

    def __init__(self, transaction: Callable[[], AbstractContextManager[Tx]], *,
                 max_jobs: int = MAX_JOBS) -> None:
        self.transaction = transaction
        self.max_jobs = max_jobs
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._queue: list[_Job[Tx, Any]] = []
        self._leading = False

    def run(self, work: Callable[[Tx], R]) -> R:
        """``work(tx)`` committed (possibly with others' work); its result, or its exception."""
        job: _Job[Tx, R] = _Job(work)
        with self._lock:
            if self._pid != os.getpid():  # forked: a commit under way stayed in the parent
                self._pid, self._queue, self._leading = os.getpid(), [], False
            self._queue.append(job)
            leader, self._leading = not self._leading, True
        with _turn_given_up():
            if not leader:
                job.wake.wait()  # until another's commit settles this job, or this caller is to lead
            if not job.finished:
                while not job.finished:  # leading: until a commit that held this job has ended
                    self._commit_queued()
                self._hand_over()
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def _commit_queued(self) -> None:
        with self._lock:
            jobs, self._queue = self._queue[: self.max_jobs], self._queue[self.max_jobs :]
        self._commit(jobs)

    def _hand_over(self) -> None:
        """The leader is done: the first waiting job's caller leads the next commit, or none does."""
        with self._lock:
            if self._queue:
                self._queue[0].wake.set()  # not settled: its caller wakes to lead
            else:
                self._leading = False
    def _commit(self, jobs: list[_Job[Tx, Any]]) -> None:
        for job, (result, error) in zip(
                jobs, commit_together(self.transaction, [job.work for job in jobs]), strict=True):
            job.settle(result, error)


def commit_together(transaction: Callable[[], AbstractContextManager[Tx]],
                    works: Sequence[Callable[[Tx], R]]) -> list[tuple[R | None, BaseException | None]]:
    """Each ``work(tx)`` in one transaction, and its (result, error): when the shared transaction
    fails, each work runs again in a transaction of its own, so only the one that fails alone
    gets an error. (Also what the writer process commits its rounds with, bridge.storage.writer.)"""
    try:
        with transaction() as tx:
            results = [work(tx) for work in works]
    except BaseException as exc:
        if len(works) == 1:
            return [(None, exc)]
        return [outcome for work in works for outcome in commit_together(transaction, [work])]
    return [(result, None) for result in results]
