"""What a backfill prints: a progress bar on a terminal, plain lines otherwise, and the tables at
the end. Text only: the CLI decides where it goes."""

from __future__ import annotations

import time

from bridge.backfill.client import CallCounts
from bridge.backfill.reconcile import Reconcile
from bridge.backfill.runner import Plan, Progress
from bridge.inbound.fields import EVENT_TYPES

BAR_WIDTH = 24


def _queued(progress: Progress) -> str:
    return " ".join(f"{kind}={progress.queued[kind]}" for kind in EVENT_TYPES if kind in progress.queued)


def status_line(progress: Progress, counts: CallCounts) -> str:
    """One line: windows done, pages, events queued per type, requests, 429s."""
    return (f"windows {progress.windows_done}/{progress.windows_total}  pages {progress.pages}  "
            f"queued {sum(progress.queued.values())} ({_queued(progress) or '-'})  "
            f"requests {counts.requests}  429s {counts.throttled}")


def bar(progress: Progress, counts: CallCounts) -> str:
    """The status line behind a bar of windows done, for a terminal (redrawn with a carriage return)."""
    total = max(progress.windows_total, 1)
    filled = BAR_WIDTH * min(progress.windows_done, total) // total
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {status_line(progress, counts)}"


def _day(seconds: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(seconds))


def summary(plan: Plan, progress: Progress, counts: CallCounts) -> list[str]:
    """The final table: per event type queued and already held, then the run's cost."""
    lines = [f"backfill {_day(plan.since)} -> {_day(plan.until)} UTC (until: {plan.why})",
             f"{'event':<10}{'queued':>10}{'already held':>14}"]
    for kind in EVENT_TYPES:
        lines.append(f"{kind:<10}{progress.queued.get(kind, 0):>10}{progress.duplicates.get(kind, 0):>14}")
    lines.append(f"{'total':<10}{sum(progress.queued.values()):>10}{sum(progress.duplicates.values()):>14}")
    lines.append(f"windows {progress.windows_done}/{progress.windows_total}, pages {progress.pages}, "
                 f"rows {progress.rows}, lookups {progress.lookups}, quarantined {progress.quarantined}, "
                 f"rows without an event time {progress.unusable}")
    per_path = ", ".join(f"{path} {n}" for path, n in sorted(counts.by_path.items()))
    lines.append(f"requests {counts.requests} ({per_path}), "
                 f"429s {counts.throttled}, retries {counts.retries}, {progress.elapsed():.1f} s")
    for mismatch in progress.mismatches:
        lines.append(f"row count differs: {mismatch}")
    return lines


def dry_run_table(plan: Plan, progress: Progress, counts: CallCounts) -> list[str]:
    """Rows per event type and window by countOnly; nothing was queued."""
    lines = [f"dry run {_day(plan.since)} -> {_day(plan.until)} UTC (until: {plan.why}); nothing queued",
             f"{'window start':<18}{'window end':<18}" + "".join(f"{k:>9}" for k in EVENT_TYPES)]
    windows = sorted({(start, end) for _kind, start, end in progress.counted})
    totals = dict.fromkeys(EVENT_TYPES, 0)
    for start, end in windows:
        cells = []
        for kind in EVENT_TYPES:
            value = progress.counted.get((kind, start, end))
            totals[kind] += value or 0
            cells.append(f"{'-' if value is None else value:>9}")
        lines.append(f"{_day(start):<18}{_day(end):<18}" + "".join(cells))
    lines.append(f"{'total':<36}" + "".join(f"{totals[k]:>9}" for k in EVENT_TYPES))
    lines.append(f"requests {counts.requests}, 429s {counts.throttled}, {progress.elapsed():.1f} s")
    return lines


def reconcile_lines(result: Reconcile) -> list[str]:
    """The differences with /statcounters; a report, not a failure."""
    if result.unavailable:
        return [f"reconcile: skipped, {result.unavailable}"]
    if not result.differences:
        return [f"reconcile: the daily counts of {result.days} whole day(s) match /statcounters"]
    lines = [f"reconcile: {len(result.differences)} difference(s) with /statcounters over "
             f"{result.days} whole day(s) (a report, not a failure):",
             f"{'day':<12}{'event':<10}{'bridge':>8}{'mailjet':>9}"]
    for d in result.differences:
        lines.append(f"{time.strftime('%Y-%m-%d', time.gmtime(d.day)):<12}{d.event_type:<10}"
                     f"{d.bridge:>8}{d.mailjet:>9}")
    return lines
