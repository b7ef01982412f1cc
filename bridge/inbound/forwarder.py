"""The forwarder: claims queued Mailjet events, maps them, and delivers them to Segment in batches.

Nothing leaves the outbox except by a 2xx from Segment (delivered) or a permanent rejection of that
one event (a dead letter, kept with Segment's answer). Everything else is given back for a later
attempt by the shared delivery loop; this module holds only how to render a batch and read the answer.

Running (``run_forever``), the forwarder drains a backlog as a pipeline of three threads: while one
round's batches are posted, the next round is claimed and prepared (``delivery/prefetch.py``), and
each delivered batch is marked while the next is posted (``delivery/behind.py``). Whatever it holds
ahead stays leased, is renewed with the round in flight, and is given back with the untried rest
when a batch fails, when delivery is held, and at stop. ``run_once`` is one round, claimed,
prepared, sent and marked in turn.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.delivery import fastjson
from bridge.delivery.behind import Behind
from bridge.delivery.loop import DeliveryLoop, Held, Round, read_stored, run_until_stopped, start_loops
from bridge.delivery.pacing import PacingPolicy
from bridge.delivery.prefetch import Prefetch
from bridge.delivery.upstream import UpstreamError
from bridge.inbound.batching import MAX_BATCH_EVENTS, MAX_EVENT_BYTES, pack
from bridge.inbound.intake import KIND
from bridge.inbound.segment import Accepted, SegmentClient
from bridge.inbound.track import labels, message_ref, recipient_of, track_call
from bridge.metrics import Metrics
from bridge.payloads.identity import normalize_email
from bridge.storage.base import ClaimedItem, Outcome, Store

#: A drain helper ends once it has delivered no batch of a backlog for this long (none is left, or
#: Segment does not take it now); the worker starts helpers only within this long of its own.
DRAIN_OVER_SECONDS = 5.0


@dataclass(frozen=True)
class ForwarderPolicy:
    #: As many as one batch may carry: a full claim fills at least one batch to a limit.
    claim_limit: int = MAX_BATCH_EVENTS
    lease_seconds: float = 60.0
    idle_seconds: float = 0.5
    pacing: PacingPolicy = field(default_factory=PacingPolicy)


@dataclass
class _Prepared:
    """One claimed event, mapped and encoded once for every attempt of this round."""

    item: ClaimedItem
    encoded: bytes

    @property
    def call(self) -> str:
        """The call as the text it was sent as (kept by the mark, shown by the debugger)."""
        return self.encoded.decode("utf-8")


def _size(prepared: _Prepared) -> int:
    return len(prepared.encoded)


def _parse(item: ClaimedItem, text: str,
           ) -> tuple[ClaimedItem, tuple[dict[str, Any], str | None, bool]]:
    """A stored event, its recipient's normalised email, and whether orjson read it, read once."""
    event, by_orjson = read_stored(text)
    return item, (event, normalize_email(event.get("email")), by_orjson)


class Forwarder(DeliveryLoop[list[_Prepared]]):
    """Mailjet events to Segment track calls, in ``/v1/batch`` requests within Segment's limits."""

    upstream = "segment"
    upstream_name = "Segment"
    credential_name = "write key"
    items_name = "events"
    owner_prefix = "fwd"
    missing_credential = ("no_write_key", "no Segment write key is set; events wait in the queue")

    def __init__(
        self,
        store: Store,
        client: SegmentClient,
        *,
        write_key: Callable[[], str | None],
        event_names: Callable[[], Mapping[str, str]],
        gate: Callable[[str], tuple[str, str] | None] | None = None,
        policy: ForwarderPolicy | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        owner: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.policy = policy or ForwarderPolicy()
        super().__init__(store, kind=KIND, claim_limit=self.policy.claim_limit,
                         lease_seconds=self.policy.lease_seconds, pacing=self.policy.pacing,
                         idle_seconds=self.policy.idle_seconds, clock=clock, rng=rng, owner=owner,
                         metrics=metrics)
        self.client = client
        self.write_key = write_key
        self.event_names = event_names
        #: Whether a key may be used (Segment knows it, the region agrees); None trusts every key.
        self.gate = gate
        #: The next round, made while the current one is sent, and the delivered batches being
        #: marked while the next is posted; only while ``run_forever`` runs.
        self._ahead: Prefetch[Round[list[_Prepared]]] | None = None
        self._behind: Behind | None = None
        #: The round being sent (pipelined): renewed with the round made ahead, and let go of, to
        #: expire and come back, when the round ends in an error.
        self._current: list[ClaimedItem] = []
        #: The round being sent came from a full claim: its batches are marked behind.
        self._draining = False
        #: When (``time.monotonic()``) a batch of such a round was last delivered.
        self._drain_delivered_at: float | None = None
        #: Every lease the loop holds runs at least ``lease_seconds`` past this time.
        self._leases_fresh_at = 0.0
        #: The range the round being sent was claimed as, while its items are not leased one by one.
        self._range: int | None = None
        #: The largest id claimed so far: a drain's next range is read from past it.
        self._claimed_up_to = 0

    @property
    def draining(self) -> bool:
        """Whether the round being sent came from a full claim: a backlog is being drained."""
        return self._draining

    def drain_delivering(self, within: float = DRAIN_OVER_SECONDS) -> bool:
        """Whether a batch of a backlog (a round from a full claim) was delivered ``within`` seconds
        ago: a drain that helpers can speed up, not one held up by Segment or by a missing key."""
        at = self._drain_delivered_at
        return at is not None and time.monotonic() - at < within

    def credential(self) -> str | Held | None:
        key = self.write_key()
        hold = self.gate(key) if key and self.gate else None
        return Held(*hold) if hold else key

    def prepare(self, items: list[ClaimedItem]) -> tuple[list[list[_Prepared]], list[Outcome]]:
        """Map each item to its track call; userIds are looked up now, so a recent identify counts.

        Each item is parsed, mapped and encoded on its own: one that cannot be becomes a dead letter
        and the rest of the round goes on.
        """
        parsed, dead = self.isolate(_parse, ((i, i.payload) for i in items))
        user_ids = self.store.user_ids_for({email for _, (_, email, _) in parsed if email})
        names = self.event_names()

        def prepare_one(item: ClaimedItem, read: tuple[dict[str, Any], str | None, bool],
                        ) -> _Prepared | Outcome:
            event, email, by_orjson = read
            user_id = user_ids.get(email) if email else None
            # the stored key: a row keeps the messageId it was accepted with, whatever the rule now.
            # Strict JSON: a non-finite number or a lone surrogate fails this one event.
            prepared = _Prepared(item, fastjson.dumps(
                track_call(event, event_names=names, user_id=user_id, key=item.dedupe_key),
                by_orjson=by_orjson))
            if len(prepared.encoded) > MAX_EVENT_BYTES:  # dead: labelled now (delivered rows by the janitor)
                return Outcome(item.id, sent=prepared.call,
                               recipient=recipient_of(event, email, item.dedupe_key),
                               message_ref=message_ref(event), error=(
                                   f"event is {len(prepared.encoded):,} bytes, over Segment's 32 KB limit "
                                   "per event"))
            return prepared

        prepared, unsendable = self.isolate(prepare_one, parsed)
        return pack(prepared, _size), dead + unsendable

    # -- the pipeline ---------------------------------------------------------------------------------

    def run_forever(self, stop: threading.Event) -> None:
        """Run rounds, each made while the one before is sent, until ``stop`` is set; then give
        back every lease still held, the round made ahead included."""
        self._ahead = Prefetch(self._claim_ahead, self.clock, f"{self.owner}-ahead",
                               first=self.claim_round)
        self._behind = Behind(f"{self.owner}-behind")
        self._leases_fresh_at = self.clock()
        try:
            run_until_stopped(f"{self.upstream} loop {self.owner}", self.run_once, stop,
                              self.idle_seconds)
        finally:
            self._behind.close()  # every delivered batch is marked before leases are given back
            self._ahead.close()  # waits for a round in the making: nothing is claimed after this
            self._ahead, self._behind, self._current, self._draining = None, None, [], False
            self._range = None
        self.release_leases()

    def help_drain(self, stop: threading.Event, parent: int,
                   quiet_seconds: float = DRAIN_OVER_SECONDS) -> None:
        """Run as a drain helper (``mailjet-bridge drain-helper``): rounds as ``run_forever`` makes
        them, beside the worker's own forwarder, until ``stop`` is set, the worker (``parent``) is
        gone, or no batch of a backlog has been delivered for ``quiet_seconds`` (the backlog is
        drained, or Segment does not take it now); then give everything held back."""
        done = threading.Event()
        (thread,) = start_loops([self], done)
        started = time.monotonic()
        while not stop.wait(0.25) and thread.is_alive() and os.getppid() == parent:
            if time.monotonic() - started >= quiet_seconds and not self.drain_delivering(quiet_seconds):
                break
        done.set()
        thread.join()

    def claim_round(self, now: float) -> Round[list[_Prepared]]:
        work = super().claim_round(now)
        self._note_claimed(work)
        return work

    def _claim_ahead(self, now: float) -> Round[list[_Prepared]]:
        """A backlog's next round, claimed as one range past the round before it: one row written
        for the round instead of a lease on each item (docs/range-delivery.md). With none there,
        the rows a range does not take (retries, rows behind the drain) are claimed one by one."""
        range_id, items = self.store.claim_range(self.kind, self.claim_limit, self.owner,
                                                 self.lease_seconds, now, after=self._claimed_up_to)
        if range_id is None:
            return self.claim_round(now)
        work = self.prepared(items, range_id)
        self._note_claimed(work)
        return work

    def _note_claimed(self, work: Round[list[_Prepared]]) -> None:
        if work.items:
            self._claimed_up_to = max(self._claimed_up_to, work.items[-1].id)  # items come by id

    def next_round(self, now: float) -> Round[list[_Prepared]]:
        """The round made ahead, if any; the next one is started when this one came from a full
        claim (a backlog), so a steady trickle is sent as it comes, one round at a time."""
        if self._ahead is None:
            return self.claim_round(now)
        self._current = []
        work = self._ahead.take(now, again=lambda made: made.full)
        if not work.items and work.error is None:  # made ahead and found nothing: look again now
            work = self.claim_round(now)
        self._current, self._draining, self._range = work.items, work.full, work.range_id
        self._keep_leases()
        return work

    def held_back(self) -> list[ClaimedItem]:
        made = self._ahead.drop() if self._ahead is not None else None
        if made is None:
            return []
        if made.range_id is not None:  # given back as rows, as any round held back
            now = self.clock()
            self.store.dissolve_range(made.range_id, self.owner, now + self.lease_seconds, now)
        return made.items

    def settle(self, credential: Hashable, work: Round[list[_Prepared]], now: float) -> int:
        if work.dead or work.error is not None:  # dead letters are written on their rows
            self._as_rows()
        return super().settle(credential, work, now)

    def give_back(self, exc: UpstreamError, credential: Hashable, tried: list[ClaimedItem],
                  untried: list[ClaimedItem]) -> None:
        self._as_rows()
        super().give_back(exc, credential, tried, untried)

    def _release_stranded(self, items: list[ClaimedItem], exc: Exception) -> None:
        self._as_rows()
        super()._release_stranded(items, exc)

    def _as_rows(self) -> None:
        """From now on, the round being sent is leased item by item, so that a retry, a dead letter
        or a split applies to rows as it always has; the marks of its batches still queued are
        written first, and those it delivered are settled."""
        if self._range is None:
            return
        if self._behind is not None:
            self._behind.close()  # started again by the next submit
        now = self.clock()
        self.store.dissolve_range(self._range, self.owner, now + self.lease_seconds, now)
        self._range = None

    def _keep_leases(self) -> None:
        """Renew the leases of what the loop holds, the round being sent and the round made ahead,
        well before any runs out: a third of the lease after the last renewal. Between two checks
        lies at most one request, whose timeout must stay under two thirds of the lease. Only
        those: rows a failed round left behind are let go of, and come back when their lease ends."""
        now = self.clock()
        if self._ahead is None or now - self._leases_fresh_at < self.lease_seconds / 3:
            return
        ahead = self._ahead.peek()
        rounds = [(self._range, self._current)]
        if ahead is not None:
            rounds.append((ahead.range_id, ahead.items))
        held = [i.id for range_id, items in rounds if range_id is None for i in items]
        if held:
            self.store.renew(held, self.owner, now + self.lease_seconds)
        ranges = [range_id for range_id, _ in rounds if range_id is not None]
        if ranges:
            self.store.renew_ranges(ranges, self.owner, now + self.lease_seconds)
        self._leases_fresh_at = now

    # -- one batch ----------------------------------------------------------------------------------

    def send(self, credential: str, group: list[_Prepared]) -> int:
        self._keep_leases()
        try:
            answer = self.client.post_batch(credential, [p.encoded for p in group])
        except UpstreamError as exc:
            self._observe(exc.latency_ms)
            raise
        self._observe(answer.latency_ms)
        # state first: whoever sees the rows delivered also sees the state "ok"
        self.delivered(f"last batch of {len(group)} delivered")
        if self._draining:
            self._drain_delivered_at = time.monotonic()
        range_id = self._range
        if self._behind is None or not self._draining:  # a trickle: marked before the next
            self._mark_delivered(group, answer, range_id)
            self._report_delivered(group, answer)
        else:  # a backlog: counted and logged at the 2xx, marked while the next batch is posted
            self._report_delivered(group, answer)
            self._behind.submit(lambda: self._mark_delivered(group, answer, range_id))
        return len(group)

    def _mark_delivered(self, group: list[_Prepared], answer: Accepted, range_id: int | None) -> None:
        """The batch's calls are kept once, as one sent batch: a text written per row cost more
        than half of each row's mark (docs/benchmarks.md, R3). A range's batch writes no row."""
        outcomes = [Outcome(p.item.id, sent=p.call, status=answer.status, response=answer.body,
                            latency_ms=answer.latency_ms) for p in group]
        if range_id is None:
            self.store.mark_delivered(outcomes, self.clock(), owner=self.owner, sent_batch=KIND)
        else:
            self.store.mark_range_delivered(range_id, outcomes, self.clock(), self.owner, KIND)

    def _report_delivered(self, group: list[_Prepared], answer: Accepted) -> None:
        self.report("delivered", [p.item.event_type for p in group], status=answer.status,
                    latency_ms=answer.latency_ms)

    def reject(self, group: list[_Prepared], error: UpstreamError) -> int:
        self._as_rows()
        (bad,) = group
        reason = f"Segment rejected the event ({error.status}): {error.body[:300]}"
        recipient, ref = labels(bad.item.payload, bad.item.dedupe_key)  # labelled as it dies
        self.store.mark_dead([Outcome(bad.item.id, sent=bad.call, status=error.status,
                                      response=error.body, latency_ms=error.latency_ms, error=reason,
                                      recipient=recipient, message_ref=ref)],
                             self.owner, self.clock())
        self.report("dead", [bad.item.event_type], status=error.status, latency_ms=error.latency_ms,
                    error=reason)
        return 1

    def items(self, group: list[_Prepared]) -> list[ClaimedItem]:
        return [p.item for p in group]

    def _observe(self, latency_ms: float | None) -> None:
        if self.metrics and latency_ms is not None:
            self.metrics.observe_latency(self.upstream, latency_ms)
