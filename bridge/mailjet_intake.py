"""Turning a Mailjet webhook body into queue items and quarantine entries. No I/O, no Flask.

Each event stands alone: an invalid one is quarantined with its errors and never stops the valid
ones beside it from being queued.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from .mapping import dedupe_key
from .storage.base import SEGMENT_TRACK, NewItem, QuarantineEntry
from .validation import EventValidator

MAILJET_SOURCE = "mailjet"


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
        errors = validator.errors(event)
        if errors:
            fingerprint = hashlib.sha256(text.encode()).hexdigest()
            intake.quarantined.append(
                QuarantineEntry(MAILJET_SOURCE, fingerprint, text, json.dumps(errors))
            )
        else:
            intake.items.append(
                NewItem(SEGMENT_TRACK, dedupe_key(event), event["event"], text, int(event["time"]))
            )
    return intake
