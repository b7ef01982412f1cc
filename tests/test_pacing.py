"""Pacing an upstream: ``backoff_delay`` and the ``Pacer`` (backoff, Retry-After, refused
credentials) with its delivery state stored in a real SQLite store, on a hand-moved clock."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from bridge.delivery.pacing import Pacer, PacingPolicy, backoff_delay, status_key
from bridge.storage.base import Store

POLICY = PacingPolicy(backoff_base=10.0, backoff_cap=40.0, auth_retry_seconds=60.0)


@pytest.mark.parametrize(
    ("failures", "base", "cap", "step"),
    [
        pytest.param(0, 1.0, 300.0, 1.0, id="0-failures-as-1"),
        pytest.param(1, 1.0, 300.0, 1.0, id="1st"),
        pytest.param(2, 1.0, 300.0, 2.0, id="2nd"),
        pytest.param(3, 1.0, 300.0, 4.0, id="3rd"),
        pytest.param(9, 1.0, 300.0, 256.0, id="9th"),
        pytest.param(10, 1.0, 300.0, 300.0, id="10th-capped"),
        pytest.param(60, 1.0, 300.0, 300.0, id="60th-capped"),
        pytest.param(3, 0.5, 1.5, 1.5, id="small-cap"),
        pytest.param(1, 10.0, 5.0, 5.0, id="base-over-cap"),
    ],
)
def test_backoff_delay_within_half_step_and_step(failures: int, base: float, cap: float, step: float) -> None:
    rng = random.Random(1234)
    delays = [backoff_delay(failures, base, cap, rng) for _ in range(200)]
    assert all(step / 2 <= d <= step for d in delays)
    assert max(delays) - min(delays) > step / 4  # jittered, not fixed


@pytest.fixture
def pacer(store: Store, clock: Any) -> Pacer:
    return Pacer(store, "segment", POLICY, clock, random.Random(42))


def stored_state(store: Store) -> dict[str, Any]:
    raw = store.get_setting(status_key("segment"))
    assert raw is not None
    return json.loads(raw)


def test_fresh_pacer_is_ready_and_has_stored_nothing(pacer: Pacer, store: Store) -> None:
    assert pacer.ready("key")
    assert store.get_setting(status_key("segment")) is None


def test_failed_holds_for_the_backoff_step(pacer: Pacer, clock: Any) -> None:
    for step in (10.0, 20.0, 40.0, 40.0):
        delay = pacer.failed("HTTP 503", None)
        assert step / 2 <= delay <= step
        clock.advance(delay - 0.01)
        assert not pacer.ready("key")
        clock.advance(0.02)
        assert pacer.ready("key")


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        pytest.param(120.0, 120.0, id="longer-than-the-step-obeyed"),
        pytest.param(1.0, 1.0, id="shorter-than-the-step-obeyed"),
        pytest.param(0.0, 0.5, id="zero-raised-to-the-floor"),
        pytest.param(1e12, 600.0, id="huge-capped"),
        pytest.param(float("inf"), 600.0, id="infinite-capped"),
    ],
)
def test_retry_after_sets_the_wait_within_bounds(pacer: Pacer, clock: Any, retry_after: float,
                                                 expected: float) -> None:
    """A server that says "1 s" is tried again after 1 s, not after the backoff step."""
    delay = pacer.failed("HTTP 429", retry_after)
    assert delay == expected
    assert pacer.hold_until == clock() + delay


def test_succeeded_says_when_it_ends_a_run_of_failures(pacer: Pacer) -> None:
    assert pacer.succeeded("first") is True  # a new process may find rows an earlier one held
    assert pacer.succeeded("second") is False
    pacer.failed("HTTP 503", None)
    assert pacer.succeeded("back") is True
    assert pacer.succeeded("again") is False


def test_succeeded_resets_the_failure_count(pacer: Pacer) -> None:
    for _ in range(3):
        pacer.failed("HTTP 503", None)
    pacer.succeeded("last batch of 1 delivered")
    assert 5.0 <= pacer.failed("HTTP 503", None) <= 10.0  # the first step again


def test_refused_pauses_the_same_credential_until_auth_retry(pacer: Pacer, clock: Any) -> None:
    pacer.refused("bad-key", "write key refused")
    assert not pacer.ready("bad-key")
    clock.advance(59.9)
    assert not pacer.ready("bad-key")
    clock.advance(0.2)
    assert pacer.ready("bad-key")


def test_refused_lets_a_different_credential_through_at_once(pacer: Pacer) -> None:
    pacer.refused("bad-key", "write key refused")
    assert pacer.ready("new-key")
    assert pacer.ready("bad-key")  # the pause was lifted by the change, not kept for the old key


@pytest.mark.parametrize(
    ("action", "state", "detail"),
    [
        pytest.param(lambda p: p.succeeded("last batch of 3 delivered"),
                     "ok", "last batch of 3 delivered", id="succeeded"),
        pytest.param(lambda p: p.failed("HTTP 503", 120.0),
                     "retrying", "HTTP 503; next attempt in 120.0 s", id="failed"),
        pytest.param(lambda p: p.refused("bad-key", "Segment refused the write key (401)"),
                     "auth_failed", "Segment refused the write key (401)", id="refused"),
    ],
)
def test_stored_state(pacer: Pacer, store: Store, clock: Any, action: Any, state: str, detail: str) -> None:
    action(pacer)
    assert stored_state(store) == {"state": state, "detail": detail, "since": clock()}


def test_stored_state_follows_transitions(pacer: Pacer, store: Store, clock: Any) -> None:
    pacer.refused("bad-key", "write key refused")
    assert stored_state(store)["state"] == "auth_failed"
    clock.advance(5)
    pacer.failed("HTTP 502", 30.0)
    assert stored_state(store)["state"] == "retrying"
    clock.advance(30)
    pacer.succeeded("last batch of 2 delivered")
    assert stored_state(store) == {"state": "ok", "detail": "last batch of 2 delivered", "since": clock()}
    clock.advance(10)
    pacer.succeeded("last batch of 2 delivered")  # same state and detail: not rewritten
    assert stored_state(store)["since"] == clock() - 10


def test_backoff_after_a_very_long_outage_stays_at_the_cap() -> None:
    """Thousands of failures in a row (days of a dead upstream) never overflow the step."""
    delay = backoff_delay(5000, 1.0, 300.0, random.Random(1))
    assert 150.0 <= delay <= 300.0

