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


class BodyError(ValueError):
    """The body as a whole is unusable (not JSON, or not an object or array): answered with 400."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_body(raw: bytes) -> list[Any]:
    """A Version 1 body (one bare object) or a Version 2 body (an array) as a list of events."""
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise BodyError(f"the body is not valid JSON: {str(exc)[:200]}") from exc
    if isinstance(body, dict):
        return [body]
    if isinstance(body, list):
        return body
    raise BodyError("the body must be a JSON object (one event) or an array of events")


def encode_event(event: Any) -> str:
    """Compact, ASCII-safe JSON text of one event as stored (lone surrogates cannot break it)."""
    return json.dumps(event, separators=(",", ":"))


@dataclass
class Intake:
    items: list[NewItem] = field(default_factory=list)
    quarantined: list[QuarantineEntry] = field(default_factory=list)


def sort_events(events: list[Any], validator: EventValidator) -> Intake:
    """Validate each event on its own; valid ones become queue items, invalid ones quarantine."""
    intake = Intake()
    for event in events:
        text = encode_event(event)
        errors = validator.errors(event)
        if errors:
            fingerprint = hashlib.sha256(text.encode()).hexdigest()
            intake.quarantined.append(
                QuarantineEntry(MAILJET_SOURCE, fingerprint, text, json.dumps(errors))
            )
        else:
            intake.items.append(NewItem(SEGMENT_TRACK, dedupe_key(event), event["event"], text))
    return intake
