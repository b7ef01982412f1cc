"""Property-based tests (Hypothesis) over intake -> store -> mapping -> encode, both directions
(issue #9; docs/behaviour.md, "Webhooks", "Inbound mapping", "Outbound mapping", "Delivery").

For any body posted to a webhook:

- A: ``/webhooks/mailjet`` answers 2xx or 4xx, never 5xx: 400 exactly when the body is not UTF-8 JSON
  holding an object or an array, else 200 with ``accepted + duplicate + quarantined`` = its events.
- B: the same for ``/webhooks/segment`` (signed, as Segment signs), where ``accepted``, ``duplicate``,
  ``quarantined``, ``ignored``, ``skipped`` and ``dead`` together count every element.
- C: every Mailjet event accepted ends delivered to the fake Segment or a dead letter, within a bounded
  number of forwarder rounds and of simulated time: none stays pending or leased. Every batch sent is
  strict JSON (no ``NaN``/``Infinity``, no lone surrogate) in valid UTF-8, no dead letter is Segment
  refusing a batch as bad JSON, and every row marked delivered reached the fake.
- D: the same for identifies through the contact sync and the fake Mailjet; besides, no contact fails
  for a value typed against a definition the bridge read from that same fake.

The strategies write each body as raw text, so a body holds what ``json.dumps`` would escape or
refuse: ``1e400``, ``\\ud800`` escapes, raw lone surrogates (invalid UTF-8), duplicate keys, 4,301-digit
integers, nesting past 32 levels or past the recursion limit, ``NaN``, truncation, a BOM, UTF-16.

Each property runs on SQLite (``make test-fast``) and on the session's PostgreSQL database (``slow``,
a third of the examples): PostgreSQL refuses what SQLite stores (a NUL in text), so only there do
some inputs fail. What the properties found in ``bridge/`` (a date before the year 1000 sent
unpadded; a NUL in an email or userId breaking PostgreSQL queries) is at the end of this file, as
minimal regression tests.

Bounded and reproducible: ``PROPERTIES`` caps the examples per property (``PROPERTY_EXAMPLES``
overrides the default of 150 for a longer local hunt), and under ``CI=true`` examples are
derandomized. ``--hypothesis-show-statistics`` shows what the examples came to (status codes,
delivered, dead and why). Nothing is written to the checkout: there is no example database, and
Hypothesis's own caches (Unicode tables, constants read from the source) go to a temporary folder
removed at exit. The apps, the stores and the fake servers are made once per module; each
example empties the tables, so a failure replays the same way while Hypothesis shrinks it.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import hmac
import json
import math
import os
import random
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from bridge import NAME
from bridge.app import create_app
from bridge.config import DEFAULT_SCHEMA_DIR, load_settings
from bridge.delivery.loop import RECOVER_EVERY_SECONDS, DeliveryLoop
from bridge.delivery.pacing import PacingPolicy
from bridge.errors import StorageUnavailable
from bridge.inbound.fields import EVENT_NAME_PRESETS, EVENT_TYPES
from bridge.inbound.forwarder import Forwarder, ForwarderPolicy
from bridge.inbound.intake import KIND as SEGMENT_TRACK
from bridge.inbound.intake import sort_events
from bridge.inbound.segment import SegmentClient
from bridge.inbound.source import RECORD_KEY, KeyVerifier, hold_for
from bridge.outbound.contact_sync import ContactSync, ContactSyncPolicy
from bridge.outbound.intake import CONTACT_KIND, sort_segment_events
from bridge.outbound.mailjet import MailjetClient
from bridge.payloads.body import parse_body
from bridge.payloads.schemas import EventValidator
from bridge.storage import open_store
from bridge.storage.base import Store
from tests.conftest import T0, Clock, basic
from tests.fakes.mailjet import FakeMailjet
from tests.fakes.segment import FakeSegment

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

#: Even without an example database, Hypothesis keeps caches (constants read from the source, from
#: test collection on; Unicode tables) in ``.hypothesis/`` of the working directory, which would be
#: the checkout. They go to a temporary folder instead, removed when the process exits. Set at
#: import, because Hypothesis's pytest plugin reads the constants while collecting, before any
#: fixture, and again before this module's tests (``_hypothesis_home``), since another module may
#: have pointed Hypothesis elsewhere, or back at the working directory, meanwhile.
HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="bridge-properties-hypothesis-")
set_hypothesis_home_dir(HYPOTHESIS_HOME)
atexit.register(shutil.rmtree, HYPOTHESIS_HOME, ignore_errors=True)

#: One setting for every property: a bounded number of examples, no example database in the
#: checkout, and under CI the same examples on every run.
EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", "150"))
PROPERTIES = settings(
    max_examples=EXAMPLES,
    # Time per example varies with the body (one example may start a 40 KB event through HTTP); the
    # bound that matters is max_examples.
    deadline=None,
    database=None,
    derandomize=CI,
    print_blob=True,
)
#: The same on PostgreSQL, where each example commits several transactions to a server: a third of
#: the examples (those tests only run in ``make test``, as ``slow``).
ON_POSTGRES = settings(PROPERTIES, max_examples=max(1, EXAMPLES // 3))

PASSWORD = "s3cret-pass"
MAILJET_AUTH = basic("mailjet", PASSWORD)
SHARED_SECRET = "segment-shared-secret"
SEGMENT_TOKEN = "segment-webhook-token"
#: Delivery must settle within this many rounds and this much simulated time (backoffs included).
MAX_ROUNDS = 12
MAX_SIMULATED_SECONDS = 3600.0


# -- raw JSON text ----------------------------------------------------------------------------------


def _same(value: Any) -> Any:
    return value


def weighted(*options: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """``one_of`` with each strategy ``weight`` times: each copy a distinct object, since ``one_of``
    drops a strategy it already has (plain repeats would all count once)."""
    return st.one_of(*[strategy.map(_same) for weight, strategy in options for _ in range(weight)])


def string_text(value: str, escape: bool) -> str:
    """A JSON string literal: escaped to ASCII (a lone surrogate as ``\\ud800``, valid UTF-8 that a
    parser turns into an unpaired surrogate), or raw (a lone surrogate then makes the body invalid
    UTF-8, since bodies are encoded with ``surrogatepass``)."""
    return json.dumps(value, ensure_ascii=escape)


def array_text(items: list[str]) -> str:
    return "[" + ",".join(items) + "]"


def object_text(pairs: list[tuple[str, str]]) -> str:
    """An object from (key text, value text) pairs, in order; a key may repeat (the last one wins)."""
    return "{" + ",".join(f"{key}:{value}" for key, value in pairs) + "}"


def nested(depth: int, leaf: str, as_object: bool) -> str:
    """``leaf`` inside ``depth`` arrays or objects."""
    for _ in range(depth):
        leaf = '{"k":' + leaf + "}" if as_object else "[" + leaf + "]"
    return leaf


SURROGATE = st.integers(0xD800, 0xDFFF).map(chr)
ODD_CHARS = st.sampled_from(
    ["\x00", "\x1f", '"', "\\", "/", "\u2028", "\ufeff", "\uffff", "é", "日", "😀", "\U0010ffff", "İ", "ß"]
)
PLAIN = st.text(max_size=12)  # Hypothesis leaves surrogates out unless asked
ODD = st.lists(st.one_of(st.characters(), ODD_CHARS), max_size=8).map("".join)
#: Rare, to reach Segment's 32 KB limit per call (a dead letter before sending).
BIG = st.integers(20_000, 40_000).map(lambda n: "x" * n)


@dataclass(frozen=True)
class Texts:
    """The JSON texts of one flavour: ``clean`` ones hold only what a call can carry, so an event
    made of them is sendable when its fields have the right types."""

    string: st.SearchStrategy[str]
    number: st.SearchStrategy[str]
    leaf: st.SearchStrategy[str]
    value: st.SearchStrategy[str]


def texts(clean: bool) -> Texts:
    string = st.builds(string_text, weighted((3, PLAIN), (1, ODD)), st.booleans())
    if not clean:
        # mostly escaped (``\\ud800``: refused per event); raw, it spoils the whole body's UTF-8
        lone = st.builds(string_text, st.tuples(PLAIN, SURROGATE, PLAIN).map("".join),
                         weighted((4, st.just(True)), (1, st.just(False))))
        string = weighted((4, string), (1, lone))
    numbers = [
        (4, st.integers(-(10**6), 10**6).map(str)),
        (2, st.integers(-(2**80), 2**80).map(str)),
        (2, st.floats(allow_nan=False, allow_infinity=False).map(json.dumps)),
        (1, st.sampled_from(["1e-400", "-0", "0e0", "1.0", "1E2", "-0.0", "1e308", "5e-324"])),
    ]
    if not clean:
        numbers += [
            (1, st.sampled_from(["1e400", "-1e400", "1E+999", "2e308"])),  # infinity in Python
            (1, st.integers(4200, 4300).map(lambda n: "9" * n)),  # at Python's int-digits limit
        ]
    number = weighted(*numbers)
    key = weighted((3, st.sampled_from(["a", "b", "email", "event", "Payload", "type", "traits"])
                    .map(json.dumps)), (2, string))
    leaf = weighted((1, st.just("null")), (1, st.sampled_from(["true", "false"])), (3, number),
                    (4, string))
    tree = st.recursive(
        leaf,
        lambda inner: st.one_of(st.lists(inner, max_size=4).map(array_text),
                                st.lists(st.tuples(key, inner), max_size=4).map(object_text)),
        max_leaves=10,
    )
    # As a field (the event is level 1), 30 levels reach level 31 and 31 reach 32: the deepest allowed.
    deep = st.builds(nested, st.integers(25, 31) if clean else st.integers(29, 40), leaf, st.booleans())
    return Texts(string, number, leaf, weighted((8, tree), (1, deep)))


CLEAN, MESSY = texts(clean=True), texts(clean=False)
#: Never JSON Python reads, or not as a JSON value: the whole body is a 400.
BROKEN = st.one_of(
    st.sampled_from(["NaN", "-Infinity", "Infinity", "01", "+1", ".5", "1.", "0x10", "tru", "'a'",
                     '"\\x41"', "undefined", '"\\ud83d', '"a\x01b"', "[1,]", '{"a" 1}', "{,}"]),
    st.integers(4301, 4400).map(lambda n: "9" * n),  # over Python's int-digits limit (ValueError)
    st.just("[" * 20_000 + "]" * 20_000),  # past the recursion limit (RecursionError)
)


# -- Mailjet events ---------------------------------------------------------------------------------

VALID_EMAILS = st.sampled_from(["api@mailjet.com", " API@Mailjet.COM ", "bounce@mailjet.com",
                                "ada@example.com"]).map(json.dumps)
EMAILS = weighted(
    (4, VALID_EMAILS),
    (1, st.emails().map(json.dumps)),
    (1, st.sampled_from(['""', "null", '"not-an-email"', '"  "', '"ü@exämple.de"', '"a\\u0000@x.com"'])),
    (1, CLEAN.string),
)


def mailjet_fields(t: Texts) -> dict[str, st.SearchStrategy[str]]:
    """A typed value for each documented field (``schemas/mailjet/``), odd ones included."""
    big_id = st.integers(0, 2**64)
    ids = weighted(
        (3, big_id.map(str)),
        (2, big_id.map(lambda n: json.dumps(str(n)))),
        (1, st.sampled_from(["0", '"0"', "null", "1.0", "1e20", "-5", '"-5"', "1e300"])),
    )
    text = weighted((5, t.string), (1, st.sampled_from(['""', "null"])))
    boolean = st.sampled_from(["true", "false", "null"])
    payload = weighted(
        (2, text),
        (3, st.builds(string_text, t.value, st.booleans())),  # JSON text inside the string
        (1, st.builds(string_text, st.sampled_from(
            ['{"a": NaN}', "[1e400]", '{"a": "\\ud800"}', '{"a":1,"a":2}', "[1,", "{}", "[]"]),
            st.booleans())),
    )
    return {
        "MessageID": ids, "mj_message_id": weighted((2, big_id.map(lambda n: json.dumps(str(n)))),
                                                    (1, text)),
        "Message_GUID": text, "email": EMAILS, "mj_campaign_id": ids, "mj_contact_id": ids,
        "mj_list_id": ids, "customcampaign": text, "CustomID": text, "Payload": payload,
        "smtp_reply": text, "url": text, "ip": text, "geo": text, "agent": text, "blocked": boolean,
        "hard_bounce": boolean, "error": text, "error_related_to": text, "comment": text, "source": text,
    }


CLEAN_FIELDS, MESSY_FIELDS = mailjet_fields(CLEAN), mailjet_fields(MESSY)
#: Extra fields: names that collide with a property once lower-cased, or with a known field.
MAILJET_EXTRA_KEYS = weighted(
    (2, st.sampled_from(["messageid", "MESSAGEID", "Email", "EVENT", "payload", "email_id",
                         "mailjet_event", "campaign_id", "Properties", "x", "X"]).map(json.dumps)),
    (1, CLEAN.string),
)
EVENT_NAMES = st.sampled_from(EVENT_TYPES).map(json.dumps)
TIMES = st.integers(0, 253402300799).map(str)
ODD_TIMES = st.sampled_from(['"1700000000"', "1.7e9", "1700000000.0", "-1", "253402300800", "null",
                             "1e400", "1.5", "true"])


@st.composite
def mailjet_event(draw: st.DrawFn) -> str:
    """One Mailjet event as JSON text: mostly valid and sendable, else messy in any field."""
    messy = draw(st.integers(0, 4)) == 0
    t, fields = (MESSY, MESSY_FIELDS) if messy else (CLEAN, CLEAN_FIELDS)
    pairs: list[tuple[str, str]] = []
    if not messy or draw(st.integers(0, 9)):
        odd = st.one_of(st.sampled_from(['"SENT"', '"delivered"', "null", "7", '""']), t.value)
        pairs.append(('"event"', draw(weighted((6, EVENT_NAMES), (1, odd)) if messy else EVENT_NAMES)))
    if not messy or draw(st.integers(0, 9)):
        pairs.append(('"time"', draw(weighted((4, TIMES), (1, ODD_TIMES), (1, t.value))
                                     if messy else TIMES)))
    for name, values in fields.items():
        if draw(st.integers(0, 2)) == 0:
            value = draw(weighted((4, values), (1, t.value)) if messy else values)
            pairs.append((json.dumps(name), value))
    pairs += draw(st.lists(st.tuples(MAILJET_EXTRA_KEYS, t.value), max_size=3))
    if draw(st.integers(0, 19)) == 0:
        pairs.append(('"big"', json.dumps(draw(BIG))))
    if pairs and draw(st.integers(0, 9)) == 0:  # a key twice: Python keeps the last
        key, _ = draw(st.sampled_from(pairs))
        pairs.append((key, draw(t.value)))
    return object_text(draw(st.permutations(pairs)))


# -- Segment events ---------------------------------------------------------------------------------

TRAIT_NAMES = st.sampled_from([
    "plan", "seats", "firstName", "first_name", "First Name", "lastName", "last_name", "name",
    "Order Count", "isVip", "signupDate", "tags", "address", "HTTPCode", "ltv", "!!!", "_", "",
    "Ärger", "日本語", "email_verified", "EMAIL", "Plan",
]).map(json.dumps)
DATES = st.sampled_from([
    "2024-05-01", "0999-01-01", "2024-05-01T10:20:30Z", "2024-05-01 10:20",
    "2024-05-01T10:20:30.123456+05:30",
    "1000-01-01", "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "2024-02-30",
    "1970-01-01T00:00:00Z", "2024-05-01T10:20:30+0530",
]).map(json.dumps)
NUMERIC_TEXT = st.sampled_from(["42", "4.5", "-0", "1e5", "007", "-12", " 7 ", "1" * 30, ".5"]).map(
    json.dumps)


def trait_values(t: Texts) -> st.SearchStrategy[str]:
    scalar = weighted(
        (2, st.sampled_from(["true", "false"])), (2, st.integers(-1000, 1000).map(str)),
        (1, st.integers(-(2**70), 2**70).map(str)),
        (2, st.floats(allow_nan=False, allow_infinity=False).map(json.dumps)),
        (2, DATES), (1, NUMERIC_TEXT), (3, t.string), (1, st.just("null")), (1, t.number),
    )
    record = st.lists(st.tuples(weighted((2, TRAIT_NAMES), (1, t.string)), scalar), max_size=3)
    return weighted((8, scalar), (1, record.map(object_text)), (1, t.value))


CLEAN_TRAIT_VALUES, MESSY_TRAIT_VALUES = trait_values(CLEAN), trait_values(MESSY)
USER_IDS = st.sampled_from(["u-1", "u-2", "u-3", "u-\u0000"]).map(json.dumps)
MESSAGE_IDS = st.sampled_from(["m-1", "m-2", "m-3"]).map(json.dumps)
SEGMENT_TYPES = st.sampled_from(['"track"', '"page"', '"group"', '"Identify"', "null", "1", '""'])


@st.composite
def segment_event(draw: st.DrawFn) -> str:
    """One Segment call as JSON text, mostly an identify with traits Mailjet can take."""
    messy = draw(st.integers(0, 4)) == 0
    t = MESSY if messy else CLEAN
    values = MESSY_TRAIT_VALUES if messy else CLEAN_TRAIT_VALUES
    pairs: list[tuple[str, str]] = []
    if not messy:
        pairs.append(('"type"', draw(weighted((12, st.just('"identify"')), (1, SEGMENT_TYPES)))))
    elif draw(st.integers(0, 9)):
        pairs.append(('"type"', draw(weighted((4, st.just('"identify"')), (1, SEGMENT_TYPES),
                                              (1, t.value)))))
    if draw(st.booleans()):
        pairs.append(('"userId"', draw(weighted((4, USER_IDS), (1, t.string),
                                                (1, st.sampled_from(["null", "1", '""']))))))
    if draw(st.booleans()):
        pairs.append(('"messageId"', draw(weighted((3, MESSAGE_IDS), (1, t.string)))))
    if draw(st.integers(0, 3)) == 0:
        pairs.append(('"anonymousId"', draw(t.string)))
    if draw(st.integers(0, 9)):
        traits = draw(st.lists(st.tuples(weighted((3, TRAIT_NAMES), (1, t.string)), values),
                               max_size=6))
        if draw(st.integers(0, 9)):
            traits.append(('"email"', draw(weighted((4, EMAILS), (1, VALID_EMAILS)))))
        pairs.append(('"traits"', object_text(draw(st.permutations(traits)))))
    if draw(st.integers(0, 3)) == 0:
        inner = []
        if draw(st.booleans()):
            inner.append(('"traits"', object_text([('"email"', draw(EMAILS))])))
        if draw(st.booleans()):
            library = draw(st.sampled_from([NAME, "analytics.js"]))
            inner.append(('"library"', object_text([('"name"', json.dumps(library))])))
        pairs.append(('"context"', object_text(inner)))
    if draw(st.integers(0, 4)) == 0:
        pairs.append(('"integrations"', draw(st.sampled_from(
            ['{"Mailjet": false}', '{"Mailjet": true}', '{"All": false}', "{}"]))))
    if messy:
        pairs += draw(st.lists(st.tuples(t.string, t.value), max_size=2))
        if pairs and draw(st.integers(0, 4)) == 0:
            key, _ = draw(st.sampled_from(pairs))
            pairs.append((key, draw(t.value)))
    return object_text(draw(st.permutations(pairs)))


# -- bodies -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Body:
    raw: bytes
    #: What Segment signs: the whole body for one event, the first element's exact text for an array.
    signed: bytes | None


MUTATIONS = ["truncate", "invalid byte", "bom", "utf-16", "broken element", "scalar", "empty"]


@st.composite
def bodies(draw: st.DrawFn, event: st.SearchStrategy[str], min_events: int = 0) -> Body:
    """A webhook body: an array of events (a few odd elements among them) or one bare event, now and
    then spoiled (truncated, an invalid byte, a BOM, UTF-16, a broken element, a bare scalar)."""
    elements = draw(st.lists(event, min_size=min_events, max_size=6))
    if draw(st.integers(0, 5)) == 0:  # an odd element or two: any JSON value
        for odd in draw(st.lists(MESSY.value, min_size=1, max_size=2)):
            elements.insert(draw(st.integers(0, len(elements))), odd)
    space = draw(st.sampled_from(["", " ", "\n", "\t\r\n "]))
    mutation = draw(weighted((16, st.just("")), (1, st.sampled_from(MUTATIONS))))
    if mutation == "broken element":
        elements = [*elements, draw(BROKEN)]
    if elements and elements[0].startswith("{") and draw(st.integers(0, 3)) == 0:
        text = space + elements[0] + space
        bare = True
    else:
        separator = draw(st.sampled_from([",", ", ", ",\n  "]))
        text = space + "[" + separator.join(elements) + "]" + space
        bare = False
    if mutation == "scalar":
        text, bare = draw(MESSY.leaf), True
    raw = text.encode("utf-8", "surrogatepass")
    if mutation == "truncate":
        raw = raw[: draw(st.integers(0, max(len(raw) - 1, 0)))]
    elif mutation == "invalid byte":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"])) + raw[at:]
    elif mutation == "bom":
        raw = b"\xef\xbb\xbf" + raw
    elif mutation == "utf-16":
        raw = text.encode("utf-16", "surrogatepass")
    elif mutation == "empty":
        raw = b""
    if bare:
        signed: bytes | None = raw
    else:
        signed = elements[0].encode("utf-8", "surrogatepass") if elements else None
    return Body(raw, signed)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def events_in(raw: bytes) -> int | None:
    """How many events the webhook must count in a body, or None when it must answer 400 (not UTF-8
    JSON, or neither object nor array): the reference reading of docs/behaviour.md, "Webhooks"."""
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return None
    if isinstance(value, list):
        return len(value)
    return 1 if isinstance(value, dict) else None


def signature(body: Body) -> str:
    return hmac.new(SHARED_SECRET.encode(), body.signed or b"", hashlib.sha1).hexdigest()


# -- strict JSON, as the strictest consumer reads it ------------------------------------------------


def unsound(value: Any, path: str = "$") -> str | None:
    """Where parsed JSON holds something no strict consumer reads: a lone surrogate (in a string or
    a key) or a number that is not finite; None when it holds none."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return f"{where}: lone surrogate in {item!r:.80}"
        elif isinstance(item, float) and not math.isfinite(item):
            return f"{where}: {item}"
        elif isinstance(item, dict):
            for key, child in item.items():
                stack += [(key, f"{where} key"), (child, f"{where}.{key!r:.40}")]
        elif isinstance(item, list):
            stack += [(child, f"{where}[{n}]") for n, child in enumerate(item)]
    return None


def assert_strict(raw: bytes | str, what: str) -> Any:
    """``raw`` is strict JSON (RFC 8259: no NaN or Infinity literal) in valid UTF-8, and carries no
    lone surrogate (a ``\\ud800`` escape is ASCII but decodes to one) and no infinite number."""
    excerpt = (raw[:200] if isinstance(raw, bytes) else raw[:200].encode("utf-8", "backslashreplace"))
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        text.encode("utf-8")
        value = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise AssertionError(f"{what} is not strict JSON in UTF-8 ({exc}): {excerpt!r}") from exc
    problem = unsound(value)
    assert problem is None, f"{what} carries {problem}: {excerpt!r}"
    return value


class RecordingSession(requests.Session):
    """A session that keeps every body the bridge sends, byte for byte, as it went on the wire."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, bytes]] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if request.body is not None:
            body = request.body if isinstance(request.body, bytes) else str(request.body).encode(
                "utf-8", "surrogatepass")
            self.sent.append((f"{request.method} {request.path_url}", body))
        return super().send(request, **kwargs)


# -- the apps, their stores and the fakes: once per module ------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _hypothesis_home() -> None:
    """Not reset afterwards: a later module's Hypothesis caches then go to this folder too (removed
    at exit), rather than to the checkout."""
    set_hypothesis_home_dir(HYPOTHESIS_HOME)


#: Tables an example fills; emptied before each example (the stored credentials stay).
EXAMPLE_TABLES = ("outbox", "quarantine", "identities")


@dataclass
class Side:
    """One bridge app on its own store, and the test client that posts to it."""

    client: Any
    store: Store
    dialect: str
    reset_store: Callable[[], None]

    def reset(self) -> None:
        """Empty what an example leaves (queue, quarantine, identities, delivery states), so every
        example, and every replay while shrinking, starts from the same store."""
        self.reset_store()


#: A store for the sides of this module: its dialect, URL, and how to empty it between examples.
Backend = tuple[str, str, Callable[[], None]]


@pytest.fixture(scope="module")
def sqlite_db() -> Iterator[Backend]:
    """A SQLite file in a temporary folder, removed at the end."""
    with tempfile.TemporaryDirectory(prefix="bridge-properties-") as folder:
        path = Path(folder) / "bridge.db"

        def reset() -> None:
            with contextlib.closing(sqlite3.connect(path)) as conn, conn:
                for table in EXAMPLE_TABLES:
                    conn.execute(f"DELETE FROM {table}")
                conn.execute("DELETE FROM settings WHERE key LIKE 'status.%' OR key = ?", (RECORD_KEY,))

        yield "sqlite", f"sqlite:///{path}", reset


@pytest.fixture(scope="module")
def postgres_db(pg_database: str) -> Iterator[Backend]:
    """The test session's PostgreSQL database (``tests/conftest.py``), which makes a test ``slow``."""
    import psycopg

    with psycopg.connect(pg_database, autocommit=True) as conn:

        def reset() -> None:
            with conn.transaction():
                for table in EXAMPLE_TABLES:
                    conn.execute(f"DELETE FROM {table}")
                conn.execute("DELETE FROM settings WHERE key LIKE 'status.%%' OR key = %s", (RECORD_KEY,))

        yield "postgres", pg_database, reset


def _side(backend: Backend, **env: str) -> Iterator[Side]:
    dialect, url, reset = backend
    config = load_settings({
        "BRIDGE_DATABASE_URL": url, "BRIDGE_WEBHOOK_USERNAME": "mailjet",
        "BRIDGE_WEBHOOK_PASSWORD": PASSWORD, "BRIDGE_ADMIN_PASSWORD": "admin-pass", **env,
    })
    app = create_app(config, announce=lambda line: None)
    store = app.extensions["bridge"].store
    try:
        yield Side(app.test_client(), store, dialect, reset)
    finally:
        store.close()


SEGMENT_ENV = {"SEGMENT_SHARED_SECRET": SHARED_SECRET, "SEGMENT_WEBHOOK_TOKEN": SEGMENT_TOKEN}


@pytest.fixture(scope="module")
def mailjet_sqlite(sqlite_db: Backend) -> Iterator[Side]:
    yield from _side(sqlite_db)


@pytest.fixture(scope="module")
def segment_sqlite(sqlite_db: Backend) -> Iterator[Side]:
    yield from _side(sqlite_db, **SEGMENT_ENV)


@pytest.fixture(scope="module")
def mailjet_postgres(postgres_db: Backend) -> Iterator[Side]:
    yield from _side(postgres_db)


@pytest.fixture(scope="module")
def segment_postgres(postgres_db: Backend) -> Iterator[Side]:
    yield from _side(postgres_db, **SEGMENT_ENV)


@pytest.fixture(scope="module")
def segment_fake() -> Iterator[FakeSegment]:
    server = FakeSegment().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mailjet_fake() -> Iterator[FakeMailjet]:
    server = FakeMailjet().start()
    yield server
    server.stop()


def reset_mailjet(fake: FakeMailjet) -> None:
    """A fresh Mailjet account: no definitions, contacts or jobs, and list 1 empty."""
    with fake.lock:
        fake.metadata.clear()
        fake.contacts.clear()
        fake.lists = {1: {}}
        fake.jobs.clear()
        fake.requests.clear()
        fake.script.clear()


#: The body is read as bytes whatever its Content-Type says (the docs name none).
CONTENT_TYPES = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain",
                                 "application/x-www-form-urlencoded", "application/octet-stream"])


def post_mailjet(side: Side, body: Body, content_type: str = "application/json") -> Any:
    return side.client.post("/webhooks/mailjet", data=body.raw, headers=MAILJET_AUTH,
                            content_type=content_type)


def post_segment(side: Side, body: Body, *, signed: bool = True, token: bool = True,
                 content_type: str = "application/json") -> Any:
    """As Segment's Webhooks (Actions) destination posts: the bearer token and the signature."""
    headers = {"X-Signature": signature(body) if signed else "0" * 40,
               "Authorization": f"Bearer {SEGMENT_TOKEN if token else 'not-the-token'}"}
    return side.client.post("/webhooks/segment", data=body.raw, headers=headers,
                            content_type=content_type)


def clock_after_intake() -> Clock:
    """A manual clock later than the wall clock the webhook stamped the rows with."""
    clock = Clock()
    clock.now = max(T0, time.time() + 1.0)
    return clock


def drain(loop: DeliveryLoop[Any], store: Store, clock: Clock) -> int:
    """Run delivery rounds until nothing is pending or leased; between rounds, move the clock past
    whatever holds delivery back (a backoff, a Retry-After, a lease). Returns the rounds it took."""
    started = clock()
    trouble: StorageUnavailable | None = None
    for rounds in range(1, MAX_ROUNDS + 1):
        try:
            loop.run_once()
        except StorageUnavailable as exc:  # what run_until_stopped does: log it and go on
            trouble = exc
        stats = store.stats(clock())
        if stats["pending"] == 0 and stats["leased"] == 0:
            assert clock() - started <= MAX_SIMULATED_SECONDS, f"settled only after {clock() - started} s"
            return rounds
        clock.advance(max(loop.pacer.hold_until - clock(), 0.0) + loop.lease_seconds
                      + RECOVER_EVERY_SECONDS)
    raise AssertionError(f"still pending or leased after {MAX_ROUNDS} rounds "
                         f"({clock() - started:.0f} s simulated): {stats}; last storage error: {trouble}")


def outcomes(rows: list[dict[str, Any]]) -> None:
    """What an example came to, for ``--hypothesis-show-statistics``."""
    for state in ("delivered", "dead"):
        count = sum(1 for row in rows if row["state"] == state)
        event(f"{state}: {'0' if not count else '1' if count == 1 else 'several'}")
    for row in rows:
        if row["state"] == "dead":
            event(f"dead because: {(row['last_error'] or '')[:45]}")


# -- A, B: the webhooks -----------------------------------------------------------------------------


def check_mailjet_webhook(side: Side, body: Body, content_type: str) -> None:
    side.reset()
    answer = post_mailjet(side, body, content_type)
    event(f"HTTP {answer.status_code}")
    assert answer.status_code < 500, answer.get_data(as_text=True)
    events = events_in(body.raw)
    if events is None:
        assert answer.status_code == 400, answer.get_data(as_text=True)
        return
    assert answer.status_code == 200, answer.get_data(as_text=True)
    counts = answer.get_json()
    assert set(counts) == {"accepted", "duplicate", "quarantined"}
    assert counts["accepted"] + counts["duplicate"] + counts["quarantined"] == events, counts


def check_segment_webhook(side: Side, body: Body, signed: bool, token: bool,
                          content_type: str) -> None:
    side.reset()
    answer = post_segment(side, body, signed=signed, token=token, content_type=content_type)
    event(f"HTTP {answer.status_code}")
    assert answer.status_code < 500, answer.get_data(as_text=True)
    events = events_in(body.raw)
    if not token:  # checked before the body is read
        assert answer.status_code == 401, answer.get_data(as_text=True)
        return
    if events is None:
        assert answer.status_code == 400, answer.get_data(as_text=True)
        return
    if not signed and events:
        assert answer.status_code == 401, answer.get_data(as_text=True)
        return
    assert answer.status_code == 200, answer.get_data(as_text=True)
    counts = answer.get_json()
    assert set(counts) == {"accepted", "duplicate", "quarantined", "ignored", "skipped", "dead"}
    assert sum(counts.values()) == events, counts


# -- C: Mailjet events to Segment -------------------------------------------------------------------


def forwarder(store: Store, fake: FakeSegment, clock: Clock, session: requests.Session) -> Forwarder:
    """The forwarder as tests/test_forwarder.py wires it: the write key checked with the fake's
    settings CDN, a manual clock, and a session that records every batch."""
    verifier = KeyVerifier(store, lambda: fake.url, clock=clock)
    return Forwarder(
        store,
        SegmentClient(fake.url, session=session, timeout=(1.0, 5.0), clock=clock),
        write_key=lambda: "good-key",
        event_names=lambda: EVENT_NAME_PRESETS["mailjet"],
        gate=lambda key: hold_for(verifier.check(key), "auto", False),
        policy=ForwarderPolicy(pacing=PacingPolicy(backoff_base=2.0, backoff_cap=60.0,
                                                   auth_retry_seconds=30.0)),
        clock=clock,
        rng=random.Random(7),
    )


def check_inbound_delivery(side: Side, segment_fake: FakeSegment, body: Body) -> None:
    side.reset()
    store = side.store
    answer = post_mailjet(side, body)
    assert answer.status_code < 500, answer.get_data(as_text=True)
    accepted = answer.get_json()["accepted"] if answer.status_code == 200 else 0
    with segment_fake.lock:
        seen_requests, seen_calls = len(segment_fake.requests), len(segment_fake.accepted)
    clock = clock_after_intake()
    session = RecordingSession()
    drain(forwarder(store, segment_fake, clock, session), store, clock)

    rows = store.recent(limit=10_000, kind=SEGMENT_TRACK)
    outcomes(rows)
    assert len(rows) == accepted
    assert {row["state"] for row in rows} <= {"delivered", "dead"}
    for what, raw in session.sent:
        assert_strict(raw, f"the batch {what}")
    with segment_fake.lock:
        requests_now = segment_fake.requests[seen_requests:]
        delivered_ids = {call.get("messageId") for call in segment_fake.accepted[seen_calls:]}
    assert all(r.status == 200 or r.batch for r in requests_now), (
        "Segment refused a request it could not read: " + str([r.status for r in requests_now]))
    for row in rows:
        if row["state"] == "delivered":
            call = assert_strict(row["sent"], f"the call kept for row {row['id']}")
            assert call["messageId"] in delivered_ids, f"row {row['id']} is delivered but Segment has no call"
        else:
            reason = row["last_error"] or ""
            assert "invalid json" not in reason.lower(), reason
            assert "could not prepare" not in reason, f"accepted but not mappable: {reason}"


# -- D: Segment identifies to Mailjet ---------------------------------------------------------------


def contact_sync(store: Store, fake: FakeMailjet, clock: Clock, session: requests.Session) -> ContactSync:
    """The contact sync as tests/test_contact_sync.py wires it: no wait for a burst to settle, the
    manual clock also standing in for sleep, and a session that records every body."""
    return ContactSync(
        store, MailjetClient(fake.url, session=session), credentials=lambda: ("mj-key", "mj-secret"),
        target=lambda: (1, "addnoforce"),
        policy=ContactSyncPolicy(quiet_seconds=0.0, poll_first_seconds=0.5,
                                 pacing=PacingPolicy(backoff_base=2.0, auth_retry_seconds=30.0)),
        clock=clock, sleep=clock.advance, rng=random.Random(3),
    )


#: Reasons the fake Mailjet gives for a contact whose value does not fit a definition. The bridge
#: read the definitions from this same fake and typed every value against them, so either is a
#: mapping bug, not bad input.
MISTYPED = ("Property type does not match definition", "Property not defined")


def check_outbound_delivery(side: Side, mailjet_fake: FakeMailjet, body: Body) -> None:
    side.reset()
    reset_mailjet(mailjet_fake)
    store = side.store
    answer = post_segment(side, body)
    assert answer.status_code < 500, answer.get_data(as_text=True)
    counts = answer.get_json() if answer.status_code == 200 else {"accepted": 0, "dead": 0}
    clock = clock_after_intake()
    session = RecordingSession()
    drain(contact_sync(store, mailjet_fake, clock, session), store, clock)

    rows = store.recent(limit=10_000)  # identifies, and the property dead letters beside them
    outcomes(rows)
    identifies = [row for row in rows if row["kind"] == CONTACT_KIND]
    assert counts["accepted"] <= len(identifies) <= counts["accepted"] + counts["dead"]
    assert {row["state"] for row in rows} <= {"delivered", "dead"}
    for what, raw in session.sent:
        assert_strict(raw, f"the request {what}")
    with mailjet_fake.lock:
        contacts = set(mailjet_fake.contacts)
    for row in rows:
        if row["state"] == "delivered":
            entry = assert_strict(row["sent"], f"the contact kept for row {row['id']}")
            assert entry["Email"] in contacts, f"row {row['id']} is delivered but Mailjet has no contact"
        else:
            reason = row["last_error"] or ""
            assert "invalid json" not in reason.lower(), reason
            assert "could not prepare" not in reason, f"accepted but not mappable: {reason}"
            assert not any(m in reason for m in MISTYPED), f"mistyped by the bridge: {reason}"


# -- the properties, on SQLite (make test-fast) and on PostgreSQL (slow, fewer examples) ------------

MAILJET_BODIES = bodies(mailjet_event())
SEGMENT_BODIES = bodies(segment_event())
#: For the delivery properties, at least one event (an empty body delivers nothing).
MAILJET_EVENTS = bodies(mailjet_event(), min_events=1)
SEGMENT_EVENTS = bodies(segment_event(), min_events=1)
SOMETIMES_WRONG = weighted((9, st.just(True)), (1, st.just(False)))


@PROPERTIES
@given(body=MAILJET_BODIES, content_type=CONTENT_TYPES)
def test_mailjet_webhook_never_answers_5xx_and_counts_every_event(
    mailjet_sqlite: Side, body: Body, content_type: str
) -> None:
    check_mailjet_webhook(mailjet_sqlite, body, content_type)


@ON_POSTGRES
@given(body=MAILJET_BODIES, content_type=CONTENT_TYPES)
def test_mailjet_webhook_never_answers_5xx_on_postgres(
    mailjet_postgres: Side, body: Body, content_type: str
) -> None:
    check_mailjet_webhook(mailjet_postgres, body, content_type)


@PROPERTIES
@given(body=SEGMENT_BODIES, signed=SOMETIMES_WRONG, token=SOMETIMES_WRONG, content_type=CONTENT_TYPES)
def test_segment_webhook_never_answers_5xx_and_counts_every_element(
    segment_sqlite: Side, body: Body, signed: bool, token: bool, content_type: str
) -> None:
    check_segment_webhook(segment_sqlite, body, signed, token, content_type)


@ON_POSTGRES
@given(body=SEGMENT_BODIES, signed=SOMETIMES_WRONG, token=SOMETIMES_WRONG, content_type=CONTENT_TYPES)
def test_segment_webhook_never_answers_5xx_on_postgres(
    segment_postgres: Side, body: Body, signed: bool, token: bool, content_type: str
) -> None:
    check_segment_webhook(segment_postgres, body, signed, token, content_type)


@PROPERTIES
@given(body=MAILJET_EVENTS)
def test_every_accepted_mailjet_event_is_delivered_or_dead_and_sent_as_strict_json(
    mailjet_sqlite: Side, segment_fake: FakeSegment, body: Body
) -> None:
    check_inbound_delivery(mailjet_sqlite, segment_fake, body)


@ON_POSTGRES
@given(body=MAILJET_EVENTS)
def test_every_accepted_mailjet_event_is_delivered_or_dead_on_postgres(
    mailjet_postgres: Side, segment_fake: FakeSegment, body: Body
) -> None:
    check_inbound_delivery(mailjet_postgres, segment_fake, body)


@PROPERTIES
@given(body=SEGMENT_EVENTS)
def test_every_accepted_identify_is_delivered_or_dead_and_sent_as_strict_json(
    segment_sqlite: Side, mailjet_fake: FakeMailjet, body: Body
) -> None:
    check_outbound_delivery(segment_sqlite, mailjet_fake, body)


@ON_POSTGRES
@given(body=SEGMENT_EVENTS)
def test_every_accepted_identify_is_delivered_or_dead_on_postgres(
    segment_postgres: Side, mailjet_fake: FakeMailjet, body: Body
) -> None:
    check_outbound_delivery(segment_postgres, mailjet_fake, body)

# -- what the properties found: regressions for bridge/ bugs (others own the fixes) -----------------
#
# Each is the minimal input, end to end as the property runs it. ``strict=True``: the fix turns each
# into a failure here, a reminder to drop its marker (and the exclusion named in its reason).

SEGMENT_VALIDATOR = EventValidator.segment(DEFAULT_SCHEMA_DIR)
MAILJET_VALIDATOR = EventValidator.mailjet(DEFAULT_SCHEMA_DIR)


def accept_identifies(store: Store, events: list[dict[str, Any]]) -> None:
    intake = sort_segment_events(parse_body(json.dumps(events).encode()), SEGMENT_VALIDATOR)
    store.accept(intake.items, intake.quarantined, time.time(), intake.identities, dead=intake.dead)


def accept_mailjet(store: Store, events: list[dict[str, Any]]) -> None:
    intake = sort_events(parse_body(json.dumps(events).encode()), MAILJET_VALIDATOR)
    assert not intake.quarantined
    store.accept(intake.items, [], time.time())


# Regressions the properties found (each failed before its fix).


def test_a_date_before_the_year_1000_is_sent_as_rfc_3339(store: Store, fake_mailjet: FakeMailjet) -> None:
    accept_identifies(store, [{"type": "identify", "traits": {"email": "a@x.com", "born": "0999-01-01"}}])
    clock = clock_after_intake()
    drain(contact_sync(store, fake_mailjet, clock, RecordingSession()), store, clock)
    assert [row["last_error"] for row in store.dead_letters()] == []
    assert fake_mailjet.contacts["a@x.com"]["Properties"] == {"born": "0999-01-01T00:00:00Z"}


# PostgreSQL text cannot hold NUL: a parsed email or userId holding \u0000 reached a query as it
# was (identities, user_ids_for, emails_for), raised, and StorageUnavailable followed.


def test_a_nul_in_an_identify_email_is_no_503_on_postgres(pg_url: str) -> None:
    config = load_settings({"BRIDGE_DATABASE_URL": pg_url, "BRIDGE_WEBHOOK_USERNAME": "mailjet",
                            "BRIDGE_WEBHOOK_PASSWORD": PASSWORD, "BRIDGE_ADMIN_PASSWORD": "admin-pass",
                            "SEGMENT_WEBHOOK_TOKEN": SEGMENT_TOKEN})
    app = create_app(config, announce=lambda line: None)
    try:
        answer = app.test_client().post(
            "/webhooks/segment", content_type="application/json",
            headers={"Authorization": f"Bearer {SEGMENT_TOKEN}"},
            data=b'[{"type":"identify","userId":"u-1","traits":{"email":"a\\u0000@x.com"}},'
                 b'{"type":"identify","userId":"u-2","traits":{"email":"b@x.com"}}]')
        assert answer.status_code == 200, answer.get_data(as_text=True)
        assert sum(answer.get_json().values()) == 2
    finally:
        app.extensions["bridge"].store.close()


def test_a_nul_in_a_mailjet_email_does_not_stop_delivery_on_postgres(
    pg_url: str, fake_segment: FakeSegment
) -> None:
    store = open_store(pg_url)
    try:
        accept_mailjet(store, [
            {"event": "open", "time": 1_700_000_000, "MessageID": 1, "email": "a\u0000@x.com"},
            {"event": "open", "time": 1_700_000_000, "MessageID": 2, "email": "ok@x.com"},
        ])
        clock = clock_after_intake()
        drain(forwarder(store, fake_segment, clock, RecordingSession()), store, clock)
        assert len(fake_segment.accepted) == 2
    finally:
        store.close()


def test_a_nul_in_an_identify_user_id_does_not_stop_the_contact_sync_on_postgres(
    pg_url: str, fake_mailjet: FakeMailjet
) -> None:
    store = open_store(pg_url)
    try:
        accept_identifies(store, [
            {"type": "identify", "userId": "u-\u0000", "traits": {"plan": "pro"}},
            {"type": "identify", "traits": {"email": "ok@x.com", "plan": "pro"}},
        ])
        clock = clock_after_intake()
        drain(contact_sync(store, fake_mailjet, clock, RecordingSession()), store, clock)
        assert "ok@x.com" in fake_mailjet.contacts
    finally:
        store.close()
