"""The forwarder: claims queued Mailjet events, maps them, and delivers them to Segment.

Nothing leaves the outbox except by a 2xx from Segment (delivered) or a permanent rejection of that
one event (a dead letter, kept with Segment's answer). Everything else is released for a later attempt.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .batching import MAX_EVENT_BYTES, halves, pack
from .mapping import normalize_email, track_call
from .metrics import Metrics
from .pacing import DeliveryLoop, PacingPolicy
from .retry import Verdict, classify
from .segment_client import SegmentClient, SendResult
from .storage.base import SEGMENT_TRACK, ClaimedItem, Outcome, Store

log = logging.getLogger(__name__)

UPSTREAM = "segment"


@dataclass(frozen=True)
class ForwarderPolicy:
    claim_limit: int = 1000
    lease_seconds: float = 60.0
    idle_seconds: float = 0.5
    pacing: PacingPolicy = field(default_factory=PacingPolicy)


@dataclass
class _Prepared:
    item: ClaimedItem
    call: str
    encoded: bytes


def _encode(call: Mapping[str, Any]) -> str:
    return json.dumps(call, ensure_ascii=False, separators=(",", ":"))


class Forwarder(DeliveryLoop):
    """Mailjet events to Segment. Several may run against one store: leases keep their work apart."""

    upstream = UPSTREAM
    owner_prefix = "fwd"

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
        metrics: Metrics | None = None,
    ) -> None:
        self.policy = policy or ForwarderPolicy()
        super().__init__(store, pacing=self.policy.pacing, idle_seconds=self.policy.idle_seconds,
                         clock=clock, rng=rng, owner=owner, metrics=metrics)
        self.client = client
        self.write_key = write_key
        self.event_names = event_names

    # -- one cycle ----------------------------------------------------------------------------------

    def run_once(self) -> int:
        """Claim one round of due events and try to deliver them. Returns how many were settled."""
        now = self.clock()
        key = self.write_key()
        if not key:
            self.pacer.set_status("no_write_key", "no Segment write key is set; events wait in the queue")
            return 0
        if not self.pacer.ready(key):
            return 0
        items = self.store.claim(
            SEGMENT_TRACK, self.policy.claim_limit, self.owner, self.policy.lease_seconds, now
        )
        if not items:
            return 0
        prepared, dead = self._prepare(items)
        if dead:
            self.store.mark_dead(dead, self.owner, now)
            types = {item.id: item.event_type for item in items}
            self._report("dead", [types[o.id] for o in dead], error=dead[0].error)
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
            if self.metrics:
                self.metrics.observe_latency(UPSTREAM, result.latency_ms)
            if verdict is Verdict.DELIVERED:
                # state first: whoever sees the rows delivered also sees the state "ok"
                self.pacer.succeeded(f"last batch of {len(batch)} delivered")
                self.store.mark_delivered([self._outcome(p, result) for p in batch], now)
                self._report("delivered", [p.item.event_type for p in batch], result)
                settled += len(batch)
            elif verdict is Verdict.REJECTED and len(batch) > 1:
                first, second = halves(batch)
                batches.extendleft([second, first])
                self._report("split", [], result)
            elif verdict is Verdict.REJECTED:
                reason = f"Segment rejected the event ({result.status}): {result.body[:300]}"
                self.store.mark_dead([self._outcome(batch[0], result, reason)], self.owner, now)
                self._report("dead", [batch[0].item.event_type], result, error=reason)
                settled += 1
            else:
                self._hold(key, verdict, result, batch, batches, now)
                self._report("retried", [p.item.event_type for p in batch], result)
                break
        return settled

    def _hold(
        self, key: str, verdict: Verdict, result: SendResult, batch: list[_Prepared],
        rest: deque[list[_Prepared]], now: float,
    ) -> None:
        """Stop this cycle: give the tried batch and the untried rest back, then wait."""
        if verdict is Verdict.AUTH:
            self.pacer.refused(
                key,
                f"Segment refused the write key ({result.status}); delivery is paused and events "
                "wait in the queue until a valid key is set",
            )
            # The rows stay due: a corrected key delivers them at once. No attempt is counted.
            due, error, counted = now, f"write key refused ({result.status})", False
        else:
            what = f"HTTP {result.status}" if result.status is not None else result.body
            error = f"Segment unavailable: {what}"
            due, counted = now + self.pacer.failed(error, result.retry_after), True
        tried = [p.item.id for p in batch]
        self.store.release(tried, self.owner, due, error, count_attempt=counted, status=result.status)
        untried = [p.item.id for b in rest for p in b]
        if untried:
            self.store.release(untried, self.owner, due, None, count_attempt=False)

    def _report(self, outcome: str, types: list[str], result: SendResult | None = None,
                error: str | None = None) -> None:
        """One log line per batch, and the counters."""
        if self.metrics and outcome != "split":
            self.metrics.outcome(UPSTREAM, outcome, types)
        fields: dict[str, Any] = {"upstream": UPSTREAM, "outcome": outcome, "events": len(types)}
        if result is not None:
            fields.update(status=result.status, latency_ms=result.latency_ms)
        if error:
            fields["error"] = error
        log.log(logging.INFO if outcome in ("delivered", "split") else logging.WARNING,
                "segment batch %s", outcome, extra=fields)

    @staticmethod
    def _outcome(p: _Prepared, result: SendResult, error: str | None = None) -> Outcome:
        return Outcome(
            p.item.id, sent=p.call, status=result.status, response=result.body,
            latency_ms=result.latency_ms, error=error,
        )
