"""Real processes: ``make run`` and ``mailjet-bridge worker`` against the fake Segment server."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import requests

from bridge.app import create_app
from bridge.config import load_settings
from bridge.inbound.fields import EVENT_NAME_PRESETS
from bridge.inbound.intake import KIND as SEGMENT_TRACK
from bridge.inbound.track import dedupe_key, message_id
from bridge.storage.sqlite import SQLiteStore
from tests.fakes.mailjet import FakeMailjet
from tests.fakes.segment import FakeSegment
from tests.processes import BIN, Process, callback_auth, poll, spawn


def test_make_run_delivers_a_grouped_body_of_all_seven_types(
        make_run: tuple[str, Process], fake_segment: FakeSegment,
        mailjet_events: dict[str, Any]) -> None:
    base, process = make_run
    auth = callback_auth(process)

    invalid = [{**mailjet_events["open"], "time": "yesterday"}, {"event": "typofix", "time": 1}]
    body = [*mailjet_events.values(), *invalid]
    response = requests.post(f"{base}/webhooks/mailjet", json=body, auth=auth, timeout=10)
    assert response.status_code == 200
    assert response.json() == {"accepted": 7, "duplicate": 0, "quarantined": 2}

    fake_segment.wait_for(lambda f: len(f.accepted) == 7, timeout=20)
    calls = {c["properties"]["mailjet_event"]: c for c in fake_segment.accepted}
    names = EVENT_NAME_PRESETS["mailjet"]
    for kind, event in mailjet_events.items():
        call = calls[kind]
        assert call["type"] == "track" and call["event"] == names[kind]
        assert call["anonymousId"] == event["email"]
        assert call["messageId"] == message_id(dedupe_key(event))
        assert call["timestamp"].startswith("2015-")
        assert call["context"]["traits"] == {"email": event["email"]}
        assert call["context"]["library"]["name"] == "mailjet-segment-bridge"
        assert call["integrations"] == {"Mailjet": False}
        assert call["properties"]["email_id"] == str(event["MessageID"])
    assert calls["click"]["properties"]["link_url"] == "https://mailjet.com"
    assert calls["bounce"]["properties"]["hard_bounce"] is True
    assert all(r.sent_at for r in fake_segment.requests)

    # Mailjet redelivers the same group (it timed out on its side): nothing is sent twice
    again = requests.post(f"{base}/webhooks/mailjet", json=body, auth=auth, timeout=10)
    assert again.json() == {"accepted": 0, "duplicate": 7, "quarantined": 2}
    single = requests.post(f"{base}/webhooks/mailjet", json=mailjet_events["spam"], auth=auth, timeout=10)
    assert single.json() == {"accepted": 0, "duplicate": 1, "quarantined": 0}
    health = requests.get(f"{base}/healthz", timeout=2).json()
    assert health["queue"]["pending"] == 0 and health["queue"]["delivered"] == 7
    assert health["queue"]["quarantined"] == 2
    assert len(fake_segment.accepted) == 7
    assert requests.post(f"{base}/webhooks/mailjet", json=body, timeout=10).status_code == 401


def test_ctrl_c_stops_make_run_cleanly(make_run: tuple[str, Process]) -> None:
    _, process = make_run
    started = time.monotonic()
    process.stop(signal.SIGINT)
    assert time.monotonic() - started < 15
    assert "Traceback" not in process.output(), process.output()


def test_worker_resumes_rows_left_pending_or_leased(tmp_path: Path, fake_segment: FakeSegment) -> None:
    """A restart finds rows a crashed process left pending and leased; all of them are delivered."""
    db = f"sqlite:///{tmp_path / 'bridge.db'}"
    settings = load_settings({"BRIDGE_DATABASE_URL": db, "BRIDGE_WEBHOOK_USERNAME": "u",
                              "BRIDGE_WEBHOOK_PASSWORD": "p"})
    app = create_app(settings, announce=lambda _: None)  # no write key: everything stays queued
    events = [{"event": "open", "time": 1_700_000_000 + i, "MessageID": i + 1,
               "email": f"r{i}@example.com"} for i in range(20)]
    client = app.test_client()
    assert client.post("/webhooks/mailjet", json=events, auth=("u", "p")).json["accepted"] == 20
    store = app.extensions["bridge"].store
    leased = store.claim(SEGMENT_TRACK, 8, "process-that-crashed", 2, time.time())
    assert len(leased) == 8
    store.close()

    worker = spawn([str(BIN / "mailjet-bridge"), "worker"], {
        "BRIDGE_DATABASE_URL": db, "BRIDGE_WEBHOOK_USERNAME": "u", "BRIDGE_WEBHOOK_PASSWORD": "p",
        "SEGMENT_WRITE_KEY": "good-key", "SEGMENT_API_URL": fake_segment.url,
        "SEGMENT_CDN_URL": fake_segment.url,
    })
    try:
        fake_segment.wait_for(lambda f: len(f.accepted) == 20, timeout=30)
    finally:
        assert worker.stop(signal.SIGTERM) == 0, worker.output()
    assert sorted(fake_segment.message_ids()) == sorted(message_id(dedupe_key(e)) for e in events)


def test_wsgi_app_starts_no_thread(tmp_path: Path, fake_segment: FakeSegment) -> None:
    env = {"BRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}", "SEGMENT_WRITE_KEY": "good-key",
           "SEGMENT_API_URL": fake_segment.url, "SEGMENT_CDN_URL": fake_segment.url}
    code = ("import threading, wsgi, json; "
            "print(json.dumps([threading.active_count(), type(wsgi.app).__name__]))")
    process = spawn([sys.executable, "-c", code], env)
    assert process.wait(30) == 0, process.output()
    assert json.loads(process.lines[-1]) == [1, "Flask"]


def test_identifies_become_contacts_and_identity_flows_back_inbound(
        start_make_run: Any, fake_segment: FakeSegment, fake_mailjet: FakeMailjet, tmp_path: Path) -> None:
    """The outbound direction end to end, through ``make run``: signed identifies in, typed contacts in
    list 7, dead letters for what cannot go, and a later Mailjet event carrying the learned userId."""
    secret = "e2e-shared-secret"
    fake_mailjet.lists[7] = {}
    base, process = start_make_run({
        "SEGMENT_SHARED_SECRET": secret, "MAILJET_API_KEY": "mj-key", "MAILJET_API_SECRET": "mj-secret",
        "MAILJET_API_URL": fake_mailjet.url, "MAILJET_LIST_ID": "7",
    })

    def send(events: Any, signed: Any) -> dict[str, Any]:
        body = json.dumps(events, separators=(",", ":"), ensure_ascii=False)
        text = json.dumps(signed, separators=(",", ":"), ensure_ascii=False)
        signature = hmac.new(secret.encode(), text.encode(), hashlib.sha1).hexdigest()
        response = requests.post(f"{base}/webhooks/segment", data=body.encode(), timeout=10,
                                 headers={"Content-Type": "application/json", "X-Signature": signature})
        assert response.status_code == 200, response.text
        return response.json()

    single = {"type": "identify", "userId": "u-ada", "messageId": "m-1",
              "traits": {"email": "Ada@Example.com", "firstName": "Ada", "lastName": "Lovelace"}}
    assert send(single, single)["accepted"] == 1
    batch = [
        {"type": "identify", "userId": "u-ada", "messageId": "m-2",
         "traits": {"email": "ada@example.com", "address": {"city": "London", "postalCode": "NW1"},
                    "orderCount": 0, "isVip": False, "nickname": "", "ltv": 99.5,
                    "signupDate": "2024-05-01T10:20:30Z", "tags": ["beta", "analyst"],
                    "order_completed_last_30days": True}},
        {"type": "identify", "userId": "u-bob", "messageId": "m-3",
         "traits": {"email": "bob@example.com", "name": "Bob", "ltv": 5}},
        {"type": "identify", "userId": "u-ada", "messageId": "m-4", "traits": {"plan": "pro"}},
        {"type": "identify", "userId": "u-nobody", "messageId": "m-5", "traits": {"plan": "x"}},
    ]
    assert send(batch, batch[0])["accepted"] == 4

    fake_mailjet.wait_for(lambda f: "plan" in f.contacts.get("ada@example.com", {}).get("Properties", {}))
    ada = fake_mailjet.contacts["ada@example.com"]
    assert ada["Name"] == "Ada Lovelace"
    assert ada["Properties"] == {
        "first_name": "Ada", "last_name": "Lovelace", "address_city": "London",
        "address_postal_code": "NW1", "order_count": 0, "is_vip": False, "nickname": "", "ltv": 99.5,
        "signup_date": "2024-05-01T10:20:30Z", "tags": '["beta","analyst"]',
        "order_completed_last_30days": True, "plan": "pro",
    }
    assert fake_mailjet.contacts["bob@example.com"]["Properties"] == {"name": "Bob", "ltv": 5.0}
    assert {name: d["Datatype"] for name, d in fake_mailjet.metadata.items()} == {
        "first_name": "str", "last_name": "str", "address_city": "str", "address_postal_code": "str",
        "order_count": "int", "is_vip": "bool", "nickname": "str", "ltv": "float",
        "signup_date": "datetime", "tags": "str", "order_completed_last_30days": "bool",
        "name": "str", "plan": "str",
    }
    assert fake_mailjet.lists[7] == {"ada@example.com": "subscribed", "bob@example.com": "subscribed"}
    assert set(fake_mailjet.contacts) == {"ada@example.com", "bob@example.com"}  # nobody created

    def settled() -> dict[str, Any] | None:
        health = requests.get(f"{base}/healthz", timeout=2).json()
        queue = health["queue"]
        return health if (queue["delivered"], queue["dead"], queue["leased"]) == (4, 1, 0) else None

    health = poll(settled, 15, "4 identifies delivered and 1 dead letter")
    assert health["mailjet"]["state"] == "ok", (health, process.output())
    store = SQLiteStore(tmp_path / "bridge.db")
    (dead,) = store.dead_letters()
    store.close()
    assert dead["last_error"].startswith("no email") and "'u-nobody'" in dead["last_error"]

    # a later Mailjet event for Ada reaches Segment with her userId
    auth = callback_auth(process)
    opened = {"event": "open", "time": 1_800_000_000, "MessageID": 123, "email": "ADA@example.com"}
    assert requests.post(f"{base}/webhooks/mailjet", json=opened, auth=auth, timeout=10).status_code == 200
    fake_segment.wait_for(lambda f: len(f.accepted) == 1)
    (call,) = fake_segment.accepted
    assert call["userId"] == "u-ada" and "anonymousId" not in call
    assert call["context"]["traits"]["email"] == "ada@example.com"
