"""The SVG charts: scales, stacking, edge cases of the data, and hostile labels."""

from __future__ import annotations

import itertools
import math
import xml.etree.ElementTree as ET

import pytest

from helpdesk.report import svg
from helpdesk.report.fmt import compact

NS = "{http://www.w3.org/2000/svg}"
CHART = svg.Chart("c", "A chart", "What it shows.")
PLOT = svg.Plot(left=50, top=20, right=650, bottom=220)

HOSTILE = [
    "<script>alert(1)</script>",
    "]]>",
    "&amp; &lt;",
    '"><svg onload="alert(1)">',
    "it's",
    "<![CDATA[x]]>",
    "<!-- -->",
]


def parse(markup: str) -> ET.Element:
    """Parse one chart as XML: it must be well-formed on its own."""
    return ET.fromstring(markup)


def rects(root: ET.Element) -> list[ET.Element]:
    return [r for r in root.iter(f"{NS}rect") if r.find(f"{NS}title") is not None]


def every_chart(label: str, category: str = "03-14") -> list[str]:
    """One of each chart with `label` wherever a label from mail can go."""
    return [
        svg.stacked_bars(CHART, [category, "03-15"],
                         [svg.Series(label, (1, 2)), svg.Series("other", (3, 0))]),
        svg.paired_bars(CHART, [svg.Pair(label, 4, 2), svg.Pair("b", 1, 5)]),
        svg.line_chart(CHART, [category, "w2"],
                       [svg.Line(label, (1, 2), "#000"), svg.Line("p90", (3, None), "#111",
                                                                  dashed=True)]),
    ]


@pytest.mark.parametrize("label", HOSTILE)
def test_hostile_labels_are_text(label: str) -> None:
    """Markup in a tag, domain or team name is shown as text: no element, no attribute."""
    for chart in every_chart(label, category=label):
        root = parse(chart)
        assert {el.tag for el in root.iter()} <= {
            f"{NS}{t}" for t in ("svg", "title", "desc", "g", "rect", "text", "line",
                                 "path", "circle")}
        assert not [a for el in root.iter() for a in el.attrib if a.startswith("on")]
        texts = ["".join(el.itertext()) for el in root.iter(f"{NS}title")]
        assert any(label in t for t in texts), texts
        assert "<script" not in chart


def test_characters_that_xml_forbids_become_replacement_characters() -> None:
    """NUL, escape, C1 controls and non-characters cannot break the XML or the HTML."""
    label = "a\x00b\x1bc\x85d\ufffee\U0001ffff\ud800f\tg"
    assert svg.escape(label) == "a\ufffdb\ufffdc\ufffdd\ufffde\ufffd\ufffdf\tg"
    for chart in every_chart(label):
        root = parse(chart)
        assert any("a\ufffdb" in "".join(t.itertext()) for t in root.iter(f"{NS}title"))


def test_escape_covers_both_quotes_and_markup() -> None:
    """Text is safe inside elements and inside attributes quoted either way."""
    assert svg.escape("<a href='x'>\"&\"</a>") == (
        "&lt;a href=&#x27;x&#x27;&gt;&quot;&amp;&quot;&lt;/a&gt;")
    assert svg.escape("é 😀 日本") == "é 😀 日本"


def test_long_labels_are_shortened_with_the_full_text_in_a_title() -> None:
    """A label too long for its column is cut with an ellipsis; its title keeps all of it."""
    long = "x" * 60
    root = parse(svg.paired_bars(CHART, [svg.Pair(long, 1, 1)]))
    label = next(t for t in root.iter(f"{NS}text") if "".join(t.itertext()).startswith("x"))
    assert label.find(f"{NS}title").text == long  # type: ignore[union-attr]
    assert "".join(label.itertext()).endswith("x" * 21 + "…")
    assert svg.shorten("abc", 3) == "abc"
    assert svg.shorten("abcd", 3) == "ab…"


@pytest.mark.parametrize(
    ("maximum", "expected"),
    [
        (0, (0, 1)),
        (-3, (0, 1)),
        (1, (0, 1)),
        (5, (0, 1, 2, 3, 4, 5)),
        (7, (0, 2, 4, 6, 8)),
        (10, (0, 2, 4, 6, 8, 10)),
        (3.5, (0, 1, 2, 3, 4)),
        (123_456, (0, 50_000, 100_000, 150_000)),
        (10**12, (0, 2e11, 4e11, 6e11, 8e11, 1e12)),
    ],
)
def test_nice_ticks(maximum: float, expected: tuple[float, ...]) -> None:
    """Axis ticks are whole round steps from 0 to at least the largest figure."""
    assert svg.nice_ticks(maximum) == pytest.approx(expected)


@pytest.mark.parametrize("maximum", [1, 3, 9, 11, 99, 101, 997, 12_345, 7e9, 3.3e15])
def test_nice_ticks_cover_the_data_in_few_even_steps(maximum: float) -> None:
    """Whatever the figure: the top tick reaches it, steps are even, never more than 6."""
    ticks = svg.nice_ticks(maximum)
    steps = {round(b - a, 6) for a, b in itertools.pairwise(ticks)}
    assert ticks[0] == 0
    assert ticks[-1] >= maximum
    assert len(steps) == 1
    assert 2 <= len(ticks) <= 6
    assert ticks[-2] < maximum  # the axis is not taller than one step over the data


@pytest.mark.parametrize(
    ("maximum", "expected"),
    [
        (0, (0, 60)),
        (40, (0, 10, 20, 30, 40)),
        (7200, (0, 1800, 3600, 5400, 7200)),
        (129_600, (0, 43_200, 86_400, 129_600)),
        (10 * 365 * 86_400, tuple(y * 2 * 31_536_000 for y in range(6))),
    ],
)
def test_duration_ticks(maximum: float, expected: tuple[float, ...]) -> None:
    """Duration axes step by whole minutes, hours, days, weeks or years."""
    assert svg.duration_ticks(maximum) == pytest.approx(expected)


def test_scale_maps_zero_and_top_to_their_pixels() -> None:
    """A y scale: 0 on the baseline, the top tick at the top, linear between."""
    scale = svg.Scale(10, 200, 0)
    assert (scale(0), scale(5), scale(10)) == (200, 100, 0)


def test_stacking_puts_each_series_on_the_one_below() -> None:
    """Segments of a bar touch, bottom-up in series order; heights are proportional."""
    series = [svg.Series("a", (1, 0, 2)), svg.Series("b", (3, 0, 1))]
    rects_, scale, ticks = svg.stack_layout(series, 3, PLOT)
    assert ticks == (0, 1, 2, 3, 4)
    by_bar = {i: [r for r in rects_ if r.index == i] for i in range(3)}
    assert by_bar[1] == []  # a day with nothing has no bar
    for i, total in ((0, 4), (2, 3)):
        low, high = by_bar[i]
        assert (low.series, high.series) == (0, 1)
        assert low.y + low.height == pytest.approx(PLOT.bottom)
        assert high.y + high.height == pytest.approx(low.y)
        assert high.y == pytest.approx(scale(total))
    per_unit = {round(r.height / r.value, 9) for r in rects_}
    assert per_unit == {round((PLOT.bottom - PLOT.top) / 4, 9)}
    assert by_bar[0][0].x < by_bar[2][0].x


def test_the_rendered_bars_are_the_laid_out_bars() -> None:
    """Each drawn segment has the layout's geometry and names its series, day and figure."""
    series = [svg.Series("networking", (2, 1)), svg.Series("support", (1, 0))]
    root = parse(svg.stacked_bars(CHART, ["03-14", "03-15"], series))
    titles = [r.find(f"{NS}title").text for r in rects(root)]  # type: ignore[union-attr]
    assert titles == ["networking, 03-14: 2 tickets", "networking, 03-15: 1 ticket",
                      "support, 03-14: 1 ticket"]
    heights = [float(r.get("height", "0")) for r in rects(root)]
    assert heights[0] == pytest.approx(2 * heights[1], abs=0.02)
    assert heights[1] == heights[2]
    totals = [t.text for t in root.iter(f"{NS}text") if t.text in {"3", "1"}]
    assert "3" in totals  # the stack's total is written above it


def test_one_day_is_one_bar_of_bounded_width() -> None:
    """A single category gives one centred bar, not one as wide as the chart."""
    rects_, _, _ = svg.stack_layout([svg.Series("a", (5,))], 1, PLOT)
    (bar,) = rects_
    assert bar.width == 48
    assert bar.x + bar.width / 2 == pytest.approx((PLOT.left + PLOT.right) / 2)
    parse(svg.stacked_bars(CHART, ["03-14"], [svg.Series("a", (5,))]))


@pytest.mark.parametrize(
    "chart",
    [
        svg.stacked_bars(CHART, [], []),
        svg.stacked_bars(CHART, ["a", "b"], [svg.Series("x", (0, 0))]),
        svg.paired_bars(CHART, []),
        svg.line_chart(CHART, ["w1", "w2"], [svg.Line("p50", (None, None), "#000")]),
        svg.line_chart(CHART, [], []),
    ],
    ids=["no-days", "all-zero", "no-rows", "no-values", "no-weeks"],
)
def test_empty_data_says_so(chart: str) -> None:
    """No figures: a short message instead of an empty axis, still titled and well-formed."""
    root = parse(chart)
    assert rects(root) == []
    assert list(root.iter(f"{NS}circle")) == []
    message = [t.text or "" for t in root.iter(f"{NS}text")]
    assert len(message) == 1
    assert message[0].startswith(("No ", "Nothing "))
    assert root.find(f"{NS}title") is not None


def test_zero_values_draw_nothing_but_keep_the_axis() -> None:
    """Zero figures among others: no zero-height bars, and the others keep their scale."""
    root = parse(svg.stacked_bars(CHART, ["a", "b", "c"], [svg.Series("x", (0, 4, 0))]))
    assert [r.find(f"{NS}title").text for r in rects(root)] == [  # type: ignore[union-attr]
        "x, b: 4 tickets"]
    paired = parse(svg.paired_bars(CHART, [svg.Pair("vpn", 0, 3)]))
    widths = [float(r.get("width", "0")) for r in rects(paired)]
    assert widths[0] == 0
    assert widths[1] > 0


def test_huge_values_stay_finite_and_exact_in_titles() -> None:
    """A trillion tickets: the axis reads 1T, the title has every digit, coordinates are finite."""
    big = 10**12
    root = parse(svg.stacked_bars(CHART, ["a", "b"], [svg.Series("x", (big, 1))]))
    titles = [r.find(f"{NS}title").text for r in rects(root)]  # type: ignore[union-attr]
    assert titles == ["x, a: 1000000000000 tickets", "x, b: 1 ticket"]
    for el in root.iter():
        for key in ("x", "y", "width", "height"):
            if key in el.attrib:
                assert math.isfinite(float(el.attrib[key]))
    assert "1T" in [t.text for t in root.iter(f"{NS}text")]
    paired = parse(svg.paired_bars(CHART, [svg.Pair("vpn", big, 1)]))
    assert str(big) in [t.text for t in paired.iter(f"{NS}text")]


def test_paired_bars_share_one_axis() -> None:
    """This window's bar and the previous one's are drawn to the same scale."""
    root = parse(svg.paired_bars(CHART, [svg.Pair("vpn", 8, 2), svg.Pair("mail", 4, 8)]))
    widths = [float(r.get("width", "0")) for r in rects(root)]
    assert widths[0] == pytest.approx(widths[3]) == pytest.approx(4 * widths[1])
    assert widths[2] == pytest.approx(widths[0] / 2)
    labels = [t.text for t in root.iter(f"{NS}text") if t.text and t.text.isdigit()]
    assert labels == ["8", "2", "4", "8"]


def test_a_line_breaks_where_a_week_has_no_figure() -> None:
    """A missing week leaves a gap; a lone figure is a dot without a line."""
    lines = [svg.Line("p50", (60.0, None, 120.0, 180.0), "#000")]
    points, scale, _ = svg.line_layout(lines, 4, PLOT, svg.nice_ticks)
    assert [p.index for p in points[0]] == [0, 2, 3]
    assert points[0][1].y == pytest.approx(scale(120))
    root = parse(svg.line_chart(svg.Chart("c", "t", "d"), ["w1", "w2", "w3", "w4"], lines))
    paths = [p.get("d", "") for p in root.iter(f"{NS}path")]
    assert len(paths) == 1
    assert paths[0].count("L") == 1
    dots = [c.find(f"{NS}title").text for c in root.iter(f"{NS}circle")]  # type: ignore[union-attr]
    assert dots == ["p50, w1: 60", "p50, w3: 120", "p50, w4: 180"]


def test_every_chart_is_titled_for_screen_readers() -> None:
    """role=img, and aria-labelledby names the chart's own title and desc."""
    for chart in every_chart("vpn"):
        root = parse(chart)
        assert root.get("role") == "img"
        title, desc = root[0], root[1]
        assert (title.tag, desc.tag) == (f"{NS}title", f"{NS}desc")
        assert root.get("aria-labelledby") == f"{title.get('id')} {desc.get('id')}"
        assert (title.text, desc.text) == ("A chart", "What it shows.")


def test_no_script_and_no_reference_outside_the_chart() -> None:
    """Static pictures: no script, no link, no URL but the SVG namespace."""
    for chart in every_chart("vpn"):
        for el in parse(chart).iter():
            assert el.tag != f"{NS}script"
            assert not [a for a in el.attrib if a.endswith("href") or a == "src"]
        assert chart.count("http") == 1  # xmlns


def test_bad_input_is_refused() -> None:
    """Series of the wrong length and ids that could clash with markup are programming errors."""
    with pytest.raises(ValueError, match="one value per category"):
        svg.stacked_bars(CHART, ["a", "b"], [svg.Series("x", (1,))])
    with pytest.raises(ValueError, match="one value per category"):
        svg.line_chart(CHART, ["a"], [svg.Line("x", (1, 2), "#000")])
    with pytest.raises(ValueError, match="lower-case token"):
        svg.Chart('x" onload="y', "t", "d")


def test_labels_are_thinned_so_they_do_not_overlap() -> None:
    """A year of days shows a label every few days, a week shows every day."""
    assert svg.label_every(7, 700, 40) == 1
    assert svg.label_every(365, 700, 40) == 22
    root = parse(svg.stacked_bars(CHART, [f"d{i:03}" for i in range(365)],
                                  [svg.Series("x", tuple(1.0 for _ in range(365)))]))
    labels = [t.text for t in root.iter(f"{NS}text") if t.text and t.text.startswith("d")]
    assert 10 <= len(labels) <= 25
    assert labels[0] == "d000"
    # Bars under two pixels wide get no total above them (the table has every figure).
    assert not [g for g in root.iter(f"{NS}g") if g.get("class") == "totals"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, "0"), (950, "950"), (9_999, "9999"), (12_000, "12k"), (15_500, "15.5k"),
     (1_500_000, "1.5M"), (3e9, "3G"), (1e12, "1T"), (0.5, "0.5"), (-2_000_000, "-2M")],
)
def test_compact_axis_labels(value: float, expected: str) -> None:
    """Axis labels are short; exact figures are in titles, labels and tables."""
    assert compact(value) == expected
