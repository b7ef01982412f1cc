"""Finding one event: what the debugger and ``mailjet-bridge find`` show of each, and its journey.

An outbox row or a quarantine entry becomes one flat record in the operator's words (Segment event
name, recipient, Mailjet message id, status, answer, latency), with times in ISO-8601 UTC. The
Segment event name comes from the call as it was sent, else from the naming preset in force, the
same table the forwarder maps with.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from bridge.inbound import intake as inbound
from bridge.inbound.track import MESSAGE_ID_PREFIX, message_id, message_ref, recipient_of
from bridge.outbound import intake as outbound
from bridge.payloads.identity import normalize_email
from bridge.storage.base import DEAD, DELIVERED, LEASED, PENDING
from bridge.wiring import Bridge

#: Every outbox kind the search looks through.
KINDS = (inbound.KIND, outbound.CONTACT_KIND, outbound.PROPERTY_KIND)
#: Status as the operator reads it: a row being sent right now is still pending.
STATUS = {PENDING: "pending", LEASED: "pending", DELIVERED: "delivered", DEAD: "dead"}
QUARANTINED = "quarantined"
#: An answer longer than this is cut in tables (details show it whole).
ANSWER_CHARS = 160
#: Most results of one search (per source: outbox and quarantine).
SEARCH_LIMIT = 100


def iso_utc(seconds: float | None) -> str:
    """Unix seconds as ISO-8601 UTC to the second (``2026-11-27T18:30:05Z``); empty for none."""
    if seconds is None:
        return ""
    return datetime.fromtimestamp(float(seconds), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _object(text: str | None) -> dict[str, Any]:
    """A stored JSON object, or an empty one for anything else (compacted, invalid, an array)."""
    try:
        value = json.loads(text or "")
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _answer(status: int | None, text: str | None) -> str:
    answer = " ".join(part for part in (str(status) if status is not None else "", text or "") if part)
    return answer if len(answer) <= ANSWER_CHARS else answer[: ANSWER_CHARS - 1] + "…"


def _latency(row: Mapping[str, Any]) -> str:
    """Received → delivered, in the unit that reads best."""
    if row.get("state") != DELIVERED or row.get("finished_at") is None:
        return ""
    seconds = max(0.0, row["finished_at"] - row["created_at"])
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _mailjet_event_time(event: Mapping[str, Any], stored: Any = 0) -> str:
    when = stored or event.get("time")
    if isinstance(when, int | float) and not isinstance(when, bool) and 0 < when < 1e11:
        return iso_utc(when)
    return ""


def describe_item(row: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """One outbox row for the debugger table and ``find``."""
    payload, sent = _object(row.get("payload")), _object(row.get("sent"))
    record: dict[str, Any] = {
        "id": row["id"], "source": "outbox", "received": iso_utc(row["created_at"]),
        "status": STATUS.get(row["state"], row["state"]), "state": row["state"],
        "type": row.get("event_type") or "", "latency": _latency(row),
        "answer": _answer(row.get("last_status"), row.get("last_error") or row.get("last_response")),
    }
    if row["kind"] == inbound.KIND:
        key = row.get("dedupe_key") or ""
        email = normalize_email(payload.get("email"))
        record.update(
            event=_text_or_none(sent.get("event")) or names.get(record["type"], record["type"]),
            event_time=_mailjet_event_time(payload, row.get("event_time")),
            recipient=row.get("recipient") or (recipient_of(payload, email, key) if payload else ""),
            message_id=row.get("message_ref") or message_ref(payload) or "",
            segment_message_id=message_id(key) if key else "",
        )
    else:  # an identify (or one of its properties) on its way to Mailjet
        record.update(
            event=record["type"],
            event_time=_text_or_none(payload.get("timestamp")) or "",
            recipient=(row.get("recipient") or normalize_email(payload.get("email"))
                       or outbound.identify_email(payload) or _text_or_none(payload.get("userId")) or ""),
            message_id="",
            segment_message_id=_text_or_none(payload.get("messageId")) or "",
        )
    return record


def describe_quarantined(entry: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """One quarantine entry in the same shape: what could be read of an event that failed its schema."""
    body = _object(entry.get("body"))
    errors = json.loads(entry.get("errors") or "[]")
    first = errors[0] if errors and isinstance(errors[0], dict) else {}
    kind = body.get("event") if isinstance(body.get("event"), str) else ""
    email = normalize_email(body.get("email"))
    try:
        ref = message_ref(body) or ""
    except (TypeError, ValueError):  # an id of a type the schema refused
        ref = ""
    return {
        "id": entry["id"], "source": "quarantine", "received": iso_utc(entry["received_at"]),
        "status": QUARANTINED, "state": QUARANTINED, "type": kind, "latency": "",
        "event": names.get(kind, kind), "event_time": _mailjet_event_time(body),
        "recipient": email or "", "message_id": ref, "segment_message_id": "",
        "answer": _answer(None, f"{first.get('path', '')}: {first.get('message', '')}" if first else ""),
    }


def journey(row: Mapping[str, Any], attempts: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Received, each failed attempt kept with its answer, then delivered, dead or still waiting."""
    steps = [{"at": iso_utc(row["created_at"]), "step": "received", "answer": ""}]
    for attempt in attempts:
        steps.append({"at": iso_utc(attempt["at"]), "step": "attempt failed",
                      "answer": _answer(attempt.get("status"), attempt.get("error"))})
    state = row["state"]
    if state == DELIVERED:
        steps.append({"at": iso_utc(row.get("finished_at")), "step": "delivered",
                      "answer": _answer(row.get("last_status"), row.get("last_response"))})
    elif state == DEAD:
        steps.append({"at": iso_utc(row.get("finished_at")), "step": "dead",
                      "answer": _answer(row.get("last_status"), row.get("last_error"))})
    elif state == LEASED:
        steps.append({"at": "", "step": "being sent now", "answer": ""})
    else:
        steps.append({"at": iso_utc(row.get("next_attempt_at")), "step": "waiting: next attempt",
                      "answer": _answer(row.get("last_status"), row.get("last_error"))})
    return steps


def with_journeys(bridge: Bridge, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Described rows, each with its journey (the attempts of all read in one query)."""
    names = bridge.current.event_names()
    kept = bridge.store.attempts([row["id"] for row in rows])
    return [{**describe_item(row, names), "journey": journey(row, kept.get(row["id"], [])), "row": row}
            for row in rows]


def _matches(record: Mapping[str, Any], term: str, email: str | None) -> bool:
    return bool((email and record["recipient"] == email) or record["recipient"] == term
                or record["message_id"] == term or record["segment_message_id"] == term)


def search(bridge: Bridge, term: str, limit: int = SEARCH_LIMIT) -> list[dict[str, Any]]:
    """Every event whose recipient, Mailjet message id or Segment messageId is ``term``, newest
    first: delivered, pending and dead ones from the outbox, and quarantined ones."""
    term = term.strip()
    if not term:
        return []
    email = normalize_email(term) if "@" in term else None
    key = term[len(MESSAGE_ID_PREFIX):] if term.startswith(MESSAGE_ID_PREFIX) else None
    rows = bridge.store.find(recipient=email or term, message_ref=term, dedupe_key=key,
                             text=email or term, kinds=KINDS, limit=limit)
    found = [record for record in with_journeys(bridge, rows) if _matches(record, term, email)]
    names = bridge.current.event_names()
    for entry in bridge.store.find_quarantined(email or term, limit):
        record = describe_quarantined(entry, names)
        if _matches(record, term, email):
            errors = json.loads(entry["errors"] or "[]")
            record["journey"] = [{"at": record["received"], "step": "received", "answer": ""},
                                 {"at": record["received"], "step": "quarantined",
                                  "answer": "; ".join(f"{e.get('path', '')}: {e.get('message', '')}"
                                                      for e in errors if isinstance(e, dict))}]
            record["row"] = entry
            found.append(record)
    return sorted(found, key=_newest_first)


def _newest_first(record: Mapping[str, Any]) -> tuple[float, int]:
    row = record["row"]
    return -float(row.get("created_at") or row.get("received_at") or 0), -record["id"]
