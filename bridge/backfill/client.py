"""Reading Mailjet's history API politely: one request in flight, backoff on 429, 5xx and timeouts.

Mailjet publishes no rate-limit numbers and sends no ``Retry-After`` (reference §1), so a throttled
call waits an exponential, jittered delay (a ``Retry-After`` is honoured if one ever comes). A 400 or
401 (and 403) means a bad filter or a bad key pair: retrying cannot help, so the run stops with a
sentence that says what to fix; its checkpoints let the next run resume.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests

from bridge import USER_AGENT
from bridge.delivery.upstream import UpstreamError, parse_retry_after, send

#: Statuses that stop the run at once.
FATAL_STATUSES = frozenset({400, 401, 403})


class BackfillStopped(Exception):
    """The run cannot go on; the message is one sentence for the operator."""


@dataclass
class CallCounts:
    """What the run has cost: requests made, 429s met, retries after any failure."""

    requests: int = 0
    throttled: int = 0
    retries: int = 0
    by_path: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: ``base * 2**n``, capped, at most ``attempts`` tries."""

    base_seconds: float = 1.0
    cap_seconds: float = 60.0
    attempts: int = 10

    def delay(self, attempt: int, retry_after: float | None, rng: Callable[[], float]) -> float:
        if retry_after is not None:
            return min(retry_after, self.cap_seconds)
        ceiling = min(self.cap_seconds, self.base_seconds * 2 ** attempt)
        return ceiling / 2 + rng() * ceiling / 2


def _sentence(status: int, path: str, message: str) -> str:
    """Why the run stopped, as one sentence an operator can act on."""
    if status in (401, 403):
        return (f"Mailjet refused the API key pair ({status}) on {path}: check MAILJET_API_KEY and "
                "MAILJET_API_SECRET (or `config set mailjet.api_key`), then run the same command "
                "again; it resumes where it stopped.")
    return (f"Mailjet refused a history request ({status}: {message or 'bad request'}) on {path}: "
            "the account may not offer this resource or filter; the run stopped here and resumes "
            "where it stopped when run again.")


class HistoryClient:
    """GET calls to Mailjet's v3 REST history resources with the API key pair."""

    def __init__(self, base_url: str, auth: tuple[str, str], *, retry: RetryPolicy | None = None,
                 session: requests.Session | None = None, timeout: tuple[float, float] = (5.0, 60.0),
                 sleep: Callable[[float], None] = time.sleep,
                 rng: Callable[[], float] = random.random) -> None:
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self.retry = retry or RetryPolicy()
        self.session = session or requests.Session()
        self.timeout = timeout
        self.sleep = sleep
        self.rng = rng
        self.counts = CallCounts()

    def get(self, path: str, params: Mapping[str, Any] | None = None, *,
            missing_ok: bool = False) -> dict[str, Any] | None:
        """The JSON answer; None for a 404 when ``missing_ok`` (a lookup that found nothing)."""
        for attempt in range(self.retry.attempts):
            self.counts.requests += 1
            key = path.split("/")[3] if path.count("/") >= 3 else path
            self.counts.by_path[key] = self.counts.by_path.get(key, 0) + 1
            try:
                response, _ms = send(self.session, "GET", self.base_url + path, params=dict(params or {}),
                                     auth=self.auth, headers={"User-Agent": USER_AGENT},
                                     timeout=self.timeout)
            except UpstreamError:  # no answer: a timeout or a refused connection
                self._wait(attempt, None)
                continue
            status = response.status_code
            if status == 200:
                try:
                    body = response.json()
                except ValueError:
                    body = None
                if isinstance(body, dict):
                    return body
                self._wait(attempt, None)  # an answer that is not a JSON object
                continue
            if status == 404 and missing_ok:
                return None
            message = _error_message(response)
            if status in FATAL_STATUSES or (400 <= status < 500 and status not in (404, 408, 429)):
                raise BackfillStopped(_sentence(status, path, message))
            if status == 404:
                raise BackfillStopped(f"Mailjet has no {path} (404): check MAILJET_API_URL; the run "
                                      "stopped here and resumes where it stopped when run again.")
            if status == 429:
                self.counts.throttled += 1
            self._wait(attempt, parse_retry_after(response.headers, time.time()))
        raise BackfillStopped(
            f"Mailjet kept failing on {path} after {self.retry.attempts} tries (429s, 5xx or "
            "timeouts): run the same command again later; it resumes where it stopped.")

    def _wait(self, attempt: int, retry_after: float | None) -> None:
        if attempt + 1 >= self.retry.attempts:
            return
        self.counts.retries += 1
        self.sleep(self.retry.delay(attempt, retry_after, self.rng))


def _error_message(response: requests.Response) -> str:
    """Mailjet's ``ErrorMessage``, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and body.get("ErrorMessage"):
        return str(body["ErrorMessage"])[:200]
    return response.text[:200]
