"""How the forwarder reacts to an answer from Segment, and how long it waits. Pure."""

from __future__ import annotations

import enum
import random


class Verdict(enum.Enum):
    DELIVERED = "delivered"  # 2xx
    REJECTED = "rejected"    # 400/413/422: something in the batch is bad; split to find it
    AUTH = "auth"            # 401/403: the write key is wrong; pause, drop nothing
    RETRY = "retry"          # 429, 5xx, other 4xx, timeouts, connection errors


#: Statuses that mean "this content is bad" (reference/segment.md §1.6-1.7).
REJECTED_STATUSES = frozenset({400, 413, 422})
AUTH_STATUSES = frozenset({401, 403})


def classify(status: int | None) -> Verdict:
    """Map an HTTP status (None: no answer) to what the forwarder does next.

    Anything not known to be permanent is retried, so a misconfigured URL (404) or an outage
    keeps events queued instead of dead-lettering them.
    """
    if status is not None and 200 <= status < 300:
        return Verdict.DELIVERED
    if status in REJECTED_STATUSES:
        return Verdict.REJECTED
    if status in AUTH_STATUSES:
        return Verdict.AUTH
    return Verdict.RETRY


def backoff_delay(failures: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: half the step fixed, half random (never near zero)."""
    step = min(cap, base * (2 ** max(0, failures - 1)))
    return step / 2 + rng.uniform(0, step / 2)
