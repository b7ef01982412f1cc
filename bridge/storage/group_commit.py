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

An event loop must not wait for the disk: it hands its jobs over with ``submit``, and a committer
thread of the group's own commits them and calls each job's ``done`` (``bridge.web.rsgi``). One
hand-over between threads per group, not per request. Both kinds of job share the same queue and
the same transactions.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

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


Done = Callable[[Any, BaseException | None], None]


class _Job(Generic[Tx, R]):
    __slots__ = ("done", "error", "finished", "result", "wake", "work")

    def __init__(self, work: Callable[[Tx], R], done: Done | None = None) -> None:
        self.work = work
        #: A submitted job's callback; None for a caller waiting in ``run``.
        self.done = done
        #: Set when the job is committed (or failed), or when its caller is to lead the next commit.
        self.wake = threading.Event()
        self.finished = False
        self.result: R | None = None
        self.error: BaseException | None = None

    def settle(self, result: R | None, error: BaseException | None) -> None:
        self.result, self.error, self.finished = result, error, True
        if self.done is None:
            self.wake.set()
            return
        try:
            self.done(result, error)
        except Exception:  # the callback's own failure must not stop the commits of others
            log.exception("a group commit's callback failed")


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
        #: Set when the committer thread is to lead (started at the first ``submit``).
        self._committer_leads: threading.Event | None = None

    def run(self, work: Callable[[Tx], R]) -> R:
        """``work(tx)`` committed (possibly with others' work); its result, or its exception."""
        job: _Job[Tx, R] = _Job(work)
        with self._lock:
            self._after_fork()
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

    def submit(self, work: Callable[[Tx], R], done: Callable[[R | None, BaseException | None], None],
               ) -> None:
        """Queue ``work(tx)`` and return at once; once its transaction has committed (or failed),
        ``done(result, error)`` is called on the committer thread. For an event loop."""
        job: _Job[Tx, R] = _Job(work, done)
        with self._lock:
            self._after_fork()
            self._queue.append(job)
            if self._leading:  # the leader's commits take it, or it hands the lead on to the committer
                return
            self._leading = True
            leads = self._committer()
        leads.set()

    def _after_fork(self) -> None:
        """In a forked child: a commit under way and the committer thread stayed in the parent."""
        if self._pid != os.getpid():
            self._pid, self._queue, self._leading = os.getpid(), [], False
            self._committer_leads = None

    def _committer(self) -> threading.Event:
        """The committer thread's signal to lead, the thread started if need be (under the lock)."""
        if self._committer_leads is None:
            self._committer_leads = threading.Event()
            threading.Thread(target=self._commit_when_told, args=(self._committer_leads,),
                             name="group-commit", daemon=True).start()
        return self._committer_leads

    def _commit_when_told(self, leads: threading.Event) -> None:
        """The committer thread: each time it is given the lead, commit until nothing is queued."""
        while True:
            leads.wait()
            leads.clear()
            while True:
                with self._lock:
                    if not self._queue:
                        self._leading = False
                        break
                self._commit_queued()

    def _commit_queued(self) -> None:
        with self._lock:
            jobs, self._queue = self._queue[: self.max_jobs], self._queue[self.max_jobs :]
        self._commit(jobs)

    def _hand_over(self) -> None:
        """The leader is done: the first waiting job's caller leads the next commit, or none does."""
        with self._lock:
            if not self._queue:
                self._leading = False
            elif self._queue[0].done is None:
                self._queue[0].wake.set()  # not settled: its caller wakes to lead
            else:
                self._committer().set()
    def _commit(self, jobs: list[_Job[Tx, Any]]) -> None:
        results: list[Any] = []
        try:
            with self.transaction() as tx:
                for job in jobs:
                    results.append(job.work(tx))
        except BaseException as exc:
            if len(jobs) == 1:
                jobs[0].settle(None, exc)
                return
            for job in jobs:  # alone, so that only the job that fails gets the error
                self._commit([job])
            return
        for job, result in zip(jobs, results, strict=True):
            job.settle(result, None)
