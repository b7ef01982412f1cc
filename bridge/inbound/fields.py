"""Vendor knowledge about Mailjet's Event API and Segment's email spec, kept as data.

The mapping code in ``bridge.inbound.track`` reads only these tables, so a new Mailjet field or a new naming
preset is a change here, not in the logic. Mailjet's Event API guide and Segment's email spec are
the sources; docs/behaviour.md, "Inbound mapping", has the table as a reader sees it.
"""

from __future__ import annotations

#: The seven Event API types; each has ``schemas/mailjet/<type>.json``.
EVENT_TYPES: tuple[str, ...] = ("sent", "open", "click", "bounce", "blocked", "spam", "unsub")

#: Naming presets for the Segment ``event`` field (``BRIDGE_EVENT_NAMES``).
#: ``mailjet`` follows Mailjet's own Segment source (plus blocked, which it does not send);
#: ``segment-spec`` follows Segment's email spec, which differs only for unsubscribes.
_MAILJET_NAMES = {
    "sent": "Email Delivered",
    "open": "Email Opened",
    "click": "Email Link Clicked",
    "bounce": "Email Bounced",
    "blocked": "Email Blocked",
    "spam": "Email Marked as Spam",
    "unsub": "Email Unsubscribed",
}
EVENT_NAME_PRESETS: dict[str, dict[str, str]] = {
    "mailjet": _MAILJET_NAMES,
    "segment-spec": {**_MAILJET_NAMES, "unsub": "Unsubscribed"},
    "raw": {name: name for name in EVENT_TYPES},
}

#: Mailjet field -> Segment property. Ids become strings (MessageID exceeds 2^53).
#: Empty strings and zero ids are left out; booleans are always kept.
PROPERTY_FIELDS: dict[str, str] = {
    "MessageID": "email_id",
    "Message_GUID": "message_guid",
    "mj_campaign_id": "campaign_id",
    "customcampaign": "campaign_name",
    "mj_contact_id": "contact_id",
    "CustomID": "custom_id",
    "url": "link_url",
    "mj_list_id": "list_id",
    "smtp_reply": "smtp_reply",
    "hard_bounce": "hard_bounce",
    "blocked": "blocked",
    "error": "error",
    "error_related_to": "error_related_to",
    "comment": "comment",
    "source": "source",
}

#: A property the table above left unset is taken from these fields, the first present.
#: ``email_id`` is MessageID, else mj_message_id (which is otherwise copied nowhere).
PROPERTY_FALLBACKS: dict[str, tuple[str, ...]] = {"email_id": ("mj_message_id",)}

#: Integer Mailjet ids, sent to Segment as strings. Each may also arrive as an integer-like string
#: (older posts send ``"mj_campaign_id": "1210245103"``); both give the same string.
ID_FIELDS: frozenset[str] = frozenset({"MessageID", "mj_campaign_id", "mj_contact_id", "mj_list_id"})

#: Where an event's message id comes from, first present wins. ``mj_message_id`` is MessageID as a
#: string (deprecated by Mailjet, but the only id in its grouped sample); ``Message_GUID`` is a
#: different id space and is never read as a number.
MESSAGE_ID_FIELDS: tuple[str, ...] = ("MessageID", "mj_message_id", "Message_GUID")

#: Message id fields whose integer-like strings are read as integers (so "42" and 42 agree).
NUMERIC_MESSAGE_ID_FIELDS: frozenset[str] = frozenset({"MessageID", "mj_message_id"})

#: Fields with their own place in the Segment call, or repeated elsewhere: never copied into properties.
#: ``ip``/``agent``/``geo`` go to ``context``; ``email`` to identity and ``context.traits``;
#: ``time`` to ``timestamp``; ``mj_message_id`` repeats MessageID (it stands in for ``email_id`` only
#: when MessageID is absent); ``event`` becomes ``mailjet_event``;
#: ``Payload`` becomes ``payload`` (parsed when it is JSON).
NOT_PROPERTIES: frozenset[str] = frozenset(
    {"event", "time", "email", "ip", "agent", "geo", "mj_message_id", "Payload"}
)

#: The dedupe key is event, message id (MESSAGE_ID_FIELDS), email, time and url, or the whole event
#: when it has no message id (``bridge.inbound.track.dedupe_key``). Before issue #9 it was these
#: fields, MessageID falling back to Message_GUID only (``legacy_dedupe_key``).
LEGACY_DEDUPE_FIELDS: tuple[str, ...] = ("event", "MessageID", "email", "time", "url")

#: Largest integer a JavaScript consumer can read exactly; larger unknown integers become strings.
JS_SAFE_INTEGER: int = 2**53 - 1
