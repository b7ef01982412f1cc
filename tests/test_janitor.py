"""The janitor: payloads go after the retention, dedupe keys after the (longer) dedupe period."""

from __future__ import annotations

from typing import Any

from bridge.delivery.janitor import Janitor
from bridge.storage.base import NewItem, Outcome, Store
from bridge.storage.sql import SqlStore


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


def test_the_janitor_drops_sent_batches_after_the_retention(store: Store, clock: Any) -> None:
    """A delivered batch's calls, kept once for the batch, go with the payloads: none kept forever."""
    assert isinstance(store, SqlStore)
    store.accept([NewItem("k", f"key-{n}", "sent", '{"x":1}') for n in range(3)], [], clock())
    claimed = store.claim("k", 3, "w", 60, clock())
    store.mark_delivered([Outcome(i.id, sent=f'{{"n":{i.id}}}') for i in claimed[:2]], clock(),
                         owner="w", sent_batch="k")
    janitor = Janitor(store, 7, dedupe_days=30, clock=clock)
    clock.advance(3 * 86400)
    store.mark_delivered([Outcome(claimed[2].id, sent='"late"')], clock(), owner="w", sent_batch="k")
    janitor.run_once()
    assert store._rows("SELECT COUNT(*) FROM sent_batches")[0][0] == 2
    assert [store.item(i.id)["sent"] for i in claimed] == [  # type: ignore[index]
        f'{{"n":{claimed[0].id}}}', f'{{"n":{claimed[1].id}}}', '"late"']
    clock.advance(5 * 86400)
    janitor.run_once()
    assert store._rows("SELECT COUNT(*) FROM sent_batches")[0][0] == 1
    assert [store.item(i.id)["sent"] for i in claimed] == [None, None, '"late"']  # type: ignore[index]


def test_labelling_slows_down_while_a_backlog_drains(store: Store) -> None:
    """Labels compete with the forwarder for the interpreter and the writer: while it drains a
    backlog, a window a second instead of ten; at the usual pace again once it is done."""
    from bridge.delivery.janitor import LABEL_PAUSE_SECONDS, LABEL_PAUSE_WHILE_DRAINING_SECONDS

    draining = [True]
    janitor = Janitor(store, 0, draining=lambda: draining[0])
    assert janitor.pause() == LABEL_PAUSE_WHILE_DRAINING_SECONDS > LABEL_PAUSE_SECONDS
    draining[0] = False
    assert janitor.pause() == LABEL_PAUSE_SECONDS
    assert Janitor(store, 0).pause() == LABEL_PAUSE_SECONDS


def test_the_loop_asks_for_its_pause_before_each_busy_round() -> None:
    import threading

    from bridge.delivery.loop import run_until_stopped

    stop, pauses, rounds = threading.Event(), [], iter([1, 1, 0])

    def run_once() -> int:
        settled = next(rounds, 0)
        if not settled:
            stop.set()
        return settled

    def pause() -> float:
        pauses.append(len(pauses))
        return 0.001

    run_until_stopped("test", run_once, stop, idle_seconds=0.0, busy_pause=pause)
    assert pauses == [0, 1]


def test_the_wired_janitor_knows_when_the_forwarder_drains(tmp_path: Any) -> None:
    from bridge.config import load_settings
    from bridge.delivery.janitor import LABEL_PAUSE_SECONDS, LABEL_PAUSE_WHILE_DRAINING_SECONDS
    from bridge.wiring import build

    bridge = build(load_settings({"BRIDGE_DATABASE_URL": f"sqlite:///{tmp_path}/b.db"}),
                   announce=lambda _: None)
    try:
        forwarder, _, janitor = bridge.loops()
        assert isinstance(janitor, Janitor) and janitor.pause() == LABEL_PAUSE_SECONDS
        forwarder._draining = True  # as a round from a full claim sets it
        assert janitor.pause() == LABEL_PAUSE_WHILE_DRAINING_SECONDS
    finally:
        bridge.close()
