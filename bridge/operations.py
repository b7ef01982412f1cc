"""What operators do, shared by the CLI and the admin page: replay, checks, callback registration.

No Flask and no click here: each function takes the bridge's Services and returns plain data.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .credentials import callback_url
from .jsonbody import BodyError, parse_body
from .mailjet_client import MailjetClient, MailjetError
from .mailjet_events import EVENT_TYPES
from .mailjet_intake import sort_events
from .pacing import status_key
from .segment_client import SegmentClient
from .segment_intake import identify_email, sort_segment_events
from .services import Services
from .storage.base import DEAD, MAILJET_CONTACT, MAILJET_PROPERTY, SEGMENT_TRACK

DIRECTIONS = {
    SEGMENT_TRACK: "Mailjet → Segment",
    MAILJET_CONTACT: "Segment → Mailjet",
    MAILJET_PROPERTY: "Segment → Mailjet",
}


# -- dead letters and quarantine ------------------------------------------------------------------


def concerns(row: dict[str, Any]) -> str:
    """What a dead letter is about: the Mailjet MessageID of an event, the email of a contact."""
    try:
        payload = json.loads(row.get("payload") or "{}")
    except ValueError:
        return ""
    if not isinstance(payload, dict):
        return ""
    if row["kind"] == SEGMENT_TRACK:
        return f"MessageID {payload.get('MessageID', payload.get('Message_GUID', '?'))}"
    if row["kind"] == MAILJET_PROPERTY:
        return f"{payload.get('email')} · property {payload.get('property')}"
    email = identify_email(payload)
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


def replay_dead_letters(services: Services, ids: Iterable[int]) -> ReplayReport:
    """Put dead letters back in the queue, one transaction for all of them.

    A property dead letter becomes a one-trait identify; a job report has nothing to send again.
    """
    report = ReplayReport()
    store = services.store
    wanted: list[int] = []
    rewrite: dict[int, tuple[str, str]] = {}
    for item_id in ids:
        row = store.item(item_id)
        if row is None or row["state"] != DEAD:
            report.skipped.append((item_id, "not a dead letter"))
        elif row["kind"] == MAILJET_CONTACT and row["event_type"] == "job":
            report.skipped.append((item_id, "a job report: there is nothing to send again"))
        else:
            wanted.append(item_id)
            if row["kind"] == MAILJET_PROPERTY:
                entry = json.loads(row["payload"])
                identify = {"type": "identify", "traits": {"email": entry["email"],
                                                           entry["property"]: entry["value"]}}
                rewrite[item_id] = (MAILJET_CONTACT, json.dumps(identify, ensure_ascii=False))
    if wanted:
        store.requeue(wanted, time.time(), rewrite)
        report.requeued.extend(wanted)
    return report


def all_dead_ids(services: Services, page: int = 1000) -> Iterator[int]:
    after = 0
    while ids := services.store.dead_ids(after, page):
        yield from ids
        after = ids[-1]


def replay_quarantine(services: Services, ids: Iterable[int]) -> ReplayReport:
    """Validate quarantined events again (schemas may have changed); valid ones are queued."""
    report = ReplayReport()
    store = services.store
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
        if entry["source"] == "segment":
            intake = sort_segment_events(events, services.segment_validator)
            identities = intake.identities
        else:
            intake, identities = sort_events(events, services.mailjet_validator), []
        if intake.quarantined:
            report.skipped.append((entry_id, "still invalid: " + intake.quarantined[0].errors[:200]))
            continue
        store.accept(intake.items, [], time.time(), identities)
        store.remove_quarantine([entry_id])
        report.requeued.append(entry_id)
    return report


# -- checks -------------------------------------------------------------------------------------------


def check_segment(services: Services) -> tuple[bool, str]:
    """Try the write key with a harmless call: an empty batch."""
    key = services.write_key()
    if not key:
        return False, "Segment: no write key is set (SEGMENT_WRITE_KEY or config set segment.write_key)"
    client = SegmentClient(services.segment_api_url(), timeout=(5.0, 10.0))
    try:
        result = client.post_batch(key, [])
    finally:
        client.close()
    if result.status is not None and 200 <= result.status < 300:
        return True, f"Segment: the write key works ({services.segment_api_url()})"
    if result.status in (401, 403):
        return False, f"Segment: the write key was refused ({result.status}); check it and the region"
    return False, f"Segment: no good answer from {services.segment_api_url()}: " + (
        f"HTTP {result.status}" if result.status else result.body)


def check_mailjet(services: Services) -> tuple[bool, str]:
    auth = services.mailjet_credentials()
    if not auth:
        return False, "Mailjet: no API key pair is set (MAILJET_API_KEY and MAILJET_API_SECRET)"
    client = MailjetClient(services.mailjet_api_url(), timeout=(5.0, 10.0))
    try:
        client.check(auth)
    except MailjetError as exc:
        if exc.status in (401, 403):
            return False, f"Mailjet: the API key pair was refused ({exc.status})"
        return False, f"Mailjet: no good answer from {services.mailjet_api_url()}: {exc}"
    finally:
        client.close()
    return True, f"Mailjet: the API key pair works ({services.mailjet_api_url()})"


# -- Mailjet Event API callbacks ----------------------------------------------------------------------


def register_callbacks(services: Services, url: str, backup_url: str | None = None) -> list[str]:
    """Make every event type post to ``url`` (grouped, Version 2), and to ``backup_url`` as backup.

    Idempotent: a callback that is already right is left alone, one with another URL or version is
    updated (which also revives a suspended one). Raises MailjetError when Mailjet refuses.
    """
    auth = services.mailjet_credentials()
    if not auth:
        raise MailjetError(None, "no Mailjet API key pair is set")
    client = MailjetClient(services.mailjet_api_url())
    lines: list[str] = []
    try:
        existing = {(c.get("EventType"), bool(c.get("IsBackup"))): c for c in client.event_callbacks(auth)}
        wanted = [(url, False)] + ([(backup_url, True)] if backup_url else [])
        for target, backup in wanted:
            role = "backup" if backup else "primary"
            for event_type in EVENT_TYPES:
                current = existing.get((event_type, backup))
                if current is None:
                    client.create_event_callback({"EventType": event_type, "Url": target, "Version": 2,
                                                  "IsBackup": backup, "Status": "alive"}, auth)
                    lines.append(f"{event_type} ({role}): registered")
                    continue
                if current.get("Status") == "dead":
                    lines.append(f"{event_type} ({role}): Mailjet had marked it dead (suspended)")
                desired = {"Url": target, "Version": 2, "Status": "alive"}
                if any(current.get(k) != v for k, v in desired.items()):
                    client.update_event_callback(int(current["ID"]), desired, auth)
                    lines.append(f"{event_type} ({role}): updated")
                else:
                    lines.append(f"{event_type} ({role}): already registered")
    finally:
        client.close()
    return lines


def own_callback_url(services: Services) -> str:
    return callback_url(services.settings.public_url, services.credentials)


# -- the rest -----------------------------------------------------------------------------------------


def send_test_event(services: Services) -> str:
    """Queue a Mailjet ``sent`` event for test@example.com, as if Mailjet had posted it."""
    event = {"event": "sent", "time": int(time.time()), "MessageID": random.randrange(10**15, 10**16),
             "email": "test@example.com", "customcampaign": "mailjet-segment-bridge test",
             "smtp_reply": "250 OK (test event from mailjet-bridge send-test-event)"}
    text = json.dumps(event)
    intake = sort_events([(event, text)], services.mailjet_validator)
    services.store.accept(intake.items, [], time.time())
    return f"MessageID {event['MessageID']}"


def delivery_states(services: Services) -> dict[str, dict[str, Any]]:
    """Segment's and Mailjet's delivery state, as the loops last stored it (shared by every process)."""
    states = {}
    for upstream in ("segment", "mailjet"):
        record = services.store.get_setting(status_key(upstream))
        starting = {"state": "starting", "detail": "no delivery yet"}
        states[upstream] = json.loads(record) if record else starting
    if not services.write_key():
        states["segment"] = {"state": "no_write_key", "detail": "no Segment write key is set"}
    if not services.mailjet_credentials():
        states["mailjet"] = {"state": "no_api_keys", "detail": "no Mailjet API key pair is set"}
    return states


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(share * 100) - 1]


def overview(services: Services, window: float = 3600) -> dict[str, Any]:
    """Events per type per minute, delivery latency p50/p99, queue depth (the admin overview)."""
    now = time.time()
    store = services.store
    latencies = store.latencies(now - window)
    stats = store.stats(now)
    return {
        "timeline": store.timeline(now - window),
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "stats": stats,
        "states": delivery_states(services),
        "now": now,
        "window": window,
    }
