"""Values a Segment call cannot carry as they are, found at intake (docs/behaviour.md, "Webhooks").

Python's JSON parser accepts three things that cannot be sent on faithfully: a ``\\ud800`` escape (a
lone surrogate, which is not UTF-8), a number too large for a float (``1e400`` parses as infinity,
which strict JSON cannot write), and nesting as deep as the recursion limit allows. Finding them
when the event arrives means it is refused once, with a reason, instead of failing at every delivery
attempt or breaking a consumer downstream. No I/O.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

#: Deepest nesting accepted in one event: the event object is level 1, each object or array inside
#: it one more. Real events use 2 or 3; 32 leaves room for the levels Segment adds around a call
#: (batch, call, properties) under the common parser limits of consumers (Ruby's JSON: 100).
MAX_DEPTH = 32

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _child_path(path: str, key: str | int) -> str:
    """``$.a[0]``; an unusual key in brackets, JSON-escaped, so a path is always plain ASCII-safe text."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _PLAIN_KEY.match(key):
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key)}]"


def _string_problem(text: str) -> str | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        return f"holds a lone surrogate (\\u{ord(bad):04x}), which is not valid UTF-8"
    return None


def problem(value: Any, max_depth: int = MAX_DEPTH) -> dict[str, str] | None:
    """The first value that cannot be sent faithfully, as ``{path, message}``; None if all can.

    ``value`` is parsed JSON. Checked: strings (object keys too) that are not UTF-8, numbers that are
    not finite, and nesting deeper than ``max_depth``.
    """
    return _walk(value, "$", 1, max_depth)


def _walk(value: Any, path: str, depth: int, max_depth: int) -> dict[str, str] | None:
    if isinstance(value, str):
        message = _string_problem(value)
        return {"path": path, "message": message} if message else None
    if isinstance(value, float) and not math.isfinite(value):
        return {"path": path, "message": f"{value} is not a finite number (JSON cannot carry it)"}
    if not isinstance(value, dict | list):
        return None
    if depth > max_depth:
        return {"path": path, "message": f"nests deeper than {max_depth} levels"}
    pairs = value.items() if isinstance(value, dict) else enumerate(value)
    for key, child in pairs:
        if isinstance(key, str) and (message := _string_problem(key)):
            return {"path": _child_path(path, key), "message": "the key " + message}
        found = _walk(child, _child_path(path, key), depth + 1, max_depth)
        if found:
            return found
    return None
