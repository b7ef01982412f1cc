"""Packing Segment calls into batches (``pack``) and bisecting a rejected group (``halves``)."""

from __future__ import annotations

import random

import pytest

from bridge.delivery.loop import halves
from bridge.inbound.batching import (
    ENVELOPE_BYTES,
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    MAX_EVENT_BYTES,
    pack,
)

#: Bytes left for calls and their commas (pack counts one comma per call).
BUDGET = MAX_BATCH_BYTES - ENVELOPE_BYTES
#: 14 calls of the largest size, and the size of a 15th that fills the batch to the byte.
FULL = [MAX_EVENT_BYTES] * 14
FILLER = BUDGET - 14 * (MAX_EVENT_BYTES + 1) - 1

Call = tuple[int, int]  # (position, encoded size)


def calls(sizes: list[int]) -> list[Call]:
    return list(enumerate(sizes))


def size(call: Call) -> int:
    return call[1]


def as_segment_sees_it(batch: list[Call]) -> bytes:
    """The request body for a batch of calls, built as SegmentClient.post_batch builds it."""
    encoded = [b"x" * size(call) for call in batch]
    return b'{"batch":[' + b",".join(encoded) + b'],"sentAt":"2027-01-15T08:00:00.000Z"}'


@pytest.mark.parametrize(
    ("sizes", "expected_lengths"),
    [
        pytest.param([], [], id="empty"),
        pytest.param([100], [1], id="one-item"),
        pytest.param([MAX_EVENT_BYTES], [1], id="one-item-of-max-size"),
        pytest.param([*FULL, FILLER], [15], id="exactly-at-byte-limit"),
        pytest.param([*FULL, FILLER + 1], [14, 1], id="one-byte-over"),
        pytest.param([1] * MAX_BATCH_EVENTS, [MAX_BATCH_EVENTS], id="exactly-at-event-limit"),
        pytest.param([1] * (MAX_BATCH_EVENTS + 1), [MAX_BATCH_EVENTS, 1], id="one-event-over"),
        pytest.param([MAX_EVENT_BYTES] * 30, [14, 14, 2], id="many-large-items"),
    ],
)
def test_pack_batch_lengths(sizes: list[int], expected_lengths: list[int]) -> None:
    batches = pack(calls(sizes), size)
    assert [len(b) for b in batches] == expected_lengths


def test_pack_honours_explicit_limits() -> None:
    # envelope 64 + 3 * (10 + 1) = 97 <= 100; a fourth call does not fit
    assert [len(b) for b in pack(calls([10] * 7), size, max_bytes=100)] == [3, 3, 1]
    assert [len(b) for b in pack(calls([10] * 7), size, max_events=2)] == [2, 2, 2, 1]


@pytest.mark.parametrize(
    "sizes",
    [
        pytest.param([*FULL, FILLER], id="exactly-at-byte-limit"),
        pytest.param([MAX_EVENT_BYTES] * 40, id="all-max-size"),
        pytest.param(random.Random(7).choices(range(1, MAX_EVENT_BYTES + 1), k=300), id="random-sizes"),
        pytest.param([1] * 4500, id="tiny-calls"),
    ],
)
def test_pack_keeps_order_and_every_batch_within_limits(sizes: list[int]) -> None:
    items = calls(sizes)
    batches = pack(items, size)
    assert [item for batch in batches for item in batch] == items
    for batch in batches:
        assert batch, "no empty batch"
        assert len(batch) <= MAX_BATCH_EVENTS
        assert len(as_segment_sees_it(batch)) <= MAX_BATCH_BYTES


def test_envelope_allowance_covers_the_real_envelope() -> None:
    assert len(as_segment_sees_it([])) <= ENVELOPE_BYTES


@pytest.mark.parametrize(
    ("group", "expected"),
    [
        pytest.param([], ([], []), id="0-items"),
        pytest.param(["a"], ([], ["a"]), id="1-item"),
        pytest.param(["a", "b"], (["a"], ["b"]), id="2-items"),
        pytest.param(["a", "b", "c"], (["a"], ["b", "c"]), id="3-items"),
        pytest.param(("a", "b", "c", "d"), (["a", "b"], ["c", "d"]), id="tuple-gives-lists"),
    ],
)
def test_halves(group: list[str], expected: tuple[list[str], list[str]]) -> None:
    assert halves(group) == expected
