"""The janitor: payloads go after the retention, dedupe keys after the (longer) dedupe period."""

from __future__ import annotations

from typing import Any

from bridge.delivery.janitor import Janitor
from bridge.storage.base import NewItem, Outcome, Store


def test_the_janitor_compacts_after_the_retention_and_prunes_after_the_dedupe_period(
        store: Store, clock: Any) -> None:
    store.accept([NewItem("k", "key-1", "sent", '{"x":1}')], [], clock())
    (item,) = store.claim("k", 1, "w", 60, clock())
    store.mark_delivered([Outcome(item.id)], clock())
    janitor = Janitor(store, 7, dedupe_days=30, clock=clock)
    clock.advance(8 * 86400)
    janitor.run_once()
    assert store.item(item.id)["payload"] == ""  # type: ignore[index]
    clock.advance(23 * 86400)
    janitor.run_once()
    assert store.item(item.id) is None
