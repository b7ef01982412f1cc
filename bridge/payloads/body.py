"""JSON bodies parsed so that each top-level value keeps its exact source text. No I/O.

The exact text is what gets stored ("the payload as received") and what Segment signs for the first
element of a batch (``X-Signature``), so re-serialising would lose both.
"""

from __future__ import annotations

import json
import re
from typing import Any


class BodyError(ValueError):
    """The body as a whole is unusable (not JSON, or not an object or array): answered with 400."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_SPACE = re.compile(r"[ \t\n\r]*")
#: What may follow an array element: space, and a comma with space after it when another comes.
_AFTER_ELEMENT = re.compile(r"[ \t\n\r]*(,[ \t\n\r]*)?")


def _skip(text: str, index: int) -> int:
    return _SPACE.match(text, index).end()  # type: ignore[union-attr]


def loads_strict(text: str) -> Any:
    """JSON text parsed as webhook bodies are: ``NaN`` and ``Infinity`` are not JSON."""
    return _DECODER.decode(text)


def split_json(text: str) -> tuple[list[tuple[Any, str]], bool]:
    """Parse a JSON object or array, keeping each top-level value's exact source text.

    Returns ``([(value, text), ...], is_array)``. The exact text serves as the payload "as
    received", and it is what Segment signs for the first element of a batch.
    """
    index = _skip(text, 0)
    if not text.startswith("[", index):
        value, end = _DECODER.raw_decode(text, index)
        if _skip(text, end) != len(text):
            raise ValueError(f"extra data at char {end}")
        return [(value, text[index:end])], False
    values: list[tuple[Any, str]] = []
    index = _skip(text, index + 1)
    if text.startswith("]", index):
        end = index + 1
    else:
        while True:
            value, end = _DECODER.raw_decode(text, index)
            values.append((value, text[index:end]))
            after = _AFTER_ELEMENT.match(text, end)
            index = after.end()  # type: ignore[union-attr]
            if after.lastindex:  # type: ignore[union-attr]  # a comma: one regex call, not two
                continue
            if text.startswith("]", index):
                end = index + 1
                break
            raise ValueError(f"expected ',' or ']' at char {index}")
    if _skip(text, end) != len(text):
        raise ValueError(f"extra data at char {end}")
    return values, True


def parse_body(raw: bytes) -> list[tuple[Any, str]]:
    """One bare object or an array of values, as ``(value, exact text)`` pairs.

    Mailjet sends a bare object (Version 1) or an array (Version 2, grouped); Segment's Webhooks
    (Actions) destination sends one event or, when batching, an array.
    """
    try:
        values, is_array = split_json(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise BodyError(f"the body is not valid JSON: {str(exc)[:200]}") from exc
    if not is_array and not isinstance(values[0][0], dict):
        raise BodyError("the body must be a JSON object (one event) or an array of events")
    return values
