"""Turning a Mailjet webhook body into queue items and quarantine entries. No I/O, no Flask.

Each event stands alone: an invalid one is quarantined with its errors and never stops the valid
ones beside it from being queued. So is one holding a value a Segment call cannot carry
(``bridge.payloads.faithful``), checked first: the schema validator and the keys need sound values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bridge.inbound.track import dedupe_key, legacy_keys
from bridge.payloads.faithful import problem
from bridge.payloads.schemas import EventValidator, quarantine_entry
from bridge.storage.base import NewItem, QuarantineEntry

#: The outbox kind of a Mailjet event on its way to Segment as a track call.
KIND = "segment_track"
#: The quarantine source of Mailjet's events.
SOURCE = "mailjet"


@dataclass
class Intake:
    items: list[NewItem] = field(default_factory=list)
    quarantined: list[QuarantineEntry] = field(default_factory=list)


def sort_events(events: list[tuple[Any, str]], validator: EventValidator) -> Intake:
    """Validate each event on its own; valid ones become queue items, invalid ones quarantine.

    Each is stored as the exact text Mailjet sent.
    """
    intake = Intake()
    for event, text in events:
        unfaithful = problem(event, text=text)
        errors = [unfaithful] if unfaithful else validator.errors(event)
        if errors:
            intake.quarantined.append(quarantine_entry(SOURCE, text, errors))
        else:
            intake.items.append(new_item(event, text))
    return intake


def new_item(event: dict[str, Any], text: str) -> NewItem:
    """A valid event as a queue item; its pre-#9 key, when different, finds rows accepted then."""
    key = dedupe_key(event)
    return NewItem(KIND, key, event["event"], text, int(event["time"]), legacy_keys(event, key))
