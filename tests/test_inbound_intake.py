"""Body parsing keeps each event's exact text, and sorting keeps valid events beside invalid ones."""

from __future__ import annotations

import json

import pytest

from bridge.config import DEFAULT_SCHEMA_DIR
from bridge.inbound.intake import sort_events
from bridge.payloads.body import BodyError, parse_body, split_json
from bridge.payloads.schemas import EventValidator


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
