"""When an upstream (Segment, Mailjet) may be tried again, and its delivery state for other processes.

Both delivery loops follow the same rules (SPEC §2): exponential backoff with jitter after a failure,
at least as long as ``Retry-After`` asks; a pause when the credentials are refused, lifted at once by new
credentials. The state is stored so that ``/healthz`` in a web process can report it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import StorageUnavailable
from .retry import backoff_delay
from .storage.base import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PacingPolicy:
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    #: How often refused credentials are tried again (changed credentials are tried at once).
    auth_retry_seconds: float = 60.0


def status_key(upstream: str) -> str:
    return f"status.{upstream}"


class Pacer:
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
        self._refused: str | None = None
        self._status: tuple[str, str] | None = None

    def set_status(self, state: str, detail: str) -> None:
        """Store the delivery state when it changes. Details never contain credentials."""
        if self._status == (state, detail):
            return
        self._status = (state, detail)
        now = self.clock()
        record = json.dumps({"state": state, "detail": detail, "since": now})
        self.store.put_setting(status_key(self.upstream), record, now)
        level = logging.INFO if state == "ok" else logging.WARNING
        log.log(level, "%s delivery %s: %s", self.upstream, state, detail)

    def ready(self, credential: str) -> bool:
        """May we call the upstream now with this credential?"""
        if self._refused is not None and credential != self._refused:
            self._refused, self.hold_until = None, 0.0  # new credentials: try them at once
        return self.clock() >= self.hold_until

    def succeeded(self, detail: str) -> None:
        self._failures = 0
        self.set_status("ok", detail)

    def failed(self, what: str, retry_after: float | None) -> float:
        """A transient failure: hold for the next backoff step (or Retry-After); returns the delay."""
        self._failures += 1
        delay = backoff_delay(self._failures, self.policy.backoff_base, self.policy.backoff_cap, self.rng)
        if retry_after is not None:
            delay = max(delay, retry_after)
        self.hold_until = self.clock() + delay
        self.set_status("retrying", f"{what}; next attempt in {delay:.1f} s")
        return delay

    def refused(self, credential: str, detail: str) -> None:
        """Credentials refused: pause until they change, or until the auth retry interval passes."""
        self._refused = credential
        self.hold_until = self.clock() + self.policy.auth_retry_seconds
        self.set_status("auth_failed", detail)


def _log_safely(level: int, message: str, *args: Any, exc_info: bool = False) -> None:
    """Log, but never let a logging failure end a delivery loop."""
    with contextlib.suppress(Exception):  # nothing sensible is left to report it to
        log.log(level, message, *args, exc_info=exc_info)


def run_until_stopped(
    name: str, run_once: Callable[[], int], stop: threading.Event, idle_seconds: float
) -> None:
    """Call ``run_once`` until ``stop`` is set, resting when a round settled nothing.

    Storage hiccups and unexpected errors are logged and retried, never fatal: the items stay in
    the store and the next round takes them up.
    """
    log.info("%s started", name)
    while not stop.is_set():
        settled = 0
        try:
            settled = run_once()
        except StorageUnavailable as exc:
            _log_safely(logging.WARNING, "%s: storage unavailable: %s", name, exc)
        except Exception:
            _log_safely(logging.ERROR, "%s: unexpected error; continuing", name, exc_info=True)
        if settled == 0:
            stop.wait(idle_seconds)
    log.info("%s stopped", name)


class DeliveryLoop:
    """What both delivery loops share: the store, a lease owner id, pacing, metrics, and the loop."""

    upstream = ""
    owner_prefix = "loop"

    def __init__(
        self, store: Store, *, pacing: PacingPolicy, idle_seconds: float, clock: Callable[[], float],
        rng: random.Random | None, owner: str | None, metrics: Any,
    ) -> None:
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.owner = owner or f"{self.owner_prefix}-{uuid.uuid4().hex[:12]}"
        self.pacer = Pacer(store, self.upstream, pacing, clock, rng or random.Random())
        self.idle_seconds = idle_seconds

    def run_once(self) -> int:
        """One round; returns how many items were settled (0 makes the loop rest)."""
        raise NotImplementedError

    def run_forever(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set, then give back every lease still held (a clean shutdown)."""
        run_until_stopped(f"{self.upstream} loop {self.owner}", self.run_once, stop, self.idle_seconds)
        self.release_leases()

    def release_leases(self) -> None:
        try:
            released = self.store.release_owner(self.owner, self.clock())
        except StorageUnavailable as exc:
            log.warning("%s: leases not released (they expire by themselves): %s", self.owner, exc)
            return
        if released:
            log.info("%s: released %d leased item(s)", self.owner, released)


class Janitor:
    """Deletes delivered rows past the retention period, a small batch per transaction."""

    def __init__(self, store: Store, retention_days: int, *, every_seconds: float = 600.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.retention = retention_days * 86400
        self.every_seconds = every_seconds
        self.clock = clock
        self._next = 0.0

    def run_once(self) -> int:
        now = self.clock()
        if not self.retention or now < self._next:
            return 0
        self._next = now + self.every_seconds
        removed = self.store.prune_delivered(now - self.retention)
        if removed:
            log.info("pruned %d delivered item(s) older than %d days", removed, self.retention // 86400)
        return 0  # never busy: the loop rests between rounds

    def run_forever(self, stop: threading.Event) -> None:
        run_until_stopped("janitor", self.run_once, stop, idle_seconds=30.0)
