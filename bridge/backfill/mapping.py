"""History rows -> events shaped as Mailjet's Event API posts them. No I/O.

The backfill does not map to Segment itself: it rebuilds the webhook event and hands it to the live
intake (``bridge.inbound.intake``), so the schema check, the Segment mapping, the dedupe key and the
``messageId`` are the live ones. A history event and the same event posted live have the same key
when their message id, email, time and url agree: ``MessageID`` is kept as an exact integer (it
exceeds 2^53), the email is the one ``/message`` gives, the time is whole Unix seconds.

Fields history cannot give (``Payload``, ``ip``, ``geo``, ``smtp_reply``, ``comment``, a click's
``agent``) are left out, never invented. Every event carries ``backfilled: true`` and, where its
time is the message's arrival rather than the event's own, ``time_approximate: true`` (both become
Segment properties).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from bridge.backfill.resources import DELIVERED_STATUSES, HISTORY_EVENTS, STATUS_EVENTS
from bridge.inbound.track import id_value

Event = dict[str, Any]


@dataclass(frozen=True)
class MessageRecord:
    """What ``/message`` says about one message, kept to join the event logs on MessageID."""

    email: str | None = None
    guid: str | None = None
    campaign: int | str | None = None
    contact: int | str | None = None
    custom_id: str | None = None

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None},
                          sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> MessageRecord:
        data = json.loads(text)
        return cls(**{k: data.get(k) for k in ("email", "guid", "campaign", "contact", "custom_id")})


def seconds(value: Any) -> int | None:
    """An RFC 3339 time (``2015-07-06T07:10:24Z``) or epoch seconds as whole Unix seconds."""
    if isinstance(value, bool) or value in (None, ""):
        return None
    if isinstance(value, int | float):
        return int(value)
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:  # a bare time: UTC, as every Mailjet example is
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


def _text(value: Any) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def record_of(row: Mapping[str, Any]) -> MessageRecord:
    """A ``/message`` row (shown with ShowContactAlt and ShowCustomID) as a record."""
    return MessageRecord(email=_text(row.get("ContactAlt")), guid=_text(row.get("UUID")),
                         campaign=id_value(row.get("CampaignID")),
                         contact=id_value(row.get("ContactID")),
                         custom_id=_text(row.get("CustomID")))


def _base(kind: str, time: int, message: int | str | None, record: MessageRecord,
          row: Mapping[str, Any]) -> Event:
    """The fields every event has, in the order Mailjet posts them; absent ones left out."""
    event: Event = {"event": kind, "time": time}
    if message is not None:
        event["MessageID"] = message
    fields = {"Message_GUID": record.guid, "email": record.email,
              "mj_campaign_id": id_value(row.get("CampaignID")) or record.campaign,
              "mj_contact_id": id_value(row.get("ContactID")) or record.contact,
              "CustomID": record.custom_id}
    event.update((name, value) for name, value in fields.items() if value is not None)
    event["backfilled"] = True
    return event


def _state(event: Event, state_id: Any, states: Mapping[int, tuple[str, str]]) -> None:
    """``error_related_to`` and ``error`` from a StateID, when the state is known."""
    ident = id_value(state_id)
    if isinstance(ident, int) and ident in states:
        event["error_related_to"], event["error"] = states[ident]


def message_events(row: Mapping[str, Any], states: Mapping[int, tuple[str, str]],
                   history: list[Mapping[str, Any]] | None = None) -> list[Event]:
    """The live events a ``/message`` row stands for: ``sent`` if it was delivered, and ``blocked``,
    ``spam`` or ``unsub`` from its (latest) Status. ``history`` (``/messagehistory``) gives their
    exact times; without it the arrival time stands in and is flagged approximate."""
    message = id_value(row.get("ID"))
    record = record_of(row)
    status = str(row.get("Status") or "").lower()
    arrived = seconds(row.get("ArrivedAt"))
    wanted = (["sent"] if status in DELIVERED_STATUSES else []) + (
        [STATUS_EVENTS[status]] if status in STATUS_EVENTS else [])
    exact: dict[str, list[int]] = {}
    for entry in history or ():
        kind = HISTORY_EVENTS.get(str(entry.get("EventType") or "").lower())
        at = seconds(entry.get("EventAt"))
        if kind in wanted and at is not None:
            exact.setdefault(kind, []).append(at)
    events = []
    for kind in wanted:
        times = exact.get(kind) or ([arrived] if arrived is not None else [])
        for at in times:
            event = _base(kind, at, message, record, row)
            if kind not in exact:
                event["time_approximate"] = True
            if kind == "blocked":
                _state(event, row.get("StateID"), states)
            events.append(event)
    return events


def open_event(row: Mapping[str, Any], record: MessageRecord) -> Event | None:
    """An ``/openinformation`` row (its ``ID`` is -1: never a key); None without an open time."""
    at = seconds(row.get("OpenedAt"))
    if at is None:
        return None
    event = _base("open", at, id_value(row.get("MessageID")), record, row)
    agent = _text(row.get("UserAgentFull"))
    if agent is not None:
        event["agent"] = agent  # the full string, as the live open has it (context.userAgent)
    return event


def click_event(row: Mapping[str, Any], record: MessageRecord) -> Event | None:
    """A ``/clickstatistics`` row; it has no email or campaign, which come from the record."""
    at = seconds(row.get("ClickedAt"))
    if at is None:
        return None
    event = _base("click", at, id_value(row.get("MessageID")), record, row)
    url = _text(row.get("Url"))
    if url is not None:
        event["url"] = url
    return event


def bounce_event(row: Mapping[str, Any], record: MessageRecord,
                 states: Mapping[int, tuple[str, str]]) -> Event | None:
    """A ``/bouncestatistics`` row, whose ``ID`` is the MessageID that bounced."""
    at = seconds(row.get("BouncedAt"))
    if at is None:
        return None
    event = _base("bounce", at, id_value(row.get("ID")), record, row)
    for field, name in (("IsBlocked", "blocked"), ("IsStatePermanent", "hard_bounce")):
        if isinstance(row.get(field), bool):
            event[name] = row[field]
    _state(event, row.get("StateID"), states)
    return event


def log_message_id(resource: str, row: Mapping[str, Any]) -> int | str | None:
    """The MessageID of an event-log row (``ID`` on bounces, ``MessageID`` elsewhere)."""
    return id_value(row.get("ID") if resource == "bouncestatistics" else row.get("MessageID"))
