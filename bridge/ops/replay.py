"""Dead letters and quarantine: what each concerns, and putting them back in the queue."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from bridge.inbound import intake as inbound
from bridge.outbound import intake as outbound
from bridge.payloads.body import BodyError, parse_body
from bridge.storage.base import DEAD
from bridge.wiring import Bridge

#: What each outbox kind is, in the operator's words.
DIRECTIONS = {
    inbound.KIND: "Mailjet → Segment",
    outbound.CONTACT_KIND: "Segment → Mailjet",
    outbound.PROPERTY_KIND: "Segment → Mailjet",
}


def concerns(row: dict[str, Any]) -> str:
    """What a dead letter is about: the Mailjet MessageID of an event, the email of a contact."""
    try:
        payload = json.loads(row.get("payload") or "{}")
    except ValueError:
        return ""
    if not isinstance(payload, dict):
        return ""
    if row["kind"] == inbound.KIND:
        return f"MessageID {payload.get('MessageID', payload.get('Message_GUID', '?'))}"
    if row["kind"] == outbound.PROPERTY_KIND:
        return f"{payload.get('email')} · property {payload.get('property')}"
    email = outbound.identify_email(payload)
    if email:
        return email
    return f"userId {payload['userId']}" if payload.get("userId") else "no email, no userId"


def describe(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "direction": DIRECTIONS.get(row["kind"], row["kind"]),
            "reason": row.get("last_error") or "", "concerns": concerns(row)}


@dataclass
class ReplayReport:
    requeued: list[int] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)


def replay_dead_letters(bridge: Bridge, ids: Iterable[int]) -> ReplayReport:
    """Put dead letters back in the queue, one transaction for all of them.

    A property dead letter becomes a one-trait identify; a job report has nothing to send again.
    """
    report = ReplayReport()
    store = bridge.store
    wanted: list[int] = []
    rewrite: dict[int, tuple[str, str]] = {}
    for item_id in ids:
        row = store.item(item_id)
        if row is None or row["state"] != DEAD:
            report.skipped.append((item_id, "not a dead letter"))
        elif row["kind"] == outbound.CONTACT_KIND and row["event_type"] == "job":
            report.skipped.append((item_id, "a job report: there is nothing to send again"))
        else:
            wanted.append(item_id)
            if row["kind"] == outbound.PROPERTY_KIND:
                entry = json.loads(row["payload"])
                identify = {"type": "identify", "traits": {"email": entry["email"],
                                                           entry["property"]: entry["value"]}}
                rewrite[item_id] = (outbound.CONTACT_KIND, json.dumps(identify, ensure_ascii=False))
    if wanted:
        store.requeue(wanted, time.time(), rewrite)
        report.requeued.extend(wanted)
    return report


def all_dead_ids(bridge: Bridge, page: int = 1000) -> Iterator[int]:
    after = 0
    while ids := bridge.store.dead_ids(after, page):
        yield from ids
        after = ids[-1]


def replay_quarantine(bridge: Bridge, ids: Iterable[int]) -> ReplayReport:
    """Validate quarantined events again (schemas may have changed); valid ones are queued."""
    report = ReplayReport()
    store = bridge.store
    for entry_id in ids:
        entry = store.quarantine_entry(entry_id)
        if entry is None:
            report.skipped.append((entry_id, "no such quarantine entry"))
            continue
        try:
            events = parse_body(entry["body"].encode())
        except BodyError as exc:
            report.skipped.append((entry_id, str(exc)))
            continue
        if entry["source"] == outbound.SOURCE:
            intake = outbound.sort_segment_events(events, bridge.segment_validator)
            identities, dead = intake.identities, intake.dead
        else:
            intake, identities, dead = inbound.sort_events(events, bridge.mailjet_validator), [], []
        if intake.quarantined:
            report.skipped.append((entry_id, "still invalid: " + intake.quarantined[0].errors[:200]))
            continue
        store.accept(intake.items, [], time.time(), identities, dead=dead)
        store.remove_quarantine([entry_id])
        report.requeued.append(entry_id)
    return report
