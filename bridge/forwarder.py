"""The forwarder: claims queued Mailjet events, maps them, and delivers them to Segment.

Nothing leaves the outbox except by a 2xx from Segment (delivered) or a permanent rejection of that
one event (a dead letter, kept with Segment's answer). Everything else is released for a later attempt.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .batching import MAX_EVENT_BYTES, halves, pack
from .errors import StorageUnavailable
from .mapping import normalize_email, track_call
from .retry import Verdict, backoff_delay, classify
from .segment_client import SegmentClient, SendResult
from .storage.base import SEGMENT_TRACK, ClaimedItem, Outcome, Store

log = logging.getLogger(__name__)

STATUS_KEY = "status.segment"


@dataclass(frozen=True)
class ForwarderPolicy:
    claim_limit: int = 1000
    lease_seconds: float = 60.0
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    #: How often a refused write key is tried again (a changed key is tried at once).
    auth_retry_seconds: float = 60.0
    idle_seconds: float = 0.5


@dataclass
class _Prepared:
    item: ClaimedItem
    call: str
    encoded: bytes


def _encode(call: Mapping[str, Any]) -> str:
    return json.dumps(call, ensure_ascii=False, separators=(",", ":"))


class Forwarder:
    """One delivery loop. Several may run against one store: leases keep their work apart."""

    def __init__(
        self,
        store: Store,
        client: SegmentClient,
        *,
        write_key: Callable[[], str | None],
        event_names: Callable[[], Mapping[str, str]],
        policy: ForwarderPolicy | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        owner: str | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.write_key = write_key
        self.event_names = event_names
        self.policy = policy or ForwarderPolicy()
        self.clock = clock
        self.rng = rng or random.Random()
        self.owner = owner or f"fwd-{uuid.uuid4().hex[:12]}"
        self._failures = 0
        self._hold_until = 0.0
        self._refused_key: str | None = None
        self._status: tuple[str, str] | None = None

    # -- status -------------------------------------------------------------------------------------

    def _set_status(self, state: str, detail: str) -> None:
        """Persist the delivery state (for /healthz and admins in other processes) when it changes."""
        if self._status == (state, detail):
            return
        self._status = (state, detail)
        record = json.dumps({"state": state, "detail": detail, "since": self.clock()})
        self.store.put_setting(STATUS_KEY, record, self.clock())
        level = logging.INFO if state == "ok" else logging.WARNING
        log.log(level, "segment delivery %s: %s", state, detail)

    # -- one cycle ----------------------------------------------------------------------------------

    def run_once(self) -> int:
        """Claim one round of due events and try to deliver them. Returns how many were settled."""
        now = self.clock()
        key = self.write_key()
        if not key:
            self._set_status("no_write_key", "no Segment write key is set; events wait in the queue")
            return 0
        if self._refused_key is not None and key != self._refused_key:
            self._refused_key, self._hold_until = None, 0.0  # a new key: try it at once
        if now < self._hold_until:
            return 0
        items = self.store.claim(
            SEGMENT_TRACK, self.policy.claim_limit, self.owner, self.policy.lease_seconds, now
        )
        if not items:
            return 0
        prepared, dead = self._prepare(items)
        if dead:
            self.store.mark_dead(dead, self.owner, now)
        return len(dead) + self._deliver(key, deque(pack(prepared, lambda p: len(p.encoded))))

    def _prepare(self, items: list[ClaimedItem]) -> tuple[list[_Prepared], list[Outcome]]:
        """Map each item to its track call; userIds are looked up now, so a recent identify counts."""
        events = [json.loads(item.payload) for item in items]
        emails = {normalize_email(e.get("email")) for e in events} - {None}
        user_ids = self.store.user_ids_for(emails)  # type: ignore[arg-type]
        names = self.event_names()
        prepared: list[_Prepared] = []
        dead: list[Outcome] = []
        for item, event in zip(items, events, strict=True):
            try:
                call = _encode(
                    track_call(
                        event,
                        event_names=names,
                        user_id=user_ids.get(normalize_email(event.get("email")) or ""),
                    )
                )
            except (KeyError, TypeError, ValueError, OverflowError) as exc:
                dead.append(Outcome(item.id, error=f"could not map the event: {exc!r}"))
                continue
            encoded = call.encode("utf-8")
            if len(encoded) > MAX_EVENT_BYTES:
                dead.append(Outcome(
                    item.id, sent=call,
                    error=f"event is {len(encoded):,} bytes, over Segment's 32 KB limit per event",
                ))
                continue
            prepared.append(_Prepared(item, call, encoded))
        return prepared, dead

    def _deliver(self, key: str, batches: deque[list[_Prepared]]) -> int:
        settled = 0
        while batches:
            batch = batches.popleft()
            result = self.client.post_batch(key, [p.encoded for p in batch])
            verdict = classify(result.status)
            now = self.clock()
            if verdict is Verdict.DELIVERED:
                self.store.mark_delivered([self._outcome(p, result) for p in batch], now)
                self._failures = 0
                self._set_status("ok", f"last batch of {len(batch)} delivered")
                settled += len(batch)
            elif verdict is Verdict.REJECTED and len(batch) > 1:
                first, second = halves(batch)
                batches.extendleft([second, first])
            elif verdict is Verdict.REJECTED:
                reason = f"Segment rejected the event ({result.status}): {result.body[:300]}"
                self.store.mark_dead([self._outcome(batch[0], result, reason)], self.owner, now)
                settled += 1
            else:
                self._hold(key, verdict, result, batch, batches, now)
                break
        return settled

    def _hold(
        self, key: str, verdict: Verdict, result: SendResult, batch: list[_Prepared],
        rest: deque[list[_Prepared]], now: float,
    ) -> None:
        """Stop this cycle: give the tried batch and the untried rest back, then wait."""
        untried = [p.item.id for b in rest for p in b]
        if verdict is Verdict.AUTH:
            self._refused_key = key
            delay = self.policy.auth_retry_seconds
            self._set_status(
                "auth_failed",
                f"Segment refused the write key ({result.status}); delivery is paused and events "
                "wait in the queue until a valid key is set",
            )
            error = f"write key refused ({result.status})"
            tried_counts = False
        else:
            self._failures += 1
            delay = backoff_delay(
                self._failures, self.policy.backoff_base, self.policy.backoff_cap, self.rng
            )
            if result.retry_after is not None:
                delay = max(delay, result.retry_after)
            what = f"HTTP {result.status}" if result.status is not None else result.body
            error = f"Segment unavailable: {what}"
            self._set_status("retrying", f"{error}; next attempt in {delay:.1f} s")
            tried_counts = True
        self._hold_until = now + delay
        # A refused key leaves the rows due: a corrected key delivers them at once.
        due = now if verdict is Verdict.AUTH else now + delay
        tried = [p.item.id for p in batch]
        self.store.release(tried, self.owner, due, error, count_attempt=tried_counts, status=result.status)
        if untried:
            self.store.release(untried, self.owner, due, None, count_attempt=False)

    @staticmethod
    def _outcome(p: _Prepared, result: SendResult, error: str | None = None) -> Outcome:
        return Outcome(
            p.item.id, sent=p.call, status=result.status, response=result.body,
            latency_ms=result.latency_ms, error=error,
        )

    # -- the loop -----------------------------------------------------------------------------------

    def run_forever(self, stop: threading.Event) -> None:
        """Deliver until ``stop`` is set. Storage hiccups are logged and retried, never fatal."""
        log.info("forwarder %s started", self.owner)
        while not stop.is_set():
            try:
                settled = self.run_once()
            except StorageUnavailable as exc:
                log.warning("forwarder: storage unavailable: %s", exc)
                settled = 0
            except Exception:
                log.exception("forwarder: unexpected error; continuing")
                settled = 0
            if settled == 0:
                stop.wait(self.policy.idle_seconds)
        log.info("forwarder %s stopped", self.owner)
