"""Pure mapping from a validated Mailjet event to a Segment ``track`` call (docs/behaviour.md).

No I/O here: the forwarder looks up the userId and hands it in, so a mapping is a function of its
inputs and the same event always gives the same call (and the same ``messageId``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from bridge import NAME, __version__
from bridge.inbound.fields import (
    ID_FIELDS,
    JS_SAFE_INTEGER,
    LEGACY_DEDUPE_FIELDS,
    MESSAGE_ID_FIELDS,
    NOT_PROPERTIES,
    NUMERIC_MESSAGE_ID_FIELDS,
    PROPERTY_FALLBACKS,
    PROPERTY_FIELDS,
)
from bridge.payloads.body import loads_strict
from bridge.payloads.faithful import MAX_DEPTH, problem
from bridge.payloads.identity import normalize_email

#: ``context.library`` of every call the bridge makes to Segment.
LIBRARY = {"name": NAME, "version": __version__}
_KEY_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)
#: How ``_KEY_ENCODER`` writes a string (it does not escape non-ASCII: ``ensure_ascii=False``).
_JSON_STRING = json.encoder.encode_basestring
_CONTENT_ENCODER = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), sort_keys=True, default=str
)
MESSAGE_ID_PREFIX = "mailjet-"
#: An integer written as text, in the one form a JSON number has (no sign +, no leading zero).
#: ``schemas/mailjet/*.json`` accept the same strings for ids ($defs/id).
INTEGER_TEXT = re.compile(r"(?:0|-?[1-9][0-9]{0,39})\Z")


def _sha256(text: str) -> str:
    """Hex SHA-256 of text; a lone surrogate is hashed as is rather than raising (never a 500)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def id_value(value: Any) -> int | str | None:
    """A Mailjet integer id as an int, also when sent as ``"42"`` or ``42.0``; other text as it is.

    Zero, empty text, null, booleans and anything else that is not an id mean "none".
    """
    if type(value) is int:  # the usual case, first
        return value or None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        value = int(value) if value.is_integer() else None
    elif isinstance(value, str) and INTEGER_TEXT.match(value):
        value = int(value)
    if value == 0 or value == "" or not isinstance(value, int | str):
        return None
    return value


def message_id_value(event: Mapping[str, Any]) -> int | str | None:
    """The event's message id: MessageID, else mj_message_id, else Message_GUID (fields.py)."""
    for field in MESSAGE_ID_FIELDS:
        value = event.get(field)
        if field in NUMERIC_MESSAGE_ID_FIELDS:
            value = id_value(value)
        elif not isinstance(value, str) or not value:
            value = None
        if value is not None:
            return value
    return None


def dedupe_key(event: Mapping[str, Any]) -> str:
    """Stable hash of event, message id, normalised email, time and url; without any message id, of
    the whole event (sorted keys, exact values, nulls left out as absent).

    Mailjet sends no event id and redelivers on timeouts; this key makes a redelivery recognisable.
    An id stays a JSON number in the key, so events with a MessageID keep their pre-#9 keys.
    """
    ident = message_id_value(event)
    if ident is None:
        content = {name: value for name, value in event.items() if value is not None}
        return _sha256(_CONTENT_ENCODER.encode(content))
    parts = [event.get("event"), ident, normalize_email(event.get("email")), event.get("time"),
             event.get("url")]
    return _sha256(_key_text(parts))


def _key_text(parts: list[Any]) -> str:
    """``_KEY_ENCODER.encode(parts)``, written out for the usual types of a key's five parts (text,
    integer id, email or null, integer time, url or null) with the encoder's own string escaping:
    setting the encoder up for each call cost more than the writing (issue #11). Other types go to
    the encoder, so a key is the same text either way (tests/test_track.py, the property)."""
    kind, ident, email, at, url = parts
    if (type(kind) is str and type(ident) is int and type(at) is int
            and (email is None or type(email) is str) and (url is None or type(url) is str)):
        return (f"[{_JSON_STRING(kind)},{ident!r},{'null' if email is None else _JSON_STRING(email)},"
                f"{at!r},{'null' if url is None else _JSON_STRING(url)}]")
    return _KEY_ENCODER.encode(parts)


def legacy_dedupe_key(event: Mapping[str, Any]) -> str:
    """The dedupe key before issue #9: MessageID (else Message_GUID), email, time, url, no fallback.

    Rows accepted before then keep this key, so a redelivery of one of them must still be found by
    it (``NewItem.legacy_keys``). Remove it once no such row can be redelivered: when every row
    accepted before this release is older than BRIDGE_RETENTION_DAYS (Mailjet retries for 24 h).
    """
    parts: list[Any] = []
    for field in LEGACY_DEDUPE_FIELDS:
        if field == "MessageID":
            value = event.get("MessageID")
            parts.append(event.get("Message_GUID") if value is None else value)
        elif field == "email":
            parts.append(normalize_email(event.get("email")))
        else:
            parts.append(event.get(field))
    return _sha256(_KEY_ENCODER.encode(parts))


def legacy_keys(event: Mapping[str, Any], key: str) -> tuple[str, ...]:
    """The old-rule key when it differs from ``key`` (no MessageID, or no id at all), else none.

    An integer MessageID (nearly every event) gives both rules the same parts in the same order, so
    the old key is not hashed again for it.
    """
    ident = event.get("MessageID")
    if type(ident) is int and ident != 0:
        return ()
    old = legacy_dedupe_key(event)
    return () if old == key else (old,)


def message_id(key: str) -> str:
    """Segment ``messageId`` for a dedupe key: 72 characters, under Segment's 100."""
    return MESSAGE_ID_PREFIX + key


def iso_timestamp(unix_seconds: int | float) -> str:
    """Mailjet ``time`` (Unix seconds, UTC) as ISO-8601 UTC."""
    return _iso_second(int(unix_seconds))


@lru_cache(maxsize=4096)
def _iso_second(seconds: int) -> str:
    """Cached: a backlog's events come in time order, many to a second."""
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _id_string(value: Any) -> str | None:
    """A Mailjet id as a property string: ``42`` and ``"42"`` both give ``"42"``; zero gives None."""
    ident = id_value(value)
    return None if ident is None else str(ident)


def anonymous_id(event: Mapping[str, Any], email: str | None, key: str | None = None) -> str:
    """Identity when no userId is known: the email, else the Mailjet contact, else the message, else
    the event's dedupe key (``key`` when the caller has the stored one)."""
    if email:
        return email
    contact = _id_string(event.get("mj_contact_id"))
    if contact:
        return f"mailjet-contact:{contact}"
    message = message_id_value(event)
    if message is not None:
        return f"mailjet-message:{message}"
    return f"mailjet-event:{key or dedupe_key(event)}"


def recipient_of(event: Mapping[str, Any], email: str | None, key: str) -> str:
    """Whom an event is about, as the debugger finds it: the normalised email, else the
    ``anonymousId`` the call carries without one."""
    return email or anonymous_id(event, email, key)


def message_ref(event: Mapping[str, Any]) -> str | None:
    """The event's Mailjet message id as text (``42`` and ``"42"`` agree), for the debugger."""
    ident = message_id_value(event)
    return None if ident is None else str(ident)


def labels(text: str, key: str) -> tuple[str | None, str | None]:
    """The debugger's labels of a stored event (recipient, Mailjet message id); none for text that
    is not an event object (a compacted or unreadable row)."""
    try:
        event = loads_strict(text) if text else None
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(event, dict):
        return None, None
    return recipient_of(event, normalize_email(event.get("email")), key), message_ref(event)


def _payload(value: Any) -> Any:
    """Payload as sent: an object or array when it holds JSON text for one that Segment can carry
    (strict JSON, within the depth bound as the event's field), else the string."""
    if not isinstance(value, str) or value[:1] not in ("{", "["):
        return value
    try:
        parsed = loads_strict(value)
    except (ValueError, RecursionError):
        return value
    return value if problem(parsed, MAX_DEPTH - 1) else _unknown_value(parsed)


def _unknown_value(value: Any) -> Any:
    """A field Mailjet added later (or a parsed Payload): kept as is, but integers beyond what a
    JavaScript consumer reads exactly become strings, at any depth."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > JS_SAFE_INTEGER:
        return str(value)
    if isinstance(value, dict):
        return {key: _unknown_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unknown_value(item) for item in value]
    return value


#: What ``properties`` does with each known field: leave it out (None), or copy it under its
#: Segment name, as an id string or as it is. One lookup a field instead of three.
_FIELD_PLAN: dict[str, tuple[str, bool] | None] = {
    **{field: (name, field in ID_FIELDS) for field, name in PROPERTY_FIELDS.items()},
    **dict.fromkeys(NOT_PROPERTIES),
}
_UNKNOWN = ("", False)


def properties(event: Mapping[str, Any]) -> dict[str, Any]:
    """Every Mailjet field not placed elsewhere, under its Segment name; empties and zero ids left out."""
    props: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    for field, value in event.items():
        if value is None or value == "":
            continue
        plan = _FIELD_PLAN.get(field, _UNKNOWN)
        if plan is None:
            continue
        if plan is _UNKNOWN:
            extras.setdefault(field.lower(), _unknown_value(value))
            continue
        name, is_id = plan
        if not is_id:
            props[name] = value
        elif type(value) is int:  # the usual id: an integer, zero meaning none
            if value:
                props[name] = str(value)
        elif (text := _id_string(value)) is not None:
            props[name] = text
    for name, fallbacks in PROPERTY_FALLBACKS.items():
        for field in fallbacks:
            if name not in props and (text := _id_string(event.get(field))) is not None:
                props[name] = text
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
    event: Mapping[str, Any], *, event_names: Mapping[str, str], user_id: str | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    """The Segment ``track`` call for one validated Mailjet event.

    ``user_id`` is the recipient's userId when the bridge knows it; otherwise the call carries an
    ``anonymousId`` (Mailjet's own rule: one or the other). ``key`` is the dedupe key the event was
    stored with: a row keeps the ``messageId`` it was accepted with, whatever the rule is now.
    """
    email = normalize_email(event.get("email"))
    call: dict[str, Any] = {"type": "track", "event": event_names[event["event"]]}
    if user_id:
        call["userId"] = user_id
    else:
        call["anonymousId"] = anonymous_id(event, email, key)
    call["messageId"] = message_id(key or dedupe_key(event))
    call["timestamp"] = iso_timestamp(event["time"])
    call["context"] = context(event, email)
    call["integrations"] = {"Mailjet": False}
    call["properties"] = properties(event)
    return call
