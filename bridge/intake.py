"""Turning a Mailjet webhook body into queue items and quarantine entries. No I/O, no Flask.

Each event stands alone: an invalid one is quarantined with its errors and never stops the valid
ones beside it from being queued.
"""

from __future__ import annotations

import hashlib
import json
import re
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


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_SPACE = re.compile(r"[ \t\n\r]*")


def _skip(text: str, index: int) -> int:
    return _SPACE.match(text, index).end()  # type: ignore[union-attr]


def split_json(text: str) -> tuple[list[tuple[Any, str]], bool]:
    """Parse a JSON object or array, keeping each top-level value's exact source text.

    Returns ``([(value, text), ...], is_array)``. The exact text serves as the payload "as
    received", and it is what Segment signs for the first element of a batch.
    """
    index = _skip(text, 0)
    if not text.startswith("[", index):
        value, end = _DECODER.raw_decode(text, index)
        if _skip(text, end) != len(text):
            raise ValueError(f"extra data at char {end}")
        return [(value, text[index:end])], False
    values: list[tuple[Any, str]] = []
    index = _skip(text, index + 1)
    if text.startswith("]", index):
        end = index + 1
    else:
        while True:
            value, end = _DECODER.raw_decode(text, index)
            values.append((value, text[index:end]))
            index = _skip(text, end)
            if text.startswith(",", index):
                index = _skip(text, index + 1)
                continue
            if text.startswith("]", index):
                end = index + 1
                break
            raise ValueError(f"expected ',' or ']' at char {index}")
    if _skip(text, end) != len(text):
        raise ValueError(f"extra data at char {end}")
    return values, True


def parse_body(raw: bytes) -> list[tuple[Any, str]]:
    """A Version 1 body (one bare object) or a Version 2 body (an array) as (event, text) pairs."""
    try:
        values, is_array = split_json(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise BodyError(f"the body is not valid JSON: {str(exc)[:200]}") from exc
    if not is_array and not isinstance(values[0][0], dict):
        raise BodyError("the body must be a JSON object (one event) or an array of events")
    return values


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
