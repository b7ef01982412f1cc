"""Stop signals (SIGINT, SIGTERM), acted on once in a process.

A handler that sets a ``threading.Event`` takes the Event's lock. Ctrl-C reaches every process of
a group, and a supervisor then sends SIGTERM too: a second signal that arrives while the first
handler holds that lock runs the handler again in the same thread, which then waits for the lock
for good. Seen as a delivery process that ``serve`` had to kill after 10 s, once in 30 stops right
after start. So the first stop signal swaps every stop handler for one that does nothing, then acts.
Not SIG_IGN: a signal another thread took meanwhile would print CPython's "ignored due to race
condition" error.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable
from typing import Any

STOPS = (signal.SIGINT, signal.SIGTERM)
Handler = Callable[[int, Any], Any] | int | None


def heard(signum: int, frame: Any) -> None:
    """A stop signal after the first: the process is already stopping."""


def stopped_by_first(act: Callable[[int], None], signals: Iterable[int] = STOPS) -> dict[int, Handler]:
    """On the first of ``signals``, ``act(signum)`` once; later ones do nothing. Returns the handlers
    it replaced, to put back when done."""
    signals = tuple(signals)

    def on_signal(signum: int, frame: Any) -> None:
        for sig in signals:  # first: a signal from here on must not run act again
            signal.signal(sig, heard)
        act(signum)

    return {sig: signal.signal(sig, on_signal) for sig in signals}
