"""Time windows for the backfill: whole UTC days, halved while ``countOnly`` says a window is too big.

No I/O here: the runner asks for counts and keeps checkpoints; this module only cuts time.
"""

from __future__ import annotations

from collections.abc import Iterator

from bridge.backfill.resources import DAY


def day_windows(since: int, until: int) -> Iterator[tuple[int, int]]:
    """[since, until) cut at UTC midnights: a window per calendar day (the first and last partial)."""
    start = since
    while start < until:
        end = min(until, (start // DAY + 1) * DAY)
        yield start, end
        start = end


def halves(start: int, end: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """A window cut in two at its middle second."""
    middle = start + (end - start) // 2
    return (start, middle), (middle, end)


def splittable(start: int, end: int) -> bool:
    """A window of one second cannot be cut further (it is paged however large it is)."""
    return end - start > 1
