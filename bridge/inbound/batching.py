"""Packing encoded Segment calls into ``/v1/batch`` requests within Segment's limits. Pure."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")

#: Segment rejects a single call over 32 KB.
MAX_EVENT_BYTES = 32 * 1024
#: Segment's limit is 500 KB a request; stay under it with room for the envelope and ``sentAt``,
#: as analytics-python does (475,000 bytes).
MAX_BATCH_BYTES = 475_000
#: Segment accepts at most 2,500 calls a batch and silently drops the rest, so stay well under.
MAX_BATCH_EVENTS = 2_000
#: Bytes of ``{"batch":[``, ``],"sentAt":"…"}`` around the calls.
ENVELOPE_BYTES = 64


def pack(
    items: Iterable[T],
    size: Callable[[T], int],
    *,
    max_bytes: int = MAX_BATCH_BYTES,
    max_events: int = MAX_BATCH_EVENTS,
) -> list[list[T]]:
    """Group items, in order, into batches whose encoded size and count stay within the limits.

    Items must each be at most ``MAX_EVENT_BYTES``; the caller dead-letters larger ones first.
    """
    batches: list[list[T]] = []
    current: list[T] = []
    used = ENVELOPE_BYTES
    for item in items:
        cost = size(item) + 1  # the comma between calls
        if current and (used + cost > max_bytes or len(current) >= max_events):
            batches.append(current)
            current, used = [], ENVELOPE_BYTES
        current.append(item)
        used += cost
    if current:
        batches.append(current)
    return batches

