"""The storage contract, implemented once in SQL (``sql.py``) for SQLite and PostgreSQL.

Every method is one transaction. Times are Unix seconds (float), passed in by the caller so that
tests control the clock. The store knows nothing about Segment or Mailjet: an item's ``kind`` and
``event_type`` are opaque strings chosen by the directions, and its payload is opaque text.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

#: Outbox states.
PENDING, LEASED, DELIVERED, DEAD = "pending", "leased", "delivered", "dead"
#: Failed attempts kept per row for the debugger (the newest; older ones are overwritten).
ATTEMPTS_KEPT = 10


class NewItem(NamedTuple):
    """An item to queue. ``(kind, event_time, dedupe_key)`` is unique, so a redelivery is recognised;
    ``event_time`` must be part of what the key hashes.

    A named tuple, as ``ClaimedItem``: intake makes one per event, hundreds a body, and a frozen
    dataclass cost three times as much to make (0.73 against 0.26 µs, issue #11)."""

    kind: str
    dedupe_key: str
    event_type: str
    payload: str
    event_time: int = 0
    #: Keys the same item had under an earlier dedupe rule: if one is stored, this is a duplicate.
    legacy_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class QuarantineEntry:
    """An input that failed validation: its text and the errors, kept for admins."""

    source: str
    fingerprint: str
    body: str
    errors: str


@dataclass(frozen=True)
class DeadLetter:
    """A dead letter recorded directly, not an outbox item that failed (a direction may keep part of
    an item aside, such as one property of a contact)."""

    kind: str
    dedupe_key: str
    event_type: str
    payload: str
    reason: str


@dataclass(frozen=True)
class DueSummary:
    """Items due now: how many, and when the oldest and newest of them were accepted."""

    count: int
    oldest_created_at: float | None
    newest_created_at: float | None


@dataclass(frozen=True)
class AcceptResult:
    accepted: int
    duplicate: int
    quarantined: int
    #: Newly queued items per event type (the rest of each type were duplicates).
    accepted_by_type: dict[str, int] = field(default_factory=dict)
    #: Dead letters recorded at intake (items that can never be sent faithfully).
    dead: int = 0


@dataclass(frozen=True)
class Checkpoint:
    """Where a backfill stands in one (resource, window): the next offset to read and, once known,
    the window's row count by ``countOnly``. ``state`` is ``open``, ``split`` or ``done``."""

    resource: str
    window_start: int
    window_end: int
    state: str = "open"
    next_offset: int = 0
    expected: int | None = None
    fetched: int = 0


class ClaimedItem(NamedTuple):
    """A leased outbox row. The lease lapses at ``lease_expires_at`` and the row is claimable again.

    A named tuple, as ``Outcome``: rows cross the store's boundary by the thousand each round, and a
    tuple is about four times cheaper to make than a frozen dataclass."""

    id: int
    kind: str
    dedupe_key: str
    event_type: str
    payload: str
    attempts: int
    created_at: float
    #: Put back by an operator's replay: applied even where a newer item already was.
    replayed: int = 0


class Outcome(NamedTuple):
    """What happened to one item on one attempt, as kept for the debugger and dead-letter views."""

    id: int
    sent: str | None = None
    status: int | None = None
    response: str | None = None
    latency_ms: float | None = None
    error: str | None = None
    #: Labels the debugger finds a dead row by (``mark_dead``): its recipient (email, else
    #: anonymous id) and its upstream message id (Mailjet's MessageID). Delivered rows are labelled
    #: later by the janitor, so ``mark_delivered`` takes none.
    recipient: str | None = None
    message_ref: str | None = None


class Store(ABC):
    """Durable outbox, quarantine, identity table and stored settings behind one interface.

    The methods come in groups: the outbox (what the webhooks and delivery loops call), identities,
    settings, what operators read and replay, admin logins, and the store's own upkeep.
    """

    # -- the outbox: what the webhooks and the delivery loops call -----------------------------

    @abstractmethod
    def accept(
        self, items: Sequence[NewItem], quarantined: Sequence[QuarantineEntry], now: float,
        identities: Sequence[tuple[str, str]] = (), dead: Sequence[DeadLetter] = (),
    ) -> AcceptResult:
        """Queue items, quarantine entries, dead letters and (userId, email) pairs in one transaction.

        Known dedupe keys (and items whose legacy key is stored) are skipped. Pairs are recorded in
        order, so the last pair of a userId is its current email. Returns only after the commit;
        raises StorageUnavailable if nothing could be committed.
        """

    #: How many write transactions can usefully commit at once (the writer process's committers):
    #: one for SQLite, which takes one writer at a time.
    concurrent_writes: int = 1

    @abstractmethod
    def accept_many(
        self, bodies: Sequence[tuple[Sequence[NewItem], Sequence[QuarantineEntry], float]],
    ) -> list[AcceptResult | BaseException]:
        """``accept`` of each (items, quarantined, now) in one transaction, where they can share it:
        each body's result, or the error it alone fails with (StorageUnavailable if nothing could
        be committed). Without identities or dead letters: the Mailjet webhook's bodies."""

    def in_one_statement(
        self, bodies: Sequence[tuple[Sequence[NewItem], Sequence[QuarantineEntry], float]],
    ) -> bool:
        """Whether ``accept_many`` puts these bodies in one statement (a round of small bodies):
        the writer commits such a round on its reading thread. None does, unless a store says so."""
        return False

    @abstractmethod
    def due_summary(self, kind: str, now: float, up_to: int | None = None) -> DueSummary:
        """How many items of a kind are due, and how old they are (to decide on a batch). With
        ``up_to``, counting stops there, and the ages are of the items counted: a caller that only
        needs to know whether a batch is full pays the same with a backlog of millions."""

    @abstractmethod
    def claim(
        self, kind: str, limit: int, owner: str, lease_seconds: float, now: float
    ) -> list[ClaimedItem]:
        """Lease up to ``limit`` due items, oldest first. Expired leases are taken over first."""

    @abstractmethod
    def claim_range(
        self, kind: str, limit: int, owner: str, lease_seconds: float, now: float, *, after: int = 0
    ) -> tuple[int | None, list[ClaimedItem]]:
        """Lease up to ``limit`` due items with ids past every range of the kind and past ``after``,
        by id, as one range: one row written for the round, none on the items (a drain's claims;
        docs/range-delivery.md). ``(range id, items)``, or ``(None, [])`` when there are none."""

    @abstractmethod
    def mark_range_delivered(self, range_id: int, outcomes: Sequence[Outcome], now: float,
                             owner: str, sent_batch: str) -> bool:
        """Record a delivered batch of a range's items (``mark_delivered`` with ``sent_batch``, in
        one row, the items untouched). False, and nothing written, when the owner no longer holds
        the range (its lease expired and it was taken back)."""

    @abstractmethod
    def dissolve_range(self, range_id: int, owner: str, lease_expires_at: float, now: float) -> None:
        """Turn a range back into rows: its delivered items are settled, the others leased by
        ``owner`` one by one, so that the per-item paths (a retry, a dead letter, a split) apply."""

    @abstractmethod
    def renew_ranges(self, range_ids: Sequence[int], owner: str, lease_expires_at: float) -> int:
        """Extend the leases of ranges this owner still holds."""

    @abstractmethod
    def settle_ranges(self, limit: int, now: float,
                      labellers: Mapping[str, Callable[[str, str], tuple[str | None, str | None]]]
                      | None = None) -> int:
        """Write the outcome of up to ``limit`` items of delivered ranges onto the items themselves,
        with their search labels, and delete each range so settled; how many items were settled."""

    @abstractmethod
    def mark_delivered(self, outcomes: Iterable[Outcome], now: float, *, owner: str | None = None,
                       sent_batch: str | None = None) -> None:
        """Record successful deliveries (terminal). With ``owner``, only rows that owner still
        leases are marked: a row whose lease another process took over is that process's to settle,
        so no row is marked twice. With ``sent_batch`` (a name for the batch's kind), the outcomes
        were sent together: their texts are kept once for the batch rather than once per row (a
        write per row saved), and each row still reads back its own text as ``sent``."""

    @abstractmethod
    def release(
        self, ids: Sequence[int], owner: str, next_attempt_at: float, error: str | None,
        *, count_attempt: bool = True, status: int | None = None, now: float | None = None,
    ) -> None:
        """Give leased items back for a later attempt; only the lease owner's rows are touched. With
        an ``error`` (the items were tried, or the round failed), the attempt is kept for the debugger."""

    @abstractmethod
    def release_owner(self, owner: str, now: float) -> int:
        """Give back every lease an owner holds, due now (a clean shutdown). Returns how many."""

    @abstractmethod
    def renew(self, ids: Sequence[int], owner: str, lease_expires_at: float) -> int:
        """Extend the owner's leases on items still being worked on (a long job). How many."""

    @abstractmethod
    def recover_expired(self, kind: str, now: float) -> int:
        """Give back the expired leases of a kind, due now (a process died holding them). How many."""

    @abstractmethod
    def make_due(self, kind: str, now: float) -> int:
        """Make every pending item of a kind that waits for a later attempt due now, oldest first
        (its upstream has recovered). Returns how many."""

    @abstractmethod
    def mark_dead(self, outcomes: Iterable[Outcome], owner: str, now: float) -> None:
        """Move items to dead letters with their reason (``Outcome.error``)."""

    @abstractmethod
    def add_dead_letters(self, entries: Sequence[DeadLetter], now: float) -> None:
        """Record dead letters directly; an entry whose dedupe key exists already is skipped."""

    @abstractmethod
    def compact_delivered(self, before: float, batch: int = 1000) -> int:
        """Drop the payloads of delivered rows finished before ``before`` but keep the rows, so
        their dedupe keys still recognise a redelivery. How many."""

    @abstractmethod
    def prune_delivered(self, before: float, batch: int = 1000) -> int:
        """Delete delivered rows finished before ``before``, in small transactions; how many."""

    # -- identities: userId <-> email, learned from identifies ---------------------------------

    @abstractmethod
    def user_ids_for(self, emails: Iterable[str]) -> dict[str, str]:
        """Known userIds by normalised email."""

    @abstractmethod
    def emails_for(self, user_ids: Iterable[str]) -> dict[str, str]:
        """The email last seen with each userId."""

    @abstractmethod
    def newest_applied(self, emails: Iterable[str]) -> dict[str, float]:
        """The timestamp of the newest identify applied to each contact (by email)."""

    @abstractmethod
    def record_applied(self, versions: Mapping[str, float], now: float) -> None:
        """Remember identifies applied to contacts; an older timestamp never replaces a newer one."""

    # -- settings stored by admins, and runtime records such as delivery states ----------------

    @abstractmethod
    def get_setting(self, key: str) -> str | None:
        """A stored setting or runtime record, or None."""

    @abstractmethod
    def put_setting(self, key: str, value: str, now: float, *, only_if_absent: bool = False) -> bool:
        """Store a setting; with ``only_if_absent`` an existing value wins. True if written."""

    @abstractmethod
    def delete_setting(self, key: str) -> bool:
        """Remove a stored setting (``config unset``). True if there was one."""

    # -- what operators read and replay (CLI, admin page, metrics) -----------------------------

    @abstractmethod
    def stats(self, now: float, stuck_after: float = 300.0, *,
              count_limit: int | None = None) -> dict[str, Any]:
        """Counts by state, quarantine size, the age of the oldest pending item, and stuck items:
        leased past their lease, or due for longer than ``stuck_after`` seconds and not taken.
        With ``count_limit`` (a health probe), each count stops at it, and the age is that of the
        oldest of the first ``count_limit`` waiting items, so the cost does not grow with a backlog;
        the answer then says ``counted_up_to``."""

    @abstractmethod
    def item(self, item_id: int) -> dict[str, Any] | None:
        """One outbox row, with everything kept about it."""

    @abstractmethod
    def recent(self, limit: int = 50, *, kind: str | None = None, event_type: str | None = None,
               state: str | None = None) -> list[dict[str, Any]]:
        """Newest outbox rows first, optionally filtered (the live debugger)."""

    @abstractmethod
    def find(self, *, recipient: str | None = None, message_ref: str | None = None,
             dedupe_key: str | None = None, text: str | None = None, kinds: Sequence[str] = (),
             limit: int = 100) -> list[dict[str, Any]]:
        """Outbox rows of any state, newest first, whose labels match exactly (indexed), plus the
        rows of ``kinds`` not labelled yet (pending, leased, dead at intake, or delivered and not yet
        labelled by the janitor) whose payload contains ``text`` (case-insensitive) or whose key is
        ``dedupe_key``: the caller checks those candidates itself."""

    @abstractmethod
    def to_label(self, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` delivered rows that carry no labels yet, oldest first (id, kind, payload,
        dedupe_key): the janitor labels them after delivery, off the delivery path."""

    @abstractmethod
    def label(self, labels: Sequence[tuple[int, str | None, str | None]]) -> None:
        """Set (id, recipient, message_ref) on rows that have no labels yet; a row with no recipient
        is marked labelled all the same."""

    @abstractmethod
    def find_quarantined(self, text: str, limit: int = 100) -> list[dict[str, Any]]:
        """Quarantine entries whose body contains ``text`` (case-insensitive), newest first."""

    @abstractmethod
    def attempts(self, item_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
        """The failed attempts kept for each row (at most ATTEMPTS_KEPT), oldest first."""

    @abstractmethod
    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """Newest dead letters first."""

    @abstractmethod
    def dead_ids(self, after_id: int = 0, limit: int = 1000) -> list[int]:
        """Ids of dead letters in ascending order, for paging through all of them."""

    @abstractmethod
    def requeue(self, ids: Sequence[int], now: float,
                rewrite: Mapping[int, tuple[str, str]] | None = None) -> int:
        """Dead letters back to pending, due now, attempts reset; ``rewrite`` gives some a new
        (kind, payload). Returns how many were requeued (ids that are not dead are left alone)."""

    @abstractmethod
    def quarantine_entries(self, limit: int = 100) -> list[dict[str, Any]]:
        """Newest quarantine entries first."""

    @abstractmethod
    def quarantine_entry(self, entry_id: int) -> dict[str, Any] | None:
        """One quarantine entry."""

    @abstractmethod
    def remove_quarantine(self, ids: Sequence[int]) -> None:
        """Drop quarantine entries (after a successful replay)."""

    @abstractmethod
    def timeline(self, since: float, kinds: Sequence[str], bucket_seconds: int = 60,
                 ) -> list[tuple[float, str, int]]:
        """Items of the given kinds accepted since ``since``: (bucket start, event type, count)."""

    @abstractmethod
    def latencies(self, since: float, limit: int = 20_000) -> list[float]:
        """Delivery latencies (ms) of items delivered since ``since``."""

    # -- admin logins and sessions ---------------------------------------------------------------

    @abstractmethod
    def open_session(self, session_id: str, credential: str, now: float, *, older_than: float) -> None:
        """Record a new admin session; forget sessions created before ``older_than`` (expired)."""

    @abstractmethod
    def session_alive(self, session_id: str, credential: str, now: float, *, created_after: float,
                      seen_after: float) -> bool:
        """Whether a session exists, was opened under this credential, is young enough and was seen
        recently enough; a live session's last sight is brought up to date (at most every minute)."""

    @abstractmethod
    def end_session(self, session_id: str) -> None:
        """Forget one session (logout)."""

    @abstractmethod
    def login_failures(self, client: str, since: float, now: float, *, record: bool = False) -> int:
        """Failed admin logins of a client since ``since``; with ``record``, count one more first."""

    @abstractmethod
    def clear_login_failures(self, client: str) -> None:
        """Forget a client's failures after a successful login."""

    # -- the backfill of Mailjet's history (#13) ---------------------------------------------------

    @abstractmethod
    def accept_backfill_page(
        self, items: Sequence[NewItem], quarantined: Sequence[QuarantineEntry],
        messages: Mapping[str, str], checkpoint: Checkpoint, now: float,
    ) -> AcceptResult:
        """Queue one history page's items, remember its messages (MessageID -> JSON record) and
        move its checkpoint, in one transaction: a restart never reads a committed page again."""

    @abstractmethod
    def save_checkpoint(self, checkpoint: Checkpoint, now: float) -> None:
        """Record a checkpoint alone (a window found empty, or split in two)."""

    @abstractmethod
    def checkpoints(self, resource: str) -> dict[tuple[int, int], Checkpoint]:
        """Every checkpoint of a resource, by (window_start, window_end)."""

    @abstractmethod
    def backfill_messages(self, message_ids: Iterable[str]) -> dict[str, str]:
        """The stored records of these MessageIDs (text), those known."""

    @abstractmethod
    def earliest_event_time(self, kind: str, created_before: float) -> int | None:
        """The earliest event time among items of a kind accepted before ``created_before``."""

    @abstractmethod
    def daily_counts(self, kind: str, since: int, until: int) -> dict[tuple[int, str], int]:
        """Items of a kind by (UTC day start, event type) for event times in [since, until)."""

    # -- the store's own upkeep ----------------------------------------------------------------

    @abstractmethod
    def migrate(self) -> None:
        """Apply pending schema migrations (safe to call from many processes at once)."""

    @abstractmethod
    def schema_version(self) -> int:
        """The highest migration applied."""

    @abstractmethod
    def ping(self) -> None:
        """Raise StorageUnavailable unless the store answers."""

    @abstractmethod
    def close(self) -> None:
        """Close connections held by this object."""
