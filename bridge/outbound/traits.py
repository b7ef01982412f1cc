"""Segment identify traits -> Mailjet contact Name and typed contact properties. Pure.

The rules, with examples, are in docs/behaviour.md, "Outbound mapping".

Mailjet stores a property only if a ``/contactmetadata`` definition of that name exists, and only if
the value matches the definition's type. This module names, flattens and types the traits, and plans
each value against the known definitions: send as is, convert losslessly, create a definition, or
reject that one property.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: Mailjet contact property datatypes (``/contactmetadata`` ``Datatype``).
DATATYPES = ("str", "int", "float", "bool", "datetime")

#: Traits that give the contact ``Name`` (camelCase or snake_case, as Segment allows).
FIRST_NAME_TRAITS = ("firstName", "first_name", "firstname")
LAST_NAME_TRAITS = ("lastName", "last_name", "lastname")
#: The contact key; every other trait becomes a property.
EMAIL_TRAIT = "email"

_ACRONYM = re.compile(r"([A-Z]+)([A-Z][a-z])")
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_NOT_WORD = re.compile(r"[\W_]+")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)?)?$")
_INT = re.compile(r"^-?\d+$")
_FLOAT = re.compile(r"^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_JS_SAFE = 2**53


def snake_case(name: str) -> str:
    """``firstName`` -> ``first_name``, ``Order Count`` -> ``order_count``, ``HTTPCode`` -> ``http_code``."""
    text = _CAMEL.sub(r"\1_\2", _ACRONYM.sub(r"\1_\2", name))
    return _NOT_WORD.sub("_", text).strip("_").lower()


def flatten(traits: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested objects joined with ``_``, arrays kept as their JSON text, names snake_cased."""
    flat: dict[str, Any] = {}
    for key, value in traits.items():
        name = snake_case(str(key))
        full = f"{prefix}_{name}" if prefix and name else (name or prefix)
        if isinstance(value, dict):
            flat.update(flatten(value, full))
        elif isinstance(value, list):
            flat[full] = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        else:
            flat[full] = value
    return flat


def _first_text(traits: Mapping[str, Any], keys: Iterable[str]) -> str | None:
    for key in keys:
        value = traits.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def contact_name(traits: Mapping[str, Any]) -> str | None:
    """``traits.name``, else first and/or last name joined by a space."""
    name = _first_text(traits, ("name",))
    if name:
        return name
    parts = [_first_text(traits, FIRST_NAME_TRAITS), _first_text(traits, LAST_NAME_TRAITS)]
    joined = " ".join(p for p in parts if p)
    return joined or None


def as_datetime(value: str) -> str | None:
    """An ISO-8601 date or date-time as RFC 3339 in UTC (``2024-05-01T12:00:00Z``), else None."""
    if not _DATE.match(value):
        return None
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        # isoformat pads the year to four digits (strftime's %Y does not below 1000 on Linux)
        return moment.astimezone(UTC).replace(tzinfo=None, microsecond=0).isoformat() + "Z"
    except (ValueError, OverflowError):  # e.g. 0001-01-01T00:00:00+05:00 is before year 1 in UTC
        return None


def infer_type(value: Any) -> str | None:
    """The Mailjet datatype for a new definition; None for null (nothing to define)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str) and as_datetime(value):
        return "datetime"
    return "str"


def convert(value: Any, datatype: str) -> tuple[bool, Any]:
    """``value`` as ``datatype`` when nothing is lost: ``(True, converted)``, else ``(False, None)``.

    Allowed: int -> float, float with no fraction -> int, number or bool -> str, numeric string ->
    int/float, date string -> datetime. A bool never becomes a number, nor a number a bool. A value
    Python cannot convert (a 5,000-digit string, an out-of-range float) is simply not convertible.
    """
    try:
        return _convert(value, datatype)
    except (ValueError, OverflowError):
        return False, None


def unsendable(value: Any) -> str | None:
    """Why a value cannot go to Mailjet as it is, or None: JSON has no infinity or NaN, and text
    must be valid Unicode (a lone surrogate is not)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "not a finite number"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "text that is not valid Unicode (a lone surrogate)"
    return None


def _convert(value: Any, datatype: str) -> tuple[bool, Any]:
    if isinstance(value, bool):
        if datatype == "bool":
            return True, value
        if datatype == "str":
            return True, "true" if value else "false"
        return False, None
    if datatype == "str":
        if isinstance(value, str | int | float):
            return True, value if isinstance(value, str) else json.dumps(value)
        return False, None
    if datatype == "int":
        if isinstance(value, int):
            return True, value
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        if isinstance(value, str) and _INT.match(value.strip()) and str(int(value)) == value.strip():
            return True, int(value)
        return False, None
    if datatype == "float":
        if isinstance(value, float):
            return True, value
        if isinstance(value, int) and abs(value) <= _JS_SAFE:
            return True, float(value)
        if isinstance(value, str) and _FLOAT.match(value.strip()):
            return True, float(value)
        return False, None
    if datatype == "datetime" and isinstance(value, str):
        moment = as_datetime(value.strip())
        return (True, moment) if moment else (False, None)
    return False, None


@dataclass
class ContactUpdate:
    """What one or more identifies for one email ask of Mailjet; later values win."""

    email: str
    name: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)

    def merge(self, other: ContactUpdate) -> None:
        if other.name:
            self.name = other.name
        self.properties.update(other.properties)


def contact_update(email: str, traits: Mapping[str, Any]) -> ContactUpdate:
    """The contact an identify describes: Name, and every trait but the email as a property."""
    properties = flatten({k: v for k, v in traits.items() if k != EMAIL_TRAIT})
    return ContactUpdate(email, contact_name(traits), properties)


@dataclass(frozen=True)
class Rejected:
    """A property Mailjet cannot take as sent; the rest of its contact still goes through."""

    email: str
    name: str
    value: Any
    reason: str


@dataclass
class PropertyPlan:
    """Properties to send per email, definitions to create first, and properties rejected."""

    send: dict[str, dict[str, Any]] = field(default_factory=dict)
    create: dict[str, str] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)


def plan_properties(updates: Iterable[ContactUpdate], definitions: Mapping[str, str]) -> PropertyPlan:
    """Type every property against Mailjet's definitions (names lower-case).

    A missing definition is planned with the type of the first value seen; later values in the same
    run are converted to it like values of existing definitions. A null clears a defined property and
    is skipped for an undefined one.
    """
    known = dict(definitions)
    plan = PropertyPlan()
    for update in updates:
        values: dict[str, Any] = {}
        for name, value in update.properties.items():
            if not name:
                plan.rejected.append(Rejected(update.email, name, value, "the trait name has no letters"))
                continue
            problem = unsendable(name) or unsendable(value)
            if problem:
                plan.rejected.append(Rejected(update.email, name, value,
                                              f"property {name!r} cannot be sent: {problem}"))
                continue
            datatype = known.get(name)
            if datatype is None:
                datatype = infer_type(value)
                if datatype is None:
                    continue  # null for a property Mailjet does not know: nothing to clear
                known[name] = plan.create[name] = datatype
            if value is None:
                values[name] = None
                continue
            ok, converted = convert(value, datatype)
            if ok:
                values[name] = converted
            else:
                plan.rejected.append(Rejected(
                    update.email, name, value,
                    f"property {name!r} is defined as {datatype} in Mailjet; "
                    f"{json.dumps(value, ensure_ascii=False)[:200]} cannot be converted without loss",
                ))
        plan.send[update.email] = values
    return plan
