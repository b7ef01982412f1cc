"""The Mailjet event -> Segment track mapping (docs/behaviour.md, "Inbound mapping"), field by field."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.inbound.fields import EVENT_NAME_PRESETS, EVENT_TYPES
from bridge.inbound.track import dedupe_key, message_id, track_call
from bridge.payloads.identity import normalize_email

NAMES = EVENT_NAME_PRESETS["mailjet"]
LIBRARY = {"name": "mailjet-segment-bridge", "version": "0.1.0"}


def test_sent_maps_every_field(mailjet_events: dict[str, Any]) -> None:
    call = track_call(mailjet_events["sent"], event_names=NAMES)
    assert call == {
        "type": "track",
        "event": "Email Delivered",
        "anonymousId": "api@mailjet.com",
        "messageId": call["messageId"],
        "timestamp": "2015-06-03T12:19:09Z",
        "context": {"traits": {"email": "api@mailjet.com"}, "library": LIBRARY},
        "integrations": {"Mailjet": False},
        "properties": {
            "email_id": "19421777835146490",
            "message_guid": "1ab23cd4-e567-8901-2345-6789f0gh1i2j",
            "campaign_id": "7257",
            "contact_id": "4",
            "custom_id": "helloworld",
            "smtp_reply": "sent (250 2.0.0 OK 1433333948 fa5si855896wjc.199 - gsmtp)",
            "mailjet_event": "sent",
        },
    }
    assert call["messageId"].startswith("mailjet-") and len(call["messageId"]) <= 100


def test_open_puts_ip_agent_geo_in_context_only(mailjet_events: dict[str, Any]) -> None:
    call = track_call(mailjet_events["open"], event_names=NAMES)
    assert call["event"] == "Email Opened"
    assert call["context"] == {
        "traits": {"email": "api@mailjet.com"},
        "ip": "127.0.0.1",
        "userAgent": "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0",
        "location": {"country": "US"},
        "library": LIBRARY,
    }
    assert call["properties"] == {
        "email_id": "19421777396190490",
        "message_guid": "1ab23cd4-e567-8901-2345-6789f0gh1i2j",
        "campaign_id": "7173",
        "contact_id": "320",
        "custom_id": "helloworld",
        "mailjet_event": "open",
    }


def test_click_has_link_url(mailjet_events: dict[str, Any]) -> None:
    call = track_call(mailjet_events["click"], event_names=NAMES)
    assert call["event"] == "Email Link Clicked"
    assert call["properties"]["link_url"] == "https://mailjet.com"
    assert call["context"]["location"] == {"country": "FR"}


def test_bounce_keeps_diagnostics_and_drops_zero_ids(mailjet_events: dict[str, Any]) -> None:
    call = track_call(mailjet_events["bounce"], event_names=NAMES)
    assert call["event"] == "Email Bounced"
    assert call["properties"] == {
        "email_id": "13792286917004336",
        "message_guid": "1ab23cd4-e567-8901-2345-6789f0gh1i2j",
        "custom_id": "helloworld",
        "blocked": False,
        "hard_bounce": True,
        "error_related_to": "recipient",
        "error": "user unknown",
        "comment": "Host or domain name not found. Name service error for "
        "name=lbjsnrftlsiuvbsren.com type=A: Host not found",
        "mailjet_event": "bounce",
    }


def test_blocked_spam_unsub(mailjet_events: dict[str, Any]) -> None:
    blocked = track_call(mailjet_events["blocked"], event_names=NAMES)
    assert blocked["event"] == "Email Blocked"
    assert blocked["properties"]["error"] == "user unknown"
    spam = track_call(mailjet_events["spam"], event_names=NAMES)
    assert spam["event"] == "Email Marked as Spam"
    assert spam["properties"]["source"] == "JMRPP"
    assert "campaign" not in spam["context"]
    unsub = track_call(mailjet_events["unsub"], event_names=NAMES)
    assert unsub["event"] == "Email Unsubscribed"
    assert unsub["properties"]["list_id"] == "1"
    assert unsub["context"]["ip"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("preset", "unsub_name", "sent_name"),
    [("mailjet", "Email Unsubscribed", "Email Delivered"),
     ("segment-spec", "Unsubscribed", "Email Delivered"),
     ("raw", "unsub", "sent")],
)
def test_naming_presets(preset: str, unsub_name: str, sent_name: str,
                        mailjet_events: dict[str, Any]) -> None:
    names = EVENT_NAME_PRESETS[preset]
    assert set(names) == set(EVENT_TYPES)
    assert track_call(mailjet_events["unsub"], event_names=names)["event"] == unsub_name
    assert track_call(mailjet_events["sent"], event_names=names)["event"] == sent_name


def test_presets_differ_only_in_unsubscribe() -> None:
    mailjet, spec = EVENT_NAME_PRESETS["mailjet"], EVENT_NAME_PRESETS["segment-spec"]
    assert {k for k in EVENT_TYPES if mailjet[k] != spec[k]} == {"unsub"}


def test_known_user_id_replaces_anonymous_id(mailjet_events: dict[str, Any]) -> None:
    call = track_call(mailjet_events["open"], event_names=NAMES, user_id="user-42")
    assert call["userId"] == "user-42"
    assert "anonymousId" not in call
    assert call["context"]["traits"] == {"email": "api@mailjet.com"}


def test_identity_without_email() -> None:
    base = {"event": "bounce", "time": 1, "MessageID": 98765432109876543}
    with_contact = track_call({**base, "mj_contact_id": 55}, event_names=NAMES)
    assert with_contact["anonymousId"] == "mailjet-contact:55"
    assert "traits" not in with_contact["context"]
    zero_contact = track_call({**base, "mj_contact_id": 0, "email": "  "}, event_names=NAMES)
    assert zero_contact["anonymousId"] == "mailjet-message:98765432109876543"
    guid_only = track_call({"event": "blocked", "time": 1, "Message_GUID": "g-1"}, event_names=NAMES)
    assert guid_only["anonymousId"] == "mailjet-message:g-1"
    bare = track_call({"event": "blocked", "time": 1}, event_names=NAMES)
    assert bare["anonymousId"].startswith("mailjet-event:")


def test_email_is_normalised_everywhere(mailjet_events: dict[str, Any]) -> None:
    upper = {**mailjet_events["open"], "email": "  API@Mailjet.COM "}
    call = track_call(upper, event_names=NAMES)
    assert call["anonymousId"] == "api@mailjet.com"
    assert call["context"]["traits"]["email"] == "api@mailjet.com"
    assert dedupe_key(upper) == dedupe_key(mailjet_events["open"])
    assert normalize_email(None) is None and normalize_email("") is None


def test_message_id_is_deterministic_and_distinguishes_events(mailjet_events: dict[str, Any]) -> None:
    open_event = mailjet_events["open"]
    first = track_call(open_event, event_names=NAMES)["messageId"]
    assert first == track_call(dict(open_event), event_names=NAMES)["messageId"]
    assert first == message_id(dedupe_key(open_event))
    # same message, other type or other time or other url: other events
    keys = {
        dedupe_key(open_event),
        dedupe_key({**open_event, "event": "click"}),
        dedupe_key({**open_event, "time": open_event["time"] + 1}),
        dedupe_key({**open_event, "event": "click", "url": "https://a.example"}),
        dedupe_key({**open_event, "event": "click", "url": "https://b.example"}),
    }
    assert len(keys) == 5
    # fields outside the key (agent, ip) do not change it: a redelivery is the same event
    assert dedupe_key({**open_event, "agent": "other"}) == dedupe_key(open_event)


def test_message_guid_stands_in_for_missing_message_id() -> None:
    a = {"event": "sent", "time": 5, "Message_GUID": "aaa"}
    b = {"event": "sent", "time": 5, "Message_GUID": "bbb"}
    assert dedupe_key(a) != dedupe_key(b)


def test_big_message_id_keeps_every_digit() -> None:
    big = 2**53 + 1  # 9007199254740993: a float would round it
    call = track_call({"event": "sent", "time": 1, "MessageID": big, "mj_campaign_id": 2**60},
                      event_names=NAMES)
    assert call["properties"]["email_id"] == "9007199254740993"
    assert call["properties"]["campaign_id"] == str(2**60)


def test_unicode_urls_and_agents_pass_through() -> None:
    event = {"event": "click", "time": 1, "email": "zoë@exämple.com",
             "url": "https://exämple.com/pfad?q=ü&emoji=🎉", "agent": "Agent/1.0 (日本語)"}
    call = track_call(event, event_names=NAMES)
    assert call["properties"]["link_url"] == "https://exämple.com/pfad?q=ü&emoji=🎉"
    assert call["context"]["userAgent"] == "Agent/1.0 (日本語)"
    assert call["anonymousId"] == "zoë@exämple.com"


def test_payload_json_is_parsed_other_text_kept() -> None:
    as_json = track_call({"event": "sent", "time": 1, "Payload": '{"order": 7, "tags": ["a"]}'},
                         event_names=NAMES)
    assert as_json["properties"]["payload"] == {"order": 7, "tags": ["a"]}
    as_text = track_call({"event": "sent", "time": 1, "Payload": "plain {text"}, event_names=NAMES)
    assert as_text["properties"]["payload"] == "plain {text"
    broken = track_call({"event": "sent", "time": 1, "Payload": "{not json"}, event_names=NAMES)
    assert broken["properties"]["payload"] == "{not json"
    empty = track_call({"event": "sent", "time": 1, "Payload": ""}, event_names=NAMES)
    assert "payload" not in empty["properties"]


def test_unknown_fields_are_kept_lower_cased() -> None:
    event = {"event": "open", "time": 1, "New_Field": "x", "Huge": 2**60, "Small": 3,
             "Flag": False, "Empty": "", "email_id": "clash"}
    props = track_call({**event, "MessageID": 9}, event_names=NAMES)["properties"]
    assert props["new_field"] == "x"
    assert props["huge"] == str(2**60)
    assert props["small"] == 3
    assert props["flag"] is False
    assert "empty" not in props
    assert props["email_id"] == "9"  # the documented field wins over a look-alike


def test_mj_message_id_and_time_are_not_copied(mailjet_events: dict[str, Any]) -> None:
    props = track_call(mailjet_events["sent"], event_names=NAMES)["properties"]
    assert "mj_message_id" not in props and "time" not in props and "email" not in props


def test_timestamp_is_utc_iso() -> None:
    call = track_call({"event": "sent", "time": 0}, event_names=NAMES)
    assert call["timestamp"] == "1970-01-01T00:00:00Z"
