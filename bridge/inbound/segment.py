"""One HTTP call to Segment's ``/v1/batch``. No retry logic here: that is the delivery loop's job."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import requests

from bridge import USER_AGENT
from bridge.delivery.upstream import RESPONSE_EXCERPT, UpstreamError, Verdict, parse_retry_after, send

#: Segment's HTTP API base URL per data-processing region.
SEGMENT_REGIONS: dict[str, str] = {
    "us": "https://api.segment.io",
    "eu": "https://events.eu1.segmentapis.com",
}


@dataclass(frozen=True)
class Accepted:
    """Segment's 2xx answer to a batch."""

    status: int
    body: str
    latency_ms: float


def _credential_refusal(status: int, body: str) -> Verdict | None:
    """A 400 that names the write key is about the key, not the batch: pause, never bisect it into
    thousands of dead letters. (Segment answers 400 to a missing or empty key.)"""
    text = body.lower().replace("_", " ").replace("-", " ")
    if status == 400 and ("write key" in text or "writekey" in text):
        return Verdict.AUTH
    return None


def basic_auth(write_key: str) -> str:
    """Segment's Basic auth: the write key as user name and an empty password (note the colon)."""
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode("ascii")


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

    def post_batch(self, write_key: str, calls: Sequence[bytes]) -> Accepted:
        """Post one batch; raises UpstreamError unless Segment answers 2xx."""
        sent_at = iso_now(self.clock).encode()
        body = b'{"batch":[' + b",".join(calls) + b'],"sentAt":"' + sent_at + b'"}'
        headers = {
            "Content-Type": "application/json",
            "Authorization": basic_auth(write_key),
            "User-Agent": USER_AGENT,
        }
        url = self.base_url().rstrip("/") + "/v1/batch"
        response, latency = send(self.session, "POST", url, data=body, headers=headers,
                                 timeout=self.timeout)
        text = response.text[:RESPONSE_EXCERPT]
        if not 200 <= response.status_code < 300:
            raise UpstreamError(response.status_code, body=text, latency_ms=latency,
                                retry_after=parse_retry_after(response.headers, self.clock()),
                                verdict=_credential_refusal(response.status_code, text))
        return Accepted(response.status_code, text, latency)

    def close(self) -> None:
        self.session.close()
