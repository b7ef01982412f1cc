"""When an upstream (Segment, Mailjet) may be tried again, and its delivery state for other processes.

Both delivery loops follow the same rules (docs/behaviour.md, "Delivery"): after an upstream-wide
failure, wait as long as ``Retry-After`` says (within bounds) or else back off exponentially with
jitter, capped at a minute by default; pause when the credentials are refused, and lift the pause at
once for new credentials. The state is stored so that ``/healthz`` in a web process can report it.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from bridge.storage.base import Store

log = logging.getLogger(__name__)


#: A ``Retry-After`` is obeyed within these bounds: never a busy loop, never a pause of hours.
RETRY_AFTER_MIN, RETRY_AFTER_MAX = 0.5, 600.0
#: While delivery stays ``ok``, a new detail ("last batch of 730 delivered") is stored at most this
#: often: draining a backlog would otherwise add a durable write to every batch.
OK_DETAIL_EVERY_SECONDS = 5.0


@dataclass(frozen=True)
class PacingPolicy:
    backoff_base: float = 1.0
    #: Longest wait after an upstream-wide failure without ``Retry-After`` (BRIDGE_RETRY_MAX_SECONDS):
    #: an upstream that is back is found within a minute.
    backoff_cap: float = 60.0
    #: How often refused credentials are tried again (changed credentials are tried at once).
    auth_retry_seconds: float = 60.0


def backoff_delay(failures: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: half the step fixed, half random (never near zero).

    The exponent is bounded, so a very long outage never overflows the step.
    """
    step = min(cap, base * (2 ** min(max(0, failures - 1), 60)))
    return step / 2 + rng.uniform(0, step / 2)


#: Stored states that a set, usable credential contradicts.
OUTDATED_WITH_A_CREDENTIAL = frozenset({"no_write_key", "no_api_keys", "no_credentials",
                                        "unknown_write_key", "region_mismatch"})


def status_key(upstream: str) -> str:
    """The stored setting that holds an upstream's delivery state."""
    return f"status.{upstream}"


class Pacer:
    """One upstream's backoff, credential pause and stored delivery state."""

    def __init__(
        self, store: Store, upstream: str, policy: PacingPolicy, clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self.store = store
        self.upstream = upstream
        self.policy = policy
        self.clock = clock
        self.rng = rng
        self.hold_until = 0.0
        self._failures = 0
        self._succeeded_before = False
        self._refused: Hashable | None = None
        self._status: tuple[str, str] | None = None
        self._stored_at = 0.0
        self._looked_at_stored = False

    def set_status(self, state: str, detail: str, *, detail_every: float = 0.0) -> None:
        """Store the delivery state when it changes; a new detail in the same state only once
        ``detail_every`` seconds have passed since the last write. Details never contain credentials."""
        if self._status == (state, detail):
            return
        now = self.clock()
        if self._status is not None and self._status[0] == state and now - self._stored_at < detail_every:
            return
        self._status, self._stored_at = (state, detail), now
        record = json.dumps({"state": state, "detail": detail, "since": now})
        self.store.put_setting(status_key(self.upstream), record, now)
        level = logging.INFO if state == "ok" else logging.WARNING
        log.log(level, "%s delivery %s: %s", self.upstream, state, detail)

    def credential_present(self) -> None:
        """A credential is set and nothing holds delivery: a stored "no key" or "held" state (this
        process's, or one a previous run left) no longer says what is true, so it becomes
        ``starting`` until the next delivery."""
        if self._status is None:
            if self._looked_at_stored:
                return
            self._looked_at_stored = True
            record = self.store.get_setting(status_key(self.upstream))
            state = json.loads(record).get("state") if record else None
        else:
            state = self._status[0]
        if state in OUTDATED_WITH_A_CREDENTIAL:
            self.set_status("starting", "no delivery yet")

    def ready(self, credential: Hashable) -> bool:
        """May we call the upstream now with this credential?"""
        if self._refused is not None and credential != self._refused:
            self._refused, self.hold_until = None, 0.0  # new credentials: try them at once
        return self.clock() >= self.hold_until

    def succeeded(self, detail: str) -> bool:
        """A delivery went through. True when it ends a run of failures (the upstream is back), and
        on this process's first success: a process that died during an outage left rows held."""
        recovered = self._failures > 0 or not self._succeeded_before
        self._failures = 0
        self._succeeded_before = True
        self.set_status("ok", detail, detail_every=OK_DETAIL_EVERY_SECONDS)
        return recovered

    def failed(self, what: str, retry_after: float | None) -> float:
        """An upstream-wide failure: hold for ``Retry-After`` when given (bounded), else for the next
        backoff step; returns the delay."""
        self._failures += 1
        if retry_after is not None:
            delay = min(max(retry_after, RETRY_AFTER_MIN), RETRY_AFTER_MAX)
        else:
            delay = backoff_delay(self._failures, self.policy.backoff_base, self.policy.backoff_cap,
                                  self.rng)
        self.hold_until = self.clock() + delay
        self.set_status("retrying", f"{what}; next attempt in {delay:.1f} s")
        return delay

    def refused(self, credential: Hashable, detail: str) -> None:
        """Credentials refused: pause until they change, or until the auth retry interval passes."""
        self._refused = credential
        self.hold_until = self.clock() + self.policy.auth_retry_seconds
        self.set_status("auth_failed", detail)
