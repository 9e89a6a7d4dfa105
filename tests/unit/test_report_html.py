"""The HTML report from hand-made figures: valid, self-contained, every figure shown as given."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from helpdesk.report import html
from helpdesk.report.data import (
    Durations,
    MedianSeconds,
    Ranked,
    Report,
    Series,
    Spread,
    TeamDays,
    TeamWeeks,
)
from tests.reportcheck import check_page, headers, svg_titles, tables, text

NOW = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)
EVIL_TEAM = "<b>ops</b> & co"
EVIL_TAG = "<script>alert(1)</script>"
EVIL_DOMAIN = "\"><img src=x onerror=alert(1)>]]>.example"
DAYS = tuple(date(2026, 3, 1) + timedelta(days=i) for i in range(4))
WEEKS = (date(2026, 2, 23), date(2026, 3, 2))
NONE = Spread(0, None, None)


def report(**changes: object) -> Report:
    series = Series(
        days=DAYS,
        opened=(TeamDays(EVIL_TEAM, (2, 0, 5, 1)), TeamDays(None, (0, 1, 0, 0))),
        backlog=(4, 5, 9, 7),
        weeks=WEEKS,
        first_response=Durations(
            all=(Spread(2, 600, 3000), Spread(3, 3600, 7200)),
            teams=(TeamWeeks(EVIL_TEAM, (Spread(2, 600, 3000), Spread(2, 5400, 7000))),
                   TeamWeeks(None, (NONE, Spread(1, 60, 60))))),
        resolution=Durations(all=(NONE, Spread(1, 86_400, 86_400)),
                             teams=(TeamWeeks(EVIL_TEAM, (NONE, Spread(1, 86_400, 86_400))),)),
    )
    values: dict[str, object] = {
        "now": NOW, "since": NOW - timedelta(days=3), "previous_since": NOW - timedelta(days=6),
        "created": Ranked("tickets", 9, 6, "+50%"), "open_now": 7,
        "first_response": MedianSeconds(5, 3600), "resolution": MedianSeconds(1, 86_400),
        "tags": (Ranked(EVIL_TAG, 4, 1, "+300%"), Ranked("]]>", 2, 0, "new")),
        "domains": (Ranked(EVIL_DOMAIN, 9, 6, "+50%"),),
        "series": series,
    }
    values.update(changes)
    return Report(**values)  # type: ignore[arg-type]


def test_page_is_valid_self_contained_html() -> None:
    """html5lib parses it without one error; no script, no link out, every SVG is XML."""
    tree = check_page(html.render(report()))
    assert tree.get("lang") == "en"
    # opened, backlog, tags, domains; all teams and each team for both durations
    assert len(list(tree.iter("{http://www.w3.org/2000/svg}svg"))) == 4 + 3 + 2
    assert [s.get("id") for s in tree.iter("section")] == [
        "summary", "opened", "backlog", "tags", "domains", "first-response", "resolution"]


def test_labels_from_mail_are_text() -> None:
    """Hostile team, tag and domain names appear literally and make no element."""
    page = html.render(report())
    tree = check_page(page)
    assert not [el for el in tree.iter() if el.tag in ("b", "img")]
    cells = [c.text for rows in tables(tree).values() for row in rows for c in row]
    assert EVIL_TAG in cells
    assert "]]>" in cells
    assert EVIL_DOMAIN in cells
    assert headers(tree, "opened-table") == ["Day", EVIL_TEAM, "(no team)", "All teams"]
    assert f"{EVIL_TEAM}, 03-03: 5 tickets" in svg_titles(tree, "opened")
    assert "<script>" not in page
    assert "<b>" not in page


def test_tables_hold_every_figure() -> None:
    """Per day, per week and the top lists: the figures given, as text and as data values."""
    tree = check_page(html.render(report()))
    found = tables(tree)
    assert [[(c.text, c.value) for c in row] for row in found["opened-table"]] == [
        [("2026-03-01", None), ("2", "2"), ("0", "0"), ("2", "2")],
        [("2026-03-02", None), ("0", "0"), ("1", "1"), ("1", "1")],
        [("2026-03-03", None), ("5", "5"), ("0", "0"), ("5", "5")],
        [("2026-03-04", None), ("1", "1"), ("0", "0"), ("1", "1")],
    ]
    assert [[c.value for c in row[1:]] for row in found["backlog-table"]] == [
        ["4"], ["5"], ["9"], ["7"]]
    assert [[c.text for c in row] for row in found["tags-table"]] == [
        [EVIL_TAG, "4", "1", "+300%"], ["]]>", "2", "0", "new"]]
    assert [[(c.text, c.value) for c in row] for row in found["first-response-table"]] == [
        [("2026-02-23", None), ("(all teams)", None), ("2", "2"), ("10m", "600"),
         ("50m", "3000")],
        [("2026-03-02", None), ("(all teams)", None), ("3", "3"), ("1h", "3600"),
         ("2h", "7200")],
        [("2026-02-23", None), (EVIL_TEAM, None), ("2", "2"), ("10m", "600"),
         ("50m", "3000")],
        [("2026-03-02", None), (EVIL_TEAM, None), ("2", "2"), ("1h 30m", "5400"),
         ("1h 56m", "7000")],
        [("2026-03-02", None), ("(no team)", None), ("1", "1"), ("1m", "60"), ("1m", "60")],
    ]
    assert len(found["resolution-table"]) == 2  # weeks without a resolved ticket are left out


def test_summary_shows_the_headline_figures() -> None:
    """Opened (against before), open now and the medians, each with its exact value."""
    tree = check_page(html.render(report()))
    summary = next(s for s in tree.iter("section") if s.get("id") == "summary")
    pairs = dict(zip([text(d) for d in summary.iter("dt")], [text(d) for d in summary.iter("dd")],
                     strict=True))
    assert pairs == {"Tickets opened": "9 (before: 6, +50%)", "Open now": "7",
                     "Median first response": "1h over 5 tickets",
                     "Median resolution": "1d over 1 ticket"}
    assert [d.get("value") for d in summary.iter("data")] == ["9", "6", "7", "3600", "5",
                                                              "86400", "1"]


def test_a_desk_without_tickets() -> None:
    """No tickets at all: still a valid page, each chart saying there is nothing."""
    empty = Durations(all=(NONE,), teams=())
    quiet = Series(days=(date(2026, 3, 4),), opened=(), backlog=(0,), weeks=(date(2026, 3, 2),),
                   first_response=empty, resolution=empty)
    page = html.render(report(series=quiet, tags=(), domains=(),
                              created=Ranked("tickets", 0, 0, "-"), open_now=0,
                              first_response=MedianSeconds(0, None),
                              resolution=MedianSeconds(0, None)))
    tree = check_page(page)
    assert "No tickets in this window." in page
    assert "No open tickets in this window." in page
    assert "Nothing in this window." in page
    assert page.count("No tickets to measure in this window.") == 2
    found = tables(tree)
    assert [[c.text for c in row] for row in found["opened-table"]] == [["2026-03-04", "0"]]
    assert "tags-table" not in found  # an empty table says less than the chart's message


@pytest.mark.parametrize("title", ["Help desk <report>", "]]>"])
def test_title_is_escaped(title: str) -> None:
    """The page title is text too."""
    tree = check_page(html.render(report(), title=title))
    assert text(next(tree.iter("title"))).startswith(title)
    assert text(next(tree.iter("h1"))) == title
