"""Pure mapping from a validated Mailjet event to a Segment ``track`` call (docs/behaviour.md).

No I/O here: the forwarder looks up the userId and hands it in, so a mapping is a function of its
inputs and the same event always gives the same call (and the same ``messageId``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from bridge import NAME, __version__
from bridge.inbound.fields import (
    DEDUPE_FIELDS,
    ID_FIELDS,
    JS_SAFE_INTEGER,
    NOT_PROPERTIES,
    PROPERTY_FIELDS,
)
from bridge.payloads.identity import normalize_email

#: ``context.library`` of every call the bridge makes to Segment.
LIBRARY = {"name": NAME, "version": __version__}
_KEY_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)
MESSAGE_ID_PREFIX = "mailjet-"


def dedupe_key(event: Mapping[str, Any]) -> str:
    """Stable hash of event, MessageID (or Message_GUID), normalised email, time and url.

    Mailjet sends no event id and redelivers on timeouts; this key makes a redelivery recognisable.
    """
    parts: list[Any] = []
    for field in DEDUPE_FIELDS:
        if field == "MessageID":
            value = event.get("MessageID")
            parts.append(event.get("Message_GUID") if value is None else value)
        elif field == "email":
            parts.append(normalize_email(event.get("email")))
        else:
            parts.append(event.get(field))
    canonical = _KEY_ENCODER.encode(parts)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def message_id(key: str) -> str:
    """Segment ``messageId`` for a dedupe key: 72 characters, under Segment's 100."""
    return MESSAGE_ID_PREFIX + key


def iso_timestamp(unix_seconds: int | float) -> str:
    """Mailjet ``time`` (Unix seconds, UTC) as ISO-8601 UTC."""
    moment = datetime.fromtimestamp(int(unix_seconds), tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _id_string(value: Any) -> str | None:
    """A Mailjet integer id as a string; zero means "none" and gives None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if value == 0 or value == "":
        return None
    return str(value)


def anonymous_id(event: Mapping[str, Any], email: str | None) -> str:
    """Identity when no userId is known: the email, else the Mailjet contact, else the message."""
    if email:
        return email
    contact = _id_string(event.get("mj_contact_id"))
    if contact:
        return f"mailjet-contact:{contact}"
    message = _id_string(event.get("MessageID")) or event.get("Message_GUID")
    if message:
        return f"mailjet-message:{message}"
    return f"mailjet-event:{dedupe_key(event)}"


def _payload(value: Any) -> Any:
    """Payload as sent: an object or array when it holds JSON text for one, else the string."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _unknown_value(value: Any) -> Any:
    """A field Mailjet added later: kept as is, but big integers as strings (JS precision)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > JS_SAFE_INTEGER:
        return str(value)
    return value


def properties(event: Mapping[str, Any]) -> dict[str, Any]:
    """Every Mailjet field not placed elsewhere, under its Segment name; empties and zero ids left out."""
    props: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    for field, value in event.items():
        if field in NOT_PROPERTIES or value is None or value == "":
            continue
        name = PROPERTY_FIELDS.get(field)
        if name is None:
            extras.setdefault(field.lower(), _unknown_value(value))
        elif field in ID_FIELDS:
            text = _id_string(value)
            if text is not None:
                props[name] = text
        else:
            props[name] = value
    payload = event.get("Payload")
    if payload not in (None, ""):
        props["payload"] = _payload(payload)
    props["mailjet_event"] = event["event"]
    for name, value in extras.items():
        props.setdefault(name, value)
    return props


def context(event: Mapping[str, Any], email: str | None) -> dict[str, Any]:
    """Segment ``context``: recipient email, ip, user agent, country and this library."""
    ctx: dict[str, Any] = {}
    if email:
        ctx["traits"] = {"email": email}
    if event.get("ip"):
        ctx["ip"] = event["ip"]
    if event.get("agent"):
        ctx["userAgent"] = event["agent"]
    if event.get("geo"):
        ctx["location"] = {"country": event["geo"]}
    ctx["library"] = dict(LIBRARY)
    return ctx


def track_call(
    event: Mapping[str, Any], *, event_names: Mapping[str, str], user_id: str | None = None
) -> dict[str, Any]:
    """The Segment ``track`` call for one validated Mailjet event.

    ``user_id`` is the recipient's userId when the bridge knows it; otherwise the call carries an
    ``anonymousId`` (Mailjet's own rule: one or the other).
    """
    email = normalize_email(event.get("email"))
    call: dict[str, Any] = {"type": "track", "event": event_names[event["event"]]}
    if user_id:
        call["userId"] = user_id
    else:
        call["anonymousId"] = anonymous_id(event, email)
    call["messageId"] = message_id(dedupe_key(event))
    call["timestamp"] = iso_timestamp(event["time"])
    call["context"] = context(event, email)
    call["integrations"] = {"Mailjet": False}
    call["properties"] = properties(event)
    return call
