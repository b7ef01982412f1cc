"""After a run: the bridge's daily counts per event type beside Mailjet's ``/statcounters``.

A difference is a report, never a failure: ``sent`` times are approximate (arrival), opens may be
one row per message rather than per open (unverified), and statcounters may count what the Event
API never posts. The bridge's side counts every item of that day in the outbox, live and backfilled.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.backfill.client import BackfillStopped, HistoryClient
from bridge.backfill.mapping import seconds
from bridge.backfill.resources import DAY, STATCOUNTERS, STATCOUNTERS_PARAMS
from bridge.inbound.intake import KIND
from bridge.storage.base import Store


@dataclass(frozen=True)
class Difference:
    day: int
    event_type: str
    bridge: int
    mailjet: int


@dataclass
class Reconcile:
    """The differences found, or why there is nothing to compare."""

    differences: list[Difference]
    days: int
    unavailable: str = ""


def reconcile(store: Store, client: HistoryClient, since: int, until: int) -> Reconcile:
    """Whole UTC days in [since, until) compared; days only partly backfilled are left out."""
    first = -(-since // DAY) * DAY
    last = until // DAY * DAY
    if last <= first:
        return Reconcile([], 0, "no whole day in the range")
    try:
        body = client.get("/v3/REST/statcounters", {**STATCOUNTERS_PARAMS, "FromTS": first,
                                                    "ToTS": last, "Limit": 1000}, missing_ok=True)
    except BackfillStopped as exc:
        return Reconcile([], 0, f"/statcounters did not answer: {exc}")
    if body is None:
        return Reconcile([], 0, "/statcounters is not offered (404)")
    theirs: dict[tuple[int, str], int] = {}
    for row in body.get("Data") or ():
        if not isinstance(row, dict):
            continue
        start = seconds(row.get("Timeslice"))
        if start is None or not first <= start < last:
            continue
        day = start // DAY * DAY
        for event_type, fields in STATCOUNTERS.items():
            total = sum(int(row.get(name) or 0) for name in fields)
            theirs[(day, event_type)] = theirs.get((day, event_type), 0) + total
    ours = store.daily_counts(KIND, first, last)
    differences = [
        Difference(day, event_type, ours.get((day, event_type), 0), theirs.get((day, event_type), 0))
        for day in range(first, last, DAY) for event_type in STATCOUNTERS
        if ours.get((day, event_type), 0) != theirs.get((day, event_type), 0)
    ]
    return Reconcile(differences, (last - first) // DAY)
