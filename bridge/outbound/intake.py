"""Turning a Segment Webhooks (Actions) body into queue items for Mailjet. No I/O, no Flask.

Only identify calls are acted on; other types are acknowledged and counted. Each identify that carries
both a userId and an email teaches the bridge that pair, even when it sends nothing to Mailjet. An
identify holding a value that cannot be sent faithfully (``bridge.payloads.faithful``) becomes a dead
letter at once, with the reason, and teaches nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

from bridge import NAME
from bridge.payloads.faithful import problem
from bridge.payloads.identity import normalize_email
from bridge.payloads.schemas import EventValidator, quarantine_entry
from bridge.storage.base import DeadLetter, NewItem, QuarantineEntry

#: The outbox kind of an identify on its way to Mailjet as a contact.
CONTACT_KIND = "mailjet_contact"
#: Dead letters only: one contact property Mailjet could not take.
PROPERTY_KIND = "mailjet_property"
#: The quarantine source of Segment's events.
SOURCE = "segment"
#: ``integrations`` key of Segment's Mailjet destination; ``false`` means "not to Mailjet".
MAILJET_INTEGRATION = "Mailjet"


def signature_matches(secret: str, signed_text: str, header: str | None) -> bool:
    """``X-Signature``: hex HMAC-SHA1 of the exact text Segment signed, compared in constant time."""
    expected = hmac.new(secret.encode(), signed_text.encode("utf-8"), hashlib.sha1).hexdigest()
    sent = (header or "").strip().lower().encode("utf-8", "surrogatepass")  # any header text compares
    return hmac.compare_digest(expected.encode(), sent)


def identify_email(event: dict[str, Any]) -> str | None:
    """``traits.email``, else ``context.traits.email``, normalised."""
    traits = event.get("traits") or {}
    context_traits = (event.get("context") or {}).get("traits") or {}
    return normalize_email(traits.get("email")) or normalize_email(context_traits.get("email"))


def labels(text: str, key: str) -> tuple[str | None, str | None]:
    """The debugger's label of a stored identify or property: its email (no upstream message id)."""
    try:
        event = json.loads(text) if text else None
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(event, dict):
        return None, None
    try:
        return normalize_email(event.get("email")) or identify_email(event), None
    except AttributeError:  # traits that are not an object: no email to label it with
        return None, None


def _member(value: Any, name: str) -> Any:
    """``value[name]`` when value is an object, else None: unlisted fields may have any type."""
    return value.get(name) if isinstance(value, dict) else None


def _skip_reason(event: dict[str, Any]) -> str | None:
    """Why an identify is not for Mailjet: switched off for it, or the bridge's own output."""
    if _member(event.get("integrations"), MAILJET_INTEGRATION) is False:
        return "integrations.Mailjet is false"
    if _member(_member(event.get("context"), "library"), "name") == NAME:
        return "sent by this bridge"
    return None


@dataclass
class SegmentIntake:
    items: list[NewItem] = field(default_factory=list)
    quarantined: list[QuarantineEntry] = field(default_factory=list)
    identities: list[tuple[str, str]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)  # identifies refused at intake
    ignored: int = 0  # not identify calls
    skipped: int = 0  # identifies not meant for Mailjet


def contact_key(event: dict[str, Any], text: str) -> str:
    """Dedupe key: Segment's ``messageId`` (kept across its retries), else the exact text."""
    message_id = event.get("messageId")
    basis = f"messageId:{message_id}" if isinstance(message_id, str) and message_id else f"text:{text}"
    return hashlib.sha256(basis.encode("utf-8", "surrogatepass")).hexdigest()


def sort_segment_events(events: list[tuple[Any, str]], validator: EventValidator) -> SegmentIntake:
    """Validate each event on its own; identifies for Mailjet become queue items.

    Values a call cannot carry are looked for first: the validator and the keys need sound values.
    """
    intake = SegmentIntake()
    for event, text in events:
        unfaithful = problem(event, text=text)
        if unfaithful:
            _refuse(intake, event, text, unfaithful)
            continue
        errors = validator.errors(event)
        if errors:
            intake.quarantined.append(quarantine_entry(SOURCE, text, errors))
            continue
        if event["type"] != "identify":
            intake.ignored += 1
            continue
        email, user_id = identify_email(event), event.get("userId")
        if email and user_id:
            intake.identities.append((user_id, email))
        if _skip_reason(event):
            intake.skipped += 1
            continue
        intake.items.append(NewItem(CONTACT_KIND, contact_key(event, text), "identify", text))
    return intake


def _refuse(intake: SegmentIntake, event: Any, text: str, unfaithful: dict[str, str]) -> None:
    """An identify becomes a dead letter; another call is ignored as any non-identify is; an event
    without a usable type is quarantined, since nothing else can be said of it."""
    reason = f"cannot be sent faithfully: {unfaithful['path']} {unfaithful['message']}"
    kind = _member(event, "type")
    if kind == "identify":
        intake.dead.append(DeadLetter(CONTACT_KIND, contact_key(event, text), "identify", text, reason))
    elif isinstance(kind, str) and not problem(kind):
        intake.ignored += 1
    else:
        intake.quarantined.append(quarantine_entry(SOURCE, text, [unfaithful]))
