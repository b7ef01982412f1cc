"""Body parsing keeps each event's exact text, and sorting keeps valid events beside invalid ones."""

from __future__ import annotations

import json

import pytest

from bridge.config import DEFAULT_SCHEMA_DIR
from bridge.inbound.intake import sort_events
from bridge.inbound.track import dedupe_key
from bridge.payloads.body import BodyError, parse_body, split_json
from bridge.payloads.schemas import EventValidator
from tests.test_track import grouped_sample, old_rule_key

VALIDATOR = EventValidator.mailjet(DEFAULT_SCHEMA_DIR)


def test_array_elements_keep_their_exact_text() -> None:
    text = ' [ {"event":"sent", "time":1,"email":"zoë@x.com"} ,\n{"b": [1, {"c": "]"}]}, 7 ] \n'
    values, is_array = split_json(text)
    assert is_array
    assert [raw for _, raw in values] == [
        '{"event":"sent", "time":1,"email":"zoë@x.com"}', '{"b": [1, {"c": "]"}]}', "7"]
    assert values[0][0]["email"] == "zoë@x.com"


def test_single_object_and_empty_array() -> None:
    assert split_json('  {"a": "\\u00e9"}  ') == ([({"a": "é"}, '{"a": "\\u00e9"}')], False)
    assert split_json("[ ]") == ([], True)
    assert split_json("[]") == ([], True)


@pytest.mark.parametrize("text", ["[1,]", "[1 2]", "[1", "{} {}", "[1] x", "[,1]", ""])
def test_malformed_json_is_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        split_json(text)


def test_big_integers_survive_parsing() -> None:
    ((event, raw),) = parse_body(b'{"event":"sent","time":1,"MessageID":94857068804950690}')
    assert event["MessageID"] == 94857068804950690
    assert raw.endswith("94857068804950690}")


def test_non_utf8_body_is_a_body_error() -> None:
    with pytest.raises(BodyError, match="not valid JSON"):
        parse_body('[{"event": "sent"}]'.encode("utf-16"))


def test_sort_keeps_valid_and_quarantines_invalid_with_raw_text() -> None:
    validator = EventValidator.mailjet(DEFAULT_SCHEMA_DIR)
    body = b'[{"event":"sent","time":5,"MessageID":1},{"event":"sent","time":"5"},3]'
    intake = sort_events(parse_body(body), validator)
    assert [(i.event_type, i.payload, i.event_time) for i in intake.items] == [
        ("sent", '{"event":"sent","time":5,"MessageID":1}', 5)]
    assert [q.body for q in intake.quarantined] == ['{"event":"sent","time":"5"}', "3"]
    assert json.loads(intake.quarantined[0].errors)[0]["path"] == "$.time"


def test_values_a_call_cannot_carry_are_quarantined_before_validation() -> None:
    """The schema validator raises on a lone surrogate in a key, and reads 1e400 as null: the
    faithfulness check runs first and says what is wrong."""
    body = (b'[{"event":"sent","time":5,"MessageID":1},'
            b'{"event":"sent","time":5,"\\ud800":1},'
            b'{"event":"sent","time":1e400},'
            b'{"event":"click","time":5,"email":"a\\udfff@x.com"}]')
    intake = sort_events(parse_body(body), VALIDATOR)
    assert [i.payload for i in intake.items] == ['{"event":"sent","time":5,"MessageID":1}']
    errors = [json.loads(q.errors) for q in intake.quarantined]
    assert [e[0]["path"] for e in errors] == ['$["\\ud800"]', "$.time", "$.email"]
    assert "lone surrogate" in errors[0][0]["message"]
    assert errors[1][0]["message"] == "inf is not a finite number (JSON cannot carry it)"
    assert len({q.fingerprint for q in intake.quarantined}) == 3


def test_new_items_carry_their_old_rule_key_only_when_it_changed(mailjet_events: dict) -> None:
    events = [mailjet_events["sent"], *grouped_sample(), {"event": "blocked", "time": 3}]
    intake = sort_events([(e, json.dumps(e)) for e in events], VALIDATOR)
    assert [i.dedupe_key for i in intake.items] == [dedupe_key(e) for e in events]
    assert intake.items[0].legacy_keys == ()
    assert [i.legacy_keys for i in intake.items[1:]] == [(old_rule_key(e),) for e in events[1:]]


def test_null_fields_and_text_ids_are_valid() -> None:
    body = (b'{"event":"open","time":1370266800,"MessageID":"1210245103","mj_campaign_id":"1210245103",'
            b'"mj_contact_id":"0","email":"a@x.com","geo":null,"CustomID":null,"Payload":null}')
    intake = sort_events(parse_body(body), VALIDATOR)
    assert len(intake.items) == 1 and not intake.quarantined
