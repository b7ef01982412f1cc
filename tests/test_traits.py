"""The trait rules of docs/behaviour.md, "Outbound mapping": naming, flattening, Name, types,
lossless conversion and the property plan."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.outbound.traits import (
    ContactUpdate,
    as_datetime,
    contact_name,
    contact_update,
    convert,
    flatten,
    infer_type,
    plan_properties,
    snake_case,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("firstName", "first_name"), ("Order Count", "order_count"), ("address.city", "address_city"),
     ("HTTPStatusCode", "http_status_code"), ("already_snake", "already_snake"),
     ("order_completed_last_30days", "order_completed_last_30days"), ("  spaced  out ", "spaced_out"),
     ("Plan-Tier", "plan_tier"), ("ltv2Value", "ltv2_value"), ("UPPER", "upper")],
)
def test_snake_case(name: str, expected: str) -> None:
    assert snake_case(name) == expected


def test_flatten_nests_with_underscore_keeps_arrays_as_json_and_nulls() -> None:
    traits = {"address": {"city": "Paris", "postalCode": "75001", "geo": {"lat": 48.8}},
              "tags": ["a", "b", 3], "company": {"name": None}, "empty": {}}
    assert flatten(traits) == {
        "address_city": "Paris", "address_postal_code": "75001", "address_geo_lat": 48.8,
        "tags": '["a","b",3]', "company_name": None,
    }


@pytest.mark.parametrize(
    ("traits", "expected"),
    [({"name": "Ada Lovelace", "firstName": "X"}, "Ada Lovelace"),
     ({"firstName": "Ada", "lastName": "Lovelace"}, "Ada Lovelace"),
     ({"first_name": "Ada"}, "Ada"),
     ({"last_name": "Lovelace"}, "Lovelace"),
     ({"name": "  ", "firstname": "Ada"}, "Ada"),
     ({"email": "a@x.com"}, None)],
)
def test_contact_name(traits: dict[str, Any], expected: str | None) -> None:
    assert contact_name(traits) == expected


def test_contact_update_keeps_name_traits_as_properties_but_not_email() -> None:
    update = contact_update("a@x.com", {"email": "A@x.com", "name": "Ada", "firstName": "Ada",
                                        "lastName": "L", "plan": "pro"})
    assert update.name == "Ada"
    assert update.properties == {"name": "Ada", "first_name": "Ada", "last_name": "L", "plan": "pro"}


@pytest.mark.parametrize(
    ("value", "datatype"),
    [(True, "bool"), (False, "bool"), (0, "int"), (42, "int"), (4.5, "float"), (2.0, "float"),
     ("", "str"), ("pro", "str"), ("2024-05-01", "datetime"), ("2024-05-01T10:20:30Z", "datetime"),
     ("2024-05-01T10:20:30.123+02:00", "datetime"), ("2024-13-01", "str"), ("20240501", "str"),
     ('["a"]', "str"), (None, None)],
)
def test_infer_type(value: Any, datatype: str | None) -> None:
    assert infer_type(value) == datatype


def test_datetimes_are_sent_as_rfc3339_utc() -> None:
    assert as_datetime("2024-05-01") == "2024-05-01T00:00:00Z"
    assert as_datetime("2024-05-01T10:20:30.9+02:00") == "2024-05-01T08:20:30Z"
    assert as_datetime("May 1st") is None


@pytest.mark.parametrize(
    ("value", "datatype", "expected"),
    [(5, "float", (True, 5.0)), (5.0, "int", (True, 5)), (5.5, "int", (False, None)),
     (7, "str", (True, "7")), (2.5, "str", (True, "2.5")), (True, "str", (True, "true")),
     (False, "str", (True, "false")), ("42", "int", (True, 42)), ("042", "int", (False, None)),
     ("4.5", "float", (True, 4.5)), ("4.5", "int", (False, None)), ("many", "int", (False, None)),
     ("2024-05-01", "datetime", (True, "2024-05-01T00:00:00Z")), ("soon", "datetime", (False, None)),
     (True, "int", (False, None)), (1, "bool", (False, None)), ("true", "bool", (False, None)),
     (0, "int", (True, 0)), ("", "str", (True, "")), (False, "bool", (True, False)),
     (1700000000, "datetime", (False, None))],
)
def test_lossless_conversion_only(value: Any, datatype: str, expected: tuple[bool, Any]) -> None:
    assert convert(value, datatype) == expected


def test_plan_creates_missing_definitions_with_the_first_type_seen() -> None:
    updates = [
        ContactUpdate("a@x.com", None, {"plan": "pro", "logins": 5, "vip": False, "score": 0.5,
                                        "born": "1990-05-17", "gone": None}),
        ContactUpdate("b@x.com", None, {"logins": "many", "plan": 3}),
    ]
    plan = plan_properties(updates, {"gone_defined": "str"})
    assert plan.create == {"plan": "str", "logins": "int", "vip": "bool", "score": "float",
                           "born": "datetime"}
    assert plan.send["a@x.com"] == {"plan": "pro", "logins": 5, "vip": False, "score": 0.5,
                                    "born": "1990-05-17T00:00:00Z"}
    assert plan.send["b@x.com"] == {"plan": "3"}
    (rejected,) = plan.rejected
    assert (rejected.email, rejected.name, rejected.value) == ("b@x.com", "logins", "many")
    assert "defined as int" in rejected.reason


def test_plan_converts_to_existing_definitions_and_clears_with_null() -> None:
    definitions = {"ltv": "float", "age": "int", "note": "str", "vip": "bool"}
    update = ContactUpdate("a@x.com", None, {"ltv": 10, "age": "33", "note": 7, "vip": None,
                                             "unknown_null": None})
    plan = plan_properties([update], definitions)
    assert plan.send["a@x.com"] == {"ltv": 10.0, "age": 33, "note": "7", "vip": None}
    assert plan.create == {} and plan.rejected == []
