"""Keeps the outbox from growing without end, without forgetting what it has seen.

A delivered row's payload is dropped after the retention period; the row itself, with its dedupe key,
stays for the (longer) dedupe period, so a redelivery or a replay of an old event or identify is
still recognised as one. Then the row goes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from bridge.delivery.loop import run_until_stopped
from bridge.storage.base import Store

log = logging.getLogger(__name__)


class Janitor:
    """Prunes a small batch per transaction, at most every ``every_seconds``; never busy."""

    def __init__(self, store: Store, retention_days: int, *, dedupe_days: int = 30,
                 every_seconds: float = 600.0, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.retention = retention_days * 86400
        self.dedupe = max(dedupe_days, retention_days) * 86400
        self.every_seconds = every_seconds
        self.clock = clock
        self._next = 0.0

    def run_once(self) -> int:
        now = self.clock()
        if not self.retention or now < self._next:
            return 0
        self._next = now + self.every_seconds
        compacted = self.store.compact_delivered(now - self.retention)
        removed = self.store.prune_delivered(now - self.dedupe)
        if compacted or removed:
            log.info("compacted %d delivered item(s) older than %d days, removed %d older than %d days",
                     compacted, self.retention // 86400, removed, self.dedupe // 86400)
        return 0  # never busy: the loop rests between rounds

    def run_forever(self, stop: threading.Event) -> None:
        run_until_stopped("janitor", self.run_once, stop, idle_seconds=30.0)
