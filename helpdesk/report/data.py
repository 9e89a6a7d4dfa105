"""The figures a report shows: plain frozen values, computed by `helpdesk.desk.stats`.

The same values feed `helpdesk stats --json` and the HTML report, so the two
cannot disagree. Durations are whole seconds (None: no ticket to measure),
days are UTC calendar dates, weeks start on Monday (ISO 8601).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime


@dataclass(frozen=True)
class Ranked:
    """Tickets with one key (a tag, a sender domain) in the window and the one before."""

    key: str | None
    current: int
    previous: int
    trend: str


@dataclass(frozen=True)
class TeamDays:
    """Tickets opened per day of the window by one team (None: no team)."""

    team: str | None
    counts: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True)
class Spread:
    """Percentiles of a duration over the tickets created in one week."""

    tickets: int
    p50: int | None
    p90: int | None


@dataclass(frozen=True)
class TeamWeeks:
    """One `Spread` per week of the window for a team (None: no team)."""

    team: str | None
    weeks: tuple[Spread, ...]


@dataclass(frozen=True)
class Durations:
    """A duration (first response, resolution) per week: over all tickets, then per team."""

    all: tuple[Spread, ...]
    teams: tuple[TeamWeeks, ...]


@dataclass(frozen=True)
class Series:
    """The window day by day and week by week."""

    days: tuple[date, ...]
    opened: tuple[TeamDays, ...]
    backlog: tuple[int, ...]
    weeks: tuple[date, ...]
    first_response: Durations
    resolution: Durations

    @property
    def opened_per_day(self) -> tuple[int, ...]:
        """Tickets opened per day, all teams together."""
        totals = [0] * len(self.days)
        for team in self.opened:
            for i, count in enumerate(team.counts):
                totals[i] += count
        return tuple(totals)


@dataclass(frozen=True)
class MedianSeconds:
    """A median duration in seconds and how many tickets it was taken over."""

    tickets: int
    seconds: int | None


@dataclass(frozen=True)
class Report:
    """Everything the HTML report shows."""

    now: datetime
    since: datetime
    previous_since: datetime
    created: Ranked
    open_now: int
    first_response: MedianSeconds
    resolution: MedianSeconds
    tags: tuple[Ranked, ...]
    domains: tuple[Ranked, ...]
    series: Series
