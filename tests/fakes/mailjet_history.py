"""A fake of Mailjet's v3 REST history resources: a real HTTP server on 127.0.0.1 with the traps of
``shared/reference/mailjet-history.md``, and the ground truth to check a backfill against.

What it models, as the reference reports it:
- Basic auth with the API key pair, else 401 with Mailjet's error body.
- ``/message``: ``FromTS``/``ToTS`` bound the send time (from inclusive, to exclusive; epoch seconds,
  anything else is a 400). **Without them only today's messages come back.** ``Status`` is the
  *latest* state only. ``ContactAlt`` (the email) is sent **only with ``ShowContactAlt=true``**.
  ``MessageStatus`` takes a comma list (OR). ``/message/{id}`` serves one row.
- ``/openinformation``, ``/clickstatistics``, ``/bouncestatistics``: ``EventFromTs``/``EventToTs`` bound
  the event time, while **``FromTS``/``ToTS`` bound the campaign's start**, and without them only
  campaigns started today count. Open and click rows have **``ID = -1``**; **clicks carry no email
  and no campaign**; a bounce's ``ID`` is the MessageID.
- Paging: ``Limit`` default 10, at most 1000; **``Limit=0`` returns 1000 rows and ignores
  ``Offset``**; ``countOnly=1`` gives ``Data: []`` and the count in ``Count``/``Total``.
- An unknown filter is a 400 (``Invalid filter``); ids above 2^53 are exact JSON integers.
- ``/messagehistory/{id}``, ``/contact/{id}``, ``/campaign/{id}``, ``/messagestate``, ``/statcounters``
  (per day).
- Tests script answers (429 **without Retry-After**, 5xx, 400) and a delay per request, and read
  the request log.
"""

from __future__ import annotations

import base64
import json
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.fakes.base import FakeServer

DAY = 86_400
#: MessageIDs start above 2^53 and are odd: a float cannot hold one exactly.
FIRST_MESSAGE_ID = 2**54 + 1
COMMON = {"Limit", "Offset", "Sort", "countOnly"}
FILTERS = {
    "message": COMMON | {"FromTS", "ToTS", "ShowContactAlt", "ShowCustomID", "ShowSubject",
                         "MessageStatus", "Campaign", "Contact"},
    "openinformation": COMMON | {"FromTS", "ToTS", "EventFromTs", "EventToTs", "CampaignID", "MessageID"},
    "clickstatistics": COMMON | {"FromTS", "ToTS", "EventFromTs", "EventToTs", "CampaignID", "MessageID"},
    "bouncestatistics": COMMON | {"FromTS", "ToTS", "EventFromTs", "EventToTs", "CampaignID"},
    "messagestate": COMMON, "statcounters": COMMON | {
        "FromTS", "ToTS", "CounterSource", "CounterTiming", "CounterResolution"},
}
STATUS_CODES = {"queued": 1, "sent": 2, "opened": 3, "clicked": 4, "bounce": 5, "spam": 6, "unsub": 7,
                "blocked": 8, "softbounced": 9, "hardbounced": 10}


def rfc3339(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Message:
    id: int
    sent_at: int
    campaign: int
    contact: int
    email: str
    guid: str
    status: str = "sent"
    state_id: int = 0
    opens: list[int] = field(default_factory=list)
    clicks: list[tuple[int, str]] = field(default_factory=list)
    bounces: list[tuple[int, bool, bool, int]] = field(default_factory=list)  # at, blocked, permanent, state
    #: (event type, at) for spam, unsub and blocked, as /messagehistory tells them.
    later: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class Scripted:
    status: int
    path: str = ""
    times: int = 1
    body: dict[str, Any] | None = None
    #: Only requests that read rows (not ``countOnly``).
    reads_only: bool = False


def _error(status: int, message: str) -> Response:
    body = {"ErrorInfo": "", "ErrorMessage": message, "StatusCode": status}
    return Response(json.dumps(body), status=status, mimetype="application/json")


def _ok(data: list[dict[str, Any]], total: int | None = None) -> Response:
    body = {"Count": len(data) if total is None else total, "Data": data,
            "Total": len(data) if total is None else total}
    return Response(json.dumps(body), status=200, mimetype="application/json")


class FakeMailjetHistory(FakeServer):
    name = "fake Mailjet history"

    def __init__(self, key: str = "mj-key", secret: str = "mj-secret") -> None:
        super().__init__()
        self.credentials = {(key, secret)}
        self.messages: dict[int, Message] = {}
        self.campaign_start: dict[int, int] = {}
        self.contacts: dict[int, str] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.script: deque[Scripted] = deque()
        self.delay = 0.0
        #: Rows that ``countOnly`` counts but no page shows (a history changing under a run).
        self.lose_rows = 0
        self.now = time.time

    # -- building a history ------------------------------------------------------------------------

    def add(self, message: Message) -> Message:
        with self.lock:
            self.messages[message.id] = message
            self.contacts[message.contact] = message.email
            start = self.campaign_start.get(message.campaign)
            self.campaign_start[message.campaign] = min(start or message.sent_at, message.sent_at)
        return message

    def then(self, *answers: Scripted) -> None:
        with self.lock:
            self.script.extend(answers)

    def pages(self) -> int:
        """Requests that read rows (not countOnly, not lookups)."""
        with self.lock:
            return sum(1 for path, params in self.requests
                       if path.count("/") == 3 and "countOnly" not in params)

    def describe(self) -> str:
        return f"{len(self.requests)} requests"

    # -- ground truth: what the Event API would have posted -----------------------------------------

    def live_events(self) -> list[dict[str, Any]]:
        """Every event as Mailjet's Event API would have posted it (exact times, every field)."""
        events = []
        for m in self.messages.values():
            base = {"MessageID": m.id, "Message_GUID": m.guid, "email": m.email,
                    "mj_campaign_id": m.campaign, "mj_contact_id": m.contact,
                    "customcampaign": f"spring-sale-{m.campaign}", "CustomID": "", "Payload": ""}
            if m.status in ("sent", "opened", "clicked", "spam", "unsub"):
                events.append({"event": "sent", "time": m.sent_at, **base,
                               "mj_message_id": str(m.id), "smtp_reply": "250 OK"})
            events += [{"event": "open", "time": at, **base, "ip": "10.0.0.1", "geo": "FR",
                        "agent": "Mozilla/5.0"} for at in m.opens]
            events += [{"event": "click", "time": at, **base, "url": url, "ip": "10.0.0.1",
                        "geo": "FR", "agent": "Mozilla/5.0"} for at, url in m.clicks]
            events += [{"event": "bounce", "time": at, **base, "blocked": blocked,
                        "hard_bounce": permanent, "error_related_to": "recipient",
                        "error": "user unknown", "comment": "550 no such user"}
                       for at, blocked, permanent, _state in m.bounces]
            events += [{"event": kind, "time": at, **base} | ({"mj_list_id": 7} if kind == "unsub" else {})
                       for kind, at in m.later]
        return events

    # -- the API ------------------------------------------------------------------------------------

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        if self.delay:
            time.sleep(self.delay)  # a slow upstream, so a test can stop a run part-way
        with self.lock:
            response = self._handle(request)
        return response(environ, start_response)

    def _authorised(self, request: Request) -> bool:
        header = request.headers.get("Authorization", "")
        try:
            key, _, secret = base64.b64decode(header.removeprefix("Basic ")).decode().partition(":")
        except ValueError:
            return False
        return header.startswith("Basic ") and (key, secret) in self.credentials

    def _handle(self, request: Request) -> Response:
        params = {k: v for k, v in request.args.items()}
        self.requests.append((request.path, params))
        if not self._authorised(request):
            return _error(401, "API key authentication/authorization failure. You may be unauthorized "
                               "to access the API or your API key may be expired.")
        for scripted in list(self.script):
            if scripted.path in request.path and not (scripted.reads_only and "countOnly" in params):
                scripted.times -= 1
                if scripted.times <= 0:
                    self.script.remove(scripted)
                if scripted.body is not None:
                    return Response(json.dumps(scripted.body), status=scripted.status,
                                    mimetype="application/json")
                return _error(scripted.status, "Too many requests" if scripted.status == 429
                              else "scripted failure")  # no Retry-After: Mailjet sends none
        parts = request.path.strip("/").split("/")
        if parts[:2] != ["v3", "REST"] or len(parts) < 3:
            return _error(404, "Object not found")
        resource, ident = parts[2], (parts[3] if len(parts) > 3 else None)
        if ident is None:
            unknown = set(params) - FILTERS.get(resource, set())
            if resource not in FILTERS:
                return _error(404, "Object not found")
            if unknown:
                return _error(400, f"Invalid filter: {sorted(unknown)[0]}")
        try:
            return self._resource(resource, ident, params)
        except ValueError as exc:
            return _error(400, str(exc))

    def _resource(self, resource: str, ident: str | None, params: dict[str, str]) -> Response:
        if ident is not None:
            return self._one(resource, ident, params)
        rows: list[dict[str, Any]]
        if resource == "message":
            rows = self._message_rows(params)
        elif resource in ("openinformation", "clickstatistics", "bouncestatistics"):
            rows = self._log_rows(resource, params)
        elif resource == "messagestate":
            rows = [{"ID": 1, "RelatedTo": "recipient", "State": "user unknown"},
                    {"ID": 8, "RelatedTo": "content", "State": "content blocked"}]
        else:
            rows = self._statcounters(params)
        return self._page(rows, params)

    def _page(self, rows: list[dict[str, Any]], params: dict[str, str]) -> Response:
        if params.get("countOnly") in ("1", "true"):
            return _ok([], total=len(rows))
        rows = rows[self.lose_rows:]
        limit = int(params.get("Limit", 10))
        offset = int(params.get("Offset", 0))
        if limit == 0:  # Mailjet: 1000 rows, Offset ignored
            limit, offset = 1000, 0
        limit = min(limit, 1000)
        return _ok(rows[offset:offset + limit])

    def _epoch(self, params: dict[str, str], name: str) -> int | None:
        value = params.get(name)
        if value is None:
            return None
        if not value.lstrip("-").isdigit():
            raise ValueError(f"{name}: expected a Unix timestamp")
        return int(value)

    def _today(self) -> tuple[int, int]:
        start = int(self.now()) // DAY * DAY
        return start, start + DAY

    def _bounds(self, params: dict[str, str], low: str, high: str) -> tuple[int, int] | None:
        start, end = self._epoch(params, low), self._epoch(params, high)
        if start is None and end is None:
            return None
        return (start if start is not None else -(2**62), end if end is not None else 2**62)

    def _message_row(self, m: Message, params: dict[str, str]) -> dict[str, Any]:
        row: dict[str, Any] = {"ID": m.id, "ArrivedAt": rfc3339(m.sent_at), "CampaignID": m.campaign,
                               "ContactID": m.contact, "UUID": m.guid, "Status": m.status,
                               "StateID": m.state_id, "MessageSize": 2048, "AttemptCount": 1}
        if params.get("ShowContactAlt") == "true":
            row["ContactAlt"] = m.email
        if params.get("ShowCustomID") == "true":
            row["CustomID"] = ""
        return row

    def _message_rows(self, params: dict[str, str]) -> list[dict[str, Any]]:
        bounds = self._bounds(params, "FromTS", "ToTS") or self._today()
        statuses = {int(s) for s in params["MessageStatus"].split(",")} if "MessageStatus" in params else None
        return [self._message_row(m, params) for m in sorted(self.messages.values(), key=lambda m: m.id)
                if bounds[0] <= m.sent_at < bounds[1]
                and (statuses is None or STATUS_CODES.get(m.status) in statuses)]

    def _log_rows(self, resource: str, params: dict[str, str]) -> list[dict[str, Any]]:
        campaigns = self._bounds(params, "FromTS", "ToTS") or self._today()
        events = self._bounds(params, "EventFromTs", "EventToTs") or (-(2**62), 2**62)
        rows: list[tuple[int, dict[str, Any]]] = []
        for m in sorted(self.messages.values(), key=lambda m: m.id):
            if not campaigns[0] <= self.campaign_start[m.campaign] < campaigns[1]:
                continue
            if resource == "openinformation":
                rows += [(m.id, {"ID": -1, "MessageID": m.id, "CampaignID": m.campaign,
                                 "ContactID": m.contact, "ArrivedAt": rfc3339(m.sent_at),
                                 "OpenedAt": rfc3339(at), "UserAgentID": 1,
                                 "UserAgentFull": "Mozilla/5.0"}) for at in m.opens
                         if events[0] <= at < events[1]]
            elif resource == "clickstatistics":
                rows += [(m.id, {"ID": -1, "MessageID": m.id, "ContactID": m.contact,
                                 "ClickedAt": rfc3339(at), "ClickedDelay": at - m.sent_at,
                                 "Url": url, "UserAgentID": 692}) for at, url in m.clicks
                         if events[0] <= at < events[1]]
            else:
                rows += [(m.id, {"ID": m.id, "BouncedAt": rfc3339(at), "CampaignID": m.campaign,
                                 "ContactID": m.contact, "IsBlocked": blocked,
                                 "IsStatePermanent": permanent, "StateID": state})
                         for at, blocked, permanent, state in m.bounces if events[0] <= at < events[1]]
        return [row for _, row in rows]

    def _one(self, resource: str, ident: str, params: dict[str, str]) -> Response:
        if not ident.isdigit():
            return _error(400, "Invalid ID")
        number = int(ident)
        if resource == "message" and number in self.messages:
            return _ok([self._message_row(self.messages[number], params)])
        if resource == "messagehistory" and number in self.messages:
            m = self.messages[number]
            timeline = [{"EventAt": m.sent_at, "EventType": "sent", "State": "", "Comment": "",
                         "Useragent": ""}] if m.status != "blocked" else []
            timeline += [{"EventAt": at, "EventType": "opened", "State": "", "Comment": "",
                          "Useragent": "Mozilla/5.0"} for at in m.opens]
            timeline += [{"EventAt": at, "EventType": kind, "State": "", "Comment": "",
                          "Useragent": ""} for kind, at in m.later]
            return _ok(sorted(timeline, key=lambda e: e["EventAt"]))
        if resource == "campaign" and number in self.campaign_start:
            return _ok([{"ID": number, "CustomValue": f"spring-sale-{number}", "ListID": 7,
                         "SendStartAt": rfc3339(self.campaign_start[number]), "Subject": "Hello"}])
        if resource == "contact" and number in self.contacts:
            return _ok([{"ID": number, "Email": self.contacts[number], "Name": ""}])
        return _error(404, "Object not found")

    def _statcounters(self, params: dict[str, str]) -> list[dict[str, Any]]:
        bounds = self._bounds(params, "FromTS", "ToTS")
        if bounds is None:
            raise ValueError("FromTS and ToTS are required with CounterResolution=Day")
        days: dict[int, dict[str, int]] = {}
        for event in self.live_events():
            day = event["time"] // DAY * DAY
            if not bounds[0] <= day < bounds[1]:
                continue
            counters = days.setdefault(day, {})
            name = {"sent": "MessageSentCount", "open": "EventOpenedCount",
                    "click": "EventClickedCount", "blocked": "MessageBlockedCount",
                    "spam": "EventSpamCount", "unsub": "EventUnsubscribedCount"}.get(event["event"])
            if event["event"] == "bounce":
                name = "MessageHardBouncedCount" if event["hard_bounce"] else "MessageSoftBouncedCount"
            counters[name] = counters.get(name, 0) + 1
        return [{"Timeslice": rfc3339(day), **counts} for day, counts in sorted(days.items())]


def build_history(fake: FakeMailjetHistory, since: int, days: int, per_day: int, seed: int = 13,
                  ) -> None:
    """A deterministic history of ``days`` days from ``since`` (a UTC midnight): one campaign a day,
    every event type, soft and hard bounces, repeated opens, clicks on several links, and one old
    message (sent before ``since``) opened inside the range, found only by a lookup."""
    import random

    rng = random.Random(seed)
    ident = FIRST_MESSAGE_ID
    last = since + days * DAY - 1
    for day in range(days):
        for n in range(per_day):
            sent = since + day * DAY + 60 + n * (DAY - 7_200) // per_day
            contact = 1_000 + (day * per_day + n) % 700
            m = Message(ident, sent, 500 + day, contact, f"user{contact}@example.com",
                        f"guid-{ident:x}")
            ident += 2
            r = rng.random()
            if r < 0.03:
                m.status, m.state_id = "blocked", 8
                m.later.append(("blocked", sent + 1))
            elif r < 0.05:
                m.status, m.state_id = "hardbounced", 1
                m.bounces.append((sent + 30, False, True, 1))
            else:
                if r < 0.08:
                    m.bounces.append((sent + 20, False, False, 3))  # soft, delivered later
                for _ in range(rng.choice((0, 0, 1, 1, 2, 3))):
                    m.opens.append(sent + rng.randrange(60, 3 * DAY))
                m.opens = sorted({at for at in m.opens if at < last - 60})
                if m.opens and rng.random() < 0.3:
                    for k in range(rng.choice((1, 2))):
                        m.clicks.append((m.opens[0] + 5 + k, f"https://shop.example.com/p/{k}"))
                m.status = "clicked" if m.clicks else "opened" if m.opens else "sent"
                if r > 0.98:
                    m.status = "spam"
                    m.later.append(("spam", min(last, sent + 7_200)))
                elif r > 0.96:
                    m.status = "unsub"
                    m.later.append(("unsub", min(last, sent + 10_800)))
            fake.add(m)
    old = Message(ident, since - 2 * DAY, 499, 999, "early@example.com", "guid-old")
    old.opens.append(since + 3_600)
    old.status = "opened"
    fake.add(old)


def expected(fake: FakeMailjetHistory, since: int, until: int) -> list[dict[str, Any]]:
    """The live events a backfill of [since, until) must rebuild: a message's own events (sent,
    blocked, spam, unsub) when it was sent in the range, the log events when they happened in it."""
    own = {"sent", "blocked", "spam", "unsub"}
    chosen = []
    for event in fake.live_events():
        sent_at = fake.messages[event["MessageID"]].sent_at
        moment = sent_at if event["event"] in own else event["time"]
        if since <= moment < until:
            chosen.append(event)
    return chosen
