"""Keeps the outbox from growing without end, without forgetting what it has seen.

A delivered row's payload is dropped after the retention period; the row itself, with its dedupe key,
stays for the (longer) dedupe period, so a redelivery or a replay of an old event or identify is
still recognised as one. Then the row goes.

It also labels, a window of ids per round, the rows settled before the debugger's search labels
existed (schema 5), so that ``find`` sees them too; the delivery loops label every row they settle.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping

from bridge.delivery.loop import run_until_stopped
from bridge.storage.base import Store

log = logging.getLogger(__name__)

#: (payload text, dedupe key) -> (recipient, message ref): how each outbox kind is labelled.
Labeller = Callable[[str, str], tuple[str | None, str | None]]
#: Where the labelling of older rows has got to: ``{"next": id, "until": id}`` (a runtime record).
LABELS_KEY = "janitor.labelled"
#: Ids looked at per round (by primary key, so a round costs the same wherever it is).
LABEL_WINDOW = 20_000


class Janitor:
    """Prunes a small batch per transaction, at most every ``every_seconds``; never busy."""

    def __init__(self, store: Store, retention_days: int, *, dedupe_days: int = 30,
                 every_seconds: float = 600.0, clock: Callable[[], float] = time.time,
                 labellers: Mapping[str, Labeller] | None = None) -> None:
        self.store = store
        self.labellers = dict(labellers or {})
        self._labelled = not self.labellers
        self.retention = retention_days * 86400
        self.dedupe = max(dedupe_days, retention_days) * 86400
        self.every_seconds = every_seconds
        self.clock = clock
        self._next = 0.0

    def run_once(self) -> int:
        now = self.clock()
        if not self._labelled:
            self.label_older_rows(now)
        if not self.retention or now < self._next:
            return 0
        self._next = now + self.every_seconds
        compacted = self.store.compact_delivered(now - self.retention)
        removed = self.store.prune_delivered(now - self.dedupe)
        if compacted or removed:
            log.info("compacted %d delivered item(s) older than %d days, removed %d older than %d days",
                     compacted, self.retention // 86400, removed, self.dedupe // 86400)
        return 0  # never busy: the loop rests between rounds

    def label_older_rows(self, now: float) -> None:
        """Label one window of the rows settled before labels existed; the first round notes the
        last id then (rows after it are labelled as they are settled). Resumes where it stopped."""
        record = self.store.get_setting(LABELS_KEY)
        progress = json.loads(record) if record else {"next": 0, "until": self.store.last_id()}
        if progress["next"] < progress["until"]:
            rows = self.store.unlabelled(progress["next"], LABEL_WINDOW)
            self.store.label([(row["id"], *self.labellers[row["kind"]](row["payload"], row["dedupe_key"]))
                              for row in rows if row["kind"] in self.labellers])
            progress["next"] = min(progress["next"] + LABEL_WINDOW, progress["until"])
            if rows:
                log.info("labelled %d older item(s) for the debugger's search", len(rows))
        if json.dumps(progress) != record:
            self.store.put_setting(LABELS_KEY, json.dumps(progress), now)
        self._labelled = progress["next"] >= progress["until"]

    def run_forever(self, stop: threading.Event) -> None:
        run_until_stopped("janitor", self.run_once, stop, idle_seconds=30.0)
