"""Finding one event (#12): the search across delivered, pending, dead and quarantined events, its
journey, the debugger page, ``mailjet-bridge find``, and ISO-8601 UTC times everywhere.

Events enter through the real webhook and leave through a forwarder posting to the fake Segment
server; the forwarder's clock is a test clock, so a retry needs no sleep.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from bridge.inbound.forwarder import Forwarder
from bridge.inbound.segment import SegmentClient
from bridge.inbound.track import dedupe_key, message_id
from bridge.ops.lookup import iso_utc, search
from tests.conftest import Clock
from tests.fakes.segment import FakeSegment, Scripted
from tests.processes import BIN, ROOT

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
ADA = {"event": "open", "time": 1_800_000_000, "MessageID": 7001, "email": "Ada@Example.com"}
BOB_PENDING = {"event": "click", "time": 1_800_000_010, "MessageID": 8001, "email": "bob@example.com",
               "url": "https://example.com/offer"}
BOB_DEAD = {"event": "bounce", "time": 1_800_000_020, "MessageID": 8002, "email": "bob@example.com",
            "error": "user unknown", "hard_bounce": True}
BOB_INVALID = {"event": "open", "time": "yesterday", "email": "BOB@example.com", "MessageID": 8003}


class Rig:
    """The app (webhook, admin pages) and a forwarder on the same store, with a test clock."""

    def __init__(self, app: Any, fake: FakeSegment, auth: dict[str, str]) -> None:
        self.app, self.fake, self.auth = app, fake, auth
        self.bridge = app.extensions["bridge"]
        self.client = app.test_client()
        self.clock = Clock()
        self.clock.now = time.time()
        self.forwarder = Forwarder(self.bridge.store, SegmentClient(fake.url, clock=self.clock),
                                   write_key=lambda: "good-key", event_names=self.bridge.current.event_names,
                                   clock=self.clock)

    def post(self, *events: dict[str, Any]) -> None:
        assert self.client.post("/webhooks/mailjet", json=list(events), headers=self.auth).status_code == 200

    def deliver(self) -> int:
        """One round; after a failure, the clock moves past the backoff first."""
        self.clock.now = max(self.clock.now, time.time(), (self.forwarder.pacer.hold_until or 0) + 0.001)
        return self.forwarder.run_once()


@pytest.fixture
def rig(app: Any, fake_segment: FakeSegment, auth: dict[str, str]) -> Rig:
    return Rig(app, fake_segment, auth)


def admin(rig: Rig) -> Any:
    client = rig.app.test_client()
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/admin/login").text).group(1)
    response = client.post("/admin/login", data={"password": "test-admin-password", "csrf_token": token})
    assert response.status_code == 302
    return client


def bob_everywhere(rig: Rig) -> None:
    """Bob has a dead letter, a quarantined event and a pending one."""
    rig.fake.reject_message_ids = {message_id(dedupe_key(BOB_DEAD))}
    rig.post(BOB_DEAD)
    rig.deliver()
    rig.post(BOB_PENDING, BOB_INVALID)


def test_iso_utc() -> None:
    assert iso_utc(1_800_000_000) == "2027-01-15T08:00:00Z"
    assert iso_utc(1_800_000_000.987) == "2027-01-15T08:00:00Z"
    assert iso_utc(None) == ""


def test_an_email_finds_the_event_its_segment_name_and_its_journey(rig: Rig) -> None:
    rig.post(ADA)
    rig.fake.then(Scripted(503))
    assert rig.deliver() == 0  # Segment unavailable: retried later
    assert rig.deliver() == 1

    (found,) = search(rig.bridge, "  ADA@example.com ")
    assert (found["event"], found["type"], found["recipient"], found["message_id"], found["status"]) == (
        "Email Opened", "open", "ada@example.com", "7001", "delivered")
    assert found["segment_message_id"] == message_id(dedupe_key(ADA))
    assert found["answer"].startswith("200") and found["latency"]
    assert ISO.fullmatch(found["received"]) and found["event_time"] == "2027-01-15T08:00:00Z"
    assert [step["step"] for step in found["journey"]] == ["received", "attempt failed", "delivered"]
    assert "503" in found["journey"][1]["answer"] and ISO.fullmatch(found["journey"][1]["at"])
    assert found["journey"][2]["answer"].startswith("200")
    # the same event by its Mailjet message id and by the messageId Segment got
    assert [r["id"] for r in search(rig.bridge, "7001")] == [found["id"]]
    assert [r["id"] for r in search(rig.bridge, found["segment_message_id"])] == [found["id"]]
    assert search(rig.bridge, "nobody@example.com") == [] and search(rig.bridge, "  ") == []


def test_the_search_covers_pending_dead_and_quarantined_events(rig: Rig) -> None:
    bob_everywhere(rig)
    found = search(rig.bridge, "bob@example.com")
    assert sorted(r["status"] for r in found) == ["dead", "pending", "quarantined"]
    by_status = {r["status"]: r for r in found}
    assert by_status["pending"]["event"] == "Email Link Clicked"
    assert by_status["pending"]["journey"][-1]["step"] == "waiting: next attempt"
    assert by_status["dead"]["journey"][-1]["step"] == "dead"
    assert "400" in by_status["dead"]["answer"]
    quarantined = by_status["quarantined"]
    assert (quarantined["event"], quarantined["message_id"], quarantined["source"]) == (
        "Email Opened", "8003", "quarantine")
    assert "is not of type" in quarantined["journey"][-1]["answer"]
    # an email only mentioned in an event (a link, a payload) is not its recipient
    rig.post({"event": "click", "time": 1_800_000_030, "MessageID": 9001, "email": "carol@example.com",
              "url": "https://example.com/?ref=bob@example.com"})
    assert sorted(r["status"] for r in search(rig.bridge, "bob@example.com")) == [
        "dead", "pending", "quarantined"]


def test_the_debugger_page_finds_an_email(rig: Rig) -> None:
    rig.post(ADA)
    rig.deliver()
    bob_everywhere(rig)
    client = admin(rig)
    page = client.get("/admin/debugger?q=ada@example.com").text
    assert "Email Opened" in page and "ada@example.com" in page and ">7001<" in page
    assert page.count('data-source="outbox"') == 1 and "bob@example.com" not in page
    assert "journey and payloads" in page and "table class=\"journey\"" in page and ISO.search(page)
    page = client.get("/admin/debugger?q=bob@example.com&partial=1").text
    assert page.count('<tr class="event') == 3 and "quarantined" in page
    # the newest events, with every column
    page = client.get("/admin/debugger").text
    for heading in ("received (UTC)", "event time (UTC)", "recipient", "Mailjet message id", "latency"):
        assert heading in page
    assert "No event found for <code>zed@example.com</code>" in client.get(
        "/admin/debugger?q=zed@example.com").text


def test_each_event_of_a_delivered_batch_is_shown_as_it_was_sent(rig: Rig) -> None:
    """A batch's calls are kept once for the batch (#11, R3); each event still shows its own call."""
    carol = {**ADA, "MessageID": 7002, "email": "carol@example.com", "event": "click",
             "url": "https://example.com/"}
    rig.post(ADA, carol)
    assert rig.deliver() == 2 and len(rig.fake.requests) == 1
    got = {call["messageId"]: call for call in rig.fake.accepted}
    for event, email in ((ADA, "ada@example.com"), (carol, "carol@example.com")):
        (found,) = search(rig.bridge, email)
        sent = json.loads(found["row"]["sent"])
        assert sent == got[message_id(dedupe_key(event))]  # what Segment got
        assert sent["messageId"] == found["segment_message_id"] == message_id(dedupe_key(event))
        assert found["event"] == sent["event"] and found["status"] == "delivered"
        page = admin(rig).get(f"/admin/debugger?q={email}").text
        shown = page.split("<h3>As sent</h3>")[1].split("</pre>")[0]
        assert message_id(dedupe_key(event)) in shown and shown.count("messageId") == 1
    newest = admin(rig).get("/admin/debugger").text
    assert newest.count("<h3>As sent</h3>") == 2


@pytest.mark.parametrize("query", ["%00", "%25", "_", "%ED%A0%80", "x" * 5000, "mailjet-",
                                   "%27;+DROP+TABLE+outbox"])
def test_any_search_text_is_a_page_never_a_500(rig: Rig, query: str) -> None:
    rig.post(ADA)
    response = admin(rig).get(f"/admin/debugger?q={query}")
    assert response.status_code == 200


def test_dead_letters_and_quarantine_show_their_times(rig: Rig) -> None:
    bob_everywhere(rig)
    client = admin(rig)
    assert ISO.search(client.get("/admin/dead-letters").text.split("<tbody>")[1])
    assert ISO.search(client.get("/admin/quarantine").text.split("<tbody>")[1])
    overview = client.get("/admin/").text
    assert "Dead letters: 1</a>" in overview and "Quarantined: 1</a>" in overview


# -- the command line, as a real process ----------------------------------------------------------

def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SEGMENT_", "MAILJET_", "BRIDGE_"))}
    return subprocess.run([str(BIN / "mailjet-bridge"), *args], env={**full, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.slow  # starts Python processes
def test_find_on_the_command_line(rig: Rig, env: dict[str, str]) -> None:
    rig.post(ADA)
    rig.fake.then(Scripted(503))
    rig.deliver()
    rig.deliver()
    bob_everywhere(rig)

    table = cli(env, "find", "ada@example.com")
    assert table.returncode == 0, table.stderr
    first, *rest = table.stdout.splitlines()
    assert "delivered" in first and "Email Opened" in first and "ada@example.com" in first and "7001" in first
    steps = [line.split()[1] for line in rest if ISO.match(line.strip())]
    assert steps == ["received", "attempt", "delivered"]

    as_json = cli(env, "find", "--json", "bob@example.com")
    assert as_json.returncode == 0, as_json.stderr
    records = json.loads(as_json.stdout)
    assert sorted(r["status"] for r in records) == ["dead", "pending", "quarantined"]
    assert all(ISO.fullmatch(r["received"]) for r in records)
    assert {r["event"] for r in records} == {"Email Link Clicked", "Email Bounced", "Email Opened"}

    assert cli(env, "find", message_id(dedupe_key(ADA))).stdout.splitlines()[0] == first

    nothing = cli(env, "find", "nobody@example.com")
    assert nothing.returncode == 1 and nothing.stdout == ""
    assert nothing.stderr.strip() == ("No event found for 'nobody@example.com' among delivered, pending, "
                                      "dead and quarantined events.")


@pytest.mark.slow  # starts a Python process
def test_quarantine_show_prints_an_iso_time(rig: Rig, env: dict[str, str]) -> None:
    rig.post(BOB_INVALID)
    shown = cli(env, "quarantine", "show", "1")
    assert shown.returncode == 0, shown.stderr
    received = json.loads(shown.stdout)["received_at"]
    assert ISO.fullmatch(received)
    assert abs(datetime.strptime(received, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
               - time.time()) < 120
