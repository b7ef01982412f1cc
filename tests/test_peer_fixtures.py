"""Payloads written by others (tests/fixtures/peers/, each file naming its source) through the real
webhook, storage and mapping: none is lost, each accepted event gets its own messageId, and every
call is strict JSON. What is expected of them is our mapping (docs/behaviour.md), not theirs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.app import create_app
from bridge.config import load_settings
from bridge.inbound.fields import EVENT_NAME_PRESETS
from bridge.inbound.intake import KIND
from bridge.inbound.track import track_call
from tests.conftest import FIXTURES, T0, basic

PEERS = FIXTURES / "peers"
NAMES = EVENT_NAME_PRESETS["mailjet"]
AUTH = basic("mailjet", "s3cret-pass")


def _cases() -> list[Any]:
    cases = []
    for path in sorted(PEERS.glob("*.json")):
        for payload in json.loads(path.read_text())["payloads"]:
            cases.append(pytest.param(payload["body"], id=f"{path.stem}: {payload['name'].strip()}"))
    return cases


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Any]:
    """A fresh bridge per payload: the peers' test cases are independent posts."""
    env = {"BRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'peer.db'}",
           "BRIDGE_WEBHOOK_USERNAME": "mailjet", "BRIDGE_WEBHOOK_PASSWORD": "s3cret-pass"}
    app = create_app(load_settings(env), announce=lambda _: None)
    yield app
    app.extensions["bridge"].store.close()


def deliver(app: Any, body: Any) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Post a body as Mailjet does, then map every stored event as the forwarder does."""
    response = app.test_client().post("/webhooks/mailjet", data=json.dumps(body).encode(),
                                      headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 200, response.json
    store = app.extensions["bridge"].store
    claimed = store.claim(KIND, 10_000, "peer-test", 60, T0)
    calls = [track_call(json.loads(item.payload), event_names=NAMES, key=item.dedupe_key)
             for item in claimed]
    return response.json, calls


def test_every_source_is_present_and_named() -> None:
    sources = {json.loads(p.read_text())["source"]["repository"] for p in PEERS.glob("*.json")}
    assert sources == {"mailjet/api-documentation", "anymail/django-anymail",
                       "rudderlabs/rudder-transformer"}
    for path in PEERS.glob("*.json"):
        source = json.loads(path.read_text())["source"]
        assert source["path"] and len(source["commit"]) == 40, path.name


@pytest.mark.parametrize("body", _cases())
def test_no_peer_event_is_lost(app: Any, body: Any) -> None:
    sent = len(body) if isinstance(body, list) else 1
    answer, calls = deliver(app, body)
    assert answer["duplicate"] == 0
    assert answer["accepted"] + answer["quarantined"] == sent
    assert len(calls) == answer["accepted"]
    assert len({call["messageId"] for call in calls}) == len(calls)
    for call in calls:
        json.dumps(call, allow_nan=False).encode("utf-8")  # strict JSON, valid UTF-8
    for entry in app.extensions["bridge"].store.quarantine_entries():
        assert json.loads(entry["errors"]), "a quarantined event says why"


def peer_body(source: str, name: str) -> Any:
    payloads = json.loads((PEERS / source).read_text())["payloads"]
    return next(p["body"] for p in payloads if p["name"] == name)


def test_mailjet_grouped_sample_is_four_events(app: Any) -> None:
    body = peer_body("mailjet-event-api-guide.json", "Grouping events (Version 2): the JSON array")
    answer, calls = deliver(app, body)
    assert answer == {"accepted": 4, "duplicate": 0, "quarantined": 0}
    assert len({call["messageId"] for call in calls}) == 4
    assert sorted(c["properties"]["email_id"] for c in calls) == sorted(e["mj_message_id"] for e in body)
    assert all("mj_message_id" not in c["properties"] for c in calls)
    again, _ = deliver(app, body)
    assert again == {"accepted": 0, "duplicate": 4, "quarantined": 0}


def test_what_our_mapping_makes_of_the_peers(app: Any) -> None:
    """A few fields where the peers' samples differ from Mailjet's guide."""
    bodies = [
        peer_body("django-anymail.json", "test_sent_event"),
        peer_body("rudderstack-transformer.json", "MailJet email open event"),
        peer_body("rudderstack-transformer.json", "MailJet when no email is present"),
        peer_body("django-anymail.json", "test_unsub_event"),
    ]
    _, calls = deliver(app, [event for body in bodies for event in body])
    sent, opened, no_email, unsub = calls
    assert sent["properties"]["payload"] == {"meta1": "simple string", "meta2": 2}
    assert sent["properties"]["campaign_name"] == "tag1"
    assert opened["properties"]["email_id"] == "94857068804950690"  # beyond 2^53, every digit
    assert opened["properties"]["message_guid"] == "54d6cdec-f659-4547-8926-13d9c4126b82"
    assert no_email["anonymousId"] == "mailjet-contact:373142182"
    assert "traits" not in no_email["context"]
    assert "list_id" not in unsub["properties"] and "location" not in unsub["context"]
    assert unsub["context"]["userAgent"] == "List-Unsubscribe"
