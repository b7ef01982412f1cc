"""An inline SVG chart of events per type per minute: no library, nothing loaded at run time."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from html import escape

#: One colour per event type (colour-blind-safe palette); anything else is grey.
COLOURS = {
    "sent": "#0072B2", "open": "#009E73", "click": "#56B4E9", "bounce": "#D55E00",
    "blocked": "#CC79A7", "spam": "#E69F00", "unsub": "#F0E442", "identify": "#000000",
}
OTHER = "#999999"


def events_per_minute(timeline: Sequence[tuple[float, str, int]], now: float, window: float = 3600,
                      width: int = 720, height: int = 200) -> str:
    """Stacked bars, one per minute of the last ``window`` seconds, with a legend and a y scale."""
    minutes = int(window // 60)
    first = int(now // 60) * 60 - (minutes - 1) * 60
    stacks: dict[int, dict[str, int]] = defaultdict(dict)
    for bucket, kind, count in timeline:
        index = int((bucket - first) // 60)
        if 0 <= index < minutes:
            stacks[index][kind] = stacks[index].get(kind, 0) + count
    top = max((sum(s.values()) for s in stacks.values()), default=0) or 1
    plot_h, left, bar_w = height - 40, 40, (width - 40) / minutes
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" aria-label="Events per type per minute, last hour">',
        f'<text x="0" y="12" font-size="11">{top}</text><text x="0" y="{plot_h}" font-size="11">0</text>',
        f'<line x1="{left}" y1="{plot_h}" x2="{width}" y2="{plot_h}" stroke="#ccc"/>',
    ]
    kinds: set[str] = set()
    for index, stack in sorted(stacks.items()):
        y = float(plot_h)
        for kind, count in sorted(stack.items()):
            kinds.add(kind)
            bar = plot_h * count / top
            y -= bar
            parts.append(
                f'<rect x="{left + index * bar_w:.1f}" y="{y:.1f}" width="{max(bar_w - 1, 1):.1f}" '
                f'height="{bar:.1f}" fill="{COLOURS.get(kind, OTHER)}">'
                f"<title>{escape(kind)}: {count}</title></rect>"
            )
    for n, kind in enumerate(sorted(kinds)):
        x = left + n * 90
        parts.append(f'<rect x="{x}" y="{height - 14}" width="10" height="10" '
                     f'fill="{COLOURS.get(kind, OTHER)}"/>'
                     f'<text x="{x + 14}" y="{height - 5}" font-size="11">{escape(kind)}</text>')
    parts.append(f'<text x="{left}" y="{plot_h + 14}" font-size="10">-60 min</text>'
                 f'<text x="{width - 30}" y="{plot_h + 14}" font-size="10">now</text></svg>')
    return "".join(parts)
