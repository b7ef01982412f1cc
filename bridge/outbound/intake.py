"""Turning a Segment Webhooks (Actions) body into queue items for Mailjet. No I/O, no Flask.

Only identify calls are acted on; other types are acknowledged and counted. Each identify that carries
both a userId and an email teaches the bridge that pair, even when it sends nothing to Mailjet.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

from bridge import NAME
from bridge.payloads.identity import normalize_email
from bridge.payloads.schemas import EventValidator, quarantine_entry
from bridge.storage.base import NewItem, QuarantineEntry

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
    return hmac.compare_digest(expected, (header or "").strip().lower())


def identify_email(event: dict[str, Any]) -> str | None:
    """``traits.email``, else ``context.traits.email``, normalised."""
    traits = event.get("traits") or {}
    context_traits = (event.get("context") or {}).get("traits") or {}
    return normalize_email(traits.get("email")) or normalize_email(context_traits.get("email"))


def _skip_reason(event: dict[str, Any]) -> str | None:
    """Why an identify is not for Mailjet: switched off for it, or the bridge's own output."""
    if (event.get("integrations") or {}).get(MAILJET_INTEGRATION) is False:
        return "integrations.Mailjet is false"
    library = ((event.get("context") or {}).get("library") or {}).get("name")
    if library == NAME:
        return "sent by this bridge"
    return None


@dataclass
class SegmentIntake:
    items: list[NewItem] = field(default_factory=list)
    quarantined: list[QuarantineEntry] = field(default_factory=list)
    identities: list[tuple[str, str]] = field(default_factory=list)
    ignored: int = 0  # not identify calls
    skipped: int = 0  # identifies not meant for Mailjet


def contact_key(event: dict[str, Any], text: str) -> str:
    """Dedupe key: Segment's ``messageId`` (kept across its retries), else the exact text."""
    message_id = event.get("messageId")
    basis = f"messageId:{message_id}" if isinstance(message_id, str) and message_id else f"text:{text}"
    return hashlib.sha256(basis.encode("utf-8")).hexdigest()


def sort_segment_events(events: list[tuple[Any, str]], validator: EventValidator) -> SegmentIntake:
    """Validate each event on its own; identifies for Mailjet become queue items."""
    intake = SegmentIntake()
    for event, text in events:
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
