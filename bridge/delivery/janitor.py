"""Keeps the outbox from growing without end, without forgetting what it has seen.

A delivered row's payload is dropped after the retention period; the row itself, with its dedupe key,
stays for the (longer) dedupe period, so a redelivery or a replay of an old event or identify is
still recognised as one. Then the row goes.

It also gives delivered rows their search labels (recipient, Mailjet message id) for the debugger's
Find, a window at a time, after delivery: each label is a random key in an index, about a page
written per row, which cost the forwarder a third of its throughput when it labelled as it marked
(docs/benchmarks.md, R3). Rows delivered before labels existed (schema 5) are labelled the same way.
The rows of a range the forwarder delivered (docs/range-delivery.md) get their outcome and their
labels in one write, when the janitor settles the range.
Until a row is labelled, Find scans for it among the few rows still to label. While the forwarder
drains a backlog, labelling slows down to a window a second: it competes with the forwarder for the
one interpreter and the one writer, and cost a 1,000,000-event drain about 40 % of its speed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from bridge.delivery.loop import run_until_stopped
from bridge.storage.base import Store

log = logging.getLogger(__name__)

#: (payload text, dedupe key) -> (recipient, message ref): how each outbox kind is labelled.
Labeller = Callable[[str, str], tuple[str | None, str | None]]
#: Rows labelled per round (in transactions of at most 1,024 rows, so intake waits little)...
LABEL_WINDOW = 2_000
#: ...and the pause between rounds while more wait: labelling takes at most about half a core and
#: hands the write lock back often, so the delivery loops and the webhooks go on at full speed.
LABEL_PAUSE_SECONDS = 0.1
#: The pause while a delivery loop drains a backlog: a tenth of the pace, so labels still keep up
#: with anything but a long backlog, and catch up once it is gone.
LABEL_PAUSE_WHILE_DRAINING_SECONDS = 1.0


class Janitor:
    """Settles delivered ranges and labels delivered rows a window at a time, and prunes a small
    batch per transaction at most every ``every_seconds``."""

    def __init__(self, store: Store, retention_days: int, *, dedupe_days: int = 30,
                 every_seconds: float = 600.0, clock: Callable[[], float] = time.time,
                 labellers: Mapping[str, Labeller] | None = None,
                 draining: Callable[[], bool] | None = None) -> None:
        self.store = store
        self.labellers = dict(labellers or {})
        #: Whether a delivery loop is draining a backlog now (labelling then slows down).
        self.draining = draining
        self.retention = retention_days * 86400
        self.dedupe = max(dedupe_days, retention_days) * 86400
        self.every_seconds = every_seconds
        self.clock = clock
        self._next = 0.0

    def run_once(self) -> int:
        """Settle a window of delivered ranges, label a window of delivered rows; prune when it is
        time. Busy (non-zero) while more remain, so the next round comes after LABEL_PAUSE_SECONDS,
        not the idle rest."""
        now = self.clock()
        settled = self.store.settle_ranges(LABEL_WINDOW, now, self.labellers or None)
        labelled = self.label_delivered() if self.labellers else 0
        if self.retention and now >= self._next:
            self._next = now + self.every_seconds
            compacted = self.store.compact_delivered(now - self.retention)
            removed = self.store.prune_delivered(now - self.dedupe)
            if compacted or removed:
                log.info("compacted %d delivered item(s) older than %d days, removed %d older than "
                         "%d days", compacted, self.retention // 86400, removed, self.dedupe // 86400)
        busy = max(settled, labelled) >= LABEL_WINDOW
        return settled + labelled if busy else 0

    def label_delivered(self) -> int:
        """Label up to LABEL_WINDOW delivered rows, oldest first; how many were labelled."""
        rows = self.store.to_label(LABEL_WINDOW)
        self.store.label([(row["id"], *self._labels(row)) for row in rows])
        return len(rows)

    def _labels(self, row: dict[str, object]) -> tuple[str | None, str | None]:
        labeller = self.labellers.get(str(row["kind"]))
        payload = str(row["payload"] or "")
        return labeller(payload, str(row["dedupe_key"])) if labeller and payload else (None, None)

    def pause(self) -> float:
        """Seconds between two windows of labels while more wait."""
        if self.draining is not None and self.draining():
            return LABEL_PAUSE_WHILE_DRAINING_SECONDS
        return LABEL_PAUSE_SECONDS

    def run_forever(self, stop: threading.Event) -> None:
        run_until_stopped("janitor", self.run_once, stop, idle_seconds=30.0, busy_pause=self.pause)
