"""The ticket filters `tickets list` and `stats` share: --tag, --priority, --since, --unassigned,
--subject."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import click

from helpdesk.names import Priority
from helpdesk.store.schema import utcnow

F = TypeVar("F", bound=Callable[..., Any])

_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes"}
_DURATION = re.compile(r"(?:(\d+)\s*([wdhm])\s*)+", re.IGNORECASE)
_PART = re.compile(r"(\d+)\s*([wdhm])", re.IGNORECASE)


def parse_since(text: str, now: datetime) -> datetime:
    """`7d`, `12h`, `2w`, `1d12h` (that long before `now`) or an ISO date or date and time
    (UTC unless it names its offset); ValueError otherwise."""
    value = text.strip()
    if _DURATION.fullmatch(value):
        span = timedelta()
        for amount, unit in _PART.findall(value):
            span += timedelta(**{_UNITS[unit.lower()]: int(amount)})
        return now - span
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a date (2026-11-01, 2026-11-01T08:00) "
            "nor a duration (7d, 12h, 2w, 1d12h)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class Since(click.ParamType[datetime]):
    """A point in time given as a date or as a duration back from now."""

    name = "DATE|DURATION"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return parse_since(str(value), utcnow())
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def ticket_filter_options(command: F) -> F:
    """Add the shared filter options; they arrive as tags, priority, since, unassigned, subject."""
    options = [
        click.option("--tag", "tags", multiple=True, metavar="TAG",
                     help="Only tickets with this tag (repeatable: tickets with every one)."),
        click.option("--priority", type=click.Choice([p.value for p in Priority]),
                     help="Only tickets of this priority."),
        click.option("--since", type=Since(),
                     help="A date (2026-11-01) or a duration back from now (7d, 12h)."),
        click.option("--unassigned", is_flag=True, help="Only tickets no agent is assigned to."),
        click.option("--subject", metavar="TEXT",
                     help="Only tickets whose subject contains TEXT (any case)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command
