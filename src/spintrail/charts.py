"""Charts as server-rendered SVG: stacked bars per day, horizontal bars, lines.

No JavaScript and no chart library: each chart is a small SVG with axis labels, a legend, and a ``<title>``
on every bar and point so the exact number shows on hover (and to screen readers). Pages put the same
numbers in a table beside each chart.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

from markupsafe import Markup

#: Colours of deployment outcomes (status groups) and change kinds.
COLORS: dict[str, str] = {
    "succeeded": "#2e8540",
    "failed": "#d64541",
    "canceled": "#8a8f98",
    "no end received": "#e0a526",
    "continue": "#2e8540",
    "stop": "#d64541",
    "deploy": "#3b6fd8",
    "manifest": "#7a4fd1",
    "resize": "#1f9d8b",
    "disable": "#e0a526",
    "enable": "#6cbf3a",
    "destroy": "#d64541",
    "rollback": "#c2569b",
    "job": "#5b6b7f",
}
_FALLBACK = ("#3b6fd8", "#1f9d8b", "#e0a526", "#c2569b", "#7a4fd1", "#5b6b7f", "#6cbf3a", "#d64541")
#: What a missing number shows as.
NONE = "\u2013"
_FONT = 'font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif"'


def color(name: str, i: int = 0) -> str:
    return COLORS.get(name, _FALLBACK[i % len(_FALLBACK)])


#: Tick steps for durations in milliseconds: seconds, minutes, hours.
DURATION_STEPS: tuple[float, ...] = tuple(
    float(v)
    for v in (
        1_000, 2_000, 5_000, 10_000, 15_000, 30_000,
        60_000, 120_000, 300_000, 600_000, 900_000, 1_800_000,
        3_600_000, 7_200_000, 10_800_000, 21_600_000, 43_200_000, 86_400_000,
    )
)  # fmt: skip


def count_steps(vmax: float) -> list[float]:
    """Whole-number tick steps 1, 2, 5, 10, 20, 50, ... up past ``vmax``."""
    out: list[float] = []
    exp = 1.0
    while not out or out[-1] < max(vmax, 1):
        out += [exp, 2 * exp, 5 * exp]
        exp *= 10
    return out


def scale(vmax: float, steps: Sequence[float] | None = None, *, most: int = 5) -> list[float]:
    """Axis ticks from 0: the smallest step giving at most ``most`` intervals, ending at or above vmax."""
    candidates = list(steps) if steps else count_steps(vmax)
    step = next((s for s in candidates if math.ceil(vmax / s) <= most), None)
    if step is None:  # beyond the table: stretch its largest step
        step = candidates[-1] * math.ceil(vmax / (candidates[-1] * most))
    n = max(1, math.ceil(vmax / step))
    return [step * k for k in range(n + 1)]


def fmt_int(v: float) -> str:
    return f"{round(v):,}"


def fmt_duration(ms: float | None) -> str:
    """Milliseconds as a short human duration: ``850 ms``, ``42 s``, ``12 min``, ``3 h 5 min``."""
    if ms is None:
        return NONE
    if ms == 0:
        return "0"
    s = ms / 1000
    if s < 1:
        return f"{int(ms)} ms"
    if s < 90:
        return f"{s:.0f} s"
    m = s / 60
    if m < 90:
        return f"{m:.0f} min"
    h = int(m // 60)
    return f"{h} h {int(m % 60)} min"


def _svg(width: int, height: int, label: str, body: list[str]) -> Markup:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
        f'width="100%" preserveAspectRatio="xMinYMin meet" role="img" aria-label="{escape(label)}" {_FONT}>'
        f"<title>{escape(label)}</title>"
    )
    return Markup(head + "".join(body) + "</svg>")


def _short_day(day: str) -> str:
    return day[5:] if len(day) == 10 else day


def _legend(names: Sequence[str], x: float, y: float) -> list[str]:
    out = []
    for i, name in enumerate(names):
        out.append(
            f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="10" height="10" rx="2" fill="{color(name, i)}"/>'
            f'<text x="{x + 14:.1f}" y="{y:.1f}" font-size="12.5" fill="#333">{escape(name)}</text>'
        )
        x += 26 + 7.2 * len(name)
    return out


def stacked_bars(
    categories: Sequence[str],
    series: dict[str, Sequence[int]],
    *,
    label: str,
    width: int = 760,
    height: int = 240,
) -> Markup:
    """A vertical stacked bar per category (day), one segment per series, with a legend and y grid."""
    left, right, top, bottom = 44, 10, 26, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    n = max(1, len(categories))
    totals = [sum(series[s][i] for s in series) for i in range(len(categories))]
    ticks = scale(max(totals, default=0))
    ymax = ticks[-1]
    body: list[str] = _legend(list(series), left, 14)
    for v in ticks:
        y = top + plot_h - plot_h * v / ymax
        body.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11.5" text-anchor="end" fill="#666">'
            f"{fmt_int(v)}</text>"
        )
    slot = plot_w / n
    bar = max(1.0, min(28.0, slot * 0.72))
    every = max(1, math.ceil(n / 12))
    for i, cat in enumerate(categories):
        x = left + slot * i + (slot - bar) / 2
        y = top + plot_h
        parts = [f"{cat}: {fmt_int(totals[i])} total"]
        for j, (name, values) in enumerate(series.items()):
            v = values[i]
            if not v:
                continue
            h = plot_h * v / ymax
            y -= h
            body.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{color(name, j)}">'
                f"<title>{escape(cat)}: {escape(name)} {fmt_int(v)}</title></rect>"
            )
            parts.append(f"{name} {v}")
        # an invisible full-height target so hovering anywhere over the day shows its numbers
        body.append(
            f'<rect x="{left + slot * i:.1f}" y="{top}" width="{slot:.1f}" height="{plot_h}" '
            f'fill="transparent" class="hover"><title>{escape(", ".join(parts))}</title></rect>'
        )
        if i % every == 0:
            body.append(
                f'<text x="{x + bar / 2:.1f}" y="{height - bottom + 14}" font-size="11.5" '
                f'text-anchor="middle" fill="#666">{escape(_short_day(cat))}</text>'
            )
    body.append(
        f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#9ca3af"/>'
    )
    return _svg(width, height, label, body)


def hbars(
    items: Sequence[tuple[str, float]],
    *,
    label: str,
    bar_color: str = "#3b6fd8",
    value_format: Callable[[float], str] = fmt_int,
    width: int = 560,
    links: Sequence[str | None] | None = None,
) -> Markup:
    """Horizontal bars, one per item, labelled on the left with the value at the end of the bar."""
    label_w, row = 210, 22
    height = max(1, len(items)) * row + 8
    plot_w = width - label_w - 52
    vmax = max((v for _k, v in items), default=0) or 1
    body: list[str] = []
    if not items:
        body.append(
            f'<text x="8" y="18" font-size="12" fill="#666">{escape("nothing in this period")}</text>'
        )
    for i, (name, v) in enumerate(items):
        y = 4 + i * row
        w = max(1.0, plot_w * v / vmax)
        shown = name if len(name) <= 32 else name[:31] + "…"
        text = (
            f'<text x="{label_w - 6}" y="{y + 14}" font-size="11" text-anchor="end" fill="#222">'
            f"{escape(shown)}<title>{escape(name)}</title></text>"
        )
        link = links[i] if links is not None and i < len(links) else None
        if link:
            text = f'<a href="{escape(link)}">{text}</a>'
        body.append(text)
        body.append(
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 8}" rx="2" fill="{bar_color}">'
            f"<title>{escape(name)}: {escape(value_format(v))}</title></rect>"
            f'<text x="{label_w + w + 5:.1f}" y="{y + 14}" font-size="11" fill="#444">'
            f"{escape(value_format(v))}</text>"
        )
    return _svg(width, height, label, body)


def stacked_hbars(
    items: Sequence[tuple[str, dict[str, int]]],
    kinds: Sequence[str],
    *,
    label: str,
    width: int = 760,
) -> Markup:
    """Horizontal stacked bars (e.g. changes per account, one segment per kind of change)."""
    label_w, row, top = 130, 24, 24
    height = top + max(1, len(items)) * row + 6
    plot_w = width - label_w - 60
    vmax = max((sum(c.values()) for _k, c in items), default=0) or 1
    body: list[str] = _legend(list(kinds), label_w, 14)
    if not items:
        body.append(
            f'<text x="{label_w}" y="{top + 16}" font-size="12" fill="#666">nothing in this period</text>'
        )
    for i, (name, counts) in enumerate(items):
        y = top + i * row
        body.append(
            f'<text x="{label_w - 6}" y="{y + 15}" font-size="11" text-anchor="end" fill="#222">'
            f"{escape(name)}</text>"
        )
        x = float(label_w)
        for j, kind in enumerate(kinds):
            v = counts.get(kind, 0)
            if not v:
                continue
            w = plot_w * v / vmax
            body.append(
                f'<rect x="{x:.1f}" y="{y + 4}" width="{w:.1f}" height="{row - 8}" fill="{color(kind, j)}">'
                f"<title>{escape(name)}: {escape(kind)} {v}</title></rect>"
            )
            x += w
        total = sum(counts.values())
        body.append(f'<text x="{x + 5:.1f}" y="{y + 15}" font-size="11" fill="#444">{fmt_int(total)}</text>')
    return _svg(width, height, label, body)


def line(
    categories: Sequence[str],
    values: Sequence[float | None],
    *,
    label: str,
    value_format: Callable[[float], str] = fmt_int,
    width: int = 760,
    height: int = 200,
    line_color: str = "#3b6fd8",
    steps: Sequence[float] | None = None,
) -> Markup:
    """A line over categories (days); gaps where a value is ``None``; a dot with a ``<title>`` per value."""
    left, right, top, bottom = 60, 10, 12, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    n = max(1, len(categories))
    present = [v for v in values if v is not None]
    ticks = scale(max(present, default=0), steps)
    ymax = ticks[-1]
    body: list[str] = []
    for v in ticks:
        y = top + plot_h - plot_h * v / ymax
        body.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11.5" text-anchor="end" fill="#666">'
            f"{escape(value_format(v))}</text>"
        )
    slot = plot_w / n
    every = max(1, math.ceil(n / 12))
    points: list[tuple[float, float, str, float]] = []
    segments: list[list[tuple[float, float]]] = [[]]
    for i, cat in enumerate(categories):
        x = left + slot * i + slot / 2
        if i % every == 0:
            body.append(
                f'<text x="{x:.1f}" y="{height - bottom + 14}" font-size="11.5" text-anchor="middle" '
                f'fill="#666">{escape(_short_day(cat))}</text>'
            )
        v = values[i] if i < len(values) else None
        if v is None:
            if segments[-1]:
                segments.append([])
            continue
        y = top + plot_h - plot_h * v / ymax
        segments[-1].append((x, y))
        points.append((x, y, cat, v))
    for seg in segments:
        if len(seg) > 1:
            d = " ".join(f"{x:.1f},{y:.1f}" for x, y in seg)
            body.append(f'<polyline points="{d}" fill="none" stroke="{line_color}" stroke-width="2"/>')
    for x, y, cat, v in points:
        body.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{line_color}">'
            f"<title>{escape(cat)}: {escape(value_format(v))}</title></circle>"
        )
    if not points:
        body.append(
            f'<text x="{left + 8}" y="{top + plot_h / 2:.1f}" font-size="12" fill="#666">'
            "nothing in this period</text>"
        )
    body.append(
        f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#9ca3af"/>'
    )
    return _svg(width, height, label, body)
