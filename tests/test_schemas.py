"""The JSON Schemas in schemas/: standard Draft 2020-12, exact Mailjet types, and used as written.

Lenient where Mailjet is known to vary: null in an optional field means absent, and ids may be
integer-like strings (docs/behaviour.md, "Webhooks").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from bridge.config import DEFAULT_SCHEMA_DIR
from bridge.errors import ConfigError
from bridge.inbound.fields import EVENT_TYPES
from bridge.payloads.schemas import EventValidator

#: The field types of Mailjet's Event API guide.
IDS = {"MessageID", "mj_campaign_id", "mj_contact_id", "mj_list_id"}
BOOLEANS = {"blocked", "hard_bounce"}
STRINGS = {"Message_GUID", "email", "customcampaign", "CustomID", "Payload", "mj_message_id",
           "smtp_reply", "ip", "geo", "agent", "url", "error_related_to", "error", "comment", "source"}
PER_TYPE = {
    "sent": {"mj_message_id", "smtp_reply"},
    "open": {"ip", "geo", "agent"},
    "click": {"ip", "geo", "agent", "url"},
    "bounce": {"blocked", "hard_bounce", "error_related_to", "error", "comment"},
    "blocked": {"error_related_to", "error"},
    "spam": {"source"},
    "unsub": {"mj_list_id", "ip", "geo", "agent"},
}
COMMON = {"event", "time", "MessageID", "Message_GUID", "email", "mj_campaign_id", "mj_contact_id",
          "customcampaign", "CustomID", "Payload"}


def load(name: str) -> dict[str, Any]:
    return json.loads((DEFAULT_SCHEMA_DIR / "mailjet" / f"{name}.json").read_text())


@pytest.mark.parametrize("name", EVENT_TYPES)
def test_schema_is_draft_2020_12_with_exact_types(name: str) -> None:
    schema = load(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["required"] == ["event", "time"]
    assert schema.get("additionalProperties", True) is True
    props = schema["properties"]
    assert set(props) == COMMON | PER_TYPE[name]
    assert props["event"] == {"const": name, "description": "Event type."}
    assert props["time"]["type"] == "integer"
    assert schema["$defs"]["id"]["type"] == ["integer", "string", "null"]
    assert schema["$defs"]["id"]["pattern"] == "^(0|-?[1-9][0-9]{0,39})$"
    for field, spec in props.items():
        if field in ("event", "time"):
            continue
        if field in IDS:
            assert spec["$ref"] == "#/$defs/id", field
        else:
            expected = "boolean" if field in BOOLEANS else "string"
            assert spec["type"] == [expected, "null"], field


def test_one_schema_per_event_type() -> None:
    files = {p.stem for p in (DEFAULT_SCHEMA_DIR / "mailjet").glob("*.json")}
    assert files == set(EVENT_TYPES)


@pytest.mark.parametrize("name", EVENT_TYPES)
def test_fast_validator_agrees_with_jsonschema(name: str, mailjet_events: dict[str, Any]) -> None:
    """jsonschema-rs (hot path) and jsonschema (the reference implementation) agree on samples."""
    validator = EventValidator.mailjet(DEFAULT_SCHEMA_DIR)
    reference = jsonschema.Draft202012Validator(load(name))
    good = mailjet_events[name]
    samples = [
        good,
        {**good, "MessageID": "19421777835146490"},
        {**good, "time": "1433333949"},
        {**good, "time": -5},
        {**good, "email": None},
        {**good, "MessageID": None, "CustomID": None, "Payload": None},
        {**good, "mj_contact_id": "0", "mj_campaign_id": "-12"},
        {**good, "MessageID": "0123"},
        {**good, "MessageID": "12a"},
        {**good, "MessageID": 1.5},
        {**good, "MessageID": True},
        {**good, "time": None},
        {**good, "new_field_from_mailjet": {"nested": [1, 2]}},
        {k: v for k, v in good.items() if k not in ("CustomID", "Payload", "email")},
        {k: v for k, v in good.items() if k != "time"},
    ]
    for sample in samples:
        assert (validator.errors(sample) == []) == reference.is_valid(sample), sample


def test_errors_name_the_path_and_problem(mailjet_events: dict[str, Any]) -> None:
    validator = EventValidator.mailjet(DEFAULT_SCHEMA_DIR)
    errors = validator.errors({**mailjet_events["bounce"], "hard_bounce": "yes", "mj_contact_id": "4a"})
    assert {e["path"] for e in errors} == {"$.hard_bounce", "$.mj_contact_id"}
    assert validator.errors([1]) == [{"path": "$", "message": "an event must be a JSON object"}]
    assert "unknown event type" in validator.errors({"event": "typofix", "time": 1})[0]["message"]
    assert validator.errors({"time": 1})[0]["message"] == "'event' is a required property"
    assert validator.errors({"event": 5, "time": 1})[0]["path"] == "$.event"


def test_broken_schema_stops_start_up(tmp_path: Path) -> None:
    folder = tmp_path / "mailjet"
    folder.mkdir()
    (folder / "sent.json").write_text('{"type": "objekt"}')
    with pytest.raises(ConfigError, match=r"sent\.json"):
        EventValidator.mailjet(tmp_path)
    with pytest.raises(ConfigError, match="no event schemas"):
        EventValidator.mailjet(tmp_path / "missing")


@pytest.mark.parametrize("name", EVENT_TYPES)
def test_null_means_absent_and_ids_may_be_text(name: str, mailjet_events: dict[str, Any]) -> None:
    """What Mailjet's older posts send ("geo": null, "mj_campaign_id": "1210245103") is valid."""
    validator = EventValidator.mailjet(DEFAULT_SCHEMA_DIR)
    good = mailjet_events[name]
    nulls = {field: None for field in good if field not in ("event", "time")}
    assert validator.errors({**good, **nulls}) == []
    as_text = {field: str(good[field]) for field in IDS if field in good}
    assert validator.errors({**good, **as_text}) == []
    assert validator.errors({**good, "time": None})[0]["path"] == "$.time"
