"""Charts as inline SVG drawn on the server: a page shows them with no script and no chart library.

Each function returns SVG markup with a ``<title>`` and ``role="img"`` so a screen reader names it;
every text in it is escaped.
"""

from __future__ import annotations

from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 640, 260
MARGIN = {"left": 56, "right": 16, "top": 16, "bottom": 36}
COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2")


def _ticks(low: float, high: float, count: int = 4) -> list[float]:
    if high == low:
        return [low]
    step = (high - low) / count
    return [low + i * step for i in range(count + 1)]


def _scale(low: float, high: float, start: float, end: float):
    """A linear map from [low, high] to pixel positions [start, end]."""
    span = (high - low) or 1.0
    return lambda value: start + (value - low) / span * (end - start)


def line_chart(series: dict[str, list[tuple[float, float]]], title: str, x_label: str = "step") -> Markup:
    """One polyline per named series of (x, y) points, with axes, ticks and a legend."""
    points = [p for values in series.values() for p in values]
    if not points:
        return Markup(f'<p class="empty">{escape(title)}: no points yet</p>')
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x = _scale(min(xs), max(xs), MARGIN["left"], WIDTH - MARGIN["right"])
    y = _scale(min(ys), max(ys), HEIGHT - MARGIN["bottom"], MARGIN["top"])
    parts = [_axes(x, y, xs, ys, x_label)]
    for i, (name, values) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        coords = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in values)
        parts.append(
            f'<polyline class="series" data-series="{escape(name)}" data-points="{len(values)}" '
            f'fill="none" stroke="{color}" stroke-width="2" points="{coords}"/>'
        )
        for a, b in values[-1:] if len(values) > 1 else values:
            parts.append(f'<circle cx="{x(a):.1f}" cy="{y(b):.1f}" r="3" fill="{color}"/>')
        parts.append(_legend_item(i, name, color))
    return _svg(title, "".join(parts))


def bar_chart(bars: list[tuple[str, float]], title: str) -> Markup:
    """Horizontal bars, one per (label, value), values in [0, 1] drawn on a 0..1 axis."""
    if not bars:
        return Markup(f'<p class="empty">{escape(title)}: nothing to show</p>')
    row, label_width = 28, 150
    height = MARGIN["top"] + row * len(bars) + MARGIN["bottom"]
    x = _scale(0.0, max(1.0, *(v for _, v in bars)), label_width, WIDTH - MARGIN["right"] - 48)
    parts = []
    for i, (label, value) in enumerate(bars):
        top = MARGIN["top"] + i * row
        parts.append(
            f'<text x="{label_width - 8}" y="{top + 17}" text-anchor="end">{escape(label)}</text>'
            f'<rect class="bar" data-label="{escape(label)}" x="{label_width}" y="{top + 4}" '
            f'width="{max(0.0, x(value) - label_width):.1f}" height="{row - 8}" fill="{COLORS[0]}"/>'
            f'<text x="{x(value) + 6:.1f}" y="{top + 17}">{value:.4f}</text>'
        )
    return _svg(title, "".join(parts), height)


def _axes(x, y, xs: list[float], ys: list[float], x_label: str) -> str:
    bottom, left = HEIGHT - MARGIN["bottom"], MARGIN["left"]
    parts = [
        f'<line x1="{left}" y1="{bottom}" x2="{WIDTH - MARGIN["right"]}" y2="{bottom}" stroke="#555"/>',
        f'<line x1="{left}" y1="{MARGIN["top"]}" x2="{left}" y2="{bottom}" stroke="#555"/>',
        f'<text x="{WIDTH / 2}" y="{HEIGHT - 4}" text-anchor="middle">{escape(x_label)}</text>',
    ]
    for value in _ticks(min(ys), max(ys)):
        parts.append(f'<text x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{value:.3g}</text>')
    for value in _ticks(min(xs), max(xs)):
        parts.append(f'<text x="{x(value):.1f}" y="{bottom + 16}" text-anchor="middle">{value:.0f}</text>')
    return "".join(parts)


def _legend_item(index: int, name: str, color: str) -> str:
    left = WIDTH - MARGIN["right"] - 120
    top = MARGIN["top"] + 4 + index * 16
    return (
        f'<rect x="{left}" y="{top}" width="10" height="10" fill="{color}"/>'
        f'<text x="{left + 16}" y="{top + 9}">{escape(name)}</text>'
    )


def _svg(title: str, body: str, height: int = HEIGHT) -> Markup:
    return Markup(
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" '
        f'xmlns="http://www.w3.org/2000/svg" font-size="11"><title>{escape(title)}</title>{body}</svg>'
    )
