"""The workload report: one self-contained HTML page with inline SVG charts.

`render(report)` returns the page. It has no script and refers to nothing
outside itself (no font, style sheet or image by URL), so it opens offline
in any browser and as a mail attachment. Every chart has a table of its
figures beside it (in a `<details>`), each figure in a `<data value>` element
so a reader, a screen reader or a test gets the exact number; the tables
are also what a mail client that drops SVG still shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

from helpdesk.report import svg
from helpdesk.report.data import Durations, MedianSeconds, Ranked, Report, Spread
from helpdesk.report.fmt import format_seconds
from helpdesk.report.svg import escape

NO_TEAM = "(no team)"
ALL_TEAMS = "(all teams)"
NO_KEY = "(none)"

STYLE = """\
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;background:#fff;
 max-width:62rem;margin:1.5rem auto;padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2.2rem}
h3{font-size:1rem;margin:.6rem 0 .2rem}
.window{color:#555;margin-top:0}
svg.chart{display:block;max-width:100%;height:auto}
figure{margin:.5rem 0}figcaption{color:#555;font-size:.9rem}
.grid{display:flex;flex-wrap:wrap;gap:.5rem 1.5rem}.grid figure{flex:1 1 22rem}
dl.summary{display:grid;grid-template-columns:max-content auto;gap:.25rem 1.2rem}
dl.summary dt{font-weight:600}dl.summary dd{margin:0}
details{margin:.4rem 0 1rem}summary{cursor:pointer;color:#0b5394}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;font-size:.9rem}
th,td{padding:.15rem .6rem;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child{text-align:left}
footer{margin-top:2.5rem;color:#666;font-size:.85rem}
"""


@dataclass(frozen=True)
class Cell:
    """A table cell: the text shown and, for a figure, its exact value."""

    text: str
    value: int | None = None

    def html(self, tag: str = "td") -> str:
        inner = escape(self.text)
        if self.value is not None:
            inner = f'<data value="{self.value}">{inner}</data>'
        return f"<{tag}>{inner}</{tag}>"


def count(value: int) -> Cell:
    return Cell(str(value), value)


def seconds(value: int | None) -> Cell:
    return Cell(format_seconds(value), value)


def team_name(team: str | None) -> str:
    return NO_TEAM if team is None else team


def render(report: Report, *, title: str = "Help desk report") -> str:
    """The whole page for `report`."""
    series = report.series
    period = f"{_when(report.since)} to {_when(report.now)} UTC"
    body = [
        f"<header><h1>{escape(title)}</h1>"
        f'<p class="window">{escape(period)}, against the same length before '
        f"({escape(_when(report.previous_since))} to {escape(_when(report.since))})</p>"
        "</header>",
        _summary(report),
        _opened(report),
        _backlog(report),
        _ranked("tags", "Top tags", "Tag", report.tags),
        _ranked("domains", "Top sender domains", "Domain", report.domains),
        _durations("first-response", "First response", series.first_response, series.weeks),
        _durations("resolution", "Resolution", series.resolution, series.weeks),
        "<footer><p>Made by helpdesk at "
        f"{escape(_when(report.now))} UTC. Days are UTC calendar days (the first and last "
        "are partial); weeks start on Monday. Tickets count under their current team; "
        "merged duplicates count nowhere. The figures are those of "
        "<code>helpdesk stats --json</code> for the same window.</p></footer>",
    ]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="color-scheme" content="light">\n'
        f"<title>{escape(title)}: {escape(period)}</title>\n"
        f"<style>\n{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _summary(report: Report) -> str:
    created = report.created

    def median(m: MedianSeconds) -> str:
        if m.seconds is None:
            return "- (no tickets)"
        plural = "" if m.tickets == 1 else "s"
        return (f"{seconds(m.seconds).html('span')} over "
                f"{count(m.tickets).html('span')} ticket{plural}")

    rows = [
        ("Tickets opened", f"{count(created.current).html('span')} (before: "
                           f"{count(created.previous).html('span')}, "
                           f"{escape(created.trend)})"),
        ("Open now", count(report.open_now).html("span")),
        ("Median first response", median(report.first_response)),
        ("Median resolution", median(report.resolution)),
    ]
    items = "".join(f"<dt>{escape(label)}</dt><dd>{value}</dd>" for label, value in rows)
    return f'<section id="summary"><h2>Summary</h2><dl class="summary">{items}</dl></section>'


def _opened(report: Report) -> str:
    series = report.series
    labels = [_day(d) for d in series.days]
    bars = [svg.Series(team_name(t.team), tuple(float(c) for c in t.counts))
            for t in series.opened]
    chart = svg.Chart("opened", "Tickets opened per day, by team",
                      f"Stacked bars, one per day from {series.days[0]} to {series.days[-1]}: "
                      f"{sum(series.opened_per_day)} tickets in all.")
    headers = ["Day", *(team_name(t.team) for t in series.opened), "All teams"]
    rows = [[Cell(day.isoformat()), *(count(t.counts[i]) for t in series.opened),
             count(series.opened_per_day[i])] for i, day in enumerate(series.days)]
    return _section("opened", "Tickets opened per day, by team",
                    _figure(svg.stacked_bars(chart, labels, bars)),
                    _table("opened-table", "Tickets opened per day", headers, rows))


def _backlog(report: Report) -> str:
    series = report.series
    chart = svg.Chart("backlog", "Open tickets at the end of each day",
                      "Bars, one per day: tickets new, open or pending at the end of the day "
                      f"(the last day: now, {series.backlog[-1]}).")
    bars = [svg.Series("open", tuple(float(b) for b in series.backlog))]
    rows = [[Cell(day.isoformat()), count(series.backlog[i])]
            for i, day in enumerate(series.days)]
    return _section("backlog", "Backlog: open tickets per day",
                    _figure(svg.stacked_bars(chart, [_day(d) for d in series.days], bars,
                                             empty="No open tickets in this window.")),
                    _table("backlog-table", "Open tickets at the end of each day",
                           ["Day", "Open"], rows))


def _ranked(ident: str, heading: str, label: str, rows: Sequence[Ranked]) -> str:
    chart = svg.Chart(f"{ident}-chart", heading,
                      f"{heading} by tickets opened in this window, each beside the "
                      "previous window of the same length.")
    pairs = [svg.Pair(r.key or NO_KEY, r.current, r.previous) for r in rows]
    cells = [[Cell(r.key or NO_KEY), count(r.current), count(r.previous), Cell(r.trend)]
             for r in rows]
    return _section(ident, heading,
                    _figure(svg.paired_bars(chart, pairs)),
                    _table(f"{ident}-table", heading,
                           [label, "Tickets", "Before", "Trend"], cells))


def _durations(ident: str, heading: str, durations: Durations, weeks: Sequence[date]) -> str:
    labels = [_day(w) for w in weeks]
    charts = [_spread_chart(f"{ident}-all", f"{heading}: all teams", labels, durations.all)]
    charts += [_spread_chart(f"{ident}-team-{i}", f"{heading}: {team_name(t.team)}",
                             labels, t.weeks, small=True)
               for i, t in enumerate(durations.teams, start=1)]
    groups = [(ALL_TEAMS, durations.all)] + [(team_name(t.team), t.weeks)
                                              for t in durations.teams]
    rows = [[Cell(week.isoformat()), Cell(name), count(s.tickets), seconds(s.p50),
             seconds(s.p90)]
            for name, spreads in groups for week, s in zip(weeks, spreads, strict=True)
            if s.tickets]
    figures = _figure(charts[0]) + (
        '<div class="grid">' + "".join(_figure(c) for c in charts[1:]) + "</div>"
        if len(charts) > 1 else "")
    return _section(ident, f"{heading} times per week (50th and 90th percentile)", figures,
                    _table(f"{ident}-table", f"{heading} times per week",
                           ["Week of", "Team", "Tickets", "50th pct", "90th pct"], rows))


def _spread_chart(ident: str, title: str, labels: Sequence[str], spreads: Sequence[Spread],
                  *, small: bool = False) -> str:
    chart = svg.Chart(ident, title,
                      "Lines by week of ticket creation: the 50th percentile (half the "
                      "tickets took less) and the 90th (nine in ten took less).",
                      width=380 if small else 760, height=180 if small else 240)
    lines = [
        svg.Line("50th percentile", tuple(_maybe(s.p50) for s in spreads), svg.PALETTE[0]),
        svg.Line("90th percentile", tuple(_maybe(s.p90) for s in spreads), svg.PALETTE[5],
                 dashed=True),
    ]
    return svg.line_chart(chart, labels, lines, ticks_for=svg.duration_ticks,
                          tick_label=format_seconds, value_label=format_seconds)


def _maybe(value: int | None) -> float | None:
    return None if value is None else float(value)


def _section(ident: str, heading: str, figure: str, table: str) -> str:
    return f'<section id="{ident}"><h2>{escape(heading)}</h2>{figure}{table}</section>'


def _figure(chart: str) -> str:
    return f"<figure>{chart}</figure>"


def _table(ident: str, caption: str, headers: Sequence[str],
           rows: Sequence[Sequence[Cell]]) -> str:
    if not rows:
        return ""
    head = "".join(Cell(h).html("th") for h in headers)
    body = "".join("<tr>" + "".join(c.html() for c in row) + "</tr>" for row in rows)
    return (f"<details><summary>The figures</summary>"
            f'<table id="{ident}"><caption>{escape(caption)}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></details>")


def _day(day: date) -> str:
    return day.strftime("%m-%d")


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M")
