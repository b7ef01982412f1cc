"""The check for values a Segment call cannot carry (bridge/payloads/faithful.py)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.payloads.body import loads_strict, parse_body
from bridge.payloads.faithful import MAX_DEPTH, problem


def nested(levels: int) -> Any:
    """An object whose deepest container is at ``levels`` (the object itself is level 1)."""
    value: Any = 1
    for _ in range(levels - 1):
        value = [value]
    return {"deep": value}


@pytest.mark.parametrize("value", [
    {"event": "sent", "email": "zoë@exämple.com", "n": 2**70, "f": 1.5, "ok": [None, True, "🎉"]},
    nested(MAX_DEPTH), [], {}, "text", 0,
])
def test_sound_values_pass(value: Any) -> None:
    assert problem(value) is None


@pytest.mark.parametrize(("text", "path", "fragment"), [
    ('{"email": "a\\ud800@x.com"}', "$.email", "lone surrogate (\\ud800)"),
    ('{"a": [1, {"b": "\\udfff"}]}', "$.a[1].b", "lone surrogate (\\udfff)"),
    ('{"ok": 1, "\\ud800": 1}', '$["\\ud800"]', "the key holds a lone surrogate"),
    ('{"a": {"x-y": 1e400}}', '$.a["x-y"]', "inf is not a finite number"),
    ('{"a": -1e400}', "$.a", "-inf is not a finite number"),
])
def test_each_problem_is_named_with_its_path(text: str, path: str, fragment: str) -> None:
    ((value, _),) = parse_body(text.encode())
    found = problem(value)
    assert found is not None and found["path"] == path
    assert fragment in found["message"]
    json.dumps(found).encode("utf-8")  # a reason can itself be stored and shown


def test_nan_is_refused_too() -> None:
    assert problem({"a": float("nan")}) == {"path": "$.a",
                                            "message": "nan is not a finite number (JSON cannot carry it)"}


def test_depth_bound_is_exact() -> None:
    assert problem(nested(MAX_DEPTH)) is None
    found = problem(nested(MAX_DEPTH + 1))
    assert found is not None and found["message"] == f"nests deeper than {MAX_DEPTH} levels"
    assert found["path"] == "$.deep" + "[0]" * (MAX_DEPTH - 1)  # the container at level 33


def test_nesting_near_the_parser_limit_is_refused_without_recursion() -> None:
    ((value, _),) = parse_body(b'{"a": ' + b"[" * 900 + b"]" * 900 + b"}")
    assert problem(value)["message"] == f"nests deeper than {MAX_DEPTH} levels"  # type: ignore[index]



LITERALS = ["1e400", "-1E999", "1" * 320 + ".5", '"\\ud800"', '"\\uDFFF x"', '"\\ud83d\\ude00"',
            '"1e5"', '"[[[{{{"']
SPACE = st.sampled_from(["", " ", "\n\t "])
#: JSON texts as a sender may write them: escapes, huge floats, deep nesting, brackets in strings.
JSON_TEXTS = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text()).map(json.dumps)
    | st.sampled_from(LITERALS),
    lambda inner: st.builds(lambda xs, s: f"[{s}" + f"{s},{s}".join(xs) + f"{s}]",
                            st.lists(inner, max_size=4), SPACE)
    | st.builds(lambda d, s: "{" + ",".join(f"{s}{json.dumps(k)}{s}:{s}{v}" for k, v in d.items()) + "}",
                st.dictionaries(st.text(max_size=5), inner, max_size=4), SPACE),
    max_leaves=40,
)


@settings(max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "300")), deadline=None)
@given(JSON_TEXTS, st.sampled_from([1, 2, 3, MAX_DEPTH]))
def test_the_text_shortcut_never_hides_a_problem(text: str, depth: int) -> None:
    """``problem(value, text=...)`` skips the walk only when the text cannot hold a problem: for any
    JSON text it finds exactly what the full walk finds."""
    try:
        value = loads_strict(text)
    except (ValueError, RecursionError):
        return
    assert problem(value, depth, text=text) == problem(value, depth)


SCALARS = (st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text()).map(
    lambda v: json.dumps(v, ensure_ascii=False)) | st.sampled_from([*LITERALS, '"a\\\\u0041"', '"\\\\"']))
KEYS = st.text(max_size=5).map(json.dumps) | st.sampled_from(['"\\ud800"', '"{"'])


def flat_objects(values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.builds(lambda pairs, s: "{" + ",".join(f"{s}{k}{s}:{s}{v}" for k, v in pairs) + "}",
                     st.lists(st.tuples(KEYS, values), max_size=6), SPACE)


#: One level of scalars, as nearly every event is (the case ``problem`` answers from the values'
#: types), and objects one level deeper, which must not be taken for it.
FLAT_TEXTS = SCALARS | flat_objects(SCALARS) | flat_objects(SCALARS | flat_objects(SCALARS))


@settings(max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "300")), deadline=None)
@given(FLAT_TEXTS, st.sampled_from([0, 1, 2, MAX_DEPTH]))
def test_the_flat_shortcut_never_hides_a_problem(text: str, depth: int) -> None:
    """Flat objects and lone scalars, whose check looks at the values' types: the same answer as
    the full walk, escapes, non-finite numbers and brackets inside strings included."""
    try:
        value = loads_strict(text)
    except (ValueError, RecursionError):
        return
    assert problem(value, depth, text=text) == problem(value, depth)
