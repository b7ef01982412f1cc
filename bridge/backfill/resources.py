"""Vendor knowledge about Mailjet's history API, kept as data (shared/reference/mailjet-history.md).

The client, planner and mapper read only these tables; a resource that behaves differently from what
the reference says is a change here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Largest page Mailjet serves. Never 0: ``Limit=0`` returns 1000 rows and ignores ``Offset``.
PAGE_LIMIT = 1000
#: A window whose ``countOnly`` exceeds this is split in two (again and again), so offsets stay small
#: (no maximum offset is documented, and deep offsets may be slow).
MAX_WINDOW_ROWS = 50_000
#: The event logs filter the *campaign's* start with FromTS/ToTS, and default to today without them.
#: They are sent as [since - this, window end): an event of a campaign started earlier is missed.
CAMPAIGN_LOOKBACK_SECONDS = 400 * 86_400
#: Windows reach this far before their start: whether FromTS is inclusive is unverified, and a row
#: read by two windows is one event (same dedupe key).
EDGE_OVERLAP_SECONDS = 1
DAY = 86_400


@dataclass(frozen=True)
class Resource:
    """One history resource: its path, the filters that bound its time windows, fixed parameters."""

    name: str
    path: str
    #: The (from, to) filter names that bound the window on this resource.
    window_filters: tuple[str, str]
    #: The live event types it yields.
    events: tuple[str, ...]
    params: dict[str, str] = field(default_factory=dict)
    #: Whether FromTS/ToTS bound the campaign start here (the event logs), to be sent wide.
    campaign_bounds: bool = False


#: The spine first: its rows fill the MessageID -> email table the event logs are joined on.
MESSAGE = Resource("message", "/v3/REST/message", ("FromTS", "ToTS"),
                   ("sent", "blocked", "spam", "unsub"),
                   {"ShowContactAlt": "true", "ShowCustomID": "true", "Sort": "ID"})
OPENS = Resource("openinformation", "/v3/REST/openinformation", ("EventFromTs", "EventToTs"),
                 ("open",), {"Sort": "ID"}, campaign_bounds=True)
CLICKS = Resource("clickstatistics", "/v3/REST/clickstatistics", ("EventFromTs", "EventToTs"),
                  ("click",), {"Sort": "ID"}, campaign_bounds=True)
BOUNCES = Resource("bouncestatistics", "/v3/REST/bouncestatistics", ("EventFromTs", "EventToTs"),
                   ("bounce",), {"Sort": "ID"}, campaign_bounds=True)
RESOURCES: tuple[Resource, ...] = (MESSAGE, OPENS, CLICKS, BOUNCES)

#: ``/message`` ``Status`` (the *latest* state only) of a message that was delivered: one ``sent``.
DELIVERED_STATUSES = frozenset({"sent", "opened", "clicked", "spam", "unsub"})
#: ``Status`` values that are themselves a live event; their exact time is in ``/messagehistory``.
STATUS_EVENTS: dict[str, str] = {"blocked": "blocked", "spam": "spam", "unsub": "unsub"}
#: ``/messagehistory`` ``EventType`` -> live event type, for the few messages read there.
HISTORY_EVENTS: dict[str, str] = {"sent": "sent", "blocked": "blocked", "spam": "spam",
                                  "unsub": "unsub"}
#: ``MessageStatus`` filter values (comma list = OR) for the dry run's counts per type.
STATUS_FILTERS: dict[str, str] = {"sent": "2,3,4,6,7", "blocked": "8", "spam": "6", "unsub": "7"}

#: ``StateID`` -> (``error_related_to``, ``error``) when ``/messagestate`` does not answer; ids 1-11
#: from the reference (12-21 have unverified groups: left out rather than guessed).
MESSAGE_STATES: dict[int, tuple[str, str]] = {
    1: ("recipient", "user unknown"), 2: ("recipient", "mailbox inactive"),
    3: ("recipient", "quota exceeded"), 4: ("domain", "invalid domain"),
    5: ("domain", "no mail host"), 6: ("domain", "relay/access denied"),
    7: ("spam", "sender blocked"), 8: ("spam", "content blocked"), 9: ("spam", "policy issue"),
    10: ("system", "system issue"), 11: ("system", "protocol issue"),
}

#: ``/statcounters`` fields per live event type, for the reconcile (several fields are summed).
STATCOUNTERS: dict[str, tuple[str, ...]] = {
    "sent": ("MessageSentCount",), "open": ("EventOpenedCount",), "click": ("EventClickedCount",),
    "bounce": ("MessageHardBouncedCount", "MessageSoftBouncedCount"),
    "blocked": ("MessageBlockedCount",), "spam": ("EventSpamCount",),
    "unsub": ("EventUnsubscribedCount",),
}
STATCOUNTERS_PARAMS = {"CounterSource": "APIKey", "CounterTiming": "Event", "CounterResolution": "Day"}
