"""One HTTP call to Segment's ``/v1/batch``. No retry logic here: that is the forwarder's job."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import requests

from .version import __version__

USER_AGENT = f"mailjet-segment-bridge/{__version__}"
RESPONSE_EXCERPT = 1000


@dataclass(frozen=True)
class SendResult:
    """Segment's answer. ``status`` is None when there was none (timeout, refused connection)."""

    status: int | None
    body: str
    retry_after: float | None
    latency_ms: float


def basic_auth(write_key: str) -> str:
    """Segment's Basic auth: the write key as user name and an empty password (note the colon)."""
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode("ascii")


def parse_retry_after(headers: requests.structures.CaseInsensitiveDict, now: float) -> float | None:
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


def iso_now(clock: Callable[[], float]) -> str:
    return datetime.fromtimestamp(clock(), tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class SegmentClient:
    """Posts pre-encoded track calls; ``sentAt`` is stamped at each attempt, never when stored."""

    def __init__(
        self,
        base_url: str | Callable[[], str],
        *,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = (5.0, 15.0),
        clock: Callable[[], float] = time.time,
    ) -> None:
        #: Read at each call, so a region or URL changed by an admin applies to the next batch.
        self.base_url = base_url if callable(base_url) else (lambda: base_url)
        self.session = session or requests.Session()
        self.timeout = timeout
        self.clock = clock

    def post_batch(self, write_key: str, calls: Sequence[bytes]) -> SendResult:
        sent_at = iso_now(self.clock).encode()
        body = b'{"batch":[' + b",".join(calls) + b'],"sentAt":"' + sent_at + b'"}'
        headers = {
            "Content-Type": "application/json",
            "Authorization": basic_auth(write_key),
            "User-Agent": USER_AGENT,
        }
        started = time.monotonic()
        try:
            url = self.base_url().rstrip("/") + "/v1/batch"
            response = self.session.post(url, data=body, headers=headers, timeout=self.timeout)
        except requests.Timeout:
            return SendResult(None, f"no answer within {self.timeout[1]:g} s", None, _ms(started))
        except requests.RequestException as exc:
            return SendResult(None, f"connection failed: {type(exc).__name__}", None, _ms(started))
        return SendResult(
            response.status_code,
            response.text[:RESPONSE_EXCERPT],
            parse_retry_after(response.headers, self.clock()),
            _ms(started),
        )

    def close(self) -> None:
        self.session.close()


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)
