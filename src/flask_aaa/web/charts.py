"""Small charts as inline SVG, drawn on the server: no script, no external resource.

A :class:`Chart` is days along the x axis and one or more :class:`Series` of whole numbers.
:func:`render` draws grouped bars or lines with both axes, tick labels, a ``<title>`` on every
bar or point (the browser shows it on hover, screen readers read it) and ``data-*``
attributes carrying the numbers. Colours come from CSS classes (``aaa-series-<key>``), so an
app restyles them in its own stylesheet, and the page's Content-Security-Policy needs no
``style-src 'unsafe-inline'``. Pages show the same numbers in a table next to the chart.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from markupsafe import Markup, escape

#: Size of the drawing in SVG units; CSS scales it to the width of its container.
WIDTH = 640
HEIGHT = 220
_LEFT, _RIGHT, _TOP, _BOTTOM = 44, 12, 14, 34


@dataclasses.dataclass(frozen=True, slots=True)
class Series:
    """One row of numbers: ``key`` names its CSS class, ``name`` is what people read."""

    key: str
    name: str
    values: tuple[int, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Chart:
    """A chart of ``series`` over ``labels`` (one label per x position, such as a day)."""

    id: str
    title: str
    description: str
    labels: tuple[str, ...]
    series: tuple[Series, ...]
    kind: str = "bar"  # or "line"

    def __post_init__(self) -> None:
        if self.kind not in ("bar", "line"):
            raise ValueError("kind must be 'bar' or 'line'")
        for series in self.series:
            if len(series.values) != len(self.labels):
                raise ValueError(f"series {series.key!r} needs one value per label")

    @property
    def total(self) -> int:
        return sum(sum(s.values) for s in self.series)

    def rows(self) -> list[tuple[str, list[int]]]:
        """The numbers by label, for the table that accompanies the drawing."""
        return [(label, [s.values[i] for s in self.series]) for i, label in enumerate(self.labels)]


def nice_ceiling(value: int, ticks: int = 4) -> tuple[int, int]:
    """The top of the y axis and the step between its ticks: a step of 1, 2 or 5 times a
    power of ten, so that ``ticks`` steps cover ``value`` (at least 1)."""
    if value <= ticks:
        return ticks, 1
    raw = value / ticks
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return int(step * math.ceil(value / step)), int(step)


def _num(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


def render(chart: Chart) -> Markup:
    """The chart as an ``<svg>`` element (safe markup: every text is escaped)."""
    top, step = nice_ceiling(max((max(s.values, default=0) for s in chart.series), default=0))
    plot_w = WIDTH - _LEFT - _RIGHT
    plot_h = HEIGHT - _TOP - _BOTTOM
    n = max(len(chart.labels), 1)
    slot = plot_w / n

    def y_of(value: int) -> float:
        return _TOP + plot_h - plot_h * value / top

    cid = escape(chart.id)
    out = [
        f'<svg class="aaa-chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="{cid}-title {cid}-desc" data-chart="{cid}" '
        'xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{cid}-title">{escape(chart.title)}</title>',
        f'<desc id="{cid}-desc">{escape(chart.description)}</desc>',
    ]
    # y axis: grid lines and tick labels
    for tick in range(0, top + 1, step):
        y = _num(y_of(tick))
        out.append(
            f'<line class="aaa-chart-grid" x1="{_LEFT}" y1="{y}" x2="{WIDTH - _RIGHT}" y2="{y}"/>'
        )
        out.append(
            f'<text class="aaa-chart-tick" x="{_LEFT - 6}" y="{y}" text-anchor="end" '
            f'dominant-baseline="middle">{tick}</text>'
        )
    base = _num(_TOP + plot_h)
    out.append(
        f'<line class="aaa-chart-axis" x1="{_LEFT}" y1="{base}" x2="{WIDTH - _RIGHT}" y2="{base}"/>'
    )
    out.append(f'<line class="aaa-chart-axis" x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{base}"/>')
    # x axis: a label every few positions so that they never overlap
    every = 1 if n <= 8 else 2 if n <= 16 else math.ceil(n / 8)
    for i, label in enumerate(chart.labels):
        if (n - 1 - i) % every == 0:  # counted from the last, which is always labelled
            x = _num(_LEFT + slot * (i + 0.5))
            out.append(
                f'<text class="aaa-chart-tick" x="{x}" y="{HEIGHT - _BOTTOM + 16}" '
                f'text-anchor="middle">{escape(_short(label))}</text>'
            )
    if chart.kind == "bar":
        out.extend(_bars(chart, slot, y_of))
    else:
        out.extend(_lines(chart, slot, y_of))
    out.append("</svg>")
    # Every text that reaches the drawing went through escape() above; numbers are ints.
    return Markup("".join(out))  # noqa: S704


def _bars(chart: Chart, slot: float, y_of: Callable[[int], float]) -> list[str]:
    count = max(len(chart.series), 1)
    width = slot * 0.8 / count
    base = y_of(0)
    out = []
    for i, label in enumerate(chart.labels):
        for j, series in enumerate(chart.series):
            value = series.values[i]
            x = _LEFT + slot * i + slot * 0.1 + width * j
            y = y_of(value)
            out.append(
                f'<rect class="aaa-chart-bar aaa-series-{escape(series.key)}" '
                f'x="{_num(x)}" y="{_num(y)}" width="{_num(width)}" height="{_num(base - y)}" '
                f'data-series="{escape(series.key)}" data-label="{escape(label)}" '
                f'data-value="{value}"><title>{_point_title(label, value, series)}</title></rect>'
            )
    return out


def _lines(chart: Chart, slot: float, y_of: Callable[[int], float]) -> list[str]:
    out = []
    for series in chart.series:
        points = [(_LEFT + slot * (i + 0.5), y_of(value)) for i, value in enumerate(series.values)]
        path = " ".join(f"{_num(x)},{_num(y)}" for x, y in points)
        key = escape(series.key)
        out.append(f'<polyline class="aaa-chart-line aaa-series-{key}" points="{path}"/>')
        for (x, y), label, value in zip(points, chart.labels, series.values, strict=True):
            out.append(
                f'<circle class="aaa-chart-point aaa-series-{key}" cx="{_num(x)}" cy="{_num(y)}" '
                f'r="3.5" data-series="{key}" data-label="{escape(label)}" data-value="{value}">'
                f"<title>{_point_title(label, value, series)}</title></circle>"
            )
    return out


def _point_title(label: str, value: int, series: Series) -> Markup:
    return escape(f"{label}: {value} {series.name.lower()}")


def _short(label: str) -> str:
    """``2026-01-31`` → ``01-31``: days on the axis without the year."""
    return label[5:] if len(label) == 10 and label[4] == "-" else label
