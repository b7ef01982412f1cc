"""Issue #9, "Must show": no silent loss, through real processes against the fakes on 127.0.0.1.

1. A typo'd write key sends nothing, names the problem in ``/healthz`` and ``check``, and delivers
   everything once fixed (``config set``, no restart).
2. Mailjet's grouped sample gives 4 events with 4 distinct ``messageId``s and ``email_id`` =
   ``mj_message_id``.
3. ``geo: null`` and string ids are accepted, and delivered with the ids as strings.
4. A group holding poison values delivers its siblings within 60 s; each poison event is quarantined,
   a dead letter, or delivered faithfully; nothing stays pending or leased.
5. An identify batch with poison traits applies its innocent contacts in Mailjet.
6. After kill -9 of the worker and no further traffic, the held rows of both directions are delivered
   within lease + 30 s.
7. After a Segment outage (20 s down, 500 twice, 429 ``Retry-After: 1`` three times) during which the
   worker is killed and restarted, 2,000 events are delivered within 60 s of Segment's recovery.

Each test prints one ``NO-SILENT-LOSS`` line with what it measured (run with ``-s`` to see them).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.inbound.intake import KIND as TRACK_KIND
from bridge.inbound.track import dedupe_key, message_id
from bridge.outbound.intake import CONTACT_KIND
from bridge.storage import open_store
from tests.fakes.mailjet import FakeMailjet
from tests.fakes.segment import FakeSegment, Scripted
from tests.processes import BIN, Process, callback_auth, poll, spawn, store_settled
from tests.test_faults import Bridge, Sender, bridge_env, make_events

pytestmark = pytest.mark.slow  # every test here starts processes

PEERS = Path(__file__).parent / "fixtures" / "peers"
HELD_REASON = "Segment does not know the write key"
MJ_ENV = {"MAILJET_API_KEY": "mj-key", "MAILJET_API_SECRET": "mj-secret"}


# -- helpers ----------------------------------------------------------------------------------------


def report(line: str) -> None:
    print(f"\nNO-SILENT-LOSS {line}")


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'bridge.db'}"


def cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    """Run ``mailjet-bridge ARGS`` with the server's environment (same database); exit code, output."""
    process = spawn([str(BIN / "mailjet-bridge"), *args], env)
    return process.wait(60), process.output()


def healthz(base: str) -> tuple[int, dict[str, Any]]:
    response = requests.get(f"{base}/healthz", timeout=5)
    return response.status_code, response.json()


def post_mailjet(base: str, auth: tuple[str, str], text: str) -> dict[str, Any]:
    """Post a raw body text, as Mailjet would (exact bytes: escapes and numbers as written)."""
    response = requests.post(f"{base}/webhooks/mailjet", data=text.encode("utf-8"), auth=auth, timeout=30,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    return response.json()


def wait_settled(base: str, timeout: float = 30) -> dict[str, Any]:
    """/healthz once nothing is pending or leased any more."""
    def settled() -> dict[str, Any] | None:
        queue = requests.get(f"{base}/healthz", timeout=5).json()["queue"]
        return queue if queue["pending"] == 0 and queue["leased"] == 0 else None

    return poll(settled, timeout, "the queue to settle (nothing pending or leased)")


def calls_by_email(fake: FakeSegment) -> dict[str, list[dict[str, Any]]]:
    with fake.lock:
        found: dict[str, list[dict[str, Any]]] = {}
        for call in fake.accepted:
            found.setdefault(call["context"]["traits"]["email"], []).append(call)
        return found


def outbox_counts(database: str) -> dict[tuple[str, str], int]:
    """(kind, state) -> rows, read straight from the SQLite file."""
    path = database.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as conn:
        return {(kind, state): n for kind, state, n in
                conn.execute("SELECT kind, state, COUNT(*) FROM outbox GROUP BY kind, state")}


def mailjet_event(kind: str, n: int, email: str, **extra: Any) -> dict[str, Any]:
    return {"event": kind, "time": 1_800_000_000 + n, "MessageID": 7_000_000_000 + n, "email": email,
            **extra}


def raw(value: dict[str, Any], **placeholders: str) -> str:
    """``value`` as JSON text, with each ``"@name"`` string replaced by raw JSON text."""
    text = json.dumps(value)
    for name, replacement in placeholders.items():
        assert f'"@{name}"' in text
        text = text.replace(f'"@{name}"', replacement)
    return text


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": True}
    for _ in range(depth - 1):
        value = {"level": value}
    return value


# -- 1. a typo'd write key ----------------------------------------------------------------------------


def test_typo_write_key_sends_nothing_names_the_problem_and_delivers_once_fixed(
        start_make_run: Any, fake_segment: FakeSegment, tmp_path: Path) -> None:
    typo = "good-kye"
    assert typo not in fake_segment.write_keys
    env = {"BRIDGE_DATABASE_URL": sqlite_url(tmp_path), "SEGMENT_WRITE_KEY": typo,
           "SEGMENT_API_URL": fake_segment.url, "SEGMENT_CDN_URL": fake_segment.url}
    base, process = start_make_run(env, probe="/healthz?scope=accept")
    auth = callback_auth(process)

    bodies = [[mailjet_event("open", b * 10 + i, f"typo{b}-{i}@example.com") for i in range(10)]
              for b in range(3)]
    for body in bodies:
        assert post_mailjet(base, auth, json.dumps(body)) == {"accepted": 10, "duplicate": 0,
                                                              "quarantined": 0}
    expected = {message_id(dedupe_key(e)) for body in bodies for e in body}

    def held() -> dict[str, Any] | None:
        status, body = healthz(base)
        return body if status == 503 else None

    health = poll(held, 30, f"/healthz to say 503 {HELD_REASON!r}")
    assert health["reason"] == HELD_REASON, health
    assert health["segment"]["state"] == "unknown_write_key", health
    assert health["queue"]["pending"] + health["queue"]["leased"] == 30, health
    assert requests.get(f"{base}/healthz?scope=accept", timeout=5).status_code == 200

    code, output = cli(env, "check", "--segment-only")
    assert code == 1, output
    assert "FAIL Segment: Segment does not know this write key" in output, output

    # the forwarder has had rounds meanwhile (check takes a second or more): still nothing was sent
    with fake_segment.lock:
        assert fake_segment.requests == [], fake_segment.describe()
        assert fake_segment.dropped_unknown_key == []
        asked = fake_segment.cdn_counts[typo]
    assert asked >= 1
    assert healthz(base)[1]["queue"]["delivered"] == 0

    # the admin fixes the key without a restart
    fixed_at = time.monotonic()  # from the start of the command: the key is stored while it runs
    code, output = cli(env, "config", "set", "segment.write_key", "good-key")
    assert code == 0, output
    fake_segment.wait_for(lambda f: len(set(f.message_ids())) == 30, timeout=30)
    delivered_after = time.monotonic() - fixed_at

    assert set(fake_segment.message_ids()) == expected
    with fake_segment.lock:
        assert {r.write_key for r in fake_segment.requests} == {"good-key"}
        assert fake_segment.dropped_unknown_key == []
    poll(lambda: healthz(base)[0] == 200, 15, "/healthz to be 200 again")
    queue = wait_settled(base)
    assert queue["delivered"] == 30 and queue["dead"] == 0
    report(f"typo key: 0 of 30 sent while the key was unknown (CDN asked {asked}x, /healthz 503 "
           f"{HELD_REASON!r}, check exit 1); 30 delivered {delivered_after:.1f} s after `config set` "
           "was started")


# -- 2. Mailjet's grouped sample ----------------------------------------------------------------------


def test_mailjet_grouped_sample_is_four_events_with_email_id_from_mj_message_id(
        make_run: tuple[str, Process], fake_segment: FakeSegment) -> None:
    guide = json.loads((PEERS / "mailjet-event-api-guide.json").read_text())
    (grouped,) = [p["body"] for p in guide["payloads"] if p["name"].startswith("Grouping events")]
    assert len(grouped) == 4 and all("MessageID" not in e for e in grouped)
    base, process = make_run
    started = time.monotonic()
    answer = post_mailjet(base, callback_auth(process), json.dumps(grouped))
    assert answer == {"accepted": 4, "duplicate": 0, "quarantined": 0}

    fake_segment.wait_for(lambda f: len(f.accepted) >= 4, timeout=30)
    seconds = time.monotonic() - started
    calls = fake_segment.accepted
    assert len(calls) == 4 and len({c["messageId"] for c in calls}) == 4
    by_reply = {c["properties"]["smtp_reply"]: c for c in calls}
    for event in grouped:
        call = by_reply[event["smtp_reply"]]
        assert call["properties"]["email_id"] == event["mj_message_id"]
        assert call["messageId"] == message_id(dedupe_key(event))
        assert "mj_message_id" not in call["properties"]
    report(f"grouped sample: 4 events, 4 distinct messageIds, email_id = mj_message_id; "
           f"delivered in {seconds:.1f} s")


# -- 3. geo: null and string ids ----------------------------------------------------------------------


def test_null_fields_and_string_ids_are_accepted_and_delivered_as_strings(
        make_run: tuple[str, Process], fake_segment: FakeSegment) -> None:
    base, process = make_run
    opened = {"event": "open", "time": 1433103519, "MessageID": "19421777835146490",
              "email": "nulls@example.com", "mj_campaign_id": "1210245103", "mj_contact_id": "320",
              "customcampaign": "", "CustomID": None, "Payload": None, "ip": "127.0.0.1", "geo": None,
              "agent": "Mozilla/5.0"}
    unsub = {"event": "unsub", "time": 1433334941, "MessageID": "20547674933128000",
             "email": "nulls@example.com", "mj_campaign_id": "7276", "mj_contact_id": "126",
             "mj_list_id": "42", "CustomID": None, "Payload": None, "geo": None, "ip": None,
             "agent": None}
    answer = post_mailjet(base, callback_auth(process), json.dumps([opened, unsub]))
    assert answer == {"accepted": 2, "duplicate": 0, "quarantined": 0}

    fake_segment.wait_for(lambda f: len(f.accepted) >= 2, timeout=30)
    calls = {c["properties"]["mailjet_event"]: c for c in fake_segment.accepted}
    props = calls["open"]["properties"]
    assert props["email_id"] == "19421777835146490"  # beyond 2^53: exact, as text
    assert props["campaign_id"] == "1210245103" and props["contact_id"] == "320"
    assert not {"custom_id", "payload", "geo", "campaign_name"} & set(props), props
    assert "location" not in calls["open"]["context"] and calls["open"]["context"]["ip"] == "127.0.0.1"
    unsub_props = calls["unsub"]["properties"]
    assert (unsub_props["email_id"], unsub_props["campaign_id"], unsub_props["contact_id"],
            unsub_props["list_id"]) == ("20547674933128000", "7276", "126", "42")
    assert not {"ip", "userAgent", "location"} & set(calls["unsub"]["context"])
    assert wait_settled(base)["quarantined"] == 0
    report("null fields and string ids: 2 accepted, 0 quarantined, ids delivered as strings "
           f"(email_id {props['email_id']}, campaign_id {props['campaign_id']})")


# -- 4. a group holding poison values -----------------------------------------------------------------


def test_poison_values_in_a_group_do_not_hold_back_their_siblings(
        make_run: tuple[str, Process], fake_segment: FakeSegment, tmp_path: Path) -> None:
    base, process = make_run
    siblings = [mailjet_event("sent", 1, "sibling1@example.com"),
                mailjet_event("open", 2, "sibling2@example.com"),
                mailjet_event("click", 3, "sibling3@example.com", url="https://example.com/a")]
    unbalanced, balanced = "[" * 5000, "[" * 5000 + "]" * 5000
    # each poison event: its raw text, what a faithful delivery of it would carry, and what a
    # quarantine or dead letter of it must name
    poison: dict[str, tuple[str, Callable[[dict[str, Any]], bool], str]] = {
        "surrogate@example.com": (
            raw(mailjet_event("sent", 4, "surrogate@example.com", CustomID="@bad"), bad='"\\ud800"'),
            lambda call: False,  # no JSON text a Segment call can carry holds a lone surrogate
            "$.CustomID: holds a lone surrogate"),
        "deep-payload@example.com": (
            json.dumps(mailjet_event("open", 5, "deep-payload@example.com", Payload=unbalanced)),
            lambda call: call["properties"].get("payload") == unbalanced, "Payload"),
        "deep-json-payload@example.com": (
            json.dumps(mailjet_event("open", 6, "deep-json-payload@example.com", Payload=balanced)),
            lambda call: call["properties"].get("payload") == balanced, "Payload"),
        "huge-number@example.com": (
            raw(mailjet_event("click", 7, "huge-number@example.com", url="https://example.com/b",
                              score="@huge"), huge="1e400"),
            lambda call: False,  # beyond float range: JSON writers cannot write it back
            "$.score: inf is not a finite number"),
        "deep-object@example.com": (
            json.dumps(mailjet_event("open", 8, "deep-object@example.com", extra=nested(40))),
            lambda call: call["properties"].get("extra") == nested(40),
            "nests deeper than 32 levels"),
    }
    texts = [json.dumps(siblings[0]), poison["surrogate@example.com"][0],
             poison["deep-payload@example.com"][0], json.dumps(siblings[1]),
             poison["huge-number@example.com"][0], poison["deep-object@example.com"][0],
             poison["deep-json-payload@example.com"][0], json.dumps(siblings[2])]
    body = "[" + ",".join(texts) + "]"
    assert "\\ud800" in body and "1e400" in body

    started = time.monotonic()
    answer = post_mailjet(base, callback_auth(process), body)
    assert answer["accepted"] + answer["duplicate"] + answer["quarantined"] == len(texts), answer
    assert answer["accepted"] >= len(siblings) and answer["duplicate"] == 0, answer

    sibling_ids = {message_id(dedupe_key(e)) for e in siblings}
    fake_segment.wait_for(lambda f: sibling_ids <= set(f.message_ids()), timeout=60)
    siblings_seconds = time.monotonic() - started
    queue = wait_settled(base)

    store = open_store(sqlite_url(tmp_path))
    try:
        quarantined = {entry["body"]: " ".join(f"{e['path']}: {e['message']}"
                                               for e in json.loads(entry["errors"]))
                       for entry in store.quarantine_entries(1000)}
        dead = {row["payload"]: row["last_error"] for row in store.dead_letters(1000)}
    finally:
        store.close()
    delivered = calls_by_email(fake_segment)
    fates: dict[str, str] = {}
    for email, (_, faithful, reason) in poison.items():
        refused = {**{b: f"quarantined: {why}" for b, why in quarantined.items() if email in b},
                   **{p: f"dead letter: {why}" for p, why in dead.items() if email in p}}
        assert len(refused) + (email in delivered) == 1, (email, refused, delivered.get(email))
        if email in delivered:
            (call,) = delivered[email]
            assert faithful(call), f"{email} was delivered, but not faithfully: {call['properties']}"
            fates[email.split("@")[0]] = "delivered faithfully"
        else:
            (why,) = refused.values()
            assert reason in why, (email, why)
            fates[email.split("@")[0]] = why.split(":")[0]
    assert queue["quarantined"] == sum(f == "quarantined" for f in fates.values()), (queue, fates)
    assert answer["quarantined"] == queue["quarantined"]

    code, output = cli({"BRIDGE_DATABASE_URL": sqlite_url(tmp_path), "SEGMENT_API_URL": fake_segment.url,
                        "SEGMENT_CDN_URL": fake_segment.url}, "quarantine", "list")
    listed = [line for line in output.splitlines() if " mailjet " in line]
    assert code == 0 and len(listed) == queue["quarantined"], output
    for email, (_, _, reason) in poison.items():
        if fates[email.split("@")[0]] == "quarantined":
            assert any(reason in line for line in listed), (reason, output)
    report(f"poison group: 200 {answer}; 3 siblings delivered {siblings_seconds:.1f} s after the "
           f"answer; poison: {fates}; pending 0, leased 0")


# -- 5. an identify batch with poison traits ----------------------------------------------------------


def test_identify_batch_with_poison_traits_applies_its_innocent_contacts(
        start_make_run: Any, fake_segment: FakeSegment, fake_mailjet: FakeMailjet,
        tmp_path: Path) -> None:
    secret = "poison-shared-secret"
    fake_mailjet.define("big_number", "int")
    base, _ = start_make_run({"SEGMENT_SHARED_SECRET": secret, **MJ_ENV,
                              "MAILJET_API_URL": fake_mailjet.url})

    def identify(n: int, email: str, **traits: Any) -> dict[str, Any]:
        return {"type": "identify", "userId": f"u-{n}", "messageId": f"poison-{n}",
                "traits": {"email": email, **traits}}

    big = "9" * 5000
    texts = [
        json.dumps(identify(1, "ann@example.com", plan="pro", big_number=7)),
        raw(identify(2, "infinite@example.com", score="@huge"), huge="1e400"),
        json.dumps(identify(3, "year-one@example.com", renewal="0001-01-01T00:00:00+05:00")),
        raw(identify(4, "surrogate@example.com", nickname="@bad"), bad='"\\ud800"'),
        json.dumps(identify(5, "big-digits@example.com", big_number=big, plan="basic")),
        json.dumps(identify(6, "bob@example.com", plan="team", seats=3)),
    ]
    body = "[" + ",".join(texts) + "]"
    signature = hmac.new(secret.encode(), texts[0].encode(), hashlib.sha1).hexdigest()
    started = time.monotonic()
    response = requests.post(f"{base}/webhooks/segment", data=body.encode(), timeout=30,
                             headers={"Content-Type": "application/json", "X-Signature": signature})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert sum(answer.values()) == len(texts) and answer["quarantined"] == 0, answer

    fake_mailjet.wait_for(lambda f: {"ann@example.com", "bob@example.com"} <= set(f.contacts),
                          timeout=30)
    innocent_seconds = time.monotonic() - started
    queue = wait_settled(base)
    contacts = fake_mailjet.contacts
    assert contacts["ann@example.com"]["Properties"] == {"plan": "pro", "big_number": 7}
    assert contacts["bob@example.com"]["Properties"] == {"plan": "team", "seats": 3}

    store = open_store(sqlite_url(tmp_path))
    try:
        dead = store.dead_letters(1000)
    finally:
        store.close()
    reasons = {row["kind"] + " " + row["payload"][:200]: row["last_error"] for row in dead}

    def dead_about(email: str) -> list[str]:
        return [reason for key, reason in reasons.items() if email in key]

    fates = {}
    for email, reason in (("infinite@example.com", "$.traits.score inf is not a finite number"),
                          ("surrogate@example.com", "$.traits.nickname holds a lone surrogate")):
        assert email not in contacts, contacts[email]
        assert [why for why in dead_about(email) if reason in why], (email, reasons)
        fates[email.split("@")[0]] = "dead letter"
    # the year-1 date cannot be a UTC date-time: a dead letter, or kept as the text it is
    year_one = contacts.get("year-one@example.com", {}).get("Properties", {})
    if "renewal" in year_one:
        assert year_one["renewal"] == "0001-01-01T00:00:00+05:00", year_one
        fates["year-one"] = "applied as text"
    else:
        assert dead_about("year-one@example.com"), reasons
        fates["year-one"] = "dead letter"
    # 5,000 digits into an int definition: never a wrong number; the rest of the contact may go
    big_digits = contacts.get("big-digits@example.com", {}).get("Properties", {})
    assert "big_number" not in big_digits, big_digits
    assert [why for why in dead_about("big-digits@example.com") if "big_number" in why], reasons
    fates["big-digits"] = ("property dead letter, rest applied" if big_digits.get("plan") == "basic"
                           else "dead letter")
    assert queue["pending"] == 0 and queue["leased"] == 0
    report(f"poison identifies: answer {answer}; innocent contacts applied "
           f"{innocent_seconds:.1f} s after the answer; poison: {fates}; pending 0, leased 0")


# -- 6. kill -9 with no further traffic ---------------------------------------------------------------


def leased_by_kind(database: str) -> dict[str, int]:
    return {kind: n for (kind, state), n in outbox_counts(database).items() if state == "leased"}


def test_kill_9_then_no_traffic_delivers_held_rows_of_both_directions_within_lease_plus_30_s(
        fake_segment: FakeSegment, fake_mailjet: FakeMailjet, tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'kill.db'}"
    lease = 5
    bridge = Bridge(bridge_env(database, fake_segment.url, BRIDGE_LEASE_SECONDS=str(lease),
                               BRIDGE_HTTP_TIMEOUT="10", MAILJET_API_URL=fake_mailjet.url, **MJ_ENV))
    try:
        bridge.start_web()
        events = [mailjet_event("open", i, f"kill{i}@example.com") for i in range(300)]
        for start in range(0, len(events), 100):
            response = requests.post(f"{bridge.url}/webhooks/mailjet", json=events[start:start + 100],
                                     auth=("mailjet", "fault-pass"), timeout=30)
            assert response.json()["accepted"] == 100, response.text
        identifies = [{"type": "identify", "userId": f"k-{i}", "messageId": f"kill-{i}",
                       "traits": {"email": f"contact{i}@example.com", "seats": i}} for i in range(30)]
        response = requests.post(f"{bridge.url}/webhooks/segment", json=identifies, timeout=30,
                                 headers={"Authorization": "Bearer fault-token"})
        assert response.json()["accepted"] == 30, response.text

        # Segment hangs on the first batch and Mailjet's job runs on: the worker holds both leases
        fake_segment.then(Scripted(503, delay=8.0))
        fake_mailjet.polls_per_job = 10_000
        bridge.start_worker()
        fake_segment.wait_for(lambda f: not f.script, timeout=20)
        fake_mailjet.wait_for(lambda f: f.calls("GET", "/managemanycontacts/") >= 1, timeout=20)
        held = leased_by_kind(database)
        assert held.get(TRACK_KIND) == 300 and held.get(CONTACT_KIND) == 30, held

        bridge.kill("worker")
        killed_at = time.monotonic()
        fake_mailjet.polls_per_job = 1  # the next job ends at once
        bridge.start_worker()  # and no new traffic from here on

        wanted_ids = {message_id(dedupe_key(e)) for e in events}
        wanted_contacts = {i["traits"]["email"] for i in identifies}
        done: dict[str, float] = {}
        budget = lease + 30

        def both_delivered() -> bool:
            if "segment" not in done and wanted_ids <= set(fake_segment.message_ids()):
                done["segment"] = time.monotonic() - killed_at
            with fake_mailjet.lock:
                applied = wanted_contacts <= set(fake_mailjet.contacts)
            if "mailjet" not in done and applied:
                done["mailjet"] = time.monotonic() - killed_at
            return len(done) == 2

        poll(both_delivered, budget + 10, f"both directions delivered after the kill ({done})")
        store_settled(database)
        counts = outbox_counts(database)
        assert counts == {(TRACK_KIND, "delivered"): 300, (CONTACT_KIND, "delivered"): 30}, counts
        assert fake_mailjet.contacts["contact7@example.com"]["Properties"] == {"seats": 7}
        assert done["segment"] <= budget and done["mailjet"] <= budget, done
        report(f"kill -9 with no traffic (lease {lease} s): 300 events to Segment "
               f"{done['segment']:.1f} s and 30 contacts to Mailjet {done['mailjet']:.1f} s after the "
               f"kill (budget {budget} s)")
    finally:
        bridge.stop()


# -- 7. an outage with a kill, then recovery ----------------------------------------------------------


def test_2000_events_delivered_within_60_s_of_segment_recovering_from_an_outage_with_a_kill(
        fake_segment: FakeSegment, tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'outage.db'}"
    bridge = Bridge(bridge_env(database, fake_segment.url, BRIDGE_RETRY_MAX_SECONDS="5"))
    try:
        bridge.start_web()
        bridge.start_worker()
        outage_seconds = 20.0
        fake_segment.outage(outage_seconds, [503])
        outage_ends = time.monotonic() + outage_seconds
        fake_segment.then(Scripted(500), Scripted(500),
                          *[Scripted(429, headers={"Retry-After": "1"}) for _ in range(3)])

        sender = Sender(lambda: [bridge.url], pause=0.02)
        load = sender.start(make_events(20, 100))
        poll(lambda: len(sender.acked) >= 1000, 30, "half of the load accepted")
        fake_segment.wait_for(lambda f: any(r.status == 503 for r in f.requests), timeout=20)
        bridge.kill("worker")
        assert time.monotonic() < outage_ends, "the kill must fall within the outage"
        bridge.start_worker()
        load.join(60)
        assert not load.is_alive() and len(sender.acked) == 2000, sender.statuses

        fake_segment.wait_for(lambda f: set(f.message_ids()) >= sender.acked, timeout=90)
        with fake_segment.lock:
            answers = list(fake_segment.requests)
        failures = [r for r in answers if r.status != 200]
        assert [r.status for r in failures][-5:] == [500, 500, 429, 429, 429], [r.status for r in failures]
        assert {r.status for r in failures[:-5]} == {503}
        recovered_at = failures[-1].at  # Segment answers 200 from here on
        first_200_at = min(r.at for r in answers if r.status == 200)
        seen: set[str] = set()
        complete_at = None
        for r in answers:
            if r.status == 200:
                seen.update(call["messageId"] for call in r.batch)
                if seen >= sender.acked:
                    complete_at = r.at
                    break
        assert complete_at is not None
        assert set(fake_segment.message_ids()) == sender.acked
        since_recovery, since_first_200 = complete_at - recovered_at, complete_at - first_200_at
        assert since_recovery < 60, since_recovery
        stats = store_settled(database)
        assert (stats["delivered"], stats["dead"]) == (2000, 0), stats
        report(f"outage (20 s 503, 500 x2, 429 Retry-After 1 x3, worker kill -9 + restart during "
               f"it): 2,000 of 2,000 delivered {since_recovery:.1f} s after Segment's recovery "
               f"({since_first_200:.1f} s after its first 200); {len(failures)} failed answers, "
               f"{len(fake_segment.accepted) - 2000} duplicate calls sent")
    finally:
        bridge.stop()
