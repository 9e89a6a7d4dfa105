"""Small static SVG charts: stacked bars, paired horizontal bars, lines.

Each function takes figures and returns one `<svg>` element as a string that
is well-formed XML on its own and valid inside HTML: no script, no external
reference (fonts are the reader's own sans-serif), a `<title>` and `<desc>`
named by `aria-labelledby` for screen readers, and a `<title>` on every bar
and point so a pointer shows its figure. Every text is escaped, and
characters that XML or HTML forbid (NUL, other controls, non-characters)
become U+FFFD, so a tag like `<script>` or `]]>` is shown as text.

The geometry (`Scale`, `nice_ticks`, `stack_layout`, ...) is separate from
the markup, so tests check numbers rather than strings.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from helpdesk.report.fmt import compact

# Okabe-Ito, then Paul Tol's muted colours: distinguishable with the common
# colour-vision deficiencies. After twelve teams colours repeat; the legend,
# the bar titles and the tables still name every team.
PALETTE = (
    "#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00",
    "#332288", "#44aa99", "#882255", "#999933", "#f0e442", "#6e6e6e",
)
PREVIOUS = "#b9b9b9"   # the previous window, beside the current one
INK = "#222222"
GRID = "#e3e3e3"
FONT = "font-family=\"system-ui, -apple-system, 'Segoe UI', sans-serif\" font-size=\"12\""
CHAR_WIDTH = 6.6       # an average glyph at 12px, to lay out labels without a font

# Characters that may appear neither in XML 1.0 nor in HTML text: C0 controls
# other than tab, LF and CR, DEL and C1 controls, surrogates, and the
# non-characters U+FDD0..U+FDEF and U+xFFFE/U+xFFFF of every plane.
_FORBIDDEN = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef"
    + "".join(f"{chr(plane * 0x10000 + 0xFFFE)}{chr(plane * 0x10000 + 0xFFFF)}"
              for plane in range(17))
    + "]"
)
_IDENT = re.compile(r"[a-z][a-z0-9-]*\Z")


def escape(text: str) -> str:
    """Text safe in XML and HTML content and in double- or single-quoted attributes."""
    return html.escape(_FORBIDDEN.sub("\ufffd", text), quote=True)


def shorten(text: str, limit: int) -> str:
    """At most `limit` characters, an ellipsis marking a cut."""
    return text if len(text) <= limit else text[: max(1, limit - 1)] + "…"


def num(value: float) -> str:
    """A coordinate: two decimals at most, no trailing zeros."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


@dataclass(frozen=True)
class Chart:
    """What every chart has: an id prefix (unique in the page), a title, a description."""

    ident: str
    title: str
    desc: str
    width: float = 760
    height: float = 260

    def __post_init__(self) -> None:
        if not _IDENT.match(self.ident):
            raise ValueError(f"chart ident must be a lower-case token, got {self.ident!r}")


@dataclass(frozen=True)
class Scale:
    """A linear map from [0, top] to pixels: 0 lands on `zero`, `top` on `full`."""

    top: float
    zero: float
    full: float

    def __call__(self, value: float) -> float:
        return self.zero + (self.full - self.zero) * (value / self.top)


@dataclass(frozen=True)
class Rect:
    """A bar or a bar segment, with the figure it stands for."""

    x: float
    y: float
    width: float
    height: float
    value: float
    series: int
    index: int


@dataclass(frozen=True)
class Series:
    """A named row of figures, one per category."""

    name: str
    values: tuple[float, ...]


@dataclass(frozen=True)
class Pair:
    """One row of a paired bar chart: a label, this window's figure, the previous one's."""

    label: str
    current: float
    previous: float


@dataclass(frozen=True)
class Line:
    """A line of a line chart; None leaves a gap."""

    name: str
    values: tuple[float | None, ...]
    colour: str
    dashed: bool = False


def nice_ticks(maximum: float, count: int = 5) -> tuple[float, ...]:
    """0 and round steps (1, 2 or 5 times a power of ten, whole numbers) up to `maximum`."""
    if not maximum > 0:
        return (0.0, 1.0)
    raw = maximum / count
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    step = max(step, 1.0)
    steps = math.ceil(maximum / step - 1e-9)
    return tuple(i * step for i in range(steps + 1))


# Durations an axis may step by, in seconds: from a second to a year.
_DURATION_STEPS = (
    1, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
    86400, 172800, 604800, 1209600, 2592000, 7776000, 15552000, 31536000,
)


def duration_ticks(maximum: float, count: int = 5) -> tuple[float, ...]:
    """0 and steps of a whole duration (5m, 1h, 1d, 1w, ...) up to `maximum` seconds."""
    if not maximum > 0:
        return (0.0, 60.0)
    step = next((float(s) for s in _DURATION_STEPS if maximum / s <= count), None)
    if step is None:   # more than five years: whole years
        years = nice_ticks(maximum / _DURATION_STEPS[-1], count)
        return tuple(y * _DURATION_STEPS[-1] for y in years)
    steps = math.ceil(maximum / step - 1e-9)
    return tuple(i * step for i in range(steps + 1))


@dataclass(frozen=True)
class Plot:
    """The plotting area inside a chart's margins."""

    left: float
    top: float
    right: float
    bottom: float

    @property
    def width(self) -> float:
        return self.right - self.left

    def band(self, count: int) -> float:
        """The width given to each of `count` categories."""
        return self.width / max(1, count)


def stack_layout(series: Sequence[Series], count: int, plot: Plot,
                 ) -> tuple[tuple[Rect, ...], Scale, tuple[float, ...]]:
    """Bars of `count` categories, each stacking the series in order from the bottom."""
    totals = [sum(s.values[i] for s in series) for i in range(count)]
    ticks = nice_ticks(max(totals, default=0))
    scale = Scale(ticks[-1], plot.bottom, plot.top)
    band = plot.band(count)
    bar = min(band * 0.8, 48.0)
    rects: list[Rect] = []
    for i in range(count):
        x = plot.left + i * band + (band - bar) / 2
        below = 0.0
        for s, row in enumerate(series):
            value = row.values[i]
            if value <= 0:
                continue
            y_low, y_high = scale(below), scale(below + value)
            rects.append(Rect(x, y_high, bar, y_low - y_high, value, s, i))
            below += value
    return tuple(rects), scale, ticks


def label_every(count: int, width: float, label_width: float) -> int:
    """Label every n-th category so that labels `label_width` wide do not overlap."""
    fits = max(1, int(width // label_width))
    return max(1, math.ceil(count / fits))


def stacked_bars(chart: Chart, categories: Sequence[str], series: Sequence[Series], *,
                 units: tuple[str, str] = ("ticket", "tickets"),
                 empty: str = "No tickets in this window.") -> str:
    """Vertical bars per category, the series stacked; a total above each bar when it fits."""
    count = len(categories)
    if any(len(s.values) != count for s in series):
        raise ValueError("every series needs one value per category")
    totals = [sum(s.values[i] for s in series) for i in range(count)]
    if not count or not any(t > 0 for t in totals):
        return _empty(chart, empty)
    legend, legend_height = _legend(
        [(s.name, PALETTE[i % len(PALETTE)], "box") for i, s in enumerate(series)],
        chart.width, y=chart.height) if len(series) > 1 else ("", 0.0)
    plot = Plot(left=56, top=24, right=chart.width - 12, bottom=chart.height - 28)
    rects, scale, ticks = stack_layout(series, count, plot)
    parts = [_open(chart, chart.height + legend_height),
             _y_grid(plot, scale, ticks, compact)]
    for s, row in enumerate(series):
        parts.append(f'<g fill="{PALETTE[s % len(PALETTE)]}">')
        for r in (r for r in rects if r.series == s):
            tip = f"{row.name}, {categories[r.index]}: {_counted(r.value, units)}"
            parts.append(f'<rect x="{num(r.x)}" y="{num(r.y)}" width="{num(r.width)}" '
                         f'height="{num(r.height)}"><title>{escape(tip)}</title></rect>')
        parts.append("</g>")
    band = plot.band(count)
    # Totals above the bars where the widest fits its band; the table has them all.
    if band >= (len(_figure(max(totals))) + 0.5) * CHAR_WIDTH:
        parts.append(f'<g class="totals" fill="{INK}" text-anchor="middle">')
        for i, total in enumerate(totals):
            if total > 0:
                x = plot.left + (i + 0.5) * band
                parts.append(f'<text x="{num(x)}" y="{num(scale(total) - 4)}">'
                             f"{_figure(total)}</text>")
        parts.append("</g>")
    parts.append(_x_labels(plot, categories))
    parts.append(legend)
    parts.append("</svg>")
    return "".join(parts)


def paired_layout(pairs: Sequence[Pair], left: float, right: float,
                  ) -> tuple[Scale, tuple[float, ...]]:
    """The horizontal scale of a paired bar chart: both windows on one axis."""
    ticks = nice_ticks(max((max(p.current, p.previous) for p in pairs), default=0))
    return Scale(ticks[-1], left, right), ticks


ROW = 30.0


def paired_bars(chart: Chart, pairs: Sequence[Pair], *,
                names: tuple[str, str] = ("this window", "previous window"),
                units: tuple[str, str] = ("ticket", "tickets"),
                empty: str = "Nothing in this window.") -> str:
    """Horizontal bars, one row per label: this window's figure over the previous one's."""
    if not pairs:
        return _empty(chart, empty)
    label_width = 22 * CHAR_WIDTH
    top = 30.0
    height = top + ROW * len(pairs) + 8
    scale, _ = paired_layout(pairs, label_width + 16, chart.width - 12 * CHAR_WIDTH)
    legend, _ = _legend([(names[0], PALETTE[0], "box"), (names[1], PREVIOUS, "box")],
                        chart.width, y=0)
    parts = [_open(chart, height), legend, "<g>"]
    for i, pair in enumerate(pairs):
        y = top + i * ROW
        full = escape(pair.label)
        parts.append(f'<text x="{num(label_width + 8)}" y="{num(y + 15)}" fill="{INK}" '
                     f'text-anchor="end"><title>{full}</title>'
                     f"{escape(shorten(pair.label, 22))}</text>")
        for value, colour, offset, thick, name in (
            (pair.current, PALETTE[0], 3.0, 14.0, names[0]),
            (pair.previous, PREVIOUS, 19.0, 8.0, names[1]),
        ):
            end = scale(value)
            tip = escape(f"{pair.label}, {name}: {_counted(value, units)}")
            parts.append(f'<rect x="{num(scale.zero)}" y="{num(y + offset)}" '
                         f'width="{num(end - scale.zero)}" height="{num(thick)}" '
                         f'fill="{colour}"><title>{tip}</title></rect>'
                         f'<text x="{num(end + 4)}" y="{num(y + offset + thick - 2)}" '
                         f'fill="{INK}">{_figure(value)}</text>')
    parts.append("</g></svg>")
    return "".join(parts)


@dataclass(frozen=True)
class Point:
    """A dot of a line chart, with its category and figure."""

    index: int
    x: float
    y: float
    value: float


def line_layout(lines: Sequence[Line], count: int, plot: Plot,
                ticks_for: Callable[[float], tuple[float, ...]],
                ) -> tuple[tuple[tuple[Point, ...], ...], Scale, tuple[float, ...]]:
    """Per line, its dots; None values have none."""
    ticks = ticks_for(max((v for line in lines for v in line.values if v is not None),
                          default=0))
    scale = Scale(ticks[-1], plot.bottom, plot.top)
    band = plot.band(count)
    points = tuple(
        tuple(Point(i, plot.left + (i + 0.5) * band, scale(v), v)
              for i, v in enumerate(line.values) if v is not None)
        for line in lines
    )
    return points, scale, ticks


def line_chart(chart: Chart, categories: Sequence[str], lines: Sequence[Line], *,
               ticks_for: Callable[[float], tuple[float, ...]] = nice_ticks,
               tick_label: Callable[[float], str] = compact,
               value_label: Callable[[float], str] = compact,
               empty: str = "No tickets to measure in this window.") -> str:
    """Lines over categories, a dot on every figure; a gap where a figure is missing."""
    count = len(categories)
    if any(len(line.values) != count for line in lines):
        raise ValueError("every line needs one value per category")
    if not any(v is not None for line in lines for v in line.values):
        return _empty(chart, empty)
    legend, legend_height = _legend(
        [(line.name, line.colour, "dash" if line.dashed else "line") for line in lines],
                                    chart.width, y=chart.height)
    plot = Plot(left=56, top=16, right=chart.width - 12, bottom=chart.height - 28)
    points, scale, ticks = line_layout(lines, count, plot, ticks_for)
    parts = [_open(chart, chart.height + legend_height),
             _y_grid(plot, scale, ticks, tick_label)]
    for line, dots in zip(lines, points, strict=True):
        dash = ' stroke-dasharray="5 3"' if line.dashed else ""
        for run in _runs(dots):
            if len(run) > 1:
                path = " ".join(f"{'M' if j == 0 else 'L'}{num(p.x)} {num(p.y)}"
                                for j, p in enumerate(run))
                parts.append(f'<path d="{path}" fill="none" stroke="{line.colour}" '
                             f'stroke-width="2"{dash}/>')
        parts.append(f'<g fill="{line.colour}">')
        for p in dots:
            tip = escape(f"{line.name}, {categories[p.index]}: {value_label(p.value)}")
            parts.append(f'<circle cx="{num(p.x)}" cy="{num(p.y)}" r="3">'
                         f"<title>{tip}</title></circle>")
        parts.append("</g>")
    parts.append(_x_labels(plot, categories))
    parts.append(legend)
    parts.append("</svg>")
    return "".join(parts)


def _runs(dots: Sequence[Point]) -> list[list[Point]]:
    """The dots split where a category has none, so a line never bridges a gap."""
    runs: list[list[Point]] = []
    for p in dots:
        if runs and runs[-1][-1].index == p.index - 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    return runs


def _figure(value: float) -> str:
    """An exact figure as the tables show it."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _counted(value: float, units: tuple[str, str]) -> str:
    """`1 ticket`, `3 tickets`."""
    return f"{_figure(value)} {units[0] if value == 1 else units[1]}"


def _open(chart: Chart, height: float) -> str:
    ident = chart.ident
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
            f'viewBox="0 0 {num(chart.width)} {num(height)}" width="{num(chart.width)}" '
            f'height="{num(height)}" aria-labelledby="{ident}-title {ident}-desc" {FONT}>'
            f'<title id="{ident}-title">{escape(chart.title)}</title>'
            f'<desc id="{ident}-desc">{escape(chart.desc)}</desc>')


def _empty(chart: Chart, message: str) -> str:
    height = 60.0
    return (_open(chart, height)
            + f'<text x="{num(chart.width / 2)}" y="34" text-anchor="middle" '
              f'fill="{INK}">{escape(message)}</text></svg>')


def _y_grid(plot: Plot, scale: Scale, ticks: Sequence[float],
            label: Callable[[float], str]) -> str:
    parts = [f'<g fill="{INK}" text-anchor="end">']
    for tick in ticks:
        y = num(scale(tick))
        parts.append(f'<line x1="{num(plot.left)}" x2="{num(plot.right)}" y1="{y}" y2="{y}" '
                     f'stroke="{GRID if tick else INK}"/>'
                     f'<text x="{num(plot.left - 6)}" y="{y}" dy="4">'
                     f"{escape(label(tick))}</text>")
    parts.append("</g>")
    return "".join(parts)


def _x_labels(plot: Plot, categories: Sequence[str]) -> str:
    band = plot.band(len(categories))
    longest = max((len(c) for c in categories), default=1)
    every = label_every(len(categories), plot.width, (longest + 2) * CHAR_WIDTH)
    parts = [f'<g fill="{INK}" text-anchor="middle">']
    for i in range(0, len(categories), every):
        x = plot.left + (i + 0.5) * band
        parts.append(f'<text x="{num(x)}" y="{num(plot.bottom + 18)}">'
                     f"{escape(categories[i])}</text>")
    parts.append("</g>")
    return "".join(parts)


def _legend(items: Sequence[tuple[str, str, str]], width: float, *, y: float,
            ) -> tuple[str, float]:
    """Swatches (`box`, `line`, `dash`) and names in rows; returns the markup and height."""
    parts = [f'<g fill="{INK}">']
    x, row = 12.0, 0
    for name, colour, swatch in items:
        label = shorten(name, 32)
        item_width = 24 + len(label) * CHAR_WIDTH + 16
        if x + item_width > width and x > 12:
            x, row = 12.0, row + 1
        top = y + 6 + row * 20
        if swatch != "box":
            dash = ' stroke-dasharray="5 3"' if swatch == "dash" else ""
            parts.append(f'<line x1="{num(x)}" x2="{num(x + 16)}" y1="{num(top + 6)}" '
                         f'y2="{num(top + 6)}" stroke="{colour}" stroke-width="2"{dash}/>')
        else:
            parts.append(f'<rect x="{num(x)}" y="{num(top)}" width="16" height="12" '
                         f'fill="{colour}"/>')
        parts.append(f'<text x="{num(x + 22)}" y="{num(top + 11)}">'
                     f"<title>{escape(name)}</title>{escape(label)}</text>")
        x += item_width
    parts.append("</g>")
    return "".join(parts), 12 + (row + 1) * 20
