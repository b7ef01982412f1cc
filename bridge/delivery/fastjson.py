"""JSON read and written by orjson where it gives what ``json`` gives, by ``json`` where it might not.

The forwarder reads every stored event and writes every call it sends: with ``json`` that took about
7.5 µs an event, with orjson about 2.2 (docs/benchmarks.md, R3). orjson reads three kinds of text
differently from ``json``, and each goes to ``json`` instead, so that no value changes on the way:
an integer beyond 64 bits (orjson reads it as a float), ``NaN`` or ``Infinity`` (orjson refuses
them, ``json`` reads them) and a lone surrogate (orjson refuses it). orjson writes ``NaN`` as
``null`` where ``json`` (``allow_nan=False``) refuses it, so only a value built from what orjson
read is written by orjson.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_CONTAINERS = (dict, list)
#: Strict JSON (``allow_nan=False``): a non-finite number raises for its one value. Without the
#: cycle check: a value is a tree built from parsed JSON.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False,
                            check_circular=False)


def loads(text: str) -> tuple[Any, bool]:
    """``json.loads(text)``, and whether orjson read it (then ``dumps`` may write with orjson).

    A text with a float anywhere is read again by ``json``: orjson turns an integer beyond 64 bits
    into a float, and Mailjet's events hold no floats, so looking for one costs less than looking
    for long digit runs in the text. orjson read the text, so it holds no ``NaN`` or ``Infinity``."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:  # json decides: it may read what orjson refuses, or refuse it too
        return json.loads(text), False
    if type(value) is float or (type(value) in _CONTAINERS and _has_float(value)):
        return json.loads(text), True  # a bare number too: "-9223372036854775809" is an int
    return value, True


def _has_float(value: dict[str, Any] | list[Any]) -> bool:
    """Whether a float is anywhere in ``value``: the types of a level are gathered in C first, and
    only a level holding containers is walked further (0.63 → 0.35 µs a Mailjet event)."""
    items = value.values() if type(value) is dict else value
    kinds = set(map(type, items))
    if float in kinds:
        return True
    if dict in kinds or list in kinds:
        return any(type(item) in _CONTAINERS and _has_float(item) for item in items)
    return False


def dumps(value: Any, *, by_orjson: bool) -> bytes:
    """Compact UTF-8 JSON, strict (no ``NaN``): by orjson for a value made only of what orjson read
    and of text, else by ``json`` (which raises ValueError for a non-finite number)."""
    if by_orjson:
        try:
            return orjson.dumps(value)
        except TypeError:  # not a type orjson writes: json says what it is
            pass
    return _ENCODER.encode(value).encode("utf-8")  # a lone surrogate raises: not UTF-8
