"""The Mailjet event -> Segment track mapping (docs/behaviour.md, "Inbound mapping"), field by field."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.inbound.fields import EVENT_NAME_PRESETS, EVENT_TYPES
from bridge.inbound.track import (
    dedupe_key,
    legacy_dedupe_key,
    legacy_keys,
    message_id,
    message_id_value,
    track_call,
)
from bridge.payloads.faithful import MAX_DEPTH
from bridge.payloads.identity import normalize_email
from tests.conftest import FIXTURES

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


# -- the dedupe key (issue #9): message id, else content; old keys kept ------------------------


def grouped_sample() -> list[dict[str, Any]]:
    """Mailjet's own grouped sample: four ``sent`` events with mj_message_id and no MessageID."""
    payloads = json.loads((FIXTURES / "peers" / "mailjet-event-api-guide.json").read_text())["payloads"]
    return next(p["body"] for p in payloads if p["name"].startswith("Grouping events"))


def old_rule_key(event: dict[str, Any]) -> str:
    """The pre-#9 key, written out: sha256 of [event, MessageID or Message_GUID, email, time, url]."""
    ident = event.get("MessageID")
    parts = [event.get("event"), event.get("Message_GUID") if ident is None else ident,
             normalize_email(event.get("email")), event.get("time"), event.get("url")]
    return hashlib.sha256(json.dumps(parts, separators=(",", ":"), ensure_ascii=False)
                          .encode()).hexdigest()


def test_grouped_sample_is_four_events_with_four_keys() -> None:
    events = grouped_sample()
    assert events[0]["time"] == events[1]["time"] and events[0]["email"] == events[1]["email"]
    calls = [track_call(e, event_names=NAMES) for e in events]
    assert len({dedupe_key(e) for e in events}) == 4
    assert len({c["messageId"] for c in calls}) == 4
    assert [c["properties"]["email_id"] for c in calls] == [e["mj_message_id"] for e in events]
    assert all("mj_message_id" not in c["properties"] for c in calls)
    # the old rule merged the first two: they keep that key as a legacy key, to find old rows
    assert legacy_dedupe_key(events[0]) == legacy_dedupe_key(events[1]) == old_rule_key(events[0])
    assert all(legacy_keys(e, dedupe_key(e)) == (old_rule_key(e),) for e in events)


def test_events_with_message_id_or_guid_keep_their_old_keys(mailjet_events: dict[str, Any]) -> None:
    events = [*mailjet_events.values(),
              {"event": "click", "time": 7, "Message_GUID": "g-1", "email": " Zoë@X.com ", "url": "u"},
              {**mailjet_events["open"], "email": "日本@例え.jp", "Message_GUID": None},
              {"event": "sent", "time": 1, "MessageID": 2**64 + 1, "mj_message_id": "1"}]
    for event in events:
        assert dedupe_key(event) == old_rule_key(event), event
        assert legacy_keys(event, dedupe_key(event)) == ()


def test_message_id_falls_back_to_mj_message_id_then_guid() -> None:
    base = {"event": "sent", "time": 5, "email": "a@x.com"}
    both = {**base, "MessageID": 42, "mj_message_id": "43", "Message_GUID": "g"}
    assert dedupe_key(both) == dedupe_key({**base, "MessageID": 42})
    only_mj = {**base, "mj_message_id": "42", "Message_GUID": "g"}
    assert dedupe_key(only_mj) == dedupe_key({**base, "MessageID": 42})  # the same message
    assert dedupe_key({**base, "Message_GUID": "g"}) != dedupe_key({**base, "Message_GUID": "h"})
    assert dedupe_key({**base, "Message_GUID": "42"}) != dedupe_key({**base, "MessageID": 42})
    assert dedupe_key({**base, "MessageID": 0, "Message_GUID": "g"}) == dedupe_key(
        {**base, "Message_GUID": "g"})  # 0 means none


def test_integer_like_string_ids_equal_integers() -> None:
    as_number = {"event": "unsub", "time": 9, "MessageID": 1210245103, "mj_campaign_id": 1210245103,
                 "mj_contact_id": 0, "mj_list_id": 7, "email": "a@x.com"}
    as_text = {**as_number, "MessageID": "1210245103", "mj_campaign_id": "1210245103",
               "mj_contact_id": "0", "mj_list_id": "7"}
    assert dedupe_key(as_text) == dedupe_key(as_number) == old_rule_key(as_number)
    assert track_call(as_text, event_names=NAMES) == track_call(as_number, event_names=NAMES)
    props = track_call(as_text, event_names=NAMES)["properties"]
    assert (props["email_id"], props["campaign_id"], props["list_id"]) == ("1210245103", "1210245103", "7")
    assert "contact_id" not in props


def test_without_any_id_the_whole_event_is_the_key() -> None:
    """Two different id-less events never share a key; an exact redelivery does."""
    first = {"event": "sent", "time": 5, "email": "a@x.com", "smtp_reply": "250 one"}
    second = {**first, "smtp_reply": "250 two"}
    assert dedupe_key(first) != dedupe_key(second)
    assert legacy_dedupe_key(first) == legacy_dedupe_key(second)  # what the old rule merged
    assert dedupe_key(dict(reversed(first.items()))) == dedupe_key(first)
    assert dedupe_key({**first, "geo": None}) == dedupe_key(first)  # null is absent
    assert dedupe_key({**first, "n": 1}) != dedupe_key({**first, "n": 1.0})  # exact values
    assert dedupe_key({**first, "x": {"b": 1, "a": 2}}) == dedupe_key({**first, "x": {"a": 2, "b": 1}})
    assert legacy_keys(first, dedupe_key(first)) == (old_rule_key(first),)


def test_keys_never_raise_on_lone_surrogates() -> None:
    """Intake refuses such events first; the keys still must not be the thing that fails."""
    event = {"event": "click", "time": 1, "email": "a\ud800@x.com", "url": "https://x/\udfff"}
    assert dedupe_key(event) != dedupe_key({**event, "url": "https://x/"})
    assert legacy_dedupe_key(event)
    assert dedupe_key({"event": "sent", "time": 1, "\ud800": "x"})


def test_stored_key_sets_message_id_and_event_identity() -> None:
    event = {"event": "blocked", "time": 1}
    call = track_call(event, event_names=NAMES, key="a" * 64)
    assert call["messageId"] == "mailjet-" + "a" * 64
    assert call["anonymousId"] == "mailjet-event:" + "a" * 64
    assert track_call(event, event_names=NAMES)["messageId"] == message_id(dedupe_key(event))


def test_anonymous_id_uses_the_same_message_id() -> None:
    grouped = {"event": "sent", "time": 1, "mj_message_id": "18858825588804172"}
    assert track_call(grouped, event_names=NAMES)["anonymousId"] == "mailjet-message:18858825588804172"
    text_id = {"event": "sent", "time": 1, "MessageID": "77"}
    assert track_call(text_id, event_names=NAMES)["anonymousId"] == "mailjet-message:77"


# -- lenient input: null is absent -------------------------------------------------------------


def test_null_fields_are_absent(mailjet_events: dict[str, Any]) -> None:
    event = {**mailjet_events["unsub"], "geo": None, "ip": None, "agent": None, "Payload": None,
             "CustomID": None, "Message_GUID": None, "customcampaign": None, "mj_list_id": None}
    call = track_call(event, event_names=NAMES)
    assert set(call["context"]) == {"traits", "library"}
    assert call["properties"] == {"email_id": "20547674933128000", "campaign_id": "7276",
                                  "contact_id": "126", "mailjet_event": "unsub"}
    assert call["messageId"] == track_call(mailjet_events["unsub"], event_names=NAMES)["messageId"]


@pytest.mark.parametrize("payload", [
    "[" * 5000,  # RecursionError, not ValueError
    "[" * 5000 + "]" * 5000,
    '{"a": NaN}', '{"a": Infinity}', '{"a": 1e400}', '["\\ud800"]', '{"\\udc00": 1}',
    json.dumps({"deep": [[[]]]}).replace("[]", "[" * MAX_DEPTH + "]" * MAX_DEPTH),
])
def test_payload_that_a_call_cannot_carry_stays_text(payload: str) -> None:
    call = track_call({"event": "sent", "time": 1, "Payload": payload}, event_names=NAMES)
    assert call["properties"]["payload"] == payload
    json.dumps(call, allow_nan=False).encode("utf-8")


def test_payload_within_the_bound_is_parsed() -> None:
    deepest = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)  # level 32 in the event: allowed
    call = track_call({"event": "sent", "time": 1, "Payload": deepest}, event_names=NAMES)
    assert isinstance(call["properties"]["payload"], list)
    too_deep = "[" + deepest + "]"
    call = track_call({"event": "sent", "time": 1, "Payload": too_deep}, event_names=NAMES)
    assert call["properties"]["payload"] == too_deep


def test_big_integers_become_strings_at_any_depth() -> None:
    """A JavaScript consumer reads integers beyond 2^53 wrongly: nested extras and a JSON Payload too."""
    big = 123456789012345678901234567890
    event = {"event": "open", "time": 1, "MessageID": 1, "email": "a@b.c", "nested_big": {"x": [big, 7]},
             "Payload": json.dumps({"a": big, "b": 2})}
    props = track_call(event, event_names=EVENT_NAME_PRESETS["mailjet"])["properties"]
    assert props["nested_big"] == {"x": [str(big), 7]}
    assert props["payload"] == {"a": str(big), "b": 2}


def key_before_11(event: dict[str, Any]) -> str:
    """``dedupe_key`` as it was before issue #11 wrote the usual key text out by hand."""
    ident = message_id_value(event)
    if ident is None:
        content = {name: value for name, value in event.items() if value is not None}
        encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True, default=str)
        return hashlib.sha256(encoder.encode(content).encode("utf-8", "surrogatepass")).hexdigest()
    parts = [event.get("event"), ident, normalize_email(event.get("email")), event.get("time"),
             event.get("url")]
    encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(encoder.encode(parts).encode("utf-8", "surrogatepass")).hexdigest()


#: Text as it arrives: any character, escapes, quotes, controls, lone surrogates, non-ASCII.
KEY_TEXT = st.text() | st.sampled_from(["", "open", "a\ud800b", "\udfff", '"q"\\', "\u2028", "\x00",
                                        " Zoë@Exämple.COM ", "https://a.example/?q=1&r=\"x\""])
KEY_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-(2**70), 2**70),
                        st.floats(), KEY_TEXT, st.sampled_from(["0", "42", "-5", "007", "1e3"]))
KEY_VALUES = st.recursive(KEY_SCALARS, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(KEY_TEXT, inner, max_size=3), max_leaves=6)
KEY_EVENTS = st.fixed_dictionaries({}, optional={
    "event": st.sampled_from(EVENT_TYPES) | KEY_VALUES,
    "time": st.integers(0, 2**40) | st.sampled_from([1.5, 1e300, -0.0, float("inf"), float("nan"), True])
    | KEY_VALUES,
    "MessageID": st.integers(0, 2**64) | KEY_VALUES,
    "mj_message_id": st.integers(0, 2**64).map(str) | KEY_VALUES,
    "Message_GUID": KEY_TEXT | KEY_VALUES,
    "email": KEY_TEXT | KEY_VALUES,
    "url": KEY_TEXT | KEY_VALUES,
    "agent": KEY_VALUES,
})


@settings(max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "300")) * 3, deadline=None)
@given(KEY_EVENTS)
def test_keys_are_the_same_text_as_before_11(event: dict[str, Any]) -> None:
    """Issue #11 writes the usual key text without the encoder: for any event, of any field types,
    the key (so every ``messageId``) and the legacy keys are what they were."""
    assert dedupe_key(event) == key_before_11(event)
    assert legacy_keys(event, dedupe_key(event)) == legacy_keys(event, key_before_11(event))
