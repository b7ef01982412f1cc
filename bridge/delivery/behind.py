"""Work a loop leaves behind it: recording a delivered batch while the next one is posted.

Marking a batch delivered is a durable write (the rows, the fsync, SQLite's one write lock); done by
the thread that posts, the next request waits for it. Here a thread of its own does it, in order,
while the loop goes on: the rows are still marked only after the upstream's 2xx, just not before
the next request leaves. At most ``depth`` jobs wait, so memory stays bounded; ``close`` finishes
them all, so a loop that stops gives back only what was not delivered.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from bridge.errors import StorageUnavailable

log = logging.getLogger(__name__)


class Behind:
    """A FIFO of jobs run by one daemon thread, started on first use; a failing job is logged."""

    def __init__(self, name: str, depth: int = 2) -> None:
        self._name = name
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=depth)
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[], None]) -> None:
        """Queue a job; waits while ``depth`` jobs are waiting already."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        self._jobs.put(job)

    def close(self) -> None:
        """Run every job queued, then end the thread."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except StorageUnavailable as exc:  # the rows stay leased, expire and are sent again
                log.warning("%s: storage unavailable: %s", self._name, exc)
            except Exception:
                log.exception("%s: unexpected error", self._name)
