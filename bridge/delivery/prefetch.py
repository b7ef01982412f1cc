"""The next round, claimed and prepared in a thread of its own while the current one is sent.

A delivery loop spends its time in two halves: claiming and preparing a round (SQL, parsing,
mapping, encoding) and sending it (the upstream's answer, then marking the rows). Run one after the
other, each waits for the other; here the next round is made while the current one is in flight.
The HTTP call and SQLite release the interpreter while they wait, so the two halves overlap.

Depth one: at most one round waits, so memory holds two rounds at most, never the backlog. A round
is made only when one has just been taken (a backlog is being drained), never while the loop
idles. What is claimed ahead stays leased by the loop's owner: ``drop`` hands it back to be
released, and ``close`` waits for a round in the making, so that releasing the owner's leases
afterwards leaves nothing claimed behind.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

R = TypeVar("R")


class Prefetch(Generic[R]):
    """Makes ``make(now)`` rounds one ahead, in a daemon thread started on first use; a round
    wanted with none made ahead is made by ``first`` (by default ``make``)."""

    def __init__(self, make: Callable[[float], R], clock: Callable[[], float], name: str,
                 first: Callable[[float], R] | None = None) -> None:
        self._make = make
        self._first = first or make
        self._clock = clock
        self._name = name
        self._changed = threading.Condition()
        self._wanted = False
        self._busy = False
        self._closed = False
        self._ready: R | BaseException | None = None
        self._thread: threading.Thread | None = None

    def take(self, now: float, *, again: Callable[[R], bool]) -> R:
        """The round made ahead, else one made now; when ``again(round)`` says so, the next one is
        started before this returns. An error met making the round is raised here."""
        with self._changed:
            while self._busy or self._wanted:  # a round asked for is as good as made
                self._changed.wait()
            ready, self._ready = self._ready, None
        if ready is None:
            ready = self._first(now)
        elif isinstance(ready, BaseException):
            raise ready
        if again(ready):
            self._want()
        return ready

    def peek(self) -> R | None:
        """The round made ahead and waiting, if any (one in the making was claimed just now)."""
        with self._changed:
            ready = self._ready
        return None if isinstance(ready, BaseException) else ready

    def drop(self) -> R | None:
        """Stop working ahead: cancel a round not yet started, wait for one in the making, and
        hand back the round made ahead (None if there is none or its making failed)."""
        with self._changed:
            self._wanted = False
            while self._busy:
                self._changed.wait()
            ready, self._ready = self._ready, None
        return None if isinstance(ready, BaseException) else ready

    def close(self) -> R | None:
        """``drop``, and end the thread."""
        ready = self.drop()
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join()
        return ready

    def _want(self) -> None:
        with self._changed:
            if self._closed:
                return
            self._wanted = True
            self._changed.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._wanted and not self._closed:
                    self._changed.wait()
                if self._closed:
                    return
                self._wanted, self._busy = False, True
            try:
                made: R | BaseException = self._make(self._clock())
            except BaseException as exc:  # handed to the loop, which logs it and rests
                made = exc
            with self._changed:
                self._ready, self._busy = made, False
                self._changed.notify_all()
