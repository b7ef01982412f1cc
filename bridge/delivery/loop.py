"""The delivery round both directions share: claim, prepare, send, settle, and give back.

A direction (the Segment forwarder, the Mailjet contact sync) supplies only what is particular to it:
its credential, how to group and render claimed items, how to send one group and read the answer,
and how to dead-letter an item its upstream refused. Everything else lives here, once:

- the credential gate: no credential, no claim; refused credentials pause until they change;
- isolation of a bad item: an item that cannot be prepared (mapped, encoded) becomes a dead letter
  with the exception's class and message; a group the upstream rejects (400/413/422) is split in
  halves until the one bad item is found, and only that one becomes a dead letter;
- give-back: after a transient failure or refused credentials, the tried items and the untried rest
  go back to the queue, nothing is dropped; once the upstream answers again, everything it held back
  is due at once;
- no stranded rows: an error outside any item releases the whole round with a backoff, and expired
  leases (a process that died holding them) are taken back on idle ticks, with or without new items;
- one log line and the counters per group.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import random
import sys
import threading
import uuid
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from bridge.delivery import fastjson
from bridge.delivery.pacing import Pacer, PacingPolicy
from bridge.delivery.upstream import UpstreamError, Verdict
from bridge.errors import StorageUnavailable
from bridge.storage.base import ClaimedItem, Outcome, Store

log = logging.getLogger(__name__)

T = TypeVar("T")
G = TypeVar("G")
X = TypeVar("X")
R = TypeVar("R")

#: How often a loop looks for expired leases of its kind while it has nothing else to do.
RECOVER_EVERY_SECONDS = 5.0
#: How long one thread may keep the interpreter while another waits for it, in a process that runs
#: the loops. The forwarder's threads take turns: one maps events (pure Python) while the other comes
#: back from SQLite or the network many times a batch, and at Python's 5 ms each return could wait
#: that long.
SWITCH_INTERVAL_SECONDS = 0.0005
#: Allocations between two collections of the youngest generation, in a process that runs the
#: loops (Python's default: 700). A round maps thousands of events into new dicts at once, so the
#: default ran the collector every few dozen events, and its older generations walked every object
#: the process holds. Nearly all of it is freed by reference counting anyway; what the process built at
#: start-up is frozen out of the collector's walks (``gc.freeze``). R3 of ``make bench``, 6 pairs:
#: 15,320-19,136 → 17,036-19,770 events/s, each pair in favour (docs/benchmarks.md).
GC_THRESHOLD = (20_000, 50, 100)


@dataclass(frozen=True)
class Held:
    """Why a direction may not deliver now although a credential is set: a stored state and a
    sentence for operators (Segment does not know the write key, the region is wrong)."""

    state: str
    detail: str


@dataclass
class Round(Generic[G]):
    """Claimed items, prepared: the groups to send and the items dead before any call.

    ``items`` are every item the round settles. ``error`` is a bug met while preparing (outside any
    one item): the whole round is given back with a backoff.
    """

    items: list[ClaimedItem]
    groups: list[G] = field(default_factory=list)
    dead: list[Outcome] = field(default_factory=list)
    error: Exception | None = None
    #: The claim took all it was allowed to: more is probably due (a backlog).
    full: bool = False
    #: The items were claimed as one range (``Store.claim_range``), not leased one by one.
    range_id: int | None = None


class Loop(Protocol):
    """A loop a thread runs: the two delivery loops and the janitor."""

    def run_once(self) -> int: ...

    def run_forever(self, stop: threading.Event) -> None: ...


def halves(group: Sequence[T]) -> tuple[list[T], list[T]]:
    """Split a rejected group to isolate the bad item by bisection."""
    middle = len(group) // 2
    return list(group[:middle]), list(group[middle:])


def stored_object(text: str) -> dict[str, Any]:
    """A stored payload as the JSON object it must be (a direction reads its items with this)."""
    return read_stored(text)[0]


def read_stored(text: str) -> tuple[dict[str, Any], bool]:
    """``stored_object``, and whether orjson read it (``delivery/fastjson.py``)."""
    value, by_orjson = fastjson.loads(text)
    if not isinstance(value, dict):
        raise TypeError(f"a stored item must be a JSON object, not {type(value).__name__}")
    return value, by_orjson


def describe(exc: BaseException) -> str:
    """An exception as operators read it: its class and message, short."""
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def _log_safely(level: int, message: str, *args: Any, exc_info: bool = False) -> None:
    """Log, but never let a logging failure end a delivery loop."""
    with contextlib.suppress(Exception):  # nothing sensible is left to report it to
        log.log(level, message, *args, exc_info=exc_info)


def run_until_stopped(
    name: str, run_once: Callable[[], int], stop: threading.Event, idle_seconds: float,
    busy_pause: float | Callable[[], float] = 0.0,
) -> None:
    """Call ``run_once`` until ``stop`` is set, resting when a round settled nothing (and pausing
    ``busy_pause`` between busy rounds, for a loop that must leave room to others; a callable is
    asked before each pause).

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
        elif pause := (busy_pause() if callable(busy_pause) else busy_pause):
            stop.wait(pause)
    log.info("%s stopped", name)


def start_loops(loops: Sequence[Loop], stop: threading.Event) -> list[threading.Thread]:
    """Run each loop in a daemon thread until ``stop`` is set. The process is the loops': its
    switch interval and its garbage collector are set for them."""
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
    threads = [
        threading.Thread(target=loop.run_forever, args=(stop,), name=type(loop).__name__, daemon=True)
        for loop in loops
    ]
    for thread in threads:
        thread.start()
    return threads


class DeliveryLoop(Generic[G]):
    """One direction's delivery: claims its kind of item and settles each as delivered, dead or
    given back. Several may run against one store: leases keep their work apart.

    ``G`` is the direction's group: what one upstream call carries (a Segment batch, a Mailjet job).
    """

    #: Metrics label and the key of the stored delivery state: ``segment`` or ``mailjet``.
    upstream = ""
    #: The upstream and its credential in sentences: "Segment", "write key".
    upstream_name = ""
    credential_name = ""
    #: What the items are, in sentences and log fields: "events", "identifies".
    items_name = "items"
    #: Prefix of this loop's lease owner id.
    owner_prefix = "loop"
    #: The stored state and its detail while no credential is set.
    missing_credential: tuple[str, str] = ("no_credentials", "no credentials are set")

    def __init__(
        self, store: Store, *, kind: str, claim_limit: int, lease_seconds: float,
        pacing: PacingPolicy, idle_seconds: float, clock: Callable[[], float],
        rng: random.Random | None, owner: str | None, metrics: Any,
    ) -> None:
        self.store = store
        self.kind = kind
        self.claim_limit = claim_limit
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.metrics = metrics
        self.owner = owner or f"{self.owner_prefix}-{uuid.uuid4().hex[:12]}"
        self.pacer = Pacer(store, self.upstream, pacing, clock, rng or random.Random())
        self.idle_seconds = idle_seconds
        self._next_recovery = 0.0

    # -- what a direction supplies ------------------------------------------------------------------

    def credential(self) -> Hashable | Held | None:
        """The credential to call the upstream with, read at each round; None while none is set, and
        Held while it is set but must not be used."""
        raise NotImplementedError

    def due(self, now: float) -> bool:
        """Whether to claim now (the contact sync waits for a burst to settle)."""
        return True

    def prepare(self, items: list[ClaimedItem]) -> tuple[list[G], list[Outcome]]:
        """Claimed items as groups to send, and the items that are dead before any call."""
        raise NotImplementedError

    def plan(self, groups: list[G], credential: Any) -> list[G]:
        """Calls to make before sending (the contact sync's property definitions); may raise
        UpstreamError, which gives every group back."""
        return groups

    def send(self, credential: Any, group: G) -> int:
        """Deliver one group and record it; returns how many items were settled.

        Raises UpstreamError when the upstream did not take the group.
        """
        raise NotImplementedError

    def reject(self, group: G, error: UpstreamError) -> int:
        """Dead-letter the one item left of a rejected group; returns how many items were settled."""
        raise NotImplementedError

    def items(self, group: G) -> list[ClaimedItem]:
        """The claimed items a group stands for."""
        raise NotImplementedError

    def size(self, group: G) -> int:
        """How many parts a group can be split into (items, or contacts of a job)."""
        return len(group)  # type: ignore[arg-type]

    def split(self, group: G) -> tuple[G, G]:
        return halves(group)  # type: ignore[arg-type,return-value]

    # -- the round ----------------------------------------------------------------------------------

    def run_once(self) -> int:
        """Claim one round of due items and try to deliver them. Returns how many were settled."""
        now = self.clock()
        credential = self.clearance(now)
        if credential is None:
            self.release_held(now)
            return 0
        work = self.next_round(now)
        if not work.items:
            return 0
        return self.settle(credential, work, now)

    def clearance(self, now: float) -> Hashable | None:
        """The credential to deliver with now, or None when nothing may be claimed (no credential,
        held, paused, or not due); takes back expired leases on the way."""
        self._recover_expired(now)
        credential = self.credential()
        if not credential:
            self.pacer.set_status(*self.missing_credential)
            return None
        if isinstance(credential, Held):
            self.pacer.set_status(credential.state, credential.detail)
            return None
        self.pacer.credential_present()
        if not self.pacer.ready(credential) or not self.due(now):
            return None
        return credential

    def claim_round(self, now: float) -> Round[G]:
        """Claim due items and prepare them; a bug while preparing stays with the round, whose
        items are then given back by whoever settles it."""
        return self.prepared(self.store.claim(self.kind, self.claim_limit, self.owner,
                                              self.lease_seconds, now))

    def prepared(self, items: list[ClaimedItem], range_id: int | None = None) -> Round[G]:
        """Claimed items as a round, prepared."""
        full = len(items) >= self.claim_limit
        if not items:
            return Round(items)
        try:
            groups, dead = self.prepare(items)
        except Exception as exc:
            return Round(items, error=exc, full=full, range_id=range_id)
        return Round(items, groups, dead, full=full, range_id=range_id)

    def next_round(self, now: float) -> Round[G]:
        """The round to send now: claimed and prepared at once (a pipelined loop prefetches it)."""
        return self.claim_round(now)

    def held_back(self) -> list[ClaimedItem]:
        """Items this loop holds beyond the round being sent (a prefetched round), handed over to
        be given back with it; the loop holds them no more."""
        return []

    def release_held(self, now: float) -> None:
        """Give back at once, with no attempt counted, what the loop holds ahead (delivery stopped)."""
        held = self.held_back()
        if held:
            self.store.release([i.id for i in held], self.owner, now, None, count_attempt=False)

    def settle(self, credential: Hashable, work: Round[G], now: float) -> int:
        """Deliver a round; an error outside any one item gives the whole round back at once."""
        try:
            if work.error is not None:
                raise work.error
            return self._round(credential, work, now)
        except StorageUnavailable:
            raise  # nothing can be released either; the leases expire and are taken back
        except Exception as exc:  # a bug outside any one item: never leave the round stranded
            self._release_stranded(work.items, exc)
            return 0

    def isolate(self, work: Callable[[ClaimedItem, X], R | Outcome],
                pairs: Iterable[tuple[ClaimedItem, X]]) -> tuple[list[R], list[Outcome]]:
        """Run ``work`` on each item alone. An item whose work raises becomes a dead letter naming
        the exception; one for which ``work`` returns an Outcome is dead with that reason."""
        done: list[R] = []
        dead: list[Outcome] = []
        for item, value in pairs:
            try:
                result = work(item, value)
            except Exception as exc:
                dead.append(Outcome(item.id, error=f"could not prepare the item: {describe(exc)}"))
                continue
            if isinstance(result, Outcome):
                dead.append(result)
            else:
                done.append(result)
        return done, dead

    def _round(self, credential: Hashable, work: Round[G], now: float) -> int:
        groups, dead = work.groups, work.dead
        if dead:
            self.store.mark_dead(dead, self.owner, now)
            types = {item.id: item.event_type for item in work.items}
            self.report("dead", [types[o.id] for o in dead], error=dead[0].error)
        try:
            groups = self.plan(groups, credential)
        except UpstreamError as exc:
            self.give_back(exc, credential, [i for g in groups for i in self.items(g)], [])
            return len(dead)
        return len(dead) + self.deliver(credential, deque(groups))

    def deliver(self, credential: Any, groups: deque[G]) -> int:
        """Send group after group; a rejected group is bisected, any other failure ends the round."""
        settled = 0
        while groups:
            group = groups.popleft()
            try:
                settled += self.send(credential, group)
            except UpstreamError as exc:
                if exc.verdict is Verdict.REJECTED:
                    if self.size(group) > 1:
                        first, second = self.split(group)
                        groups.extendleft([second, first])
                        self.report("split", [], status=exc.status, latency_ms=exc.latency_ms)
                        continue
                    settled += self.reject(group, exc)
                    continue
                untried = [i for g in groups for i in self.items(g)]
                self.give_back(exc, credential, self.items(group), untried)
                break
        return settled

    def delivered(self, detail: str) -> None:
        """Record a success; when it ends a run of failures, whatever they held back is due now."""
        if self.pacer.succeeded(detail):
            self.store.make_due(self.kind, self.clock())

    def _recover_expired(self, now: float) -> None:
        if now < self._next_recovery:
            return
        self._next_recovery = now + RECOVER_EVERY_SECONDS
        recovered = self.store.recover_expired(self.kind, now)
        if recovered:
            log.warning("%s: took back %d item(s) whose lease had expired", self.owner, recovered)

    def _release_stranded(self, items: list[ClaimedItem], exc: Exception) -> None:
        """Give a whole round back after an unexpected error, with a backoff, and count it."""
        error = f"internal error in the {self.upstream} loop: {describe(exc)}"[:500]
        _log_safely(logging.ERROR, "%s: %s; the round is released", self.owner, error, exc_info=True)
        if self.metrics:
            self.metrics.loop_error(self.upstream)
        delay = self.pacer.failed(error[:300], None)
        now = self.clock()
        self.store.release([i.id for i in [*items, *self.held_back()]], self.owner,
                           now + delay, error, count_attempt=False, now=now)

    def give_back(self, exc: UpstreamError, credential: Hashable, tried: list[ClaimedItem],
                  untried: list[ClaimedItem]) -> None:
        """Release items after refused credentials or a transient failure, and pace the next try.

        Refused credentials count no attempt and leave the items due at once, so corrected
        credentials deliver them immediately. The untried rest of a round never counts an attempt.
        """
        now = self.clock()
        if exc.verdict is Verdict.AUTH:
            self.pacer.refused(credential, (
                f"{self.upstream_name} refused the {self.credential_name} ({exc.status}); delivery is "
                f"paused and {self.items_name} wait in the queue until a valid {self.credential_name} "
                "is set"))
            due, error, counted = now, f"{self.credential_name} refused ({exc.status})", False
        else:
            error = f"{self.upstream_name} unavailable: {exc.describe()}"[:500]
            due, counted = now + self.pacer.failed(error[:300], exc.retry_after), True
        self.store.release([i.id for i in tried], self.owner, due, error, count_attempt=counted,
                           status=exc.status, now=now)
        untried = [*untried, *self.held_back()]
        if untried:
            self.store.release([i.id for i in untried], self.owner, due, None, count_attempt=False)
        self.report("retried", [i.event_type for i in tried], status=exc.status,
                    latency_ms=exc.latency_ms, error=error[:300])

    def report(self, outcome: str, types: Sequence[str], **fields: Any) -> None:
        """One log line per group (delivered, split, retried, dead), and the counters."""
        if self.metrics and types and outcome != "split":
            self.metrics.outcome(self.upstream, outcome, types)
        line = {"upstream": self.upstream, "outcome": outcome, self.items_name: len(types)}
        line.update((k, v) for k, v in fields.items() if v is not None)
        level = logging.INFO if outcome in ("delivered", "split", "superseded") else logging.WARNING
        log.log(level, "%s %s", self.upstream, outcome, extra=line)

    # -- running ------------------------------------------------------------------------------------

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

