"""``POST /webhooks/mailjet``: auth, body shapes, per-event validation, dedupe, and error answers."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from bridge.app import create_app
from bridge.config import Settings, load_settings
from bridge.inbound.fields import EVENT_NAME_PRESETS
from bridge.inbound.intake import KIND
from bridge.inbound.track import track_call
from bridge.storage.base import NewItem
from tests.conftest import T0, basic
from tests.test_track import grouped_sample, old_rule_key

URL = "/webhooks/mailjet"


def post(client: Any, body: Any, headers: dict[str, str], raw: bytes | None = None) -> Any:
    data = raw if raw is not None else json.dumps(body).encode()
    return client.post(URL, data=data, headers={**headers, "Content-Type": "application/json"})


# -- authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, basic("mailjet", "wrong"), basic("other", "s3cret-pass"), basic("", ""),
     {"Authorization": "Bearer s3cret-pass"}, {"Authorization": "Basic !!notbase64"}],
)
def test_missing_or_wrong_credentials_get_401(client: Any, headers: dict[str, str],
                                              mailjet_events: dict[str, Any]) -> None:
    response = post(client, mailjet_events["sent"], headers)
    assert response.status_code == 401
    assert response.json["error"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert client.application.extensions["bridge"].store.stats(0)["pending"] == 0


def test_generated_credentials_are_stored_and_announced_once(tmp_path: Path,
                                                            mailjet_events: dict[str, Any]) -> None:
    env = {"BRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}",
           "BRIDGE_PUBLIC_URL": "https://bridge.example.com"}
    said: list[str] = []
    first = create_app(load_settings(env), announce=said.append)
    second = create_app(load_settings(env), announce=said.append)
    callbacks = [line for line in said if "/webhooks/mailjet" in line]
    assert len(callbacks) == 1
    assert len([line for line in said if line.startswith("Admin password generated")]) == 1
    url = urlsplit(callbacks[0].rsplit(" ", 1)[-1])
    assert (url.scheme, url.hostname, url.path) == ("https", "bridge.example.com", "/webhooks/mailjet")
    creds = first.extensions["bridge"].credentials
    assert (url.username, url.password) == (creds.username, creds.password)
    assert len(creds.password) >= 24
    assert second.extensions["bridge"].credentials == creds.__class__(
        creds.username, creds.password, "stored")
    response = post(second.test_client(), mailjet_events["sent"],
                    basic(url.username or "", url.password or ""))
    assert response.status_code == 200
    for app in (first, second):
        app.extensions["bridge"].store.close()


# -- body shapes -------------------------------------------------------------------------------


def test_version_1_single_object(client: Any, auth: dict[str, str],
                                 mailjet_events: dict[str, Any]) -> None:
    response = post(client, mailjet_events["open"], auth)
    assert response.status_code == 200
    assert response.json == {"accepted": 1, "duplicate": 0, "quarantined": 0}


def test_version_2_group_of_all_seven_types(client: Any, auth: dict[str, str],
                                            mailjet_events: dict[str, Any]) -> None:
    response = post(client, list(mailjet_events.values()), auth)
    assert response.json == {"accepted": 7, "duplicate": 0, "quarantined": 0}


def test_empty_array_is_fine(client: Any, auth: dict[str, str]) -> None:
    response = post(client, [], auth)
    assert response.status_code == 200
    assert response.json == {"accepted": 0, "duplicate": 0, "quarantined": 0}


def test_invalid_events_are_quarantined_valid_ones_accepted(client: Any, auth: dict[str, str],
                                                            mailjet_events: dict[str, Any]) -> None:
    body = [
        mailjet_events["sent"],
        {**mailjet_events["open"], "MessageID": "not-a-number"},
        {"event": "typofix", "time": 1},
        {"time": 1},
        "not an object",
        mailjet_events["click"],
    ]
    response = post(client, body, auth)
    assert response.status_code == 200
    assert response.json == {"accepted": 2, "duplicate": 0, "quarantined": 4}
    store = client.application.extensions["bridge"].store
    entries = store.quarantine_entries()
    reasons = {json.loads(e["errors"])[0]["message"] for e in entries}
    assert '"not-a-number" does not match "^(0|-?[1-9][0-9]{0,39})$"' in reasons
    assert any(r.startswith('unknown event type "typofix"') for r in reasons)
    assert "'event' is a required property" in reasons
    assert "an event must be a JSON object" in reasons
    assert {json.loads(e["body"]).get("event") for e in entries if e["body"].startswith("{")} >= {
        "open", "typofix"}


def test_only_event_and_time_are_required(client: Any, auth: dict[str, str]) -> None:
    response = post(client, [{"event": "bounce", "time": 1430812195, "MessageID": 1,
                              "error": "user unknown"}], auth)
    assert response.json["accepted"] == 1


def test_redelivered_event_is_not_queued_twice(client: Any, auth: dict[str, str],
                                               mailjet_events: dict[str, Any]) -> None:
    post(client, [mailjet_events["sent"], mailjet_events["open"]], auth)
    again = post(client, [mailjet_events["open"], mailjet_events["click"]], auth)
    assert again.json == {"accepted": 1, "duplicate": 1, "quarantined": 0}
    assert client.application.extensions["bridge"].store.stats(0)["pending"] == 3


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"not json", "not valid JSON"),
        (b'{"event": "sent",', "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (b'{"event": "sent", "time": NaN}', "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (b"", "not valid JSON"),
        (b'"a string"', "must be a JSON object"),
        (b"42", "must be a JSON object"),
        (b"null", "must be a JSON object"),
    ],
)
def test_unusable_body_gets_400_json(client: Any, auth: dict[str, str], raw: bytes, fragment: str) -> None:
    response = post(client, None, auth, raw=raw)
    assert response.status_code == 400
    assert response.json["error"] == "bad_request"
    assert fragment in response.json["message"]


def test_body_over_the_limit_gets_413(env: dict[str, str], auth: dict[str, str]) -> None:
    app = create_app(load_settings({**env, "BRIDGE_MAX_BODY_BYTES": "2048"}), announce=lambda _: None)
    big = [{"event": "sent", "time": 1, "smtp_reply": "x" * 4096}]
    response = post(app.test_client(), big, auth)
    assert response.status_code == 413
    assert response.json["error"] == "request_entity_too_large"
    assert "2,048-byte limit" in response.json["message"]
    app.extensions["bridge"].store.close()


def test_storage_failure_answers_503_and_accepts_nothing(settings: Settings, auth: dict[str, str],
                                                         mailjet_events: dict[str, Any]) -> None:
    app = create_app(settings, announce=lambda _: None)
    store = app.extensions["bridge"].store
    path = settings.database_url.removeprefix("sqlite:///")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    client = app.test_client()
    store.close()  # its connections are opened again, failing fast instead of waiting 10 s
    store.busy_timeout_ms = 50
    response = post(client, [mailjet_events["sent"]], auth)
    assert response.status_code == 503
    assert response.json["error"] == "storage_unavailable"
    assert response.headers["Retry-After"] == "30"
    blocker.execute("ROLLBACK")
    blocker.close()
    assert post(client, [mailjet_events["sent"]], auth).json["accepted"] == 1
    store.close()


def test_other_errors_are_json_too(client: Any) -> None:
    assert client.get("/nowhere").json["error"] == "not_found"
    response = client.get(URL)
    assert response.status_code == 405 and response.json["error"] == "method_not_allowed"


# -- lenient intake, strict output (issue #9) --------------------------------------------------


def test_nulls_and_text_ids_are_accepted(client: Any, auth: dict[str, str],
                                         mailjet_events: dict[str, Any]) -> None:
    lenient = {**mailjet_events["open"], "geo": None, "Payload": None, "CustomID": None,
               "MessageID": "19421777396190490", "mj_campaign_id": "7173", "mj_contact_id": "320"}
    response = post(client, [lenient], auth)
    assert response.json == {"accepted": 1, "duplicate": 0, "quarantined": 0}
    # the same event with numbers is the same event
    assert post(client, [mailjet_events["open"]], auth).json["duplicate"] == 1


@pytest.mark.parametrize(("raw_event", "path", "fragment"), [
    (rb'{"event":"click","time":1,"email":"a\ud800@x.com"}', "$.email", "lone surrogate"),
    (rb'{"event":"click","time":1,"url":"https://x.example/\udfff"}', "$.url", "lone surrogate"),
    (rb'{"event":"sent","time":1,"MessageID":1,"\ud800":"key"}', '$["\\ud800"]', "the key holds"),
    (rb'{"event":"sent","time":1,"MessageID":1,"extra":{"n":[1e400]}}', "$.extra.n[0]", "not a finite"),
    (rb'{"event":"sent","time":-1e400}', "$.time", "not a finite"),
    (b'{"event":"sent","time":1,"x":' + b"[" * 40 + b"]" * 40 + b"}", "$.x" + "[0]" * 31,
     "deeper than 32"),
    (b'{"event":"sent","time":1,"x":' + b"[" * 900 + b"]" * 900 + b"}", "$.x" + "[0]" * 31,
     "deeper than 32"),
])
def test_values_a_call_cannot_carry_are_quarantined_never_500(
    client: Any, auth: dict[str, str], mailjet_events: dict[str, Any], raw_event: bytes, path: str,
    fragment: str,
) -> None:
    raw = b"[" + json.dumps(mailjet_events["sent"]).encode() + b"," + raw_event + b"]"
    response = post(client, None, auth, raw=raw)
    assert response.status_code == 200
    assert response.json == {"accepted": 1, "duplicate": 0, "quarantined": 1}
    (entry,) = client.application.extensions["bridge"].store.quarantine_entries()
    (error,) = json.loads(entry["errors"])
    assert error["path"] == path and fragment in error["message"]
    assert entry["body"] == raw_event.decode()
    assert post(client, None, auth, raw=raw_event).json["quarantined"] == 1  # again: once kept


def test_deep_payload_text_is_accepted_and_sent_as_text(client: Any, auth: dict[str, str]) -> None:
    """A Payload string is any text: only when it holds JSON a call can carry is it parsed."""
    payload = "[" * 5000
    event = {"event": "sent", "time": 1, "MessageID": 5, "Payload": payload}
    assert post(client, [event], auth).json["accepted"] == 1
    (item,) = client.application.extensions["bridge"].store.claim(KIND, 10, "t", 60, T0)
    call = track_call(json.loads(item.payload), event_names=EVENT_NAME_PRESETS["mailjet"],
                      key=item.dedupe_key)
    assert call["properties"]["payload"] == payload


# -- dedupe across the rule change ---------------------------------------------------------------


def accept_under_old_rule(store: Any, events: list[dict[str, Any]]) -> None:
    """What the bridge stored before issue #9: each event under its old key, the first of a clash."""
    store.accept([NewItem(KIND, old_rule_key(e), e["event"], json.dumps(e), e["time"]) for e in events],
                 [], T0)


def test_redelivery_of_an_event_accepted_under_the_old_rule_is_a_duplicate(
    client: Any, auth: dict[str, str], mailjet_events: dict[str, Any],
) -> None:
    store = client.application.extensions["bridge"].store
    grouped = grouped_sample()
    no_id = {"event": "bounce", "time": 1430812195, "email": "b@x.com", "error": "user unknown"}
    accept_under_old_rule(store, [*grouped, no_id, mailjet_events["open"]])
    assert store.stats(T0)["pending"] == 5  # the old rule merged the first two of the group
    response = post(client, [*grouped, no_id, mailjet_events["open"]], auth)
    assert response.json == {"accepted": 0, "duplicate": 6, "quarantined": 0}
    # an event the old rule never saw is new, even beside old ones
    other = {**no_id, "time": no_id["time"] + 1}
    assert post(client, [other], auth).json == {"accepted": 1, "duplicate": 0, "quarantined": 0}
    # The limit of a legacy key: it finds what the old rule would have found. An id-less event that
    # the old rule merged with a stored row (same type, email, second, url) still counts as that row
    # until the row is pruned, as it did before the change.
    merged = {**no_id, "error": "mailbox inactive"}
    assert post(client, [merged], auth).json["duplicate"] == 1


def test_grouped_sample_is_four_events_and_a_redelivery_none(client: Any, auth: dict[str, str]) -> None:
    assert post(client, grouped_sample(), auth).json == {"accepted": 4, "duplicate": 0, "quarantined": 0}
    assert post(client, grouped_sample(), auth).json == {"accepted": 0, "duplicate": 4, "quarantined": 0}
