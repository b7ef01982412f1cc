"""``POST /webhooks/segment``: X-Signature, body shapes, what is queued, skipped, learned and refused."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest

from bridge.app import create_app
from bridge.config import load_settings
from bridge.outbound.intake import CONTACT_KIND as MAILJET_CONTACT
from bridge.outbound.intake import contact_key

URL = "/webhooks/segment"
SECRET = "shh-segment-secret"


def stringify(value: Any) -> str:
    """What JavaScript's JSON.stringify produces: compact, unicode as is."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def sign(text: str, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), text.encode(), hashlib.sha1).hexdigest()


@pytest.fixture
def signed_app(env: dict[str, str]) -> Any:
    app = create_app(load_settings({**env, "SEGMENT_SHARED_SECRET": SECRET}), announce=lambda _: None)
    yield app
    app.extensions["bridge"].store.close()


def post(client: Any, text: str, signature: str | None = None) -> Any:
    headers = {"Content-Type": "application/json", "User-Agent": "Segment (Actions)",
               "Authorization": "Bearer test-webhook-token"}
    if signature is not None:
        headers["X-Signature"] = signature
    return client.post(URL, data=text.encode(), headers=headers)


IDENTIFY = {"type": "identify", "userId": "u-1", "messageId": "m-1",
            "traits": {"email": "Zoë@Example.com", "firstName": "Zoë", "vip": True}}


def test_signed_single_identify_is_accepted(signed_app: Any) -> None:
    body = stringify(IDENTIFY)
    response = post(signed_app.test_client(), body, sign(body))
    assert response.status_code == 200
    assert response.json == {"accepted": 1, "duplicate": 0, "quarantined": 0, "ignored": 0,
                             "skipped": 0, "dead": 0}


def test_batch_is_verified_on_its_first_element(signed_app: Any) -> None:
    events = [IDENTIFY, {**IDENTIFY, "messageId": "m-2", "userId": "u-2",
                         "traits": {"email": "b@x.com", "score": 1.0}}]
    body = stringify(events)
    response = post(signed_app.test_client(), body, sign(stringify(events[0])))
    assert response.json["accepted"] == 2
    # signing the whole array is not what Segment does, and is refused
    again = post(signed_app.test_client(), stringify([{**IDENTIFY, "messageId": "m-3"}]), sign(body))
    assert again.status_code == 401


def test_signature_uses_the_exact_raw_text(signed_app: Any) -> None:
    """1.0 stays 1.0 and key order stays as sent: re-serialising would break the signature."""
    text = '{"type":"identify","traits":{"email":"a@x.com","ltv":1.0,"b":1,"a":2},"messageId":"m-9"}'
    assert post(signed_app.test_client(), text, sign(text)).status_code == 200
    batch = "[" + text + "," + stringify(IDENTIFY) + "]"
    assert post(signed_app.test_client(), batch, sign(text)).status_code == 200


@pytest.mark.parametrize("signature", [None, "", "deadbeef", sign(stringify(IDENTIFY), "other-secret"),
                                       "éé", "ÿ" * 40])
def test_missing_or_wrong_signature_is_401(signed_app: Any, signature: str | None) -> None:
    response = post(signed_app.test_client(), stringify(IDENTIFY), signature)
    assert response.status_code == 401
    assert "X-Signature" in response.json["message"]
    assert signed_app.extensions["bridge"].store.stats(0)["pending"] == 0


def test_without_a_secret_no_signature_is_needed(client: Any) -> None:
    assert post(client, stringify(IDENTIFY)).json["accepted"] == 1


def test_empty_array_stores_nothing(signed_app: Any) -> None:
    response = post(signed_app.test_client(), "[]")
    assert response.status_code == 200
    assert response.json["accepted"] == 0


def test_only_identify_is_queued_other_types_are_counted(client: Any) -> None:
    events = [IDENTIFY, {"type": "track", "event": "Order Completed", "userId": "u-1"},
              {"type": "page", "userId": "u-1"}, {"type": "group", "groupId": "g"}]
    response = post(client, stringify(events))
    assert response.json == {"accepted": 1, "duplicate": 0, "quarantined": 0, "ignored": 3,
                             "skipped": 0, "dead": 0}


def test_mailjet_false_sends_nothing_but_learns_the_pair(client: Any) -> None:
    event = {**IDENTIFY, "integrations": {"All": True, "Mailjet": False}}
    response = post(client, stringify(event))
    assert response.json["skipped"] == 1 and response.json["accepted"] == 0
    store = client.application.extensions["bridge"].store
    assert store.user_ids_for(["zoë@example.com"]) == {"zoë@example.com": "u-1"}
    assert store.due_summary(MAILJET_CONTACT, 10**10).count == 0


def test_loop_guard_skips_what_this_bridge_sent(client: Any) -> None:
    event = {**IDENTIFY, "context": {"library": {"name": "mailjet-segment-bridge", "version": "0.1.0"}}}
    assert post(client, stringify(event)).json["skipped"] == 1


def test_segment_retry_is_a_duplicate(client: Any) -> None:
    post(client, stringify(IDENTIFY))
    assert post(client, stringify(IDENTIFY)).json["duplicate"] == 1


def test_bad_events_are_quarantined_good_ones_kept(client: Any) -> None:
    events = [IDENTIFY, {"type": "identify", "traits": "not an object"}, {"no": "type"}, 7]
    response = post(client, stringify(events))
    assert response.json["accepted"] == 1 and response.json["quarantined"] == 3
    entries = client.application.extensions["bridge"].store.quarantine_entries()
    assert {e["source"] for e in entries} == {"segment"}


@pytest.mark.parametrize("raw", ["not json", '"text"', "null"])
def test_unusable_body_is_400(client: Any, raw: str) -> None:
    response = post(client, raw)
    assert response.status_code == 400 and response.json["error"] == "bad_request"


# -- values a call cannot carry (issue #9) -------------------------------------------------------


@pytest.mark.parametrize(("trait", "fragment"), [
    ('"name": "Zo\\ud800"', "$.traits.name holds a lone surrogate"),
    ('"\\udc00": 1', '$.traits["\\udc00"] the key holds a lone surrogate'),
    ('"ltv": 1e400', "$.traits.ltv inf is not a finite number"),
    ('"deep": ' + "[" * 40 + "]" * 40, "nests deeper than 32 levels"),
    ('"email": "a\\ud800@x.com"', "$.traits.email holds a lone surrogate"),
])
def test_identify_a_call_cannot_carry_is_a_dead_letter(client: Any, trait: str, fragment: str) -> None:
    text = '{"type":"identify","userId":"u-7","messageId":"m-7","traits":{"email":"a@x.com",' + trait + "}}"
    body = "[" + stringify(IDENTIFY) + "," + text + "]"
    response = post(client, body)
    assert response.status_code == 200
    assert response.json == {"accepted": 1, "duplicate": 0, "quarantined": 0, "ignored": 0,
                             "skipped": 0, "dead": 1}
    store = client.application.extensions["bridge"].store
    (dead,) = store.dead_letters()
    assert (dead["kind"], dead["event_type"], dead["payload"]) == (MAILJET_CONTACT, "identify", text)
    assert dead["last_error"].startswith("cannot be sent faithfully: ") and fragment in dead["last_error"]
    assert store.user_ids_for(["a@x.com"]) == {}  # a refused identify teaches nothing
    # Segment's retry: counted again in the answer, kept once
    assert post(client, text).json["dead"] == 1
    assert len(store.dead_letters()) == 1


def test_refused_identify_is_keyed_like_a_queued_one(client: Any) -> None:
    """By Segment's messageId, so its retries are one dead letter; a surrogate there is no 500."""
    text = '{"type":"identify","messageId":"m-\\ud800","traits":{"email":"a@x.com"}}'
    assert post(client, text).json["dead"] == 1
    assert post(client, text.replace("traits", "context")).json["dead"] == 1
    assert len(client.application.extensions["bridge"].store.dead_letters()) == 1
    assert contact_key(json.loads(text), text) == contact_key(json.loads(text), "other text")


def test_other_calls_a_call_cannot_carry_are_ignored_or_quarantined(client: Any) -> None:
    events = ['{"type":"track","event":"x","properties":{"v":1e400}}',
              '{"type":"page","name":"\\ud800"}',
              '{"type":"\\ud800"}',
              '{"no_type":-1e400}']
    response = post(client, "[" + ",".join(events) + "]")
    assert response.status_code == 200
    assert response.json == {"accepted": 0, "duplicate": 0, "quarantined": 2, "ignored": 2,
                             "skipped": 0, "dead": 0}
    entries = client.application.extensions["bridge"].store.quarantine_entries()
    assert {json.loads(e["errors"])[0]["path"] for e in entries} == {"$.type", "$.no_type"}


@pytest.mark.parametrize("context", ['{"library": "x"}', '{"library": ["x"]}', '"text"'])
def test_odd_shapes_outside_the_schema_are_never_a_500(client: Any, context: str) -> None:
    text = '{"type":"identify","traits":{"email":"a@x.com"},"context":' + context + "}"
    response = post(client, text)
    assert response.status_code == 200
    assert response.json["accepted"] + response.json["quarantined"] == 1


# -- the endpoint is closed by default (#10) --------------------------------------------------------


def open_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in ("SEGMENT_WEBHOOK_TOKEN", "SEGMENT_SHARED_SECRET")}


def test_with_neither_token_nor_secret_a_token_is_generated_and_required(env: dict[str, str]) -> None:
    """On the previous main this endpoint accepted unsigned, unauthenticated identifies."""
    shown: list[str] = []
    app = create_app(load_settings(open_env(env)), announce=shown.append)
    try:
        token = app.extensions["bridge"].segment_token.value
        assert token and [line for line in shown if f"Authorization: Bearer {token}" in line]
        client = app.test_client()
        body = stringify(IDENTIFY)
        bare = client.post(URL, data=body, headers={"Content-Type": "application/json"})
        assert bare.status_code == 401 and "Bearer" in bare.json["message"]
        wrong = client.post(URL, data=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = client.post(URL, data=body, headers={"Authorization": f"bearer {token}"})
        assert ok.status_code == 200 and ok.json["accepted"] == 1
        assert app.extensions["bridge"].store.stats(0)["pending"] == 1
    finally:
        app.extensions["bridge"].store.close()
    again: list[str] = []
    restarted = create_app(load_settings(open_env(env)), announce=again.append)
    assert restarted.extensions["bridge"].segment_token.value == token  # stored: every process agrees
    assert not [line for line in again if "Bearer" in line]  # shown once
    restarted.extensions["bridge"].store.close()


def test_token_and_secret_are_both_required_when_both_are_set(env: dict[str, str]) -> None:
    app = create_app(load_settings({**env, "SEGMENT_SHARED_SECRET": SECRET}), announce=lambda _: None)
    client = app.test_client()
    body = stringify(IDENTIFY)
    unsigned = client.post(URL, data=body, headers={"Authorization": "Bearer test-webhook-token"})
    assert unsigned.status_code == 401 and "X-Signature" in unsigned.json["message"]
    tokenless = client.post(URL, data=body, headers={"X-Signature": sign(body)})
    assert tokenless.status_code == 401 and "Bearer" in tokenless.json["message"]
    assert post(client, body, sign(body)).status_code == 200
    app.extensions["bridge"].store.close()


def test_a_shared_secret_alone_needs_no_token(env: dict[str, str]) -> None:
    app = create_app(load_settings({**open_env(env), "SEGMENT_SHARED_SECRET": SECRET}),
                     announce=lambda _: None)
    body = stringify(IDENTIFY)
    response = app.test_client().post(URL, data=body, headers={"X-Signature": sign(body)})
    assert response.status_code == 200
    assert app.extensions["bridge"].segment_token.value is None
    app.extensions["bridge"].store.close()
