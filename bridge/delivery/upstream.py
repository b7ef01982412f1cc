"""How a call to Segment or Mailjet fails, and what a delivery loop does about it.

Both clients raise one error type, ``UpstreamError``, carrying the status, ``Retry-After`` and the
answer's body; ``classify`` turns a status into the loop's next step. Anything not known to be
permanent is retried, so a misconfigured URL (404) or an outage keeps items queued instead of
dead-lettering them.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import requests

#: How much of an upstream answer is kept with an item (debugger, dead letters).
RESPONSE_EXCERPT = 1000


class Verdict(enum.Enum):
    DELIVERED = "delivered"  # 2xx
    REJECTED = "rejected"    # 400/413/422: something in the batch is bad; split to find it
    AUTH = "auth"            # 401/403: the credentials are wrong; pause, drop nothing
    RETRY = "retry"          # 429, 5xx, other 4xx, timeouts, connection errors


#: Statuses that mean "this content is bad" (Segment answers 400 for a bad call, 413 for one too
#: large; Mailjet 400 for a bad contact). 422 is treated the same way.
REJECTED_STATUSES = frozenset({400, 413, 422})
AUTH_STATUSES = frozenset({401, 403})


def classify(status: int | None) -> Verdict:
    """Map an HTTP status (None: no answer) to what a delivery loop does next."""
    if status is not None and 200 <= status < 300:
        return Verdict.DELIVERED
    if status in REJECTED_STATUSES:
        return Verdict.REJECTED
    if status in AUTH_STATUSES:
        return Verdict.AUTH
    return Verdict.RETRY


class UpstreamError(Exception):
    """A call to Segment or Mailjet that did not succeed. ``status`` is None when nothing answered.

    ``message`` is a short sentence (Mailjet's ``ErrorMessage``, or what went wrong on the wire);
    ``body`` is an excerpt of the answer, kept with the items it concerns.
    """

    def __init__(self, status: int | None, message: str = "", *, body: str = "",
                 retry_after: float | None = None, latency_ms: float | None = None,
                 info: Any = None, verdict: Verdict | None = None) -> None:
        self.status = status
        #: Set when the answer means more than its status (a 400 that names the credentials).
        self._verdict = verdict
        self.message = message
        self.body = body
        self.retry_after = retry_after
        self.latency_ms = latency_ms
        self.info = info
        super().__init__(self.describe())

    @property
    def verdict(self) -> Verdict:
        return self._verdict or classify(self.status)

    def describe(self) -> str:
        """``HTTP 503``, ``HTTP 400: Invalid email``, or ``no answer within 15 s``."""
        if self.status is None:
            return self.message
        return f"HTTP {self.status}" + (f": {self.message}" if self.message else "")


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or HTTP date) or ``X-RateLimit-Reset``."""
    for name in ("Retry-After", "X-RateLimit-Reset"):
        value = headers.get(name)
        if not value:
            continue
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - now)
        except (TypeError, ValueError):
            continue
    return None


def milliseconds_since(started: float) -> float:
    """Elapsed time since a ``time.monotonic()`` reading, in ms, for logs and the debugger."""
    return round((time.monotonic() - started) * 1000, 1)


def send(session: requests.Session, method: str, url: str, *, timeout: tuple[float, float],
         **options: Any) -> tuple[requests.Response, float]:
    """One HTTP call: the answer and its latency in ms, whatever its status.

    No answer at all (a timeout, a refused connection) raises ``UpstreamError`` with status None.
    """
    started = time.monotonic()
    try:
        response = session.request(method, url, timeout=timeout, **options)
    except requests.Timeout:
        raise UpstreamError(None, f"no answer within {timeout[1]:g} s",
                            latency_ms=milliseconds_since(started)) from None
    except requests.RequestException as exc:
        raise UpstreamError(None, f"connection failed: {type(exc).__name__}",
                            latency_ms=milliseconds_since(started)) from None
    return response, milliseconds_since(started)
