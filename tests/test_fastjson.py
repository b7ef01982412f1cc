"""orjson where it reads and writes what ``json`` would (bridge/delivery/fastjson.py): for any text,
``loads`` gives ``json.loads``'s value, and ``dumps`` writes a text that reads back as that value, or
refuses it as ``json`` (``allow_nan=False``) does."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bridge.delivery import fastjson
from tests.test_faithful import JSON_TEXTS, LITERALS

#: What orjson reads differently or refuses, besides test_faithful's literals.
MORE = ["NaN", "-Infinity", str(2**64), str(-(2**64) - 1), "1" * 40, "18446744073709551615", "-0",
        "1.5e-7", "1E400"]
TEXTS = st.one_of(
    JSON_TEXTS,
    st.lists(st.sampled_from(LITERALS + MORE), min_size=1, max_size=4).map(
        lambda xs: "[" + ",".join(xs) + "]"),
    st.dictionaries(st.text(max_size=3), st.sampled_from(MORE) | st.integers().map(str), max_size=4).map(
        lambda d: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in d.items()) + "}"),
)


def same(a: Any, b: Any) -> bool:
    """Equal values of equal types, NaN included (``json.dumps`` tells 1 from 1.0 and keeps order)."""
    return json.dumps(a, allow_nan=True) == json.dumps(b, allow_nan=True)


def json_refuses(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        return True
    return False


@settings(max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "300")), deadline=None, database=None)
@given(TEXTS)
@example("-9223372036854775809")  # a bare integer below 64 bits (Hypothesis found orjson's float)
@example(str(2**64))
def test_loads_gives_what_json_gives_and_dumps_reads_back(text: str) -> None:
    try:
        expected = json.loads(text)
    except (ValueError, RecursionError):
        with pytest.raises((ValueError, RecursionError)):
            fastjson.loads(text)
        return
    value, by_orjson = fastjson.loads(text)
    assert same(value, expected)
    if json_refuses(value):
        with pytest.raises((ValueError, UnicodeEncodeError)):
            fastjson.dumps(value, by_orjson=by_orjson)
    else:
        assert same(json.loads(fastjson.dumps(value, by_orjson=by_orjson)), expected)


@pytest.mark.parametrize(("text", "by_orjson"), [
    ('{"event":"open","MessageID":19421777396190490}', True),
    ('{"big":123456789012345678901234567890,"x":[{"f":1.5}]}', True),  # read again by json: exact
    ('{"a":"x","b":[1,{"c":[2,{"d":123456789012345678901234567890}]}]}', True),  # deep, no float above
    ('{"a":NaN}', False), ('{"a":"\\ud800"}', False),
])
def test_which_parser_read_it(text: str, by_orjson: bool) -> None:
    value, flag = fastjson.loads(text)
    assert flag is by_orjson and same(value, json.loads(text))


def test_nan_is_refused_even_when_asked_for_orjson() -> None:
    """orjson would write null: a value json read (``by_orjson=False``) is written by json."""
    value, by_orjson = fastjson.loads('{"a":NaN}')
    with pytest.raises(ValueError):
        fastjson.dumps(value, by_orjson=by_orjson)
    assert fastjson.dumps({"a": 2**70}, by_orjson=True) == b'{"a":1180591620717411303424}'
