"""One backfill run: plan windows by ``countOnly``, page each, queue its events with its checkpoint.

The order matters: ``/message`` first, since its rows are the MessageID -> email table that the
open, click and bounce logs are joined on; each page's rows are stored with the page, so a restart
still has them. Every page goes through the live intake (``sort_events``): the same schema check and
dedupe key as a webhook post, so a page read twice, or an event the live feed also posted, is one
event. A dry run only counts.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.backfill.client import BackfillStopped, HistoryClient
from bridge.backfill.mapping import (
    Event,
    MessageRecord,
    bounce_event,
    click_event,
    log_message_id,
    message_events,
    open_event,
    record_of,
)
from bridge.backfill.planner import day_windows, halves, splittable
from bridge.backfill.resources import (
    CAMPAIGN_LOOKBACK_SECONDS,
    EDGE_OVERLAP_SECONDS,
    MAX_WINDOW_ROWS,
    MESSAGE,
    MESSAGE_STATES,
    PAGE_LIMIT,
    RESOURCES,
    STATUS_EVENTS,
    STATUS_FILTERS,
    Resource,
)
from bridge.inbound.intake import KIND, sort_events
from bridge.inbound.track import id_value
from bridge.payloads.schemas import EventValidator
from bridge.storage.base import Checkpoint, Store

#: Where the run's state is kept for the admin overview (a runtime record among the settings).
STATUS_KEY = "backfill.status"
#: When the first real run started: items accepted before it are the live feed's.
FIRST_RUN_KEY = "backfill.first_started_at"
#: How far the event logs reach past the earliest live event (the overlap rule).
LIVE_OVERLAP_SECONDS = 3600
#: A run on another machine whose status has not moved for this long is taken to be dead (one on
#: this machine is dead as soon as its process is gone, so a run killed with kill -9 resumes at once).
STALE_RUN_SECONDS = 600


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return True


def other_run(status: Mapping[str, Any] | None, now: float, *, host: str | None = None,
              alive: Callable[[int], bool] = _process_alive) -> str | None:
    """Why another run must be going on now, or None. Two runs at once would double the requests
    made with one API key (Mailjet publishes no limit: the issue's budget is one or two in flight)."""
    if not status or status.get("state") != "running" or not status.get("pid"):
        return None
    here = host or socket.gethostname()
    pid, there = int(status["pid"]), str(status.get("host") or "")
    if there == here:
        if not alive(pid) or pid == os.getpid():
            return None
    elif now - float(status.get("updated_at") or 0) >= STALE_RUN_SECONDS:
        return None
    return (f"another backfill is running (process {pid} on {there or 'an unknown host'}, last "
            f"progress {max(0.0, now - float(status.get('updated_at') or 0)):.0f} s ago): wait for "
            "it to finish, or stop it; a run stopped part-way resumes when started again")


@dataclass
class Plan:
    """The time range of a run: the event logs up to ``until``, ``/message`` up to ``spine_until``
    (its times are approximate, so it stops where the live feed starts; see ``cutoff``)."""

    since: int
    until: int
    spine_until: int
    why: str


@dataclass
class Progress:
    """What a run has done so far; the CLI prints it, the admin overview shows it."""

    windows_total: int = 0
    windows_done: int = 0
    pages: int = 0
    rows: int = 0
    queued: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    quarantined: int = 0
    lookups: int = 0
    #: Rows that cannot be an event (no event time): counted and reported, never queued.
    unusable: int = 0
    mismatches: list[str] = field(default_factory=list)
    #: Dry run: rows per (event type, window start, window end) by countOnly.
    counted: dict[tuple[str, int, int], int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


@dataclass
class _Leaf:
    resource: Resource
    checkpoint: Checkpoint


def cutoff(store: Store, since: int, until: int | None, now: float, *, dry_run: bool) -> Plan:
    """``--until`` as given, else the earliest live event plus an hour, else now.

    Live events are the items accepted before the first backfill run started, so a later run finds
    the same cutoff. ``/message`` stops at the live start itself: its times are approximate and the
    live feed has every send after it, so no ``sent`` comes twice.
    """
    if until is not None:
        return Plan(since, until, until, "as given")
    first = store.get_setting(FIRST_RUN_KEY)
    if first is None and not dry_run:
        store.put_setting(FIRST_RUN_KEY, repr(now), now, only_if_absent=True)
        first = store.get_setting(FIRST_RUN_KEY)
    live = store.earliest_event_time(KIND, float(first) if first else now)
    if live is not None:
        return Plan(since, min(int(now), live + LIVE_OVERLAP_SECONDS), live,
                    "the earliest live event plus an hour")
    return Plan(since, int(now), int(now), "now (no live event held)")


class Backfill:
    """Reads the history in ``plan`` and queues it (or, with ``dry_run``, only counts it)."""

    def __init__(self, store: Store, client: HistoryClient, validator: EventValidator, plan: Plan, *,
                 dry_run: bool = False, max_window_rows: int = MAX_WINDOW_ROWS,
                 on_progress: Callable[[Progress, str], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.client = client
        self.validator = validator
        self.plan = plan
        self.dry_run = dry_run
        self.max_window_rows = max_window_rows
        self.on_progress = on_progress or (lambda progress, line: None)
        self.clock = clock
        self.progress = Progress()
        self.states: Mapping[int, tuple[str, str]] = MESSAGE_STATES
        #: Records found by lookup (messages sent before ``since``); the others are read from the
        #: store a page at a time, so a run over a million messages does not hold them all.
        self._records: dict[str, MessageRecord] = {}
        self._contacts: dict[str, str | None] = {}
        self._campaigns: dict[str, tuple[str | None, int | str | None]] = {}

    # -- the run ------------------------------------------------------------------------------------

    def run(self) -> Progress:
        """Plan every window, then page them; raises BackfillStopped (the status records why)."""
        if not self.dry_run and (busy := other_run(stored_status(self.store), self.clock())):
            raise BackfillStopped(busy)  # the other run's status stays as it is
        self._status("running")
        try:
            leaves = [leaf for resource in RESOURCES for leaf in self._plan(resource)]
            self.progress.windows_total = self.progress.windows_done + len(leaves)
            self.on_progress(self.progress, "planned")
            if not self.dry_run and leaves:
                self.states = self._message_states()
                for leaf in leaves:
                    self._page_window(leaf)
        except BackfillStopped as exc:
            self._status("stopped", str(exc))
            raise
        except KeyboardInterrupt:
            self._status("stopped", "interrupted; run the same command again to resume")
            raise
        self._status("finished" if not self.dry_run else "dry run")
        return self.progress

    def _plan(self, resource: Resource) -> Iterator[_Leaf]:
        end = self.plan.spine_until if resource is MESSAGE else self.plan.until
        known = {} if self.dry_run else self.store.checkpoints(resource.name)
        for start, stop in day_windows(self.plan.since, end):
            yield from self._leaves(resource, start, stop, known)

    def _leaves(self, resource: Resource, start: int, end: int,
                known: Mapping[tuple[int, int], Checkpoint]) -> Iterator[_Leaf]:
        """The windows to page under [start, end): resumed from checkpoints, else counted and
        split while too large. Empty and finished windows count as done at once."""
        checkpoint = known.get((start, end))
        if checkpoint is None:
            count = self._count(resource, start, end)
            if count > self.max_window_rows and splittable(start, end):
                checkpoint = Checkpoint(resource.name, start, end, "split", expected=count)
                for key in [k for k in self.progress.counted if k[1:] == (start, end)]:
                    del self.progress.counted[key]  # its halves are counted instead
            else:
                checkpoint = Checkpoint(resource.name, start, end, "done" if count == 0 else "open",
                                        expected=count)
            if not self.dry_run:
                self.store.save_checkpoint(checkpoint, self.clock())
        if checkpoint.state == "split":
            for low, high in halves(start, end):
                yield from self._leaves(resource, low, high, known)
        elif checkpoint.state == "done" or self.dry_run:
            self.progress.windows_done += 1
        else:
            yield _Leaf(resource, checkpoint)

    def _params(self, resource: Resource, start: int, end: int) -> dict[str, Any]:
        low, high = resource.window_filters
        params: dict[str, Any] = {**resource.params, low: start - EDGE_OVERLAP_SECONDS, high: end}
        if resource.campaign_bounds:  # else these logs default to campaigns started today
            params["FromTS"] = self.plan.since - CAMPAIGN_LOOKBACK_SECONDS
            params["ToTS"] = end
        return params

    def _count(self, resource: Resource, start: int, end: int) -> int:
        params = {**self._params(resource, start, end), "countOnly": 1}
        if self.dry_run and resource is MESSAGE:
            for kind, statuses in STATUS_FILTERS.items():
                body = self.client.get(resource.path, {**params, "MessageStatus": statuses}) or {}
                self.progress.counted[(kind, start, end)] = _total(body)
        body = self.client.get(resource.path, params) or {}
        count = _total(body)
        if self.dry_run and resource is not MESSAGE:
            self.progress.counted[(resource.events[0], start, end)] = count
        return count

    def _page_window(self, leaf: _Leaf) -> None:
        checkpoint, resource = leaf.checkpoint, leaf.resource
        params = self._params(resource, checkpoint.window_start, checkpoint.window_end)
        offset, fetched = checkpoint.next_offset, checkpoint.fetched
        while True:
            body = self.client.get(resource.path, {**params, "Limit": PAGE_LIMIT, "Offset": offset}) or {}
            rows = [row for row in body.get("Data") or () if isinstance(row, dict)]
            events, messages = self._events(resource, rows)
            offset += len(rows)
            fetched += len(rows)
            expected = checkpoint.expected
            finished = len(rows) < PAGE_LIMIT or (expected is not None and fetched >= expected)
            intake = sort_events([(event, json.dumps(event, ensure_ascii=False)) for event in events],
                                 self.validator)
            moved = Checkpoint(resource.name, checkpoint.window_start, checkpoint.window_end,
                               "done" if finished else "open", offset, expected, fetched)
            result = self.store.accept_backfill_page(intake.items, intake.quarantined, messages,
                                                     moved, self.clock())
            self._count_page(result.accepted_by_type, intake.items, len(rows), result.quarantined)
            if finished:
                break
        self.progress.windows_done += 1
        if checkpoint.expected is not None and fetched != checkpoint.expected:
            self.progress.mismatches.append(
                f"{resource.name} {_day(checkpoint.window_start)}..{_day(checkpoint.window_end)}: "
                f"{fetched} rows read, countOnly said {checkpoint.expected}")
        self._status("running")
        self.on_progress(self.progress, f"{resource.name} {_day(checkpoint.window_start)} "
                                        f"-> {_day(checkpoint.window_end)}: {fetched} rows")

    def _count_page(self, accepted: Mapping[str, int], items: list[Any], rows: int,
                    quarantined: int) -> None:
        progress = self.progress
        progress.pages += 1
        progress.rows += rows
        progress.quarantined += quarantined
        offered: dict[str, int] = {}
        for item in items:
            offered[item.event_type] = offered.get(item.event_type, 0) + 1
        for kind, count in offered.items():
            new = accepted.get(kind, 0)
            progress.queued[kind] = progress.queued.get(kind, 0) + new
            progress.duplicates[kind] = progress.duplicates.get(kind, 0) + count - new
        self.on_progress(progress, "")

    # -- rows to events -----------------------------------------------------------------------------

    def _events(self, resource: Resource, rows: list[dict[str, Any]]) -> tuple[list[Event], dict[str, str]]:
        """The page's events and the message records to store with it."""
        events: list[Event] = []
        messages: dict[str, str] = {}
        if resource is MESSAGE:
            for row in rows:
                record = record_of(row)
                ident = row.get("ID")
                if ident not in (None, ""):
                    messages[str(ident)] = record.to_json()
                history = None
                if str(row.get("Status") or "").lower() in STATUS_EVENTS and ident not in (None, ""):
                    body = self.client.get(f"/v3/REST/messagehistory/{ident}", missing_ok=True)
                    history = [e for e in (body or {}).get("Data") or () if isinstance(e, dict)]
                events += message_events(row, self.states, history)
            return self._with_campaigns(events), messages
        records = self._join(resource, rows, messages)
        for row in rows:
            ident = log_message_id(resource.name, row)
            record = records.get(str(ident)) if ident is not None else None
            record = record or self._contact_record(row)
            if resource.name == "openinformation":
                event = open_event(row, record)
            elif resource.name == "clickstatistics":
                event = click_event(row, record)
            else:
                event = bounce_event(row, record, self.states)
            if event is None:
                self.progress.unusable += 1
            else:
                events.append(event)
        return self._with_campaigns(events), messages

    def _with_campaigns(self, events: list[Event]) -> list[Event]:
        """``customcampaign`` (the campaign's ``CustomValue``) on every event, and ``mj_list_id``
        (its ``ListID``) on unsubs, from ``/campaign/{id}``, read once per campaign and run."""
        for event in events:
            campaign = event.get("mj_campaign_id")
            if campaign is None:
                continue
            custom, list_id = self._campaign(str(campaign))
            if custom:
                event["customcampaign"] = custom
            if list_id and event["event"] == "unsub":
                event["mj_list_id"] = list_id
        return events

    def _campaign(self, campaign: str) -> tuple[str | None, int | str | None]:
        if campaign not in self._campaigns:
            self.progress.lookups += 1
            body = self.client.get(f"/v3/REST/campaign/{campaign}", missing_ok=True)
            data = [c for c in (body or {}).get("Data") or () if isinstance(c, dict)]
            row = data[0] if data else {}
            custom = row.get("CustomValue")
            self._campaigns[campaign] = (custom if isinstance(custom, str) and custom else None,
                                         id_value(row.get("ListID")))
        return self._campaigns[campaign]

    def _join(self, resource: Resource, rows: list[dict[str, Any]],
              messages: dict[str, str]) -> dict[str, MessageRecord]:
        """Records for the page's MessageIDs: this run's, the stored ones, else ``/message/{id}``."""
        wanted = {str(i) for row in rows if (i := log_message_id(resource.name, row)) is not None}
        found = {ident: MessageRecord.from_json(text)
                 for ident, text in self.store.backfill_messages(wanted - self._records.keys()).items()}
        found.update((ident, self._records[ident]) for ident in wanted & self._records.keys())
        for ident in sorted(wanted - found.keys()):
            self.progress.lookups += 1
            body = self.client.get(f"/v3/REST/message/{ident}",
                                   {"ShowContactAlt": "true", "ShowCustomID": "true"}, missing_ok=True)
            data = [row for row in (body or {}).get("Data") or () if isinstance(row, dict)]
            record = record_of(data[0]) if data else MessageRecord()
            self._records[ident] = found[ident] = record
            messages[ident] = record.to_json()
        return found

    def _contact_record(self, row: Mapping[str, Any]) -> MessageRecord:
        """No message record: the email from ``/contact/{ContactID}`` (cached per contact)."""
        contact = row.get("ContactID")
        if contact in (None, "", 0, "0"):
            return MessageRecord()
        key = str(contact)
        if key not in self._contacts:
            self.progress.lookups += 1
            body = self.client.get(f"/v3/REST/contact/{key}", missing_ok=True)
            data = [c for c in (body or {}).get("Data") or () if isinstance(c, dict)]
            email = data[0].get("Email") if data else None
            self._contacts[key] = email if isinstance(email, str) and email else None
        return MessageRecord(email=self._contacts[key])

    def _message_states(self) -> Mapping[int, tuple[str, str]]:
        """``/messagestate`` read once (StateID -> RelatedTo, State); the reference's table if absent."""
        body = self.client.get("/v3/REST/messagestate", {"Limit": PAGE_LIMIT}, missing_ok=True)
        states = dict(MESSAGE_STATES)
        for row in (body or {}).get("Data") or ():
            if isinstance(row, dict) and isinstance(row.get("ID"), int) and row.get("State"):
                states[row["ID"]] = (str(row.get("RelatedTo") or ""), str(row["State"]))
        return states

    # -- the record the admin overview shows --------------------------------------------------------

    def _status(self, state: str, message: str = "") -> None:
        if self.dry_run:
            return
        progress, counts = self.progress, self.client.counts
        now = self.clock()
        record = {
            "state": state, "since": self.plan.since, "until": self.plan.until, "updated_at": now,
            "windows_done": progress.windows_done, "windows_total": progress.windows_total,
            "queued": sum(progress.queued.values()), "duplicates": sum(progress.duplicates.values()),
            "requests": counts.requests, "throttled": counts.throttled, "message": message,
            "pid": os.getpid(), "host": socket.gethostname(),
        }
        self.store.put_setting(STATUS_KEY, json.dumps(record), now)


def stored_status(store: Store) -> dict[str, Any] | None:
    """The last run's record (running, finished or stopped), for the admin overview."""
    text = store.get_setting(STATUS_KEY)
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _total(body: Mapping[str, Any]) -> int:
    """``countOnly``'s count: ``Total``, else ``Count`` (both are the number of matches there)."""
    for name in ("Total", "Count"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.isdigit():
            return int(value)
    return 0


def _day(seconds: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(seconds))
