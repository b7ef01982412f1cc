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
#: What JSON text must contain to hold a problem: a ``\\ud800``-style escape (the only way a body
#: decoded from UTF-8 gets a surrogate), or a float literal that can overflow: a number with an
#: exponent (found where a value starts, so ``4e5`` inside a hex GUID is not one) or a mantissa of
#: 300 digits or more (integers never overflow). Separate patterns, and the text's start checked
#: apart: an alternation, ``\A`` included, keeps ``re`` from scanning ahead and costs 2-4x as much.
_EXPONENT = re.compile(r"[:,\[][ \t\n\r]*-?[0-9][0-9.]*[eE]")
_BARE_EXPONENT = re.compile(r"[ \t\n\r]*-?[0-9][0-9.]*[eE]")
_LONG_DIGITS = re.compile(r"[0-9]{300}")


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


def problem(value: Any, max_depth: int = MAX_DEPTH, *, text: str | None = None) -> dict[str, str] | None:
    """The first value that cannot be sent faithfully, as ``{path, message}``; None if all can.

    ``value`` is parsed JSON. Checked: strings (object keys too) that are not UTF-8, numbers that are
    not finite, and nesting deeper than ``max_depth``. ``text``, the JSON ``value`` was parsed from,
    lets the walk be skipped when the text cannot hold a problem (nearly always: the walk cost 40 %
    of a request's CPU, docs/benchmarks.md); the walk stays the authority whenever it might.
    """
    if text is not None and (_flat_without_floats(value, text, max_depth)
                             or not could_hold_problem(text, max_depth)):
        return None
    return _walk(value, "$", 1, max_depth)


def _flat_without_floats(value: Any, text: str, max_depth: int) -> bool:
    """True when ``value``, parsed from ``text``, surely holds no problem: ``text`` has no ``\\u``
    escape and at most one bracket (one level of scalars, as an event nearly always is), and none of
    the scalars is a float. Then no string can hold a surrogate, no number can be infinite and
    nothing nests too deep. Single-character searches and a look at the values' types cost a sixth
    of the prescreen's regexes (issue #11).
    """
    if max_depth < 1 or "[" in text or text.find("{", text.find("{") + 1) >= 0 or (
            "\\" in text and "\\u" in text):
        return False
    return float not in map(type, value.values() if isinstance(value, dict) else (value,))


def could_hold_problem(text: str, max_depth: int = MAX_DEPTH) -> bool:
    """False only when JSON ``text`` surely parses to values that can all be sent faithfully.

    Conservative: a ``{`` or ``[`` inside a string counts as nesting, ``:1e5`` inside a string as
    an exponent. Fewer than ``max_depth`` brackets cannot nest deeper than ``max_depth``.
    """
    if "\\u" in text or text.count("{") + text.count("[") > max_depth:
        return True
    return (_EXPONENT.search(text) is not None or _BARE_EXPONENT.match(text) is not None
            or _LONG_DIGITS.search(text) is not None)


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
